"""SentencePiece tokenizer plus added tokens, id-for-id equal to transformers' LlamaTokenizer (v5).

Mistral and Dolphin ship a SentencePiece BPE model (tokenizer.model) and, in their JSON files, extra
"added" tokens such as <|im_start|>/<|im_end|>. transformers 5 turns a text into ids like this:

1. Added tokens are cut out of the text first (leftmost, longest match). Tokens flagged lstrip/rstrip
   also swallow the whitespace on that side.
2. In every remaining chunk ' ' becomes '▁', and a dummy '▁' is prepended unless the chunk already
   starts with one. Which chunks get it depends on the config: legacy=true -> every chunk, including
   the one right after an added token ("always"); legacy=false (the default) -> only a chunk at the
   very start of the text ("first"); add_prefix_space=false -> none ("never").
3. Each chunk is BPE-merged as a whole. A merge's priority is its place in tokenizer.json's merge list
   when there is one, otherwise the id of the merged piece.

Plain SentencePiece disagrees on two points: it always adds its own dummy '▁' (also before a leading
space), and it merges by piece score, which ranks the whitespace-run pieces ('▁▁', '▁▁▁▁', ...) last.
So we load a patched copy of the model: add_dummy_prefix off and scores = -(transformers' priority);
then we add the dummy '▁' ourselves exactly where transformers does.

BOS/EOS are explicit: encode() adds them only when asked (bos=True, eos=True), whatever the
add_bos_token / add_eos_token flags say. The flags are kept and saved for transformers' sake.

Decoding is the inverse of encoding, not a copy of transformers' decode (which turns
"a<|im_start|>b" into "a<|im_start|> b"): the dummy '▁' that encode added at the start of a chunk is
removed again. Where two texts share the same ids the choice is fixed: a chunk that starts with a
single space followed by a non-space (" hi") decodes without that space, since "hi" gives the same ids.
"""

from __future__ import annotations

import codecs
import json
import operator
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import sentencepiece

import atomic

SPACE = "▁"  # SentencePiece's stand-in for ' '
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")  # tokenizer_config.json keys


class TokenizerError(ValueError):
    """A tokenizer file is missing or malformed, or a token id is out of range."""


@dataclass(frozen=True)
class AddedToken:
    content: str
    id: int
    special: bool = True  # special tokens are dropped by decode(skip_special=True)
    lstrip: bool = False  # swallow the whitespace before the token
    rstrip: bool = False  # swallow the whitespace after the token


# --- the few bits of protobuf needed to patch tokenizer.model without the protobuf package ---


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated protobuf varint")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _proto_fields(buf: bytes):
    """Yield (field number, wire type, start of field, start of payload, end) for each field of a message."""
    pos = 0
    while pos < len(buf):
        key, payload = _read_varint(buf, pos)
        wire = key & 7
        if wire == 0:
            _, end = _read_varint(buf, payload)
        elif wire == 1:
            end = payload + 8
        elif wire == 5:
            end = payload + 4
        elif wire == 2:
            length, payload = _read_varint(buf, payload)
            end = payload + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if end > len(buf):
            raise ValueError("truncated protobuf field")
        yield key >> 3, wire, pos, payload, end
        pos = end


def _model_type(model: bytes) -> int:
    """TrainerSpec.model_type of a SentencePiece ModelProto: 1 unigram (the default), 2 BPE, ..."""
    for field, wire, _, payload, end in _proto_fields(model):
        if field == 2 and wire == 2:  # ModelProto.trainer_spec
            for spec_field, spec_wire, _, spec_payload, _ in _proto_fields(model[payload:end]):
                if spec_field == 3 and spec_wire == 0:  # TrainerSpec.model_type
                    return _read_varint(model[payload:end], spec_payload)[0]
    return 1


def _patched_model(model: bytes, priorities: list[int]) -> bytes:
    """The ModelProto with piece i scored -priorities[i] and add_dummy_prefix off.

    Protobuf keeps the last value of a scalar field and merges repeated occurrences of a message field,
    so appending a score to every piece and a NormalizerSpec{add_dummy_prefix: false} overrides both."""
    out, piece = bytearray(), 0
    for field, wire, start, payload, end in _proto_fields(model):
        if field == 1 and wire == 2:  # ModelProto.pieces; SentencePiece.score is field 2, a float
            body = model[payload:end] + b"\x15" + struct.pack("<f", -priorities[piece])
            out += b"\x0a" + _encode_varint(len(body)) + body  # key of field 1, length-delimited
            piece += 1
        else:
            out += model[start:end]
    return bytes(out + b"\x1a\x02\x18\x00")  # field 3 (normalizer_spec) { field 3 (add_dummy_prefix): 0 }


# --- reading the JSON files ---


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _token_content(value, path: Path, key: str) -> str | None:
    """bos_token & co. are either a string or an AddedToken dict with "content"."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise TokenizerError(f"{path}: {key} must be a string or an object with a 'content' string")


def _added_token(entry: dict, token_id, path: Path, special_default: bool) -> AddedToken:
    if not isinstance(entry, dict) or not isinstance(entry.get("content"), str) or not entry["content"]:
        raise TokenizerError(f"{path}: added token {token_id!r} needs a non-empty 'content' string")
    if isinstance(token_id, str) and token_id.isdigit():
        token_id = int(token_id)
    if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
        raise TokenizerError(f"{path}: added token {entry['content']!r} has invalid id {token_id!r}")
    if entry.get("single_word"):
        raise TokenizerError(f"{path}: added token {entry['content']!r} uses single_word, which is not supported")
    return AddedToken(
        entry["content"],
        token_id,
        special=bool(entry.get("special", special_default)),
        lstrip=bool(entry.get("lstrip", False)),
        rstrip=bool(entry.get("rstrip", False)),
    )


def _merge_priorities(tokenizer_json: dict | None, pieces: list[str], path: Path) -> list[int]:
    """transformers' merge priority of every piece: its first place in tokenizer.json's merges, else its id."""
    merges = ((tokenizer_json or {}).get("model") or {}).get("merges")
    if not merges:
        return list(range(len(pieces)))
    rank: dict[str, int] = {}
    for i, merge in enumerate(merges):
        pair = merge.split(" ", 1) if isinstance(merge, str) else merge
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise TokenizerError(f"{path}: merge {i} is not a pair of strings: {merge!r}")
        rank.setdefault(pair[0] + pair[1], i)
    # pieces no merge produces (single characters, bytes, controls) are never merge results: any priority works
    return [rank.get(piece, len(merges) + i) for i, piece in enumerate(pieces)]


class Tokenizer:
    """Load with Tokenizer.from_dir(path); encode/decode/stream are the everyday API."""

    def __init__(self, model: bytes, added: Iterable[AddedToken], config: dict, tokenizer_json: dict | None = None,
                 source: str = "tokenizer.model"):
        """model: tokenizer.model's bytes; added: the added tokens; config: tokenizer_config.json's content
        (bos_token, eos_token, unk_token, pad_token, legacy, add_prefix_space are read from it, all of it is
        written back by save); tokenizer_json: tokenizer.json's content if any (its merge order is used)."""
        try:
            plain = sentencepiece.SentencePieceProcessor(model_proto=model)
        except RuntimeError:
            plain = None
        if plain is None or plain.piece_size() == 0:  # sentencepiece accepts an empty file as an empty model
            raise TokenizerError(f"{source}: not a valid SentencePiece model file")
        if _model_type(model) != 2:
            raise TokenizerError(f"{source}: not a BPE SentencePiece model; only BPE (Llama, Mistral) is supported")
        pieces = [plain.id_to_piece(i) for i in range(plain.piece_size())]
        priorities = _merge_priorities(tokenizer_json, pieces, Path(source).with_name("tokenizer.json"))
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=_patched_model(model, priorities))
        self._model = model
        self._tokenizer_json = tokenizer_json
        self._pieces = pieces
        self._piece_bytes = [
            bytes([int(piece[3:5], 16)]) if plain.is_byte(i) else piece.replace(SPACE, " ").encode()
            for i, piece in enumerate(pieces)
        ]
        self._config = dict(config)
        # which chunks get a dummy "▁": see the module docstring
        if self._config.get("add_prefix_space") is False:
            self._dummy_prefix = "never"
        else:
            self._dummy_prefix = "always" if self._config.get("legacy") else "first"

        # the model's own <s>, </s>, <unk> stand in for names the config leaves out
        defaults = {"bos_token": plain.bos_id(), "eos_token": plain.eos_id(), "unk_token": plain.unk_id()}
        for key, default_id in defaults.items():
            if self._config.get(key) is None and default_id >= 0:
                self._config[key] = pieces[default_id]
        if self._config.get("bos_token") is None or self._config.get("eos_token") is None:
            raise TokenizerError(f"{source}: no bos_token/eos_token in the config, and none in tokenizer.model")

        self._added = {token.id: token for token in added}
        # transformers makes the named special tokens added tokens even when no file lists them,
        # so "<s>" written in a text becomes id 1
        named = [(key, self._config.get(key)) for key in NAMED_TOKENS]
        named += [("additional_special_tokens", content) for content in config.get("additional_special_tokens") or []]
        for key, content in named:
            if content is None or any(token.content == content for token in self._added.values()):
                continue
            piece_id = plain.piece_to_id(content)
            if pieces[piece_id] != content:
                raise TokenizerError(
                    f"{source}: {key} {content!r} is neither a piece of tokenizer.model nor an added token"
                )
            self._added[piece_id] = AddedToken(content, piece_id)
        self._index_added()
        self.bos_id: int = self._by_content[self._config["bos_token"]].id
        self.eos_id: int = self._by_content[self._config["eos_token"]].id

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
        """Load tokenizer.model plus the added tokens of tokenizer_config.json (added_tokens_decoder),
        tokenizer.json (added_tokens) and added_tokens.json, whichever exist; special_tokens_map.json names
        bos/eos/unk/pad where tokenizer_config.json does not."""
        root = Path(path)
        model_path = root / "tokenizer.model"
        if not model_path.is_file():
            raise TokenizerError(f"{model_path}: file not found (a SentencePiece tokenizer.model is required)")
        config_path, json_path = root / "tokenizer_config.json", root / "tokenizer.json"
        added_json_path = root / "added_tokens.json"
        config = _read_json(config_path) or {}
        special_map = _read_json(root / "special_tokens_map.json") or {}
        for key in NAMED_TOKENS:
            if config.get(key) is None and special_map.get(key) is not None:
                config[key] = _token_content(special_map[key], root / "special_tokens_map.json", key)
            elif config.get(key) is not None:
                config[key] = _token_content(config[key], config_path, key)
        extra = config.get("additional_special_tokens") or []
        if not isinstance(extra, list):
            raise TokenizerError(f"{config_path}: additional_special_tokens must be a list")
        config["additional_special_tokens"] = [_token_content(t, config_path, "additional_special_tokens") for t in extra]
        if config.get("split_special_tokens"):
            raise TokenizerError(f"{config_path}: split_special_tokens=true is not supported")
        named = {config.get(key) for key in NAMED_TOKENS} | set(config["additional_special_tokens"])

        # lowest precedence first: a later source overrides an earlier one for the same id
        added: dict[int, AddedToken] = {}
        for content, token_id in (_read_json(added_json_path) or {}).items():
            token = _added_token({"content": content}, token_id, added_json_path, special_default=content in named)
            added[token.id] = token
        tokenizer_json = _read_json(json_path)
        entries = (tokenizer_json or {}).get("added_tokens") or []
        if not isinstance(entries, list):
            raise TokenizerError(f"{json_path}: added_tokens must be a list")
        for entry in entries:
            token_id = entry.get("id") if isinstance(entry, dict) else None
            token = _added_token(entry, token_id, json_path, special_default=True)
            added[token.id] = token
        decoder = config.get("added_tokens_decoder") or {}
        if not isinstance(decoder, dict):
            raise TokenizerError(f"{config_path}: added_tokens_decoder must be an object of id -> token")
        for token_id, entry in decoder.items():
            token = _added_token(entry, token_id, config_path, special_default=True)
            added[token.id] = token
        try:
            model = model_path.read_bytes()
        except OSError as e:
            raise TokenizerError(f"{model_path}: cannot read ({e.strerror})") from None
        return cls(model, added.values(), config, tokenizer_json, source=str(model_path))

    def _index_added(self) -> None:
        self._by_content = {token.content: token for token in self._added.values()}
        self.vocab_size: int = max([len(self._pieces), *(token_id + 1 for token_id in self._added)])
        # one capturing group, so split() alternates text and token: [chunk, token, chunk, ..., chunk];
        # longest first, so that the leftmost match is also the longest (as in transformers)
        contents = sorted(self._by_content, key=len, reverse=True)
        self._split_pattern = re.compile("(" + "|".join(map(re.escape, contents)) + ")")

    @property
    def im_start_id(self) -> int | None:
        token = self._by_content.get(CHATML_TOKENS[0])
        return token.id if token else None

    @property
    def im_end_id(self) -> int | None:
        token = self._by_content.get(CHATML_TOKENS[1])
        return token.id if token else None

    def token_to_id(self, token: str) -> int | None:
        if token in self._by_content:
            return self._by_content[token].id
        piece_id = self._sp.piece_to_id(token)
        return piece_id if self._pieces[piece_id] == token else None

    def encode(self, text: str, bos: bool = False, eos: bool = False, special: bool = True) -> list[int]:
        """Token ids of text; BOS/EOS only when asked for, regardless of add_bos_token in the config.

        special=False is for text people wrote: every added token spelled out in it, such as "<s>" or
        "<|im_end|>", stays plain text, so no added or special token id ever comes from it. The text is
        one chunk at the start of a text, as with transformers' split_special_tokens=True (which,
        unlike this, still splits out added tokens not flagged special, such as Dolphin's <|im_start|>).
        """
        parts = self._split_pattern.split(text) if special else [text]
        chunks, tokens = parts[0::2], [self._by_content[content] for content in parts[1::2]]
        for i, token in enumerate(tokens):  # lstrip/rstrip tokens swallow the whitespace next to them
            if token.lstrip:
                chunks[i] = chunks[i].rstrip()
            if token.rstrip:
                chunks[i + 1] = chunks[i + 1].lstrip()
        ids = [self.bos_id] if bos else []
        for i, chunk in enumerate(chunks):
            if i:
                ids.append(tokens[i - 1].id)
            if chunk:  # one call per chunk: sentencepiece's batch call costs more than it saves on chat text
                ids += self._sp.encode(self._with_dummy_prefix(chunk, at_text_start=i == 0))
        if eos:
            ids.append(self.eos_id)
        return ids

    def _with_dummy_prefix(self, chunk: str, at_text_start: bool) -> str:
        # with add_dummy_prefix off, sentencepiece turns a leading ' ' into exactly the '▁' transformers adds
        if chunk[0] in (" ", SPACE) or self._dummy_prefix == "never":
            return chunk
        if self._dummy_prefix == "first" and not at_text_start:
            return chunk
        return " " + chunk

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of ids, without the dummy '▁' prefixes encode added. skip_special drops special added tokens."""
        stream = self.stream(skip_special=skip_special)
        return "".join(stream.add(i) for i in ids) + stream.flush()

    def stream(self, skip_special: bool = False) -> StreamDecoder:
        """Incremental decoder for generation: add() ids one by one, show what it returns, flush() at the end."""
        return StreamDecoder(self, skip_special)

    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        """Make tokens special added tokens (split out of any text); new ones get ids after the current vocab."""
        ids = []
        for content in tokens:
            token_id = self.token_to_id(content)
            if token_id is None:
                token_id = self.vocab_size
            if token_id not in self._added:
                self._added[token_id] = AddedToken(content, token_id)
                self._index_added()
            ids.append(token_id)
        return ids

    def save(self, out_dir: str | os.PathLike) -> None:
        """Write tokenizer.model, tokenizer_config.json, special_tokens_map.json and added_tokens.json (plus
        tokenizer.json if one was loaded: it carries the merge order), each file atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        added = sorted(self._added.values(), key=lambda t: t.id)
        decoder = {
            str(t.id): {"content": t.content, "lstrip": t.lstrip, "normalized": False, "rstrip": t.rstrip,
                        "single_word": False, "special": t.special}
            for t in added
        }
        config = dict(self._config)
        config.pop("tokenizer_file", None)  # a path into somebody's cache that would override our files
        config.setdefault("tokenizer_class", "LlamaTokenizer")
        # LlamaTokenizer defaults to legacy=false, and transformers' own save_pretrained drops the key:
        # spell it out, it decides the ids after every added token
        config["legacy"] = bool(config.get("legacy"))
        config["added_tokens_decoder"] = decoder
        special_map = {
            key: {"content": config[key], "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
            for key in NAMED_TOKENS
            if config.get(key) is not None
        }
        files = {
            "tokenizer.model": self._model,
            "tokenizer_config.json": config,
            "special_tokens_map.json": special_map,
            "added_tokens.json": {t.content: t.id for t in added if t.id >= len(self._pieces)},
        }
        if self._tokenizer_json is not None:
            tokens = [{"id": t.id, **decoder[str(t.id)]} for t in added]
            files["tokenizer.json"] = {**self._tokenizer_json, "added_tokens": tokens}
        for name, content in files.items():
            data = content if isinstance(content, bytes) else json.dumps(content, indent=2, ensure_ascii=False).encode()
            atomic.write_bytes(out / name, data)


class StreamDecoder:
    """Turns ids into text as they arrive. add() returns only text that is final: UTF-8 characters split
    over byte pieces (<0xE2><0x80><0x94>) are held until complete, and the dummy '▁' at the start of a chunk
    is held until the next piece shows whether it was a prefix or a real space."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False):
        self._tok = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._at_text_start = True
        self._start_chunk()

    def _start_chunk(self) -> None:
        scheme = self._tok._dummy_prefix
        has_dummy = scheme == "always" or (scheme == "first" and self._at_text_start)
        # bytes of the chunk's start while it is undecided whether its leading ' ' is the dummy prefix
        self._head: bytearray | None = bytearray() if has_dummy else None

    def add(self, token_id: int) -> str:
        tok = self._tok
        token_id = operator.index(token_id)  # also takes numpy/torch integers, refuses floats
        added = tok._added.get(token_id)
        if added is not None:
            text = self.flush()
            # a BOS in front of the text does not end its "first chunk" (it is not part of the text)
            self._at_text_start = self._at_text_start and token_id == tok.bos_id
            self._start_chunk()
            return text if self._skip_special and added.special else text + added.content
        if not 0 <= token_id < len(tok._piece_bytes):
            raise TokenizerError(f"token id {token_id!r} is not in the vocabulary (size {tok.vocab_size})")
        self._at_text_start = False
        piece = tok._piece_bytes[token_id]
        if self._head is None:
            return self._utf8.decode(piece)
        self._head += piece
        if len(self._head) < 2:
            return ""
        head, self._head = self._head, None
        # encode prepends '▁' only to a chunk that does not start with a space: so ' x' is a dummy prefix,
        # '  x' is a real space
        if head[0] == 0x20 and head[1] != 0x20:
            head = head[1:]
        return self._utf8.decode(bytes(head))

    def flush(self) -> str:
        """The text still held back; call at the end of the stream."""
        # a chunk that is only ' ' had a real space (an empty chunk is never encoded)
        text = self._utf8.decode(bytes(self._head or b""), final=True)
        self._head = None
        return text

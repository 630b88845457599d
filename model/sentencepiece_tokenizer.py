"""The SentencePiece tokenizer (a tokenizer.model) plus added tokens, encoding the way SentencePiece itself does.

Mistral and Dolphin ship a SentencePiece BPE model (tokenizer.model) and, in their JSON files, extra
"added" tokens such as <|im_start|>/<|im_end|>. A text becomes ids like this:

1. Added tokens are cut out of the text first (leftmost, longest match). Tokens flagged lstrip/rstrip
   also swallow the whitespace on that side.
2. Every remaining chunk is encoded by SentencePiece with the model's own normalizer spec: extra
   whitespace removed where the spec says so (llama2.c-style models do), ' ' written '▁', and a dummy
   '▁' prepended when the spec asks for one, also before a chunk that already starts with a space
   (' hello' -> ['▁', '▁hell', 'o']). Merges follow the piece scores ('a  b' -> ['▁a', '▁', '▁b']).
   Which chunks get the dummy '▁' depends on tokenizer_config.json: legacy=true (the default) -> every
   chunk ("always"); legacy=false -> only a chunk at the very start of the text ("first");
   add_prefix_space=false -> none ("never").

That is what the model was trained with: SentencePiece itself, mistral-common, llama.cpp, transformers 4
and transformers 5's SentencePiece conversion (`TokenizersBackend`, which AutoTokenizer uses for a
tokenizer.model whose config names no tokenizer class) all agree. transformers 5's `LlamaTokenizer`
class, which AutoTokenizer picks where tokenizer_config.json names it (Mistral's and Dolphin's do),
differs: it skips the dummy '▁' before a chunk that starts with a space, and without a tokenizer.json
it ranks merges by piece id. twin follows SentencePiece there, and save() names no tokenizer class, so
transformers reads what twin writes back with twin's ids.

BOS/EOS are explicit: encode() adds them only when asked (bos=True, eos=True), whatever the
add_bos_token / add_eos_token flags say. The flags are kept and saved for transformers' sake.

Decoding is the inverse of encoding: the dummy '▁' that encode put before a chunk is removed again.
Only '▁' written in the text itself and whitespace that remove_extra_whitespaces dropped do not survive.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import sentencepiece

from core import atomic
from model.sentencepiece_proto import (
    ADD_DUMMY_PREFIX,
    BPE_MODEL,
    MODEL_TYPE,
    NORMALIZER_SPEC,
    TRAINER_SPEC,
    spec_value,
    without_dummy_prefix,
)
from model.tokenizer import (
    NAMED_TOKENS,
    PREFIX_ADDED,
    SPACE,
    AddedToken,
    TokenizerBase,
    TokenizerError,
    check_eos_is_special,
    read_config,
    read_json_object,
)


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


class SentencePieceTokenizer(TokenizerBase):
    """Load with SentencePieceTokenizer.from_dir(path); encode/decode/stream are the everyday API."""

    def __init__(self, model: bytes, added: Iterable[AddedToken], config: dict, source: str = "tokenizer.model"):
        """model: tokenizer.model's bytes; added: the added tokens; config: tokenizer_config.json's content
        (bos_token, eos_token, unk_token, pad_token, legacy, add_prefix_space are read from it, the rest is
        written back by save)."""
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_proto=model)
        except RuntimeError:
            self._sp = None
        if self._sp is None or self._sp.piece_size() == 0:  # sentencepiece accepts an empty file as an empty model
            raise TokenizerError(f"{source}: not a valid SentencePiece model file")
        if spec_value(model, TRAINER_SPEC, MODEL_TYPE, default=1) != BPE_MODEL:
            raise TokenizerError(f"{source}: not a BPE SentencePiece model; only BPE (Llama, Mistral) is supported")
        # for the chunks that get no dummy prefix (see the module docstring)
        self._sp_without_prefix = sentencepiece.SentencePieceProcessor(model_proto=without_dummy_prefix(model))
        self._model = model
        pieces = [self._sp.id_to_piece(i) for i in range(self._sp.piece_size())]
        self._pieces = pieces
        self._piece_bytes = [
            bytes([int(piece[3:5], 16)]) if self._sp.is_byte(i) else piece.replace(SPACE, " ").encode()
            for i, piece in enumerate(pieces)
        ]
        self._config = dict(config)
        # which chunks get a dummy "▁": see the module docstring
        model_adds_prefix = spec_value(model, NORMALIZER_SPEC, ADD_DUMMY_PREFIX, default=1)
        if self._config.get("add_prefix_space") is False or not model_adds_prefix:
            self._dummy_prefix = "never"
        else:
            # transformers 4 took a missing legacy for true, and so does transformers 5 reading tokenizer.model
            self._dummy_prefix = "always" if self._config.get("legacy", True) else "first"

        # the model's own <s>, </s>, <unk> stand in for names the config leaves out
        defaults = {"bos_token": self._sp.bos_id(), "eos_token": self._sp.eos_id(), "unk_token": self._sp.unk_id()}
        for key, default_id in defaults.items():
            if self._config.get(key) is None and default_id >= 0:
                self._config[key] = pieces[default_id]
        if self._config.get("bos_token") is None or self._config.get("eos_token") is None:
            raise TokenizerError(f"{source}: no bos_token/eos_token in the config, and none in tokenizer.model")

        self._added = {token.id: token for token in added}
        file_special = {piece for i, piece in enumerate(pieces) if self._sp.is_control(i)}
        file_special |= {token.content for token in self._added.values() if token.special}
        # transformers makes the named special tokens added tokens even when no file lists them,
        # so "<s>" written in a text becomes id 1
        named = [(key, self._config.get(key)) for key in NAMED_TOKENS]
        named += [("additional_special_tokens", content) for content in config.get("additional_special_tokens") or []]
        for key, content in named:
            if content is None or any(token.content == content for token in self._added.values()):
                continue
            piece_id = self._sp.piece_to_id(content)
            if pieces[piece_id] != content:
                raise TokenizerError(
                    f"{source}: {key} {content!r} is neither a piece of tokenizer.model nor an added token"
                )
            self._added[piece_id] = AddedToken(content, piece_id)
        check_eos_is_special(self._config["eos_token"], file_special, source)
        self._index_added()
        self.bos_id: int = self._by_content[self._config["bos_token"]].id
        self.eos_id: int = self._by_content[self._config["eos_token"]].id

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> SentencePieceTokenizer:
        """Load tokenizer.model plus the added tokens of tokenizer_config.json (added_tokens_decoder) and
        added_tokens.json, whichever exist; special_tokens_map.json names bos/eos/unk/pad where
        tokenizer_config.json does not. A tokenizer.json is not read: model.checkpoint.load_tokenizer
        gives a folder that has one to model.bpe.BPETokenizer."""
        root = Path(path)
        model_path = root / "tokenizer.model"
        if not model_path.is_file():
            raise TokenizerError(f"{model_path}: file not found (a SentencePiece tokenizer.model is required)")
        config_path = root / "tokenizer_config.json"
        added_json_path = root / "added_tokens.json"
        config = read_config(root)
        named = {config.get(key) for key in NAMED_TOKENS} | set(config["additional_special_tokens"])

        # lowest precedence first: a later source overrides an earlier one for the same id
        added: dict[int, AddedToken] = {}
        for content, token_id in (read_json_object(added_json_path) or {}).items():
            token = _added_token({"content": content}, token_id, added_json_path, special_default=content in named)
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
        return cls(model, added.values(), config, source=str(model_path))

    def _index_added(self) -> None:
        self._by_content = {token.content: token for token in self._added.values()}
        self.vocab_size: int = max([len(self._pieces), *(token_id + 1 for token_id in self._added)])
        # one capturing group, so split() alternates text and token: [chunk, token, chunk, ..., chunk];
        # longest first, so that the leftmost match is also the longest (as in transformers)
        contents = sorted(self._by_content, key=len, reverse=True)
        self._split_pattern = re.compile("(" + "|".join(map(re.escape, contents)) + ")")

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
                ids += self._encode_chunk(chunk, at_text_start=i == 0)
        if eos:
            ids.append(self.eos_id)
        return ids

    def _encode_chunk(self, chunk: str, at_text_start: bool) -> list[int]:
        if self._chunk_prefix(at_text_start):
            return self._sp.encode(chunk)
        return self._sp_without_prefix.encode(chunk)

    def _chunk_prefix(self, at_text_start: bool) -> str | None:
        """How encode marks the start of a chunk of text: with a dummy '▁' always (PREFIX_ADDED) or not at all."""
        if self._dummy_prefix == "always" or (self._dummy_prefix == "first" and at_text_start):
            return PREFIX_ADDED
        return None

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
        """Write tokenizer.model, tokenizer_config.json, special_tokens_map.json and added_tokens.json, each
        file atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        added = sorted(self._added.values(), key=lambda t: t.id)
        decoder = {
            str(t.id): {
                "content": t.content,
                "lstrip": t.lstrip,
                "normalized": False,
                "rstrip": t.rstrip,
                "single_word": False,
                "special": t.special,
            }
            for t in added
        }
        config = dict(self._config)
        config.pop("tokenizer_file", None)  # a path into somebody's cache that would override our files
        # Named, transformers 5's LlamaTokenizer would drop the dummy '▁' before a leading space (see the
        # module docstring); unnamed, transformers reads tokenizer.model the way SentencePiece does.
        config.pop("tokenizer_class", None)
        # transformers' own save_pretrained drops the key and classes disagree on its default: spell it
        # out, it decides the ids after every added token
        config["legacy"] = bool(config.get("legacy", True))
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
        for name, content in files.items():
            data = content if isinstance(content, bytes) else json.dumps(content, indent=2, ensure_ascii=False).encode()
            atomic.write_bytes(out / name, data)

"""Tokenizers from a tokenizer.json or from a GGUF file's metadata, with model.tokenizer.Tokenizer's API.

The bases people pick today ship tokenizer.json: byte-level BPE (Llama 3, Qwen 2.5/3, SmolLM2,
Mistral-Nemo) or SentencePiece-style BPE (Mistral v0.1/v0.3). Hugging Face's `tokenizers` library runs
it, the same code transformers' fast tokenizers run, so encode() gives transformers' ids by construction:
added tokens, normalizer, pre-tokenizer and merges all come from the file. (One exception: where
tokenizer_config.json names transformers 5's LlamaTokenizer, that class swaps the file's rules for its
own Metaspace ones; twin keeps the file's, which for Mistral's tokenizer.json on the Hub are
SentencePiece's, see model/sentencepiece_tokenizer.py.) What twin adds on top:

- BOS/EOS only when asked for. bos_id is the token transformers puts in front of a text (the file's
  post-processor says which), or None where it puts none: SmolLM2 and Qwen have no BOS, and
  encode(bos=True) then adds nothing.
- encode(special=False) encodes text that spells an added token as plain text.
- decode() and stream() work on bytes, so a UTF-8 character split over byte-level tokens comes out
  whole, and they undo the dummy '▁' a SentencePiece-style file puts before each chunk of text.

A GGUF file carries no tokenizer.json: tokenizer_from_gguf() rebuilds one from llama.cpp's metadata
(tokenizer.ggml.model "gpt2": tokens, merges and the pre-tokenizer's name) or, for "llama", a
SentencePiece tokenizer.model from the tokens, scores and token types. Both encode as llama.cpp does.
transformers 5.24's own GGUF reading differs in two places: it splits SmolLM2's text without first
splitting off digits (SmolLM2's tokenizer.json and llama.cpp do), and it reads a "llama" vocabulary
with LlamaTokenizer's rules (see model/sentencepiece_tokenizer.py).
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path

import tokenizers

from core import atomic
from model.sentencepiece_proto import sentencepiece_model
from model.sentencepiece_tokenizer import SentencePieceTokenizer
from model.tokenizer import (
    NAMED_TOKENS,
    PREFIX_ADDED,
    PREFIX_IF_MISSING,
    SPACE,
    AddedToken,
    Tokenizer,
    TokenizerBase,
    TokenizerError,
    check_eos_is_special,
    read_config,
)
from model.weights import MAX_DIMENSION, first_line, is_whole_number, shown


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet backwards: the character that stands for each byte in a token."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]
    return dict(zip(chars, printable + others))


BYTE_DECODER = _byte_decoder()


def component_types(component: dict | None) -> list[dict]:
    """A normalizer, pre-tokenizer or decoder of tokenizer.json as a flat list, a Sequence unpacked."""
    if not component:
        return []
    parts = component.get("normalizers") or component.get("pretokenizers") or component.get("decoders")
    return [leaf for part in parts for leaf in component_types(part)] if parts else [component]


def _piece_bytes(tokenizer_json: dict) -> list[bytes | None]:
    """Each model token's bytes by id (None where no token has the id), as the file's decoder reads them."""
    decoders = {part.get("type") for part in component_types(tokenizer_json.get("decoder"))}
    vocab = tokenizer_json["model"]["vocab"]
    table: list[bytes | None] = [None] * (max(vocab.values(), default=-1) + 1)
    for token, token_id in vocab.items():
        if "ByteLevel" in decoders and all(c in BYTE_DECODER for c in token):
            table[token_id] = bytes(BYTE_DECODER[c] for c in token)
        elif "ByteFallback" in decoders and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            table[token_id] = bytes([int(token[3:5], 16)])
        elif decoders & {"Metaspace", "Replace"}:
            table[token_id] = token.replace(SPACE, " ").encode()
        else:
            table[token_id] = token.encode()
    return table


def _is_rust_panic(error: BaseException) -> bool:
    """A panic inside the tokenizers library, which pyo3 raises as a BaseException (not an Exception),
    so that only a handler that looks for it catches it; its class is not importable."""
    return type(error).__name__ == "PanicException"


def _load_backend(text: str, source: str) -> tokenizers.Tokenizer:
    try:
        return tokenizers.Tokenizer.from_str(text)
    except BaseException as error:  # the Rust side reports any malformed file as a plain Exception, or panics
        if not (isinstance(error, Exception) or _is_rust_panic(error)):
            raise
        raise TokenizerError(
            f"{source}: not a tokenizer.json the tokenizers library can read ({first_line(error)})"
        ) from None


def _check_ids(content: dict, source: str) -> None:
    """Refuse a token id no vocabulary has before a table of that many entries is made (an id of 2^31
    would need 17 GB)."""
    added = content.get("added_tokens")
    ids = [
        *content["model"]["vocab"].values(),
        *(token.get("id") for token in (added if isinstance(added, list) else []) if isinstance(token, dict)),
    ]
    wrong = [token_id for token_id in ids if not (is_whole_number(token_id) and 0 <= token_id < MAX_DIMENSION)]
    if wrong:
        raise TokenizerError(
            f"{source}: token id {shown(wrong[0])} is none a vocabulary can have (whole numbers "
            f"from 0 to {MAX_DIMENSION - 1:,})"
        )


class BPETokenizer(TokenizerBase):
    """Load with BPETokenizer.from_dir(path) or tokenizer_from_gguf(file); the API is model.tokenizer.Tokenizer's,
    the protocol both kinds of tokenizer meet."""

    def __init__(self, tokenizer_json: str, config: dict, source: str = "tokenizer.json"):
        """tokenizer_json: the text of a tokenizer.json; config: tokenizer_config.json's content (bos_token,
        eos_token, unk_token, pad_token and additional_special_tokens are read from it, all of it is written
        back by save)."""
        try:
            content = json.loads(tokenizer_json)
        except (ValueError, RecursionError) as error:  # bad JSON; nesting too deep
            raise TokenizerError(f"{source}: not valid JSON ({first_line(error)})") from None
        model = content.get("model") if isinstance(content, dict) else None
        if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
            raise TokenizerError(
                f"{source}: not a BPE tokenizer.json; only BPE models (Llama, Qwen, Mistral, SmolLM2) are supported"
            )
        _check_ids(content, source)
        self._json = content
        self._backend = _load_backend(tokenizer_json, source)
        self._source = source
        self._config = dict(config)
        self._piece_bytes = _piece_bytes(content)
        if self._config.get("eos_token") is None:
            raise TokenizerError(f"{source}: no eos_token in tokenizer_config.json")
        file_special = {token.content for token in self._backend.get_added_tokens_decoder().values() if token.special}
        check_eos_is_special(self._config["eos_token"], file_special, source)
        # transformers makes the named special tokens added tokens even when the file does not list them
        named = [self._config.get(key) for key in NAMED_TOKENS] + self._config.get("additional_special_tokens", [])
        present = {token.content for token in self._backend.get_added_tokens_decoder().values()}
        missing = [content for content in dict.fromkeys(named) if content and content not in present]
        self._backend.add_special_tokens([tokenizers.AddedToken(c, special=True, normalized=False) for c in missing])
        self._index_added()
        self.eos_id: int = self._backend.token_to_id(self._config["eos_token"])
        self.bos_id: int | None = self._leading_special_id()
        # how encode starts a chunk of text: at the text's start, and after an added token
        self._first_prefix = self._probe_prefix("")

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> BPETokenizer:
        """Load tokenizer.json plus tokenizer_config.json (special_tokens_map.json names bos/eos/unk/pad
        where tokenizer_config.json does not)."""
        root = Path(path)
        json_path = root / "tokenizer.json"
        try:
            text = json_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TokenizerError(f"{json_path}: file not found") from None
        except (OSError, UnicodeDecodeError) as error:
            raise TokenizerError(f"{json_path}: cannot read ({error})") from None
        return cls(text, read_config(root), source=str(json_path))

    def _index_added(self) -> None:
        self._added = {
            token_id: AddedToken(
                token.content, token_id, special=token.special, lstrip=token.lstrip, rstrip=token.rstrip
            )
            for token_id, token in self._backend.get_added_tokens_decoder().items()
        }
        self._by_content = {token.content: token for token in self._added.values()}
        self.vocab_size: int = max([len(self._piece_bytes), *(token_id + 1 for token_id in self._added)])
        # an added token matched in the raw text that takes no whitespace along shows how the chunk after it starts
        plain = [
            t.content
            for t in self._backend.get_added_tokens_decoder().values()
            if not (t.lstrip or t.rstrip or t.normalized)
        ]
        self._later_prefix = self._probe_prefix(plain[0]) if plain else None

    def _encode(
        self, text: str, backend: tokenizers.Tokenizer | None = None, add_special_tokens: bool = False
    ) -> list[int]:
        """The backend's ids for text; a panic of the tokenizers library (a pre-tokenizer regex that
        backtracks without end hits its limit so) becomes a TokenizerError naming the file."""
        try:
            return (backend or self._backend).encode(text, add_special_tokens=add_special_tokens).ids
        except BaseException as error:
            if not _is_rust_panic(error):
                raise
            raise TokenizerError(
                f"{self._source}: the tokenizers library failed on a text of {len(text):,} "
                f"characters ({first_line(error)})"
            ) from None

    def _text_bytes(self, ids: list[int]) -> bytes:
        return b"".join(self._piece_bytes[i] or b"" for i in ids if i < len(self._piece_bytes))

    def _probe_prefix(self, before: str) -> str | None:
        """Whether encode puts a dummy ' ' in front of the text that follows `before` (an added token, or
        nothing for the text's start), always (PREFIX_ADDED) or only if it lacks one (PREFIX_IF_MISSING).
        Asked of the file itself: a Prepend normalizer, Metaspace and ByteLevel's add_prefix_space differ."""
        skip = len(self._encode(before))

        def text_bytes(text: str) -> bytes:
            return self._text_bytes(self._encode(before + text)[skip:])

        if text_bytes("a") != b" a":
            return None
        return PREFIX_ADDED if text_bytes(" a") == b"  a" else PREFIX_IF_MISSING

    def _chunk_prefix(self, at_text_start: bool) -> str | None:
        return self._first_prefix if at_text_start else self._later_prefix

    def _leading_special_id(self) -> int | None:
        """The token transformers puts in front of every text (its add_special_tokens=True), if any: the file's
        post-processor decides, the config's add_bos_token does not (transformers 5 ignores it for a
        tokenizer.json)."""
        plain = self._encode("a")
        full = self._encode("a", add_special_tokens=True)
        start = next((i for i in range(len(full)) if full[i : i + len(plain)] == plain), 0)
        if start > 1:
            raise TokenizerError(
                f"{self._source}: the post-processor puts {start} tokens before the text; twin supports one BOS at most"
            )
        return full[0] if start else None

    @cached_property
    def _plain_backend(self) -> tokenizers.Tokenizer:
        """The tokenizer without its added tokens, for encode(special=False)."""
        return _load_backend(json.dumps({**self._json, "added_tokens": []}), self._source)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def encode(self, text: str, bos: bool = False, eos: bool = False, special: bool = True) -> list[int]:
        """Token ids of text; BOS/EOS only when asked for (bos=True adds nothing where bos_id is None).
        special=False encodes text that spells an added token as plain text."""
        backend = self._backend if special else self._plain_backend
        ids = self._encode(text, backend)
        if bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        """Make tokens special added tokens (split out of any text); new ones get ids after the current vocab."""
        new = [content for content in tokens if content not in self._by_content]
        self._backend.add_special_tokens([tokenizers.AddedToken(c, special=True, normalized=False) for c in new])
        self._index_added()
        return [self._by_content[content].id for content in tokens]

    def save(self, out_dir: str | os.PathLike) -> None:
        """Write tokenizer.json and tokenizer_config.json, each atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        config = dict(self._config)
        config.pop("tokenizer_file", None)  # a path into somebody's cache that would override our files
        # the class that runs tokenizer.json as it is; a model's own class may rebuild parts of it
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config.pop("added_tokens_decoder", None)  # tokenizer.json lists them, and ours may have grown
        atomic.write_bytes(out / "tokenizer.json", self._backend.to_str(pretty=True).encode())
        atomic.write_bytes(out / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False).encode())


# --- GGUF ---

# llama.cpp's token types (tokenizer.ggml.token_type), the same numbers as SentencePiece's piece types
GGUF_CONTROL, GGUF_USER_DEFINED = 3, 4

# The text splits of llama.cpp's pre-tokenizers (tokenizer.ggml.pre), each as tokenizer.json spells it.
# The model's own tokenizer.json has the same ones; a name not here is refused rather than guessed.
GPT2_SPLIT = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _regex_split(regex: str) -> list[dict]:
    return [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {**GPT2_SPLIT, "use_regex": False},
    ]


PRE_TOKENIZERS = {
    "default": [GPT2_SPLIT],
    "gpt-2": [GPT2_SPLIT],
    "smollm": [{"type": "Digits", "individual_digits": True}, GPT2_SPLIT],
    "llama-bpe": _regex_split(LLAMA3_REGEX),
    "llama3": _regex_split(LLAMA3_REGEX),
    "qwen2": _regex_split(QWEN2_REGEX),
}
# llama.cpp takes a piece that is a whole token as it is, merges or not; Llama 3's tokenizer.json says the same
IGNORE_MERGES = {"llama-bpe", "llama3"}


# The tokenizer metadata twin reads, by the type of its value.
GGUF_STRINGS = ("tokenizer.ggml.model", "tokenizer.ggml.pre")
GGUF_FLAGS = ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_space_prefix")
GGUF_IDS = tuple(f"tokenizer.ggml.{name}_token_id" for name in ("bos", "eos", "unknown", "padding"))
GGUF_LISTS = {
    "tokenizer.ggml.tokens": (str,),
    "tokenizer.ggml.merges": (str,),
    "tokenizer.ggml.scores": (int, float),
    "tokenizer.ggml.token_type": (int,),
}


def _gguf_fields(path: Path) -> dict:
    """The tokenizer metadata of a GGUF file, each value checked to be of its type. The arrays are first
    bounded by the model's embedding: a vocabulary is read only once it is known to fit (a file may
    claim millions of tokens)."""
    from model.gguf.file import GGUFFile  # the gguf package takes a second to import: only GGUF input needs it

    file = GGUFFile(path, TokenizerError)
    embedding = file.tensors.get("token_embd.weight")
    # (a file of a vocabulary alone, as llama.cpp keeps for its tests, has no embedding to bound it by)
    most, bound = (
        (embedding.shape[0], "the model's embedding (token_embd.weight) has only {:,} rows")
        if embedding
        else (MAX_DIMENSION, "no vocabulary has more than {:,} tokens")
    )
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        if (file.length(key) or 0) > most:
            raise TokenizerError(f"{path}: {key} has {file.length(key):,} entries, but {bound.format(most)}")
    fields = {
        key: file.value(key) for key in (*GGUF_STRINGS, *GGUF_FLAGS, *GGUF_IDS, *GGUF_LISTS) if key in file.metadata
    }

    def check(keys, wanted: str, fits) -> None:
        for key in keys:
            if key in fields and not fits(fields[key], key):
                raise TokenizerError(f"{path}: {key} must be {wanted}, got {shown(fields[key])}")

    check(GGUF_STRINGS, "a string", lambda value, _: isinstance(value, str))
    check(GGUF_FLAGS, "true or false", lambda value, _: isinstance(value, bool))
    check(GGUF_IDS, "a token id", lambda value, _: is_whole_number(value))
    check(
        GGUF_LISTS,
        "a list of the type llama.cpp writes",
        lambda value, key: isinstance(value, list) and all(isinstance(item, GGUF_LISTS[key]) for item in value),
    )
    return fields


def tokenizer_from_gguf(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer a GGUF file describes: tokenizer.ggml.model "gpt2" as a BPETokenizer, "llama" as a
    SentencePieceTokenizer."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"{path}: file not found")
    fields = _gguf_fields(path)
    kind = fields.get("tokenizer.ggml.model")
    tokens = fields.get("tokenizer.ggml.tokens")
    if kind not in ("gpt2", "llama") or not tokens:
        raise TokenizerError(
            f"{path}: tokenizer.ggml.model is {kind!r}; twin reads 'gpt2' (BPE) and 'llama' "
            "(SentencePiece) tokenizers with their tokens"
        )
    token_types = fields.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    config = {
        key: tokens[fields[f"tokenizer.ggml.{name}_token_id"]]
        for key, name in [
            ("bos_token", "bos"),
            ("eos_token", "eos"),
            ("unk_token", "unknown"),
            ("pad_token", "padding"),
        ]
        if 0 <= fields.get(f"tokenizer.ggml.{name}_token_id", -1) < len(tokens)
    }
    if "tokenizer.chat_template" in fields:
        config["chat_template"] = fields["tokenizer.chat_template"]
    if kind == "llama":
        return _sentencepiece_from_gguf(path, fields, tokens, token_types, config)
    return _bpe_from_gguf(path, fields, tokens, token_types, config)


def _bos_template(bos: str, bos_id: int) -> dict:
    """tokenizer.json's post-processor that puts BOS in front of every text."""
    token, text = {"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}
    pair = [token, text, {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}]
    return {
        "type": "TemplateProcessing",
        "single": [token, text],
        "pair": pair,
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }


def _bpe_from_gguf(path: Path, fields: dict, tokens: list[str], token_types: list[int], config: dict) -> BPETokenizer:
    pre = fields.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise TokenizerError(
            f"{path}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported; twin knows "
            f"{', '.join(sorted(PRE_TOKENIZERS))}"
        )
    merges = fields.get("tokenizer.ggml.merges")
    if not merges:
        raise TokenizerError(f"{path}: a gpt2 tokenizer without tokenizer.ggml.merges")
    # control tokens are special added tokens, user-defined ones plain added tokens, as in llama.cpp
    added = [
        {
            "id": i,
            "content": token,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": token_type == GGUF_CONTROL,
        }
        for i, (token, token_type) in enumerate(zip(tokens, token_types))
        if token_type in (GGUF_CONTROL, GGUF_USER_DEFINED)
    ]
    bos_id = fields.get("tokenizer.ggml.bos_token_id", -1)
    adds_bos = fields.get("tokenizer.ggml.add_bos_token", False) and 0 <= bos_id < len(tokens)
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": PRE_TOKENIZERS[pre]},
        "post_processor": _bos_template(tokens[bos_id], bos_id) if adds_bos else None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": pre in IGNORE_MERGES,
            "vocab": {token: i for i, token in enumerate(tokens)},
            "merges": [merge.split(" ", 1) for merge in merges],
        },
    }
    return BPETokenizer(json.dumps(tokenizer_json, ensure_ascii=False), config, source=str(path))


def _sentencepiece_from_gguf(
    path: Path, fields: dict, tokens: list[str], token_types: list[int], config: dict
) -> SentencePieceTokenizer:
    scores = fields.get("tokenizer.ggml.scores")
    if not scores or len(scores) != len(tokens):
        raise TokenizerError(f"{path}: a llama tokenizer needs one tokenizer.ggml.scores entry per token")

    def token_id(name: str) -> int:
        return fields.get(f"tokenizer.ggml.{name}_token_id", -1)

    model = sentencepiece_model(
        list(zip(tokens, scores, token_types)),
        unk_id=token_id("unknown"),
        bos_id=token_id("bos"),
        eos_id=token_id("eos"),
        pad_id=token_id("padding"),
        add_dummy_prefix=fields.get("tokenizer.ggml.add_space_prefix", True),
    )
    # llama.cpp puts the dummy prefix before the text after every special token, as legacy=true does
    config.update(
        legacy=True,
        add_bos_token=fields.get("tokenizer.ggml.add_bos_token", True),
        add_eos_token=fields.get("tokenizer.ggml.add_eos_token", False),
    )
    control = [
        AddedToken(token, i)
        for i, (token, token_type) in enumerate(zip(tokens, token_types))
        if token_type == GGUF_CONTROL
    ]
    return SentencePieceTokenizer(model, control, config, source=str(path))

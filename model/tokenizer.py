"""What a tokenizer is to its callers (the `Tokenizer` protocol), and what both kinds share: the SentencePiece
tokenizer of a tokenizer.model (model.sentencepiece_tokenizer) and the BPE tokenizer of a tokenizer.json or a
GGUF file's vocabulary (model.bpe). They share their added tokens, the JSON files that name them, decoding,
and the stream decoder that generation shows text with."""

from __future__ import annotations

import codecs
import json
import operator
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from core.errors import TwinError

SPACE = "▁"  # SentencePiece's stand-in for ' '
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")  # tokenizer_config.json keys


class TokenizerError(TwinError):
    """A tokenizer file is missing or malformed, or a token id is out of range."""


@dataclass(frozen=True)
class AddedToken:
    content: str
    id: int
    special: bool = True  # special tokens are dropped by decode(skip_special=True)
    lstrip: bool = False  # swallow the whitespace before the token
    rstrip: bool = False  # swallow the whitespace after the token


@runtime_checkable
class Tokenizer(Protocol):
    """What callers use of a tokenizer, whichever kind it is: SentencePieceTokenizer or BPETokenizer."""

    vocab_size: int
    bos_id: int | None
    eos_id: int

    @property
    def im_start_id(self) -> int | None: ...

    @property
    def im_end_id(self) -> int | None: ...

    def encode(self, text: str, bos: bool = False, eos: bool = False, special: bool = True) -> list[int]: ...

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str: ...

    def stream(self, skip_special: bool = False) -> StreamDecoder: ...

    def token_to_id(self, token: str) -> int | None: ...

    def add_special_tokens(self, tokens: list[str]) -> list[int]: ...

    def save(self, out_dir: str | os.PathLike) -> None: ...


def read_json_object(path: Path) -> dict | None:
    """A JSON file's object; None when there is no such file."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # (nesting too deep)
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


def read_config(root: Path) -> dict:
    """tokenizer_config.json, with bos/eos/unk/pad from special_tokens_map.json where it names none, each
    token and additional_special_tokens as plain strings."""
    config_path = root / "tokenizer_config.json"
    config = read_json_object(config_path) or {}
    special_map = read_json_object(root / "special_tokens_map.json") or {}
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
    return config


def check_eos_is_special(eos_token: str, special: set[str], source: str) -> None:
    """Refuse an eos_token that is not one of the tokenizer files' own special tokens (`special`: their
    special added tokens and control pieces). An ordinary token ('▁the', '>>>', a newline) would stop
    every reply wherever a text spells it, and make the text before it look finished."""
    if eos_token not in special:
        raise TokenizerError(
            f"{source}: eos_token {eos_token!r} is an ordinary token, not one of the tokenizer's "
            "special tokens; replies would end wherever a text spells it"
        )


class TokenizerBase:
    """What both kinds of tokenizer (model.sentencepiece_tokenizer's, and model.bpe's for tokenizer.json) do
    alike once their added tokens are indexed by content in `_by_content`."""

    _by_content: dict[str, AddedToken]

    @property
    def im_start_id(self) -> int | None:
        token = self._by_content.get(CHATML_TOKENS[0])
        return token.id if token else None

    @property
    def im_end_id(self) -> int | None:
        token = self._by_content.get(CHATML_TOKENS[1])
        return token.id if token else None

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of ids, without the dummy '▁' prefixes encode added. skip_special drops special added tokens."""
        stream = self.stream(skip_special=skip_special)
        return "".join(stream.add(i) for i in ids) + stream.flush()

    def stream(self, skip_special: bool = False) -> StreamDecoder:
        """Incremental decoder for generation: add() ids one by one, show what it returns, flush() at the end."""
        return StreamDecoder(self, skip_special)


PREFIX_ADDED = "added"  # encode put a dummy ' ' before the chunk's text
PREFIX_IF_MISSING = "if missing"  # ... unless that text already began with one (Metaspace's way)


class StreamDecoder:
    """Turns ids into text as they arrive. add() returns only text that is final: UTF-8 characters split
    over byte pieces (<0xE2><0x80><0x94>) are held until complete, and with PREFIX_IF_MISSING the space at
    the start of a chunk is held until the next piece shows whether it was the dummy prefix or a real space.

    It serves every tokenizer class that has _added (id -> AddedToken), _piece_bytes (id -> the piece's
    bytes, None for an unused id), bos_id, vocab_size and _chunk_prefix(at_text_start), which says how
    encode marks the start of a chunk of text: PREFIX_ADDED, PREFIX_IF_MISSING or None."""

    def __init__(self, tokenizer, skip_special: bool = False):
        self._tok = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._at_text_start = True
        self._start_chunk()

    def _start_chunk(self) -> None:
        self._prefix = self._tok._chunk_prefix(self._at_text_start)
        # bytes of the chunk's start while it is undecided whether its leading ' ' is the dummy prefix
        self._head: bytearray | None = bytearray() if self._prefix else None

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
        piece = tok._piece_bytes[token_id] if 0 <= token_id < len(tok._piece_bytes) else None
        if piece is None:
            raise TokenizerError(f"token id {token_id!r} is not in the vocabulary (size {tok.vocab_size})")
        self._at_text_start = False
        if self._head is None:
            return self._utf8.decode(piece)
        self._head += piece
        if self._prefix == PREFIX_IF_MISSING and len(self._head) < 2:
            return ""
        head, self._head = self._head, None
        # PREFIX_ADDED: the first ' ' is the dummy one. PREFIX_IF_MISSING: encode adds none to a chunk that
        # starts with a space, so ' x' is a dummy prefix and '  x' a real space
        if head[:1] == b" " and (self._prefix == PREFIX_ADDED or head[1:2] != b" "):
            head = head[1:]
        return self._utf8.decode(bytes(head))

    def flush(self) -> str:
        """The text still held back; call at the end of the stream."""
        # a chunk that is only ' ' had a real space (an empty chunk is never encoded)
        text = self._utf8.decode(bytes(self._head or b""), final=True)
        self._head = None
        return text

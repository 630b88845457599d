"""A tokenizer as GGUF metadata, the way llama.cpp's converter writes it and model.bpe.tokenizer_from_gguf
reads it back: a SentencePiece tokenizer.model as tokenizer.ggml.model "llama" (tokens, scores, token
types), a byte-level BPE tokenizer.json as "gpt2" (tokens, token types, merges and the pre-tokenizer's name).

Rows of the model's embedding past the tokenizer's last token (vocabularies padded to a round size)
get unused placeholder tokens, as llama.cpp needs one token per row. This module reads the tokenizers'
own tables, model-package internals, rather than widening their API for one writer.
"""

import gguf

from core.errors import TwinError
from model.architectures import CHAT_FORMATS
from model.bpe import PRE_TOKENIZERS, BPETokenizer, component_types
from model.sentencepiece_tokenizer import SentencePieceTokenizer
from model.tokenizer import Tokenizer

# The tokens that frame a chat turn stay control tokens whatever their flags: llama.cpp then never makes
# them of people's text, as twin's chat format never does.
CHAT_TOKENS = {
    layout[part]
    for layout in CHAT_FORMATS.values()
    for part in ("header_start", "name_end", "turn_end")
    if layout[part]
}
UNUSED_SCORE = -1000.0  # llama.cpp's score for a token no merge makes


class ExportError(TwinError):
    """A model or tokenizer that cannot be written as GGUF; the message says what."""


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer: Tokenizer, rows: int) -> None:
    """Write the tokenizer's metadata for a model whose embedding has `rows` rows."""
    if tokenizer.vocab_size > rows:
        raise ExportError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {rows} embedding "
            "rows; export the tokenizer the model was trained with"
        )
    # One token per embedding row: the rows the tokenizer leaves empty hold unused placeholders.
    tokens = [f"[PAD{i}]" for i in range(rows)]
    types = [gguf.TokenType.UNUSED] * rows
    if isinstance(tokenizer, BPETokenizer):
        _add_bpe(writer, tokenizer, tokens, types)
    else:
        scores = [UNUSED_SCORE] * rows
        _add_sentencepiece(writer, tokenizer, tokens, types, scores)
        writer.add_token_scores(scores)
    writer.add_token_list(tokens)
    writer.add_token_types([int(token_type) for token_type in types])
    if tokenizer.bos_id is not None:
        writer.add_bos_token_id(tokenizer.bos_id)
    writer.add_eos_token_id(tokenizer.eos_id)
    pad = tokenizer._config.get("pad_token")
    if pad is not None and tokenizer.token_to_id(pad) is not None:
        writer.add_pad_token_id(tokenizer.token_to_id(pad))


def _added_type(token) -> gguf.TokenType:
    return gguf.TokenType.CONTROL if token.special or token.content in CHAT_TOKENS else gguf.TokenType.USER_DEFINED


def _add_sentencepiece(
    writer: gguf.GGUFWriter, tokenizer: SentencePieceTokenizer, tokens: list[str], types: list, scores: list[float]
) -> None:
    sp = tokenizer._sp
    for i in range(sp.piece_size()):
        tokens[i], scores[i] = sp.id_to_piece(i), sp.get_score(i)
        types[i] = (
            gguf.TokenType.UNKNOWN
            if sp.is_unknown(i)
            else gguf.TokenType.CONTROL
            if sp.is_control(i)
            else gguf.TokenType.BYTE
            if sp.is_byte(i)
            else gguf.TokenType.UNUSED
            if sp.is_unused(i)
            else gguf.TokenType.NORMAL
        )
    for token in tokenizer._added.values():  # ChatML's, after the pieces
        if token.id >= sp.piece_size():
            tokens[token.id], types[token.id] = token.content, gguf.TokenType.CONTROL
        elif token.content in CHAT_TOKENS:
            types[token.id] = gguf.TokenType.CONTROL
    writer.add_tokenizer_model("llama")
    if sp.unk_id() >= 0:
        writer.add_unk_token_id(sp.unk_id())
    writer.add_add_bos_token(bool(tokenizer._config.get("add_bos_token", True)))
    writer.add_add_space_prefix(tokenizer._dummy_prefix != "never")


def _add_bpe(writer: gguf.GGUFWriter, tokenizer: BPETokenizer, tokens: list[str], types: list) -> None:
    content = tokenizer._json
    if "ByteLevel" not in {part.get("type") for part in component_types(content.get("decoder"))}:
        raise ExportError(
            f"{tokenizer._source}: not a byte-level BPE tokenizer.json (a SentencePiece-style one?); "
            "GGUF export takes byte-level BPE (Llama 3, Qwen, SmolLM2) or a tokenizer.model"
        )
    for token, token_id in content["model"]["vocab"].items():
        tokens[token_id], types[token_id] = token, gguf.TokenType.NORMAL
    for token in tokenizer._added.values():
        tokens[token.id], types[token.id] = token.content, _added_type(token)
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in content["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer))
    writer.add_token_merges(merges)
    writer.add_add_bos_token(tokenizer.bos_id is not None)


def pre_tokenizer_name(tokenizer: BPETokenizer) -> str:
    """llama.cpp's name (tokenizer.ggml.pre) for how the tokenizer.json splits text, one of those
    model.bpe reads back; ExportError for a split llama.cpp has no name for here."""
    parts = component_types(tokenizer._json.get("pre_tokenizer"))
    for name, known in PRE_TOKENIZERS.items():
        if len(parts) == len(known) and all(
            all(part.get(key) == value for key, value in table.items()) for part, table in zip(parts, known)
        ):
            return name
    raise ExportError(
        f"{tokenizer._source}: its pre-tokenizer is none llama.cpp knows by name here ({', '.join(PRE_TOKENIZERS)})"
    )

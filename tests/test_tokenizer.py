"""model.tokenizer.Tokenizer: the protocol that callers annotate with, met by both kinds of tokenizer."""

import typing

from model.bpe import BPETokenizer
from model.sentencepiece_tokenizer import SentencePieceTokenizer
from model.tokenizer import Tokenizer


def test_both_kinds_of_tokenizer_meet_the_protocol(dolphin_tokenizer, llama3_tokenizer_dir):
    bpe = BPETokenizer.from_dir(llama3_tokenizer_dir)
    assert isinstance(dolphin_tokenizer, SentencePieceTokenizer) and isinstance(dolphin_tokenizer, Tokenizer)
    assert isinstance(bpe, Tokenizer)
    assert not isinstance("not a tokenizer", Tokenizer)


def test_the_protocol_names_what_both_classes_define_with_the_same_parameters():
    members = [name for name in dir(Tokenizer) if not name.startswith("_")]
    assert {"encode", "decode", "stream", "vocab_size", "bos_id", "eos_id", "im_start_id", "im_end_id"} <= set(
        members + list(typing.get_type_hints(Tokenizer))
    )
    for cls in (SentencePieceTokenizer, BPETokenizer):
        for name in members:
            method = getattr(cls, name)
            if callable(method):
                wanted = list(typing.get_type_hints(getattr(Tokenizer, name)))
                assert list(typing.get_type_hints(method)) == wanted, (cls.__name__, name)

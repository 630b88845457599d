"""Tiny models shared by the tests: configs, Hugging Face reference models and checkpoints."""

import functools
from pathlib import Path

import torch

from model.transformer import ModelConfig, Transformer


def tiny_config(**overrides) -> ModelConfig:
    """A Mistral of a few hundred thousand parameters: GQA 4/2, a window shorter than most tests."""
    settings = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        sliding_window=None,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
    )
    settings.update(overrides)
    return ModelConfig(**settings)


# Gemma 3 in small: 5 sliding layers per full one, each kind with its own RoPE base, a window of 5 (shorter
# than the tests' sequences), an attention scale other than the head's and a tied head.
GEMMA3 = tiny_config(
    model_type="gemma3_text",
    num_hidden_layers=6,
    head_dim=32,
    sliding_window=5,
    layer_types=("sliding_attention",) * 5 + ("full_attention",),
    rope_theta=1_000_000.0,
    rope_local_theta=10_000.0,
    query_pre_attn_scalar=24,
    tie_word_embeddings=True,
    rms_norm_eps=1e-6,
    bos_token_id=2,
    eos_token_id=1,
)


def hf_reference(config: ModelConfig, seed: int = 0):
    """A randomly initialised transformers model of this config (its own class for each model_type:
    Mistral, Llama, Qwen2, Qwen3), the oracle the tests compare to."""
    import transformers

    torch.manual_seed(seed)
    hf_config = transformers.AutoConfig.for_model(**config.to_hf(torch.float32), attn_implementation="eager")
    model = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    assert type(model).__name__ == hf_config.architectures[0], (type(model), hf_config.architectures)
    with torch.no_grad():  # the default init leaves norms at one and biases at zero; random ones catch more
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                param.normal_(0, 0.05)
    return model


def save_hf_checkpoint(hf_model, directory: Path, max_shard_size: str | int = "5GB") -> Path:
    hf_model.save_pretrained(directory, max_shard_size=max_shard_size)
    return directory


def random_model(config: ModelConfig, seed: int = 0) -> Transformer:
    """One of our models with random weights (norm weights too), in fp32."""
    torch.manual_seed(seed)
    model = Transformer(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0, 0.05)
    return model.eval()


def assert_chatml_structure(rendered, tokenizer, turns, open_speaker: str | None = None) -> None:
    """The ids `data.chatml.render` made of `turns` have the structure of the tokenizer's chat format
    (ChatML, or Llama 3's headers), whatever the names and messages say: the BOS once where the tokenizer
    has one, then for each turn one header start token (and one name end token where the format has
    one), a header whose name is the speaker's, a body of ">>> " lines, and one turn end token; no other
    added or special token (no EOS, no <unk>). Each turn decodes to its speaker and messages, its trained
    ids to exactly its body and turn end, and nothing else is trained."""
    from data.chatml import chat_format

    layout = chat_format(tokenizer)
    ids = rendered.ids
    added_ids = {token_id for token_id in set(ids) if _is_added_token(tokenizer, token_id)}
    added = [token_id for token_id in ids if token_id in added_ids]
    header_tokens = [layout.header_start_id] + ([layout.name_end_id] if layout.name_end_id is not None else [])
    expected = (
        ([layout.bos_id] if layout.bos_id is not None else [])
        + [*header_tokens, layout.turn_end_id] * len(turns)
        + header_tokens * (open_speaker is not None)
    )
    assert added == expected, f"added tokens {added}, expected {expected}"
    assert ids[:1] == expected[:1]
    # SentencePiece writes a space as "▁": there a "▁" in the text comes back as a space.
    as_decoded = (
        (lambda text: text.replace("▁", " "))
        if tokenizer.decode(tokenizer.encode("a▁", special=False)) == "a "
        else (lambda text: text)
    )
    header_end = layout.name_end + layout.header_newlines
    starts = [index for index, token_id in enumerate(ids) if token_id == layout.header_start_id]
    ends = [index for index, token_id in enumerate(ids) if token_id == layout.turn_end_id]
    trained_in_turns = 0
    for turn, start, end in zip(turns, starts, ends):
        text = tokenizer.decode(ids[start + 1 : end])
        assert text == as_decoded(layout.turn(turn).removeprefix(layout.header_start).removesuffix(layout.turn_end))
        header = as_decoded(turn.speaker) + header_end
        body = text.removeprefix(header)
        assert text.startswith(header) and "\n" not in turn.speaker and body.startswith(">>> ")
        trained = [
            token_id for token_id, learned in zip(ids[start : end + 1], rendered.trained[start : end + 1]) if learned
        ]
        if trained:
            assert tokenizer.decode(trained) == body + layout.turn_end
        trained_in_turns += len(trained)
    assert sum(rendered.trained) == trained_in_turns  # nothing between turns, and no open header, is trained
    if open_speaker is not None:
        assert tokenizer.decode(ids[starts[-1] + 1 :]) == as_decoded(open_speaker) + header_end


def _is_added_token(tokenizer, token_id: int) -> bool:
    """Whether the id is an added or special token: its text becomes that id only when added tokens are
    split out of a text."""
    text = tokenizer.decode([token_id])
    return tokenizer.encode(text) == [token_id] and tokenizer.encode(text, special=False) != [token_id]


# The tokenizers each chat format is checked with: ChatML with a BOS (Dolphin, SentencePiece), ChatML without
# one (Qwen 2.5-style and SmolLM2's, byte-level BPE), Llama 3's header tokens and Gemma's turn tokens.
CHAT_TOKENIZERS = ("dolphin", "qwen2", "llama3", "smollm2", "gemma")


def chat_tokenizer(request, name: str):
    """One of CHAT_TOKENIZERS, from the conftest fixtures (SmolLM2's skips where its GGUF is unavailable).
    Shared by every test: don't add tokens to it."""
    if name in ("qwen2", "llama3"):
        return _tokenizer_from_dir(request.getfixturevalue(f"{name}_tokenizer_dir"))
    return request.getfixturevalue(f"{name}_tokenizer")


@functools.cache
def _tokenizer_from_dir(path: Path):
    from model.bpe import BPETokenizer

    return BPETokenizer.from_dir(path)


def exit_status(main, argv: list) -> int:
    """Run a program's `main` in this process; the status it would exit with."""
    try:
        return main([str(arg) for arg in argv]) or 0
    except SystemExit as exited:
        return exited.code or 0


def fast_gguf_reader():
    """gguf's GGUFReader, which transformers' GGUF loading (the oracle) uses, made fast on large
    vocabularies: it parses metadata through a few numpy-memmap slices per array element, and Gemma 3's
    262,144 tokens, scores and types took 250 s on a busy 2-core machine. Here the same slices come from a
    plain view of the same map, and arrays of numbers are read in one slice each; the fields and tensors are
    what GGUFReader gives (test_gemma3's test_fast_gguf_reader_gives_what_the_gguf_package_gives)."""
    import gguf
    import numpy as np

    class FastGGUFReader(gguf.GGUFReader):
        def _get(self, offset, dtype, count=1, override_order=None):
            if not hasattr(self, "_plain"):
                self._plain = self.data.view(np.ndarray)
            count = int(count)
            itemsize = np.dtype(dtype).itemsize
            array = self._plain[offset : offset + itemsize * count].view(dtype=dtype)[:count]
            return array.view(array.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

        def _get_field_parts(self, orig_offs, raw_type):
            if gguf.GGUFValueType(raw_type) == gguf.GGUFValueType.ARRAY:
                item_type = self._get(orig_offs, np.uint32)
                scalar = self.gguf_scalar_to_np.get(gguf.GGUFValueType(item_type[0]))
                if scalar is not None:  # numbers: one part holding them all, which contents() reads as a list
                    length = self._get(orig_offs + 4, np.uint64)
                    values = self._get(orig_offs + 12, scalar, length[0])
                    return (
                        12 + int(values.nbytes),
                        [item_type, length, values],
                        [2],
                        [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType(item_type[0])],
                    )
            return super()._get_field_parts(orig_offs, raw_type)

    return FastGGUFReader

"""Tiny models shared by the tests: configs, Hugging Face reference models and checkpoints."""
from pathlib import Path

import torch

from model.mistral import Mistral, MistralConfig


def tiny_config(**overrides) -> MistralConfig:
    """A Mistral of a few hundred thousand parameters: GQA 4/2, a window shorter than most tests."""
    settings = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                    sliding_window=None, rms_norm_eps=1e-5, rope_theta=10000.0)
    settings.update(overrides)
    return MistralConfig(**settings)


def hf_reference(config: MistralConfig, seed: int = 0):
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


def random_model(config: MistralConfig, seed: int = 0) -> Mistral:
    """One of our models with random weights (norm weights too), in fp32."""
    torch.manual_seed(seed)
    model = Mistral(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0, 0.05)
    return model.eval()


def assert_chatml_structure(rendered, tokenizer, turns, open_speaker: str | None = None) -> None:
    """The ids `data.chatml.render` made of `turns` have the structure of ChatML, whatever the names and
    messages say: one BOS, then for each turn one <|im_start|>, a header of one line (the speaker's name)
    followed by a ">>> " line, and one <|im_end|>; no other added or special token (no EOS, no <unk>).
    Each turn decodes to its speaker and messages, and its trained ids to exactly its messages."""
    from data.chatml import IM_END, IM_START, format_turn

    ids = rendered.ids
    added_ids = {token_id for token_id in set(ids) if _is_added_token(tokenizer, token_id)}
    added = [token_id for token_id in ids if token_id in added_ids]
    expected = ([tokenizer.bos_id] + [tokenizer.im_start_id, tokenizer.im_end_id] * len(turns)
                + [tokenizer.im_start_id] * (open_speaker is not None))
    assert added == expected, f"added tokens {added}, expected {expected}"
    assert ids[0] == tokenizer.bos_id
    starts = [index for index, token_id in enumerate(ids) if token_id == tokenizer.im_start_id]
    ends = [index for index, token_id in enumerate(ids) if token_id == tokenizer.im_end_id]
    for turn, start, end in zip(turns, starts, ends):
        # SentencePiece writes a space as "▁": a "▁" in the text comes back as a space.
        expected_text = format_turn(turn).removeprefix(IM_START).removesuffix(IM_END).replace("▁", " ")
        header, _, body = tokenizer.decode(ids[start + 1:end]).partition("\n")
        assert header == turn.speaker.replace("▁", " ") and body.startswith(">>> ")
        assert f"{header}\n{body}" == expected_text
        trained = [token_id for token_id, learned in zip(ids[start:end + 1], rendered.trained[start:end + 1])
                   if learned]
        if trained:
            assert tokenizer.decode(trained) == body + IM_END
    if open_speaker is not None:
        assert tokenizer.decode(ids[starts[-1] + 1:]) == open_speaker.replace("▁", " ") + "\n"


def _is_added_token(tokenizer, token_id: int) -> bool:
    """Whether the id is an added or special token: its text becomes that id only when added tokens are
    split out of a text."""
    text = tokenizer.decode([token_id])
    return tokenizer.encode(text) == [token_id] and tokenizer.encode(text, special=False) != [token_id]

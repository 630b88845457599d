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

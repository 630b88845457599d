"""How twin's parameters sit in a GGUF file, for reading and writing alike: the tensor names (each family's
llama.cpp name is its entry's in model.architectures), the order of q and k rows in llama's rotary layout,
and the shift llama.cpp adds to Gemma's norm weights."""

import gguf
import torch

from model.architectures import architecture
from model.transformer import ModelConfig, Transformer

LLAMA3_ROPE_FREQS = "rope_freqs.weight"  # Llama 3's rope scaling, baked into one factor per frequency


def gguf_tensor_names(model: Transformer) -> dict[str, str]:
    """Our parameter name -> its GGUF tensor name, from the gguf package's own table."""
    arch_name = architecture(model.config.model_type).gguf_name  # (a transformers model's config too)
    arch = next(key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == arch_name)
    table = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    return {name: table.get_name(name, try_suffixes=(".weight", ".bias")) for name, _ in model.named_parameters()}


def rotary_heads(config: ModelConfig, parameter: str) -> int | None:
    """The heads whose rows this parameter holds in llama.cpp's interleaved rotary order in a GGUF file:
    q and k (weights and biases) of the llama architecture; None for the rest (qwen's rotate the Hugging
    Face way)."""
    if not config.architecture.gguf_rotary_interleaved:
        return None
    projection = parameter.split(".")[-2]
    return {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}.get(projection)


def permute_rotary_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's q/k row order: within each head, the two rows that rotate together side by side
    (0, d/2, 1, d/2 + 1, ...), where Hugging Face keeps them d/2 apart."""
    return weight.unflatten(0, (heads, 2, -1)).transpose(1, 2).reshape(weight.shape)


def unpermute_rotary_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo permute_rotary_rows: back to Hugging Face's order."""
    return weight.unflatten(0, (heads, -1, 2)).transpose(1, 2).reshape(weight.shape)


def norm_shift(config: ModelConfig, parameter: str) -> float:
    """What a GGUF file adds to this parameter: llama.cpp computes every RMS norm as w * x, so a family whose
    norms scale by (1 + w) (Gemma) has its norm weights stored plus one; 0 for every other parameter."""
    return config.architecture.gguf_norm_shift if parameter.endswith("norm.weight") else 0.0

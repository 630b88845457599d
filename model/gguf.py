"""GGUF files (llama.cpp's format) in: the config from the file's metadata, the weights dequantized by
the `gguf` package, llama.cpp's own reader.

Converting a model to GGUF renames its tensors (`blk.0.attn_q.weight`), and for the llama
architecture (which Mistral's GGUFs use too) it permutes the rows of q and k into llama.cpp's
interleaved rotary layout; loading undoes both, so the result is the model that was converted.
Tensors are dequantized one at a time straight into the target dtype: no float copy of the whole model
ever sits beside it.
"""
import os
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import torch

from model.checkpoint import CheckpointError, assign_parameter
from model.mistral import Mistral, MistralConfig, rotary_frequencies

ARCHITECTURES = ("llama", "qwen2", "qwen3")  # general.architecture values we load; model_type is the same
LLAMA3_ROPE_FREQS = "rope_freqs.weight"
# What llama.cpp's converter assumes of every Llama 3 checkpoint when it bakes rope_freqs.weight.
LLAMA3_BAKED_SCALING = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def load_gguf_model(path: str | os.PathLike, dtype: torch.dtype, device: torch.device | str) -> Mistral:
    """The model in a llama, mistral, qwen2 or qwen3 GGUF file, dequantized to `dtype` on `device`."""
    path = Path(path).expanduser()
    try:
        reader = gguf.GGUFReader(path)
    except Exception as error:  # missing, empty, truncated or not GGUF at all: numpy and gguf raise many kinds
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(error).__name__}: {error})") from None
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    config = read_config(reader, tensors, path)
    with torch.device("meta"):
        model = Mistral(config)
    gguf_names = gguf_tensor_names(model)

    found = set(tensors) - {LLAMA3_ROPE_FREQS}
    missing = [name for name in gguf_names.values() if name not in tensors]
    unexpected = sorted(found - set(gguf_names.values()))
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not fit a {config.model_type} model of its own metadata "
                              f"(missing tensors {missing[:3]}, unexpected {unexpected[:3]})")
    for name, param in model.named_parameters():
        tensor = tensors[gguf_names[name]]
        shape = list(reversed(tensor.shape.tolist()))  # GGUF lists dimensions innermost first
        if shape != list(param.shape):
            raise CheckpointError(f"{path}: tensor {tensor.name} has shape {shape}, the metadata needs "
                                  f"{list(param.shape)}")
        weights = dequantize(tensor, path)
        if config.model_type == "llama" and name.split(".")[-2] in ("q_proj", "k_proj"):
            heads = config.num_attention_heads if "q_proj" in name else config.num_key_value_heads
            weights = unpermute_rotary_rows(weights, heads)
        assign_parameter(model, name, weights.to(device=device, dtype=dtype))
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def read_config(reader: gguf.GGUFReader, tensors: dict, path: Path) -> MistralConfig:
    """The model's config from the GGUF metadata, refused in one line where we cannot compute it."""
    def field(key: str, default=KeyError):
        if key not in reader.fields:
            if default is KeyError:
                raise CheckpointError(f"{path}: metadata {key} is missing")
            return default
        return reader.fields[key].contents()

    arch = field("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported (only "
                              f"{', '.join(map(repr, ARCHITECTURES))}; Mistral's GGUFs are 'llama')")
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{path}: tensor token_embd.weight is missing")
    hidden_size, heads = field(f"{arch}.embedding_length"), field(f"{arch}.attention.head_count")
    head_dim = field(f"{arch}.attention.key_length", hidden_size // heads)
    for key, value in [("rope.dimension_count", field(f"{arch}.rope.dimension_count", head_dim)),
                       ("attention.value_length", field(f"{arch}.attention.value_length", head_dim))]:
        if value != head_dim:
            raise CheckpointError(f"{path}: {arch}.{key} = {value} is not supported (expected the head size, "
                                  f"{head_dim})")
    rope_scaling = field(f"{arch}.rope.scaling.type", "none")
    if rope_scaling != "none":
        raise CheckpointError(f"{path}: {arch}.rope.scaling.type = {rope_scaling!r} is not supported")
    hf = {
        "model_type": arch,
        "vocab_size": int(tensors["token_embd.weight"].shape[-1]),
        "hidden_size": hidden_size,
        "intermediate_size": field(f"{arch}.feed_forward_length"),
        "num_hidden_layers": field(f"{arch}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": field(f"{arch}.attention.head_count_kv", heads),
        "head_dim": head_dim,
        "rms_norm_eps": field(f"{arch}.attention.layer_norm_rms_epsilon"),
        "rope_theta": field(f"{arch}.rope.freq_base", 10000.0),
        "max_position_embeddings": field(f"{arch}.context_length"),
        "attention_bias": "blk.0.attn_output.bias" in tensors,
        "tie_word_embeddings": "output.weight" not in tensors,  # llama.cpp reuses token_embd
        "bos_token_id": field("tokenizer.ggml.bos_token_id", 1),
        "eos_token_id": field("tokenizer.ggml.eos_token_id", 2),
    }
    try:
        config = MistralConfig.from_hf(hf)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: {error}") from None
    if LLAMA3_ROPE_FREQS in tensors:
        config.rope_scaling = llama3_scaling(config, dequantize(tensors[LLAMA3_ROPE_FREQS], path), path)
    return config


def llama3_scaling(config: MistralConfig, rope_factors: torch.Tensor, path: Path) -> dict | None:
    """Llama 3's rope_scaling from the factors llama.cpp bakes into rope_freqs.weight (each frequency
    is divided by its factor), refused unless they are exactly what that scaling gives."""
    factor = rope_factors.max().item()
    scaling = {"rope_type": "llama3", "factor": factor, **LLAMA3_BAKED_SCALING} if factor != 1 else None
    plain = rotary_frequencies(replace(config, rope_scaling=None), torch.device("cpu"))
    scaled = rotary_frequencies(replace(config, rope_scaling=scaling), torch.device("cpu"))
    if rope_factors.shape != plain.shape or not torch.allclose(plain / rope_factors, scaled, rtol=1e-5, atol=0):
        raise CheckpointError(f"{path}: tensor {LLAMA3_ROPE_FREQS} is not Llama 3's rope scaling "
                              f"(factor {factor:g}, {LLAMA3_BAKED_SCALING}); other rope scalings are not supported")
    return scaling


def gguf_tensor_names(model: Mistral) -> dict[str, str]:
    """Our parameter name -> its GGUF tensor name, from the gguf package's own table."""
    arch = next(key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == model.config.model_type)
    table = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    return {name: table.get_name(name, try_suffixes=(".weight", ".bias")) for name, _ in model.named_parameters()}


def dequantize(tensor, path: Path) -> torch.Tensor:
    """One GGUF tensor as fp32, in PyTorch's dimension order."""
    try:
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise CheckpointError(f"{path}: tensor {tensor.name} is {tensor.tensor_type.name}, which the gguf "
                              f"package cannot dequantize") from None
    # Plain F32 comes back as a read-only view of the file's memory map; the model needs its own copy.
    return torch.from_numpy(array if array.flags.writeable else np.array(array)).float()


def unpermute_rotary_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row order: within each head, llama.cpp puts the two rows that rotate
    together side by side (0, d/2, 1, d/2 + 1, ...); Hugging Face keeps them d/2 apart."""
    return weight.unflatten(0, (heads, -1, 2)).transpose(1, 2).reshape(weight.shape)

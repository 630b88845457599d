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

from model.architectures import gguf_architecture
from model.gguf.reader import GGUFReader
from model.gguf.layout import LLAMA3_ROPE_FREQS, gguf_tensor_names, norm_shift, rotary_heads, unpermute_rotary_rows
from model.weights import CheckpointError, assign_parameter
from model.transformer import Transformer, ModelConfig, rotary_frequencies

# What llama.cpp's converter assumes of every Llama 3 checkpoint when it bakes rope_freqs.weight.
LLAMA3_BAKED_SCALING = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def load_gguf_model(path: str | os.PathLike, dtype: torch.dtype, device: torch.device | str) -> Transformer:
    """The model in a GGUF file of an architecture model.architectures lists, dequantized to `dtype` on `device`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        reader = GGUFReader(path)
    except Exception as error:  # missing, empty, truncated or not GGUF at all: numpy and gguf raise many kinds
        raise CheckpointError(f"{path}: not a readable GGUF file, or a damaged or truncated one "
                              f"({type(error).__name__}: {error})") from None
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    config = read_config(reader, tensors, path)
    with torch.device("meta"):
        model = Transformer(config)
    gguf_names = gguf_tensor_names(model)

    found = set(tensors) - {LLAMA3_ROPE_FREQS}
    missing = [name for name in gguf_names.values() if name not in tensors]
    unexpected = sorted(found - set(gguf_names.values()))
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not fit a {config.model_type} model of its own metadata "
                              f"(missing tensors {missing[:3]}, unexpected {unexpected[:3]})")
    for name, param in model.named_parameters():
        shape = list(reversed(tensors[gguf_names[name]].shape.tolist()))  # GGUF lists dimensions innermost first
        if shape != list(param.shape):
            raise CheckpointError(f"{path}: tensor {gguf_names[name]} has shape {shape}, the metadata needs "
                                  f"{list(param.shape)}")

    for name, _ in model.named_parameters():
        weights = dequantize(tensors[gguf_names[name]], path)
        heads = rotary_heads(config, name)
        if heads:
            weights = unpermute_rotary_rows(weights, heads)
        weights -= norm_shift(config, name)
        assign_parameter(model, name, weights.to(device=device, dtype=dtype))
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def read_config(reader: gguf.GGUFReader, tensors: dict, path: Path) -> ModelConfig:
    """The model's config from the GGUF metadata, refused in one line where we cannot compute it."""
    try:
        config = ModelConfig.from_hf(hf_config(reader, tensors))
    except KeyError as error:
        raise CheckpointError(f"{path}: metadata {error.args[0]} is missing") from None
    except (ValueError, TypeError, ArithmeticError) as error:  # (values of the wrong type, too)
        raise CheckpointError(f"{path}: {error}") from None
    if LLAMA3_ROPE_FREQS in tensors:
        config.rope_scaling = llama3_scaling(config, dequantize(tensors[LLAMA3_ROPE_FREQS], path), path)
    return config


def hf_config(reader: gguf.GGUFReader, tensors: dict) -> dict:
    """The GGUF metadata as the Hugging Face `config.json` it was converted from."""
    def metadata(key: str, default=None):
        if key not in reader.fields and default is None:
            raise KeyError(key)
        return reader.fields[key].contents() if key in reader.fields else default

    arch = metadata("general.architecture")
    family = gguf_architecture(arch)
    if "token_embd.weight" not in tensors:
        raise ValueError("tensor token_embd.weight is missing")
    hidden_size, heads = metadata(f"{arch}.embedding_length"), metadata(f"{arch}.attention.head_count")
    head_dim = metadata(f"{arch}.attention.key_length", hidden_size // heads)
    for key in ("rope.dimension_count", "attention.value_length"):
        if metadata(f"{arch}.{key}", head_dim) != head_dim:
            raise ValueError(f"{arch}.{key} = {metadata(f'{arch}.{key}')} is not supported "
                             f"(expected the head size, {head_dim})")
    rope_scaling = metadata(f"{arch}.rope.scaling.type", "none")
    if rope_scaling != "none" and rope_scaling not in family.rope_scalings:
        raise ValueError(f"{arch}.rope.scaling.type = {rope_scaling!r} is not supported")
    hf = {}
    if rope_scaling != "none":
        hf["rope_scaling"] = {"rope_type": rope_scaling, "factor": metadata(f"{arch}.rope.scaling.factor")}
    if family.windows == "layer_types":  # llama.cpp's fixed layout: every gguf_full_layer_every-th layer full
        hf.update(sliding_window=metadata(f"{arch}.attention.sliding_window"),
                  sliding_window_pattern=family.gguf_full_layer_every)
    if family.local_rope:
        hf["rope_local_base_freq"] = metadata(f"{arch}.rope.freq_base_swa", 10000.0)
    scale = metadata(f"{arch}.attention.scale", 0.0)  # absent: llama.cpp's default for the family
    if scale:
        hf["query_pre_attn_scalar"] = scale ** -2
    elif metadata(f"{arch}.block_count") in family.gguf_wide_attention_scale_layers:
        hf["query_pre_attn_scalar"] = hidden_size // heads
    return hf | {
        "model_type": family.model_type,
        "vocab_size": int(tensors["token_embd.weight"].shape[-1]),
        "hidden_size": hidden_size,
        "intermediate_size": metadata(f"{arch}.feed_forward_length"),
        "num_hidden_layers": metadata(f"{arch}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": metadata(f"{arch}.attention.head_count_kv", heads),
        "head_dim": head_dim,
        "rms_norm_eps": metadata(f"{arch}.attention.layer_norm_rms_epsilon"),
        "rope_theta": metadata(f"{arch}.rope.freq_base", 10000.0),
        "max_position_embeddings": metadata(f"{arch}.context_length"),
        "attention_bias": "blk.0.attn_output.bias" in tensors,
        "tie_word_embeddings": "output.weight" not in tensors,  # llama.cpp reuses token_embd
        "bos_token_id": metadata("tokenizer.ggml.bos_token_id", 1),
        "eos_token_id": metadata("tokenizer.ggml.eos_token_id", 2),
    }


def llama3_scaling(config: ModelConfig, rope_factors: torch.Tensor, path: Path) -> dict | None:
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


def dequantize(tensor, path: Path) -> torch.Tensor:
    """One GGUF tensor as fp32, in PyTorch's dimension order."""
    try:
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise CheckpointError(f"{path}: tensor {tensor.name} is {tensor.tensor_type.name}, which the gguf "
                              f"package cannot dequantize") from None
    # Plain F32 comes back as a read-only view of the file's memory map; the model needs its own copy.
    return torch.from_numpy(array if array.flags.writeable else np.array(array)).float()

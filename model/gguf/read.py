"""GGUF files (llama.cpp's format) in: the config from the file's metadata, the weights dequantized by
the `gguf` package. model.gguf.file reads the file itself, every range checked.

The metadata is read under config.json's names and passes config.json's checks (model.weights), and
the layer count is checked against the tensors, before any model is built. Converting a model to GGUF
renames its tensors (`blk.0.attn_q.weight`), and for the llama architecture (which Mistral's GGUFs use
too) it permutes the rows of q and k into llama.cpp's interleaved rotary layout; loading undoes both, so
the result is the model that was converted. Tensors are dequantized one at a time straight into the
target dtype: no float copy of the whole model ever sits beside it.
"""

import os
import re
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import torch

from model.architectures import UnsupportedArchitecture, gguf_architecture
from model.gguf.file import GGUFFile, GGUFTensor
from model.gguf.layout import LLAMA3_ROPE_FREQS, gguf_tensor_names, norm_shift, rotary_heads, unpermute_rotary_rows
from model.transformer import ModelConfig, Transformer, rotary_frequencies
from model.weights import CheckpointError, assign_parameter, check_config_fields, empty_model

# What llama.cpp's converter assumes of every Llama 3 checkpoint when it bakes rope_freqs.weight.
LLAMA3_BAKED_SCALING = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
EMBEDDING = "token_embd.weight"
BLOCK = re.compile(r"blk\.(\d+)\.")
# config.json's field -> the metadata key llama.cpp's converter writes it to ({arch}: the architecture).
METADATA_KEYS = {
    "hidden_size": "{arch}.embedding_length",
    "intermediate_size": "{arch}.feed_forward_length",
    "num_hidden_layers": "{arch}.block_count",
    "num_attention_heads": "{arch}.attention.head_count",
    "num_key_value_heads": "{arch}.attention.head_count_kv",
    "head_dim": "{arch}.attention.key_length",
    "rms_norm_eps": "{arch}.attention.layer_norm_rms_epsilon",
    "rope_theta": "{arch}.rope.freq_base",
    "max_position_embeddings": "{arch}.context_length",
    "bos_token_id": "tokenizer.ggml.bos_token_id",
    "eos_token_id": "tokenizer.ggml.eos_token_id",
}
OPTIONAL_KEYS = {"num_key_value_heads", "head_dim", "rope_theta", "bos_token_id", "eos_token_id"}
DEFAULTS = {"rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2}


def load_gguf_model(path: str | os.PathLike, dtype: torch.dtype, device: torch.device | str) -> Transformer:
    """The model in a GGUF file of an architecture model.architectures lists, dequantized to `dtype` on `device`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    file = GGUFFile(path)
    tensors = file.tensors
    config = read_config(file)
    model = empty_model(config)
    gguf_names = gguf_tensor_names(model)

    found = set(tensors) - {LLAMA3_ROPE_FREQS}
    missing = [name for name in gguf_names.values() if name not in tensors]
    unexpected = sorted(found - set(gguf_names.values()))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not fit a {config.model_type} model of its own metadata "
            f"(missing tensors {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, param in model.named_parameters():
        shape = tensors[gguf_names[name]].shape
        if shape != list(param.shape):
            raise CheckpointError(
                f"{path}: tensor {gguf_names[name]} has shape {shape}, the metadata needs {list(param.shape)}"
            )

    for name, _ in model.named_parameters():
        weights = dequantize(file, tensors[gguf_names[name]])
        heads = rotary_heads(config, name)
        if heads:
            weights = unpermute_rotary_rows(weights, heads)
        weights -= norm_shift(config, name)
        assign_parameter(model, name, weights.to(device=device, dtype=dtype))
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def read_config(file: GGUFFile) -> ModelConfig:
    """The model's config from the GGUF metadata, refused in one line where we cannot compute it."""
    hf, spelled = hf_config(file)
    layers = {match.group(1) for name in file.tensors if (match := BLOCK.match(name))}
    check_config_fields(hf, file.path, len(layers), spelled)
    arch = file.value("general.architecture")
    head_dim = hf.setdefault("head_dim", hf["hidden_size"] // hf["num_attention_heads"])
    for key in ("rope.dimension_count", "attention.value_length"):
        if file.value(f"{arch}.{key}", head_dim) != head_dim:
            raise CheckpointError(
                f"{file.path}: {arch}.{key} = {file.value(f'{arch}.{key}')!r} is not supported "
                f"(expected the head size, {head_dim})"
            )
    try:
        config = ModelConfig.from_hf(hf)
    except (ValueError, TypeError, ArithmeticError) as error:
        raise CheckpointError(f"{file.path}: {error}") from None
    if LLAMA3_ROPE_FREQS in file.tensors:
        config.rope_scaling = llama3_scaling(config, dequantize(file, file.tensors[LLAMA3_ROPE_FREQS]), file.path)
    return config


def hf_config(file: GGUFFile) -> tuple[dict, dict[str, str]]:
    """The GGUF metadata as the Hugging Face `config.json` it was converted from, unchecked, and each
    field's metadata key (for messages)."""

    def refuse(reason: str):
        raise CheckpointError(f"{file.path}: {reason}")

    arch = file.value("general.architecture")
    if arch is None:
        refuse("metadata general.architecture is missing")
    try:
        family = gguf_architecture(arch)
    except UnsupportedArchitecture as error:
        refuse(str(error))
    if EMBEDDING not in file.tensors:
        refuse(f"tensor {EMBEDDING} is missing")
    spelled = {field: key.format(arch=arch) for field, key in METADATA_KEYS.items()}
    spelled["vocab_size"] = f"the rows of {EMBEDDING}"
    hf = {"model_type": family.model_type, "vocab_size": file.tensors[EMBEDDING].shape[0]}
    for field, key in spelled.items():
        if field in hf:
            continue
        if key not in file.metadata and field not in OPTIONAL_KEYS:
            refuse(f"metadata {key} is missing")
        if key in file.metadata or field in DEFAULTS:
            hf[field] = file.value(key, DEFAULTS.get(field))

    def required(key: str):
        if key not in file.metadata:
            refuse(f"metadata {key} is missing")
        return file.value(key)

    rope_scaling = file.value(f"{arch}.rope.scaling.type", "none")
    if rope_scaling != "none" and rope_scaling not in family.rope_scalings:
        refuse(f"{arch}.rope.scaling.type = {rope_scaling!r} is not supported")
    if rope_scaling != "none":
        hf["rope_scaling"] = {"rope_type": rope_scaling, "factor": required(f"{arch}.rope.scaling.factor")}
    if family.windows == "layer_types":  # llama.cpp's fixed layout: every gguf_full_layer_every-th layer full
        hf.update(
            sliding_window=required(f"{arch}.attention.sliding_window"),
            sliding_window_pattern=family.gguf_full_layer_every,
        )
        spelled["sliding_window"] = f"{arch}.attention.sliding_window"
    if family.local_rope:
        hf["rope_local_base_freq"] = file.value(f"{arch}.rope.freq_base_swa", 10000.0)
    scale = file.value(f"{arch}.attention.scale", 0.0)  # absent: llama.cpp's default for the family
    if scale:
        hf["query_pre_attn_scalar"] = scale**-2
    elif hf["num_hidden_layers"] in family.gguf_wide_attention_scale_layers:
        hf["query_pre_attn_scalar"] = hf["hidden_size"] // hf["num_attention_heads"]
    hf["attention_bias"] = "blk.0.attn_output.bias" in file.tensors
    hf["tie_word_embeddings"] = "output.weight" not in file.tensors  # llama.cpp reuses token_embd
    return hf, spelled


def llama3_scaling(config: ModelConfig, rope_factors: torch.Tensor, path: Path) -> dict | None:
    """Llama 3's rope_scaling from the factors llama.cpp bakes into rope_freqs.weight (each frequency
    is divided by its factor), refused unless they are exactly what that scaling gives."""
    factor = rope_factors.max().item()
    scaling = {"rope_type": "llama3", "factor": factor, **LLAMA3_BAKED_SCALING} if factor != 1 else None
    plain = rotary_frequencies(replace(config, rope_scaling=None), torch.device("cpu"))
    scaled = rotary_frequencies(replace(config, rope_scaling=scaling), torch.device("cpu"))
    if rope_factors.shape != plain.shape or not torch.allclose(plain / rope_factors, scaled, rtol=1e-5, atol=0):
        raise CheckpointError(
            f"{path}: tensor {LLAMA3_ROPE_FREQS} is not Llama 3's rope scaling "
            f"(factor {factor:g}, {LLAMA3_BAKED_SCALING}); other rope scalings are not supported"
        )
    return scaling


def dequantize(file: GGUFFile, tensor: GGUFTensor) -> torch.Tensor:
    """One GGUF tensor as fp32, in PyTorch's dimension order."""
    raw = file.data(tensor)
    if tensor.tensor_type.name in BLOCKS:
        return dequantize_blocks(raw, tensor.tensor_type.name)
    try:
        array = gguf.quants.dequantize(raw, tensor.tensor_type)
    except NotImplementedError:
        raise CheckpointError(
            f"{file.path}: tensor {tensor.name} is {tensor.tensor_type.name}, which the gguf package cannot dequantize"
        ) from None
    # Plain F32 comes back as a read-only view of the file's memory map; the model needs its own copy.
    return torch.from_numpy(array if array.flags.writeable else np.array(array)).float()


# The commonest quantizations, dequantized by torch: the gguf package's numpy code took 1.2 of the 1.5 CPU
# seconds of loading SmolLM2-135M's Q4_1 file. Each block of 32 weights: an f16 scale d (and for Q4_1 an
# f16 minimum m), then the 32 quants: 4-bit ones two to a byte, the first 16 in the low halves.
BLOCKS = {"Q4_0": 2, "Q4_1": 4, "Q8_0": 2}  # type -> bytes before the quants


def dequantize_blocks(raw: np.ndarray, kind: str) -> torch.Tensor:
    """Q4_0 (d * (q - 8)), Q4_1 (d * q + m) and Q8_0 (d * q) rows of blocks as fp32, as gguf.quants computes them."""
    head = BLOCKS[kind]
    blocks = torch.from_numpy(np.array(raw)).reshape(-1, head + (32 if kind == "Q8_0" else 16))
    scale = blocks[:, :2].contiguous().view(torch.float16).float()
    quants = blocks[:, head:]
    if kind == "Q8_0":
        values = scale * quants.contiguous().view(torch.int8).float()
    elif kind == "Q4_0":
        values = scale * (torch.cat([quants & 0x0F, quants >> 4], dim=1).float() - 8)
    else:
        minimum = blocks[:, 2:4].contiguous().view(torch.float16).float()
        values = scale * torch.cat([quants & 0x0F, quants >> 4], dim=1).float() + minimum
    return values.reshape(*raw.shape[:-1], -1)

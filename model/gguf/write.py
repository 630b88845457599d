"""GGUF files out: a model, its tokenizer and a chat template in one file that llama.cpp, Ollama and
LM Studio run, written as llama.cpp's own converter (convert_hf_to_gguf.py) writes it.

Weights are renamed to GGUF's names (model.gguf.layout), llama's q/k rows permuted into llama.cpp's
rotary order and Gemma's norm weights shifted by one; 2-D weights are stored as f16 or q8_0 (a row length that q8_0's 32-value blocks do not
divide stays f16), norms and biases as f32. A tied LM head is left out: llama.cpp reuses token_embd.
"""

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import gguf
import numpy as np
import torch
from tqdm import tqdm

from core import atomic
from model.gguf.layout import LLAMA3_ROPE_FREQS, gguf_tensor_names, norm_shift, permute_rotary_rows, rotary_heads
from model.gguf.vocab import add_tokenizer
from model.tokenizer import Tokenizer
from model.transformer import ModelConfig, Transformer, rotary_frequencies

Q = gguf.GGMLQuantizationType
# --type -> how 2-D weights are stored, and the file type llama.cpp reports
TYPES = {"f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16), "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)}


def write_gguf(
    model: Transformer,
    tokenizer: Tokenizer,
    path: str | os.PathLike,
    type_name: str,
    name: str,
    chat_template: str,
) -> None:
    """Write the model as a GGUF file at `path` (atomically), its 2-D weights in `type_name` (f16, q8_0),
    with the tokenizer and the Jinja `chat_template`, and a progress bar on stderr.

    Tensors are converted and written one at a time, after a header that announces each one's shape and
    size: the file's weights are never all in memory beside the model's."""
    config = model.config
    writer = gguf.GGUFWriter(None, config.architecture.gguf_name)
    qtype, file_type = TYPES[type_name]
    writer.add_name(name)
    writer.add_file_type(file_type)
    if qtype == Q.Q8_0:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_hyperparameters(writer, config)
    add_tokenizer(writer, tokenizer, config.vocab_size)
    writer.add_chat_template(chat_template)
    write_tensors(writer, tensor_plan(model, qtype), path)


def write_tensors(writer: gguf.GGUFWriter, tensors: list["PlannedTensor"], path: str | os.PathLike) -> None:
    """Write the file at `path` (atomically): the writer's metadata, then the tensors one at a time, after
    a header that announces each one's shape and size, with a progress bar on stderr."""
    for tensor in tensors:
        writer.add_tensor_info(tensor.name, tensor.shape, tensor.dtype, tensor.nbytes, tensor.raw_dtype)
    with atomic.file(path, make_parents=False) as file:
        # GGUFWriter opens the file it is given by name; the atomic one, not yet in place, goes in its stead
        writer.fout, writer.state = [file], gguf.WriterState.EMPTY
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in tqdm(tensors, desc="writing tensors", unit="tensor", leave=False, disable=None):
            writer.write_tensor_data(tensor.convert())


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of the file: its GGUF name, how it is stored, and how to make its data when its turn comes."""

    name: str
    shape: tuple[int, ...]  # as stored: a quantized tensor's in bytes
    dtype: np.dtype
    raw_dtype: Q | None
    convert: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def add_hyperparameters(writer: gguf.GGUFWriter, config: ModelConfig) -> None:
    """The `{arch}.*` keys llama.cpp builds the model from, as its converter writes them."""
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if config.sliding_window is not None and config.max_window_layers == 0:
        writer.add_sliding_window(config.sliding_window)  # (llama.cpp's llama and qwen2 attend fully all the same)
    if config.rope_local_theta is not None:
        writer.add_rope_freq_base_swa(config.rope_local_theta)
    if config.rope_scaling is not None and config.rope_scaling["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(config.rope_scaling["factor"])
    if config.query_pre_attn_scalar is not None:  # (llama.cpp derives Gemma's; twin's reader takes this)
        writer.add_attention_scale(config.attention_scale)


def tensor_plan(model: Transformer, qtype: Q) -> list[PlannedTensor]:
    """Every parameter under its GGUF name (a tied head once, as the embedding): 1-D ones in f32, 2-D ones
    in `qtype` (f16 where a row does not split into q8_0's blocks); and Llama 3's rope scaling as llama.cpp
    bakes it, one divisor per rotary frequency."""
    config = model.config
    names = gguf_tensor_names(model)
    plan = [
        planned_tensor(
            names[name],
            tuple(param.shape),
            qtype,
            partial(gguf_weights, param, rotary_heads(config, name), norm_shift(config, name)),
        )
        for name, param in model.named_parameters()
    ]
    if config.rope_scaling is not None:
        plain = rotary_frequencies(replace(config, rope_scaling=None), torch.device("cpu"))
        divisors = (plain / rotary_frequencies(config, torch.device("cpu"))).numpy()
        plan.append(PlannedTensor(LLAMA3_ROPE_FREQS, divisors.shape, np.dtype(np.float32), None, lambda: divisors))
    return plan


def planned_tensor(name: str, shape: tuple[int, ...], qtype: Q, convert: Callable[[], np.ndarray]) -> PlannedTensor:
    """A tensor whose f32 data `convert` makes: 1-D in f32, 2-D in `qtype` (f16 where a row does not split
    into q8_0's blocks of 32)."""
    if len(shape) == 1:
        return PlannedTensor(name, shape, np.dtype(np.float32), None, convert)
    if qtype == Q.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
        return PlannedTensor(
            name,
            gguf.quant_shape_to_byte_shape(shape, Q.Q8_0),
            np.dtype(np.uint8),
            Q.Q8_0,
            lambda: gguf.quants.quantize(convert(), Q.Q8_0),
        )
    return PlannedTensor(name, shape, np.dtype(np.float16), None, lambda: convert().astype(np.float16))


def gguf_weights(param: torch.Tensor, heads: int | None, shift: float) -> np.ndarray:
    """A parameter as f32 numpy, q/k rows in llama.cpp's rotary order, plus `shift` (norm_shift's)."""
    weights = param.detach().float().cpu()
    if shift:
        weights = weights + shift
    if heads:
        weights = permute_rotary_rows(weights, heads)
    return weights.numpy()

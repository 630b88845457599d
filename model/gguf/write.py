"""GGUF files out: a model, its tokenizer and a chat template in one file that llama.cpp, Ollama and
LM Studio run, written as llama.cpp's own converter (convert_hf_to_gguf.py) writes it.

Weights are renamed to GGUF's names (model.gguf.layout) and llama's q/k rows permuted into llama.cpp's
rotary order; 2-D weights are stored as f16 or q8_0 (a row length that q8_0's 32-value blocks do not
divide stays f16), norms and biases as f32. A tied LM head is left out: llama.cpp reuses token_embd.
"""
import os
import sys
from dataclasses import replace

import gguf
import numpy as np
import torch

from core import atomic
from model.bpe import BPETokenizer
from model.gguf.layout import (GGUF_ARCHITECTURES, LLAMA3_ROPE_FREQS, gguf_tensor_names, permute_rotary_rows,
                               rotary_heads)
from model.gguf.vocab import add_tokenizer
from model.tokenizer import Tokenizer
from model.transformer import ModelConfig, Transformer, rotary_frequencies

Q = gguf.GGMLQuantizationType
# --type -> how 2-D weights are stored, and the file type llama.cpp reports
TYPES = {"f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16), "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)}


def write_gguf(model: Transformer, tokenizer: Tokenizer | BPETokenizer, path: str | os.PathLike, type_name: str,
               name: str, chat_template: str) -> None:
    """Write the model as a GGUF file at `path` (atomically), its 2-D weights in `type_name` (f16, q8_0),
    with the tokenizer and the Jinja `chat_template`, and a progress bar on stderr."""
    config = model.config
    writer = gguf.GGUFWriter(None, GGUF_ARCHITECTURES[config.model_type])
    qtype, file_type = TYPES[type_name]
    writer.add_name(name)
    writer.add_file_type(file_type)
    if qtype == Q.Q8_0:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_hyperparameters(writer, config)
    add_tokenizer(writer, tokenizer, config.vocab_size)
    writer.add_chat_template(chat_template)
    add_tensors(writer, model, qtype)
    with atomic.file(path, make_parents=False) as file:
        # GGUFWriter opens the file it is given by name; the atomic one, not yet in place, goes in its stead
        writer.fout, writer.state = [file], gguf.WriterState.EMPTY
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=sys.stderr.isatty())


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


def add_tensors(writer: gguf.GGUFWriter, model: Transformer, qtype: Q) -> None:
    """Every parameter under its GGUF name (a tied head once, as the embedding), converted one at a time,
    and Llama 3's rope scaling as llama.cpp bakes it: one divisor per rotary frequency."""
    config = model.config
    names = gguf_tensor_names(model)
    for name, param in model.named_parameters():
        weights = param.detach().float().cpu()
        heads = rotary_heads(config, name)
        if heads:
            weights = permute_rotary_rows(weights, heads)
        array = weights.numpy()
        if array.ndim == 1:
            writer.add_tensor(names[name], array)
        elif qtype == Q.Q8_0 and array.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
            writer.add_tensor(names[name], gguf.quants.quantize(array, Q.Q8_0), raw_dtype=Q.Q8_0)
        else:
            writer.add_tensor(names[name], array.astype(np.float16))
    if config.rope_scaling is not None:
        plain = rotary_frequencies(replace(config, rope_scaling=None), torch.device("cpu"))
        writer.add_tensor(LLAMA3_ROPE_FREQS, (plain / rotary_frequencies(config, torch.device("cpu"))).numpy())


"""Hugging Face checkpoints in and out: a model folder or a Hub repo id (model.hub) as a `Transformer`
and its tokenizer, and a model written back as a folder that transformers loads.

Loading builds the model on the meta device and reads each tensor (model.weight_files) straight into its
final dtype and device, so the weights are never in memory twice. config.json is checked field by field
and against the weight files' headers, so that an absurd size is refused before any model is built.
"""

import contextlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from core import atomic
from model import shelf
from model.architectures import text_config
from model.bpe import BPETokenizer, tokenizer_from_gguf
from model.hub import resolve_checkpoint
from model.nf4 import QUANTIZED_WEIGHT, quantize_model, quantize_weight
from model.sentencepiece_tokenizer import SentencePieceTokenizer
from model.tokenizer import Tokenizer
from model.transformer import ModelConfig, Transformer
from model.weight_files import CheckpointReader
from model.weights import CheckpointError, assign_parameter, check_config_fields, empty_model, first_line, read_json

LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.")


def load_config(directory: Path) -> ModelConfig:
    """config.json, its fields checked before the model class reads them and its layer count checked
    against the weight files, so that an absurd config is refused before any model is built."""
    config_file = directory / "config.json"
    hf = text_config(read_json(config_file))  # (a multimodal model's text part)
    layers = {match.group(1) for name in CheckpointReader(directory).shapes() if (match := LAYER_KEY.match(name))}
    check_config_fields(hf, config_file, len(layers))
    try:
        return ModelConfig.from_hf(hf)
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{config_file}: {first_line(error)}") from None


def load_model(
    path_or_repo: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    quantize: str | None = None,
) -> Transformer:
    """A Hugging Face checkpoint (Mistral, Llama, Qwen2, Qwen3) or a GGUF file as a `Transformer` in `dtype`
    on `device`. `quantize="nf4"` stores the decoder layers' linear weights in 4 bits (model.nf4), each
    as soon as it is read, so the model is never whole in `dtype`; a GGUF file's are quantized once it is
    loaded, from its own quantization."""
    if quantize not in (None, "nf4"):
        raise ValueError(f"unknown quantization {quantize!r}; twin stores weights in nf4 or not at all")
    path_or_repo = shelf.resolve(path_or_repo)
    if str(path_or_repo).endswith(".gguf"):
        from model.gguf import load_gguf_model  # the gguf package takes a second to import: only GGUF needs it

        model = load_gguf_model(path_or_repo, dtype, device)
        if quantize:
            quantize_model(model, path_or_repo)
        return model
    directory = resolve_checkpoint(path_or_repo)
    config = load_config(directory)
    model = empty_model(config)
    expected = {name: p.shape for name, p in model.named_parameters()}  # a tied head appears once
    reader = CheckpointReader(directory)
    reader.check(expected)
    for name in expected:  # no local name holds a tensor: each full-precision weight goes once it is quantized
        if quantize and QUANTIZED_WEIGHT.fullmatch(name):
            quantize_weight(model, name, reader.read(name).to(device=device, dtype=dtype), reader.file_of(name))
        else:
            assign_parameter(model, name, reader.read(name).to(device=device, dtype=dtype))
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def check_finite(model: nn.Module, source: str | os.PathLike) -> None:
    """Refuse a model whose weights hold NaN or infinity, naming the first such tensor: it would
    write nothing but garbage. One summing pass over the weights (135M parameters: 30 ms in fp32,
    110 ms in bf16 on one CPU core), paid once after loading."""
    for name, param in model.named_parameters():
        # A non-finite element makes the sum non-finite; only then is every element looked at, so
        # that a sum that merely overflows is not taken for one.
        if not torch.isfinite(param.detach().sum(dtype=torch.float32)) and not torch.isfinite(param).all():
            raise CheckpointError(f"{source}: weight {name} holds NaN or infinite values")


def load_tokenizer(path_or_repo: str | os.PathLike) -> Tokenizer:
    """The checkpoint's tokenizer, checked to fit the model's embedding table; a .gguf file's from its metadata.

    A folder with a tokenizer.json is read from it, as transformers' fast tokenizers do (for Mistral v0.1
    it holds the same rules as tokenizer.model), otherwise from tokenizer.model."""
    path_or_repo = shelf.resolve(path_or_repo)
    if str(path_or_repo).endswith(".gguf"):
        return tokenizer_from_gguf(path_or_repo)
    directory = resolve_checkpoint(path_or_repo)
    if (directory / "tokenizer.json").is_file():
        tokenizer = BPETokenizer.from_dir(directory)
    else:
        tokenizer = SentencePieceTokenizer.from_dir(directory)
    config_file = directory / "config.json"
    if config_file.exists():
        vocab_size = load_config(directory).vocab_size
        if tokenizer.vocab_size > vocab_size:
            raise CheckpointError(
                f"{directory}: the tokenizer has ids up to {tokenizer.vocab_size - 1}, "
                f"but the model's embedding has only {vocab_size} rows"
            )
    return tokenizer


def save_model(
    model: Transformer,
    out_dir: str | os.PathLike,
    tokenizer: Tokenizer | None = None,
    dtype: torch.dtype | None = None,
    max_shard_size: str = "5GB",
    gather: Callable[[torch.Tensor], torch.Tensor] = torch.Tensor.detach,
    writes: bool = True,
) -> None:
    """Write a folder that `transformers.AutoModelForCausalLM.from_pretrained` loads: safetensors shards
    of at most `max_shard_size` (one in memory at a time), their index, config.json and the tokenizer.

    The folder is built under a temporary name and renamed into place, so an interrupted save never
    leaves a half-written model where a good one was. A sharded model is written the same way: every
    rank calls this, `gather` giving a parameter's full tensor, and only the rank that `writes` does.
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    params = dict(model.named_parameters())  # a tied head appears once
    dtype = dtype or next(iter(params.values())).dtype
    sizes = {name: torch.empty(p.shape, dtype=dtype, device="meta") for name, p in params.items()}
    split = split_torch_state_dict_into_shards(sizes, max_shard_size=max_shard_size)
    with atomic.directory(out_dir) if writes else contextlib.nullcontext() as building:
        for filename, names in split.filename_to_tensors.items():
            shard = {name: gather(params[name]).to("cpu", dtype).contiguous() for name in names}
            if writes:
                save_file(shard, building / filename, metadata={"format": "pt"})
            del shard
        if not writes:
            return
        if split.is_sharded:
            index = {
                "metadata": {"total_size": sum(t.numel() * t.element_size() for t in sizes.values())},
                "weight_map": split.tensor_to_filename,
            }
            atomic.write_text(building / "model.safetensors.index.json", json.dumps(index, indent=2))
        atomic.write_text(building / "config.json", json.dumps(model.config.to_hf(dtype), indent=2))
        if tokenizer is not None:
            tokenizer.save(building)

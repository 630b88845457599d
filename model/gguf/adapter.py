"""GGUF LoRA adapters: a run's adapter alone, as llama.cpp's convert_lora_to_gguf.py writes it, for
`llama-server -m BASE.gguf --lora me.gguf` and an Ollama Modelfile's ADAPTER line: many twins over one
base model file.

The file holds no model and no tokenizer: general.type "adapter", adapter.type "lora",
adapter.lora.alpha, and for each adapted weight its two factors under the weight's GGUF name with the
suffixes .lora_a (A, rank x in) and .lora_b (B, out x rank). llama.cpp adds alpha / rank x B A x, so
alpha is written as twin's scaling times the rank (an rsLoRA adapter's too). The base file holds llama's
q and k rows in llama.cpp's rotary order; permuting B's rows the same way permutes B A's: P (B A) = (P B) A.
"""

import os
from functools import partial
from pathlib import Path

import gguf
import numpy as np
import torch

from model.checkpoint import load_config
from model.gguf.file import GGUFFile
from model.gguf.layout import gguf_tensor_names, permute_rotary_rows, rotary_heads
from model.gguf.read import read_config
from model.gguf.vocab import ExportError
from model.gguf.write import TYPES, planned_tensor, write_tensors
from model.hub import resolve_checkpoint
from model.lora_config import LoRAConfig
from model.peft import PEFT_PREFIX, read_checked_adapter
from model.transformer import ModelConfig, Transformer


def write_gguf_adapter(
    adapter_dir: str | os.PathLike, base_model: str | os.PathLike, path: str | os.PathLike, type_name: str, name: str
) -> None:
    """Write the LoRA adapter in `adapter_dir` (twin's or PEFT's), trained on `base_model` (a model folder,
    repo id or .gguf file; only its config is read), as a GGUF adapter at `path` (atomically), its factors
    in `type_name` (f16, or q8_0 where a row splits into q8_0's blocks)."""
    with torch.device("meta"):
        model = Transformer(base_config(base_model))
    config, state = read_checked_adapter(model, adapter_dir)
    if config.trainable_tokens:
        raise ExportError(
            f"{adapter_dir}: the adapter trains rows for tokens its base model lacks (ChatML's), "
            "which a GGUF adapter cannot hold; export the merged model instead (without --adapter)"
        )
    writer = gguf.GGUFWriter(None, model.config.architecture.gguf_name)
    qtype, file_type = TYPES[type_name]
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, config.scaling * config.r)
    writer.add_name(name)
    writer.add_file_type(file_type)
    if qtype == gguf.GGMLQuantizationType.Q8_0:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tensors = []
    for weight, gguf_name in adapted_weights(model, config).items():
        prefix = f"{PEFT_PREFIX}{weight.removesuffix('.weight')}"
        a, b = state[f"{prefix}.lora_A.weight"], state[f"{prefix}.lora_B.weight"]
        heads = rotary_heads(model.config, weight)
        tensors.append(planned_tensor(f"{gguf_name}.lora_a", tuple(a.shape), qtype, partial(float32, a)))
        tensors.append(planned_tensor(f"{gguf_name}.lora_b", tuple(b.shape), qtype, partial(float32, b, heads)))
    write_tensors(writer, tensors, path)


def adapted_weights(model: Transformer, config: LoRAConfig) -> dict[str, str]:
    """The weights an adapter of `config` adapts on `model`: our name -> the GGUF name."""
    names = gguf_tensor_names(model)
    return {
        weight: gguf_name
        for weight, gguf_name in names.items()
        if weight.split(".")[-2] in config.targets and weight.endswith(".weight")
    }


def float32(factor: torch.Tensor, rotary_heads: int | None = None) -> np.ndarray:
    """A factor as f32 numpy; B of llama's q or k with its rows in llama.cpp's rotary order."""
    factor = factor.float()
    return (permute_rotary_rows(factor, rotary_heads) if rotary_heads else factor).numpy()


def base_config(base_model: str | os.PathLike) -> ModelConfig:
    """The config of a model folder, repo id or GGUF file, without its weights."""
    if not str(base_model).endswith(".gguf"):
        return load_config(resolve_checkpoint(base_model))
    return read_config(GGUFFile(Path(base_model)))


def check_base_gguf(base: Path, adapter_dir: str | os.PathLike, base_model: str | os.PathLike) -> None:
    """Refuse a base GGUF file that llama.cpp would not apply the adapter to: another architecture, or a
    weight the adapter adapts missing or of another shape there."""
    file = GGUFFile(base)
    with torch.device("meta"):
        model = Transformer(base_config(base_model))
    config, _ = read_checked_adapter(model, adapter_dir)
    expected = model.config.architecture.gguf_name
    if file.value(gguf.Keys.General.ARCHITECTURE) != expected:
        raise ExportError(f"{base}: not a {expected} model, the architecture of the adapter's base model {base_model}")
    shapes = {tensor.name: tensor.shape for tensor in file.tensors.values()}
    parameters = dict(model.named_parameters())
    for weight, gguf_name in adapted_weights(model, config).items():
        if shapes.get(gguf_name) != list(parameters[weight].shape):
            raise ExportError(
                f"{base}: not the adapter's base model {base_model}: its {gguf_name} has shape "
                f"{shapes.get(gguf_name)}, the adapter needs {list(parameters[weight].shape)}"
            )

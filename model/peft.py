"""LoRA adapters in Hugging Face PEFT's format: adapter_model.safetensors and adapter_config.json, written as
PEFT writes them and read from twin or PEFT, every setting and weight checked before any layer changes."""

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from core import atomic
from model.lora import lora_layers, token_layers
from model.lora_config import PROJECTIONS, AdapterError, LoRAConfig
from model.lora_surgery import apply_lora, check_trainable_tokens
from model.nf4 import NF4Linear
from model.transformer import Transformer
from model.weight_files import FLOAT_DTYPES
from model.weights import MAX_DIMENSION, first_line, is_positive_number, is_whole_number, read_json, shown

PEFT_PREFIX = "base_model.model."
TOKEN_LAYERS = {"embed_tokens": "model.embed_tokens", "lm_head": "lm_head"}  # PEFT's names for them -> ours
TOKEN_ROWS = "token_adapter.trainable_tokens_delta"  # PEFT's key for a layer's trained rows (the rows, not deltas)
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
TOKENIZER_DEFINITIONS = ("tokenizer.json", "tokenizer.model")  # a folder with either holds a tokenizer


def adapter_state_dict(
    model: nn.Module, gather: Callable[[torch.Tensor], torch.Tensor] = torch.Tensor.detach
) -> dict[str, torch.Tensor]:
    """The adapter weights under PEFT's key names (a tied LM head's rows are the embedding's, saved once);
    `gather` gives a parameter's full tensor (of a sharded model: on every rank, in the same order)."""
    state = {
        f"{PEFT_PREFIX}{name}.{part}.weight": gather(getattr(module, part)).float().cpu().contiguous()
        for name, module in lora_layers(model).items()
        for part in ("lora_A", "lora_B")
    }
    state.update(
        {
            f"{PEFT_PREFIX}{name}.{TOKEN_ROWS}": gather(module.rows).float().cpu().contiguous()
            for name, module in token_layers(model).items()
            if not module.shares_rows
        }
    )
    return state


def save_adapter(
    model: Transformer,
    out_dir: str | os.PathLike,
    config: LoRAConfig,
    base_model: str,
    gather: Callable[[torch.Tensor], torch.Tensor] = torch.Tensor.detach,
    writes: bool = True,
) -> None:
    """Write `adapter_model.safetensors` and `adapter_config.json` as PEFT does, atomically. A sharded
    model's adapter is written once: every rank calls this, and only the rank that `writes` does."""
    state = adapter_state_dict(model, gather)
    if not writes:
        return
    with atomic.directory(out_dir) as building:
        save_file(state, building / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        peft_config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": config.r,
            "lora_alpha": config.alpha,
            "lora_dropout": config.dropout,
            "target_modules": sorted(config.targets),
            "bias": "none",
            "use_rslora": config.use_rslora,
            "fan_in_fan_out": False,
            "inference_mode": True,
            "init_lora_weights": True,
            "modules_to_save": None,
            "layers_to_transform": None,
            "rank_pattern": {},
            "alpha_pattern": {},
            "trainable_token_indices": {layer: list(indices) for layer, indices in config.trainable_tokens.items()}
            or None,
        }
        atomic.write_text(building / ADAPTER_CONFIG, json.dumps(peft_config, indent=2))


def tokenizer_source(base_model: str | os.PathLike, adapter_dir: str | os.PathLike | None) -> str | os.PathLike:
    """Where the tokenizer of a base model with an adapter is read from: the adapter's folder when a tokenizer
    was saved there (train.py saves the one it trained with, which has the ChatML tokens it added to a base
    without a chat format), else the base model."""
    if adapter_dir is not None and any((Path(adapter_dir) / name).is_file() for name in TOKENIZER_DEFINITIONS):
        return adapter_dir
    return base_model


def read_adapter_config(adapter_dir: str | os.PathLike) -> tuple[LoRAConfig, str]:
    """The LoRA settings of a twin- or PEFT-made adapter, and the base model it was trained on."""
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise AdapterError(
            f"{adapter_dir}: " + ("a file, not an adapter folder" if adapter_dir.exists() else "no such folder")
        )
    config_file = adapter_dir / ADAPTER_CONFIG
    if not config_file.exists():
        raise AdapterError(f"{config_file}: missing (is {adapter_dir} a LoRA adapter directory?)")
    peft = read_json(config_file, AdapterError)

    def refuse(reason: str):
        raise AdapterError(f"{config_file}: {reason}")

    if not isinstance(peft, dict):
        refuse(f"expected a JSON object, got {type(peft).__name__}")
    refused = {
        "peft_type": ("LORA",),
        "bias": ("none",),
        "use_dora": (False,),
        "fan_in_fan_out": (False,),
        "layers_to_transform": (None,),
        "rank_pattern": ({},),
        "alpha_pattern": ({},),
        "modules_to_save": (None, []),
    }
    for key, allowed in refused.items():
        value = peft.get(key, allowed[0])
        if value not in allowed:
            refuse(f"{key} = {shown(value)} is not supported (expected {allowed[0]!r})")
    for key in ("r", "lora_alpha"):
        if key not in peft:
            refuse(f"required field {key!r} is missing")
    r, alpha = peft["r"], peft["lora_alpha"]
    dropout, use_rslora = peft.get("lora_dropout", 0.0), peft.get("use_rslora", False)
    if not (is_whole_number(r) and r >= 1):
        refuse(f"r must be a whole number of at least 1, got {shown(r)}")
    if not is_positive_number(alpha):
        refuse(f"lora_alpha must be a positive number, got {shown(alpha)}")
    if not (isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0 <= dropout < 1):
        refuse(f"lora_dropout must be a number from 0 to below 1, got {shown(dropout)}")
    if not isinstance(use_rslora, bool):
        refuse(f"use_rslora must be true or false, got {shown(use_rslora)}")
    targets = peft.get("target_modules")
    if not (isinstance(targets, list) and targets and all(target in PROJECTIONS for target in targets)):
        refuse(f"target_modules must be a list drawn from {', '.join(PROJECTIONS)}, got {shown(targets)}")
    base_model = peft.get("base_model_name_or_path") or ""
    if not isinstance(base_model, str):
        refuse(f"base_model_name_or_path must be a string, got {shown(base_model)}")
    trainable_tokens = peft.get("trainable_token_indices")
    if isinstance(trainable_tokens, list):  # PEFT's short form: the embedding's
        trainable_tokens = {"embed_tokens": trainable_tokens}
    if not (
        trainable_tokens is None
        or isinstance(trainable_tokens, dict)
        and set(trainable_tokens) <= set(TOKEN_LAYERS)
        and all(
            isinstance(indices, list)
            and indices
            and len(set(indices)) == len(indices)
            and all(is_whole_number(i) and 0 <= i < MAX_DIMENSION for i in indices)
            for indices in trainable_tokens.values()
        )
    ):
        refuse(
            "trainable_token_indices must be a list of distinct token ids, or an object of such lists for "
            f"{' and '.join(TOKEN_LAYERS)}, got {shown(trainable_tokens)}"
        )
    config = LoRAConfig(
        r=r,
        alpha=alpha,
        dropout=dropout,
        targets=tuple(sorted(set(targets))),
        use_rslora=use_rslora,
        trainable_tokens={layer: tuple(indices) for layer, indices in (trainable_tokens or {}).items()},
    )
    return config, base_model


def adapter_shapes(model: Transformer, config: LoRAConfig) -> dict[str, list[int]]:
    """The PEFT name and shape of every adapter weight: of the model's LoRA layers when it has them,
    else of those `apply_lora(model, config)` would make, so that an adapter is checked before any is made."""
    layers = lora_layers(model)
    if layers:
        shapes = {
            f"{PEFT_PREFIX}{name}.{part}.weight": list(getattr(module, part).shape)
            for name, module in layers.items()
            for part in ("lora_A", "lora_B")
        }
        shapes.update(
            {
                f"{PEFT_PREFIX}{name}.{TOKEN_ROWS}": list(module.rows.shape)
                for name, module in token_layers(model).items()
                if not module.shares_rows
            }
        )
        return shapes
    shapes = {}
    for name, module in model.named_modules():
        if name.rpartition(".")[2] in config.targets and isinstance(module, (nn.Linear, NF4Linear)):
            shapes[f"{PEFT_PREFIX}{name}.lora_A.weight"] = [config.r, module.in_features]
            shapes[f"{PEFT_PREFIX}{name}.lora_B.weight"] = [module.out_features, config.r]
    for layer, indices in config.trainable_tokens.items():
        if not (layer == "lm_head" and model.config.tie_word_embeddings):  # tied: the embedding's rows
            shapes[f"{PEFT_PREFIX}{TOKEN_LAYERS[layer]}.{TOKEN_ROWS}"] = [len(indices), model.config.hidden_size]
    return shapes


def read_adapter_weights(weights_file: Path) -> dict[str, torch.Tensor]:
    """adapter_model.safetensors' tensors under our names (PEFT names the adapter inside a key while
    training, "lora_A.default.weight", but not on disk)."""
    if weights_file.exists() and not weights_file.is_file():  # a folder, or a FIFO a read would block on
        raise AdapterError(f"{weights_file}: not a regular file")
    try:
        state = load_file(weights_file)
    except FileNotFoundError:
        raise AdapterError(f"{weights_file}: missing") from None
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise AdapterError(f"{weights_file}: not a safetensors file ({first_line(error)})") from None
    return {key.replace(".default.weight", ".weight"): value for key, value in state.items()}


def load_adapter(model: Transformer, adapter_dir: str | os.PathLike) -> LoRAConfig:
    """Put a twin- or PEFT-made adapter on `model` (adding the LoRA layers it needs).

    Every weight is checked (names, shapes, a float dtype, finite values) before any layer is made or
    changed, so a damaged or hostile adapter leaves the model as it was."""
    config, state = read_checked_adapter(model, adapter_dir)
    if not lora_layers(model):
        apply_lora(model, config)
    with torch.no_grad():
        for name, module in lora_layers(model).items():
            for part in ("lora_A", "lora_B"):
                getattr(module, part).copy_(state[f"{PEFT_PREFIX}{name}.{part}.weight"])
        for name, module in token_layers(model).items():
            if not module.shares_rows:
                module.rows.copy_(state[f"{PEFT_PREFIX}{name}.{TOKEN_ROWS}"])
    return config


def read_checked_adapter(
    model: Transformer, adapter_dir: str | os.PathLike
) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    """An adapter's settings and its weights under PEFT's names, every weight checked to fit `model` (which
    may be on the meta device: only its shapes are read). AdapterError names the file and what is wrong."""
    config, _ = read_adapter_config(adapter_dir)
    try:
        check_trainable_tokens(model, config.trainable_tokens)
    except AdapterError as error:
        raise AdapterError(f"{Path(adapter_dir) / ADAPTER_CONFIG}: {error}") from None
    weights_file = Path(adapter_dir) / ADAPTER_WEIGHTS
    state = read_adapter_weights(weights_file)
    expected = adapter_shapes(model, config)
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    if missing or unexpected:
        raise AdapterError(
            f"{weights_file}: does not fit the model (missing {sorted(missing)[:3]}, "
            f"unexpected {shown(sorted(unexpected)[:3])})"
        )
    for key, shape in expected.items():
        tensor, name = state[key], key.removeprefix(PEFT_PREFIX).removesuffix(".weight")
        if list(tensor.shape) != shape:
            raise AdapterError(f"{weights_file}: {name} has shape {list(tensor.shape)}, the model needs {shape}")
        if tensor.dtype not in FLOAT_DTYPES.values():
            raise AdapterError(
                f"{weights_file}: {name} is stored as {str(tensor.dtype).removeprefix('torch.')}; "
                "only float adapter weights load"
            )
        if not torch.isfinite(tensor).all():
            raise AdapterError(f"{weights_file}: {name} holds NaN or infinite values")
    return config, state

"""LoRA: low-rank adapters on a frozen model, saved and loaded in Hugging Face PEFT's format.

A `LoRALinear` is an `nn.Linear` that keeps its frozen `weight` under the same name and adds
`lora_A`/`lora_B`, so a model with adapters still loads and saves base weights by their Hugging Face
names, and PEFT's adapter keys are ours with a prefix and a `.weight` suffix. Over a 4-bit base (an
`NF4Linear`, model.nf4) it computes dequant(W) x + B A x, the base kept under `base`, and is never merged:
the adapter is the same PEFT adapter, for the full-precision base.

Tokens a base model lacks (ChatML's, which train.py adds to a base that has no chat format) need rows
of their own in the embedding and the LM head. `TrainableTokens` trains just those rows, the rest of
the matrix frozen, saved as PEFT's `trainable_token_indices` saves them.
"""

import json
import math
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from core import atomic
from core.errors import TwinError
from core.flags import not_a_flag, setting
from model.nf4 import NF4Linear, quantized_count
from model.transformer import Transformer
from model.weight_files import FLOAT_DTYPES
from model.weights import MAX_DIMENSION, first_line, is_positive_number, is_whole_number, read_json, shown

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PEFT_PREFIX = "base_model.model."
TOKEN_LAYERS = {"embed_tokens": "model.embed_tokens", "lm_head": "lm_head"}  # PEFT's names for them -> ours
TOKEN_ROWS = "token_adapter.trainable_tokens_delta"  # PEFT's key for a layer's trained rows (the rows, not deltas)
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
TOKENIZER_DEFINITIONS = ("tokenizer.json", "tokenizer.model")  # a folder with either holds a tokenizer


class AdapterError(TwinError):
    """An adapter that cannot be used; the message names the file and what is wrong."""


def targets_from_text(text: str) -> tuple[str, ...]:
    """--lora-targets "q,k,v" as projection names: ("q_proj", "k_proj", "v_proj")."""
    names = tuple(f"{name.strip()}_proj" for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in PROJECTIONS]
    if unknown:
        raise AdapterError(f"--lora-targets: unknown {', '.join(unknown)}; choose from q,k,v,o,gate,up,down")
    return names


def targets_text(targets: tuple[str, ...]) -> str:
    return ",".join(name.removesuffix("_proj") for name in targets)


@dataclass
class LoRAConfig:
    """The adapters' shape; train.py's --lora-* flags (the fields set in code are no flag)."""

    r: int = setting(32, "adapter rank")
    alpha: float = setting(16, "adapter scaling numerator, scaling = alpha / r")
    dropout: float = setting(0.05, "dropout on the adapter input")
    targets: tuple[str, ...] = setting(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"),
        "projections to adapt, from q,k,v,o,gate,up,down",
        parse=targets_from_text,
        text=targets_text,
    )
    # scale by alpha / sqrt(r) instead of alpha / r (PEFT's rsLoRA)
    use_rslora: bool = not_a_flag(default=False)
    # "embed_tokens" and/or "lm_head" -> the token ids whose rows train there (PEFT's trainable_token_indices)
    trainable_tokens: dict[str, tuple[int, ...]] = not_a_flag(default_factory=dict)

    def __post_init__(self):
        if self.r < 1:
            raise AdapterError(f"LoRA rank must be at least 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise AdapterError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout whose mask costs a fifth of `F.dropout`'s on CPU, where drawing one
    Bernoulli sample per element took longer than the adapter's matrix multiplies.

    Each 64-bit random word gives four elements 15 random bits each (`random_` leaves an int64's
    sign bit 0, so every lane drops its top bit alike). An element is kept with probability
    1 - p rounded to 1/32768 and scaled by the inverse of exactly that probability, so the
    expectation is x. It draws from torch's generator, which activation checkpointing replays.
    """
    drop = round(p * 32768)
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_()
    bits = words.view(torch.int16)[: x.numel()].view(x.shape) & 0x7FFF
    return x * (bits >= drop).to(x.dtype).mul_(32768 / (32768 - drop))


class LoRALinear(nn.Linear):
    """y = x W^T + scaling * dropout(x) A^T B^T, with W frozen and A, B trained. W is a weight of the
    compute dtype, or a 4-bit `NF4Linear` under `base` (then `weight` and `bias` are None: they are its)."""

    def __init__(self, linear: nn.Linear | NF4Linear, config: LoRAConfig):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.base = linear if isinstance(linear, NF4Linear) else None
        self.weight = None if self.base is not None else linear.weight
        # (Qwen2's q, k and v have a bias; frozen like the weight)
        self.bias = None if self.base is not None else linear.bias
        for frozen in (self.weight, self.bias):
            if frozen is not None:
                frozen.requires_grad_(False)
        # Adapter weights stay fp32 whatever the base dtype: they are the optimizer's master copy.
        device = self.base.codes.device if self.base is not None else self.weight.device
        self.lora_A = nn.Parameter(torch.empty(config.r, self.in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, config.r, device=device))
        if device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's (and nn.Linear's) init
        self.scaling = config.scaling
        self.dropout = config.dropout
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x) if self.base is not None else F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        # addmm adds the scaled low-rank product into y within the matrix multiply: no extra passes over y.
        dropped = dropout(x, self.dropout) if self.training and self.dropout > 0 else x
        down = F.linear(dropped, self.lora_A.to(x.dtype))
        return torch.addmm(
            y.flatten(0, -2), down.flatten(0, -2), self.lora_B.to(x.dtype).t(), alpha=self.scaling
        ).view_as(y)

    def delta(self) -> torch.Tensor:
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        if self.base is not None:
            raise AdapterError(
                "an adapter over a 4-bit base is not merged into it: the merged weights would keep "
                "the 4-bit rounding; merge it into the full-precision base (load without --quantize)"
            )
        if not self.merged:
            self.weight.copy_((self.weight.float() + self.delta()).to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight.copy_((self.weight.float() - self.delta()).to(self.weight.dtype))
            self.merged = False


class TrainableTokens(nn.Module):
    """An embedding or LM head of which only some tokens' rows train (PEFT's trainable tokens): its
    weight is the frozen base weight with rows `indices` replaced by `rows`. An LM head tied to the
    embedding shares the embedding's rows."""

    def __init__(self, base: nn.Embedding | nn.Linear, indices: list[int], shared_rows: nn.Parameter | None = None):
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        self.register_buffer("indices", torch.tensor(indices, device=base.weight.device), persistent=False)
        # fp32 whatever the base dtype, like the LoRA weights: they are the optimizer's master copy
        self.rows = shared_rows if shared_rows is not None else nn.Parameter(base.weight.detach()[indices].float())
        self.shares_rows = shared_rows is not None
        self.active = True  # off: the base weight (adapters_off)

    @property
    def weight(self) -> torch.Tensor:
        """What the model computes with; model.transformer's chunked loss reads an LM head's `weight` directly."""
        if not self.active:
            return self.base.weight
        return self.base.weight.index_copy(0, self.indices, self.rows.to(self.base.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.base, nn.Embedding):
            return F.embedding(x, self.weight)
        return F.linear(x, self.weight)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def token_layers(model: nn.Module) -> dict[str, TrainableTokens]:
    return {name: module for name, module in model.named_modules() if isinstance(module, TrainableTokens)}


@contextmanager
def adapters_off(model: nn.Module):
    """The base model, for the duration: every LoRA update is scaled by zero, so it adds nothing, and
    trained token rows give way to the base model's."""
    layers = list(lora_layers(model).values())
    if any(layer.merged for layer in layers):
        raise AdapterError("the adapters are merged into the weights and cannot be switched off")
    scalings = [layer.scaling for layer in layers]
    for layer in layers:
        layer.scaling = 0.0
    for tokens in token_layers(model).values():
        tokens.active = False
    try:
        yield model
    finally:
        for layer, scaling in zip(layers, scalings):
            layer.scaling = scaling
        for tokens in token_layers(model).values():
            tokens.active = True


def apply_lora(model: Transformer, config: LoRAConfig) -> str:
    """Wrap the target projections of every decoder layer, and the embedding and LM head where the
    config trains token rows (growing them to hold those tokens), and freeze everything else.

    Returns a one-line summary of trainable and total parameters.
    """
    unknown = set(config.targets) - set(PROJECTIONS)
    if unknown:
        raise ValueError(f"unknown LoRA targets {sorted(unknown)}; choose from {', '.join(PROJECTIONS)}")
    check_trainable_tokens(model, config.trainable_tokens)
    for param in model.parameters():
        param.requires_grad_(False)
    for layer in model.model.layers:
        for block in (layer.self_attn, layer.mlp):
            for name in config.targets:
                if isinstance(getattr(block, name, None), (nn.Linear, NF4Linear)):
                    setattr(block, name, LoRALinear(getattr(block, name), config))
    add_trainable_tokens(model, config.trainable_tokens)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters()) + quantized_count(model)
    tokens = len(set().union(*config.trainable_tokens.values()))
    return (
        f"LoRA r={config.r} alpha={config.alpha:g} on {', '.join(config.targets)}"
        + (f" and the rows of {tokens} new tokens" if tokens else "")
        + f": {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.3f}%)"
    )


def check_trainable_tokens(model: Transformer, trainable_tokens: dict[str, tuple[int, ...]]) -> None:
    """Refuse token rows the model cannot take: an LM head tied to the embedding trains the embedding's
    rows or none, and rows beyond the vocabulary only extend it by as many rows as are trained (the
    tokens added to a base model come last), so that an adapter cannot make the model grow without bound."""
    rows = model.config.vocab_size
    for layer, indices in trainable_tokens.items():
        if max(indices) >= rows + len(indices):
            raise AdapterError(
                f"trainable token {max(indices)} of {layer} is beyond the model's vocabulary of "
                f"{rows} tokens; load the tokenizer saved with the adapter"
            )
    tied = model.config.tie_word_embeddings
    if tied and "lm_head" in trainable_tokens and trainable_tokens["lm_head"] != trainable_tokens.get("embed_tokens"):
        raise AdapterError("the LM head is tied to the embedding: its trainable tokens must be the embedding's")


def add_trainable_tokens(model: Transformer, trainable_tokens: dict[str, tuple[int, ...]]) -> None:
    """Grow the vocabulary to hold the tokens, and make their rows trainable (see TrainableTokens)."""
    if not trainable_tokens:
        return
    grow_vocabulary(model, max(max(indices) for indices in trainable_tokens.values()) + 1)
    tied = model.config.tie_word_embeddings
    if "embed_tokens" in trainable_tokens:
        embedding = TrainableTokens(model.model.embed_tokens, list(trainable_tokens["embed_tokens"]))
        model.model.embed_tokens = embedding
        if tied:  # the head is the embedding: it computes with the same rows
            model.lm_head = TrainableTokens(model.lm_head, list(trainable_tokens["embed_tokens"]), embedding.rows)
    if "lm_head" in trainable_tokens and not tied:
        model.lm_head = TrainableTokens(model.lm_head, list(trainable_tokens["lm_head"]))


def grow_vocabulary(model: Transformer, vocab_size: int) -> None:
    """Give the embedding and the LM head `vocab_size` rows, each new row the mean of the existing ones
    (as fsdp.load_sharded_model does): a neutral point from which new tokens learn."""
    embedding, head = model.model.embed_tokens, model.lm_head
    if vocab_size <= embedding.weight.shape[0]:
        return

    def grown(weight: torch.Tensor) -> nn.Parameter:
        mean = weight.detach().float().mean(0, keepdim=True).to(weight.dtype)
        rows = torch.cat([weight.detach(), mean.expand(vocab_size - weight.shape[0], -1)])
        return nn.Parameter(rows, requires_grad=weight.requires_grad)

    embedding.weight, embedding.num_embeddings = grown(embedding.weight), vocab_size
    head.weight = embedding.weight if model.config.tie_word_embeddings else grown(head.weight)
    head.out_features = model.config.vocab_size = vocab_size


def merge_lora(model: Transformer) -> Transformer:
    """Fold every adapter into its base weight, and trained token rows into theirs, and put plain
    `nn.Linear`s and `nn.Embedding`s back (for `save_model`)."""
    for name, module in lora_layers(model).items():
        module.merge()
        parent_name, _, child = name.rpartition(".")
        plain = nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
        plain.weight, plain.bias = module.weight, module.bias
        setattr(model.get_submodule(parent_name), child, plain)
    for name, module in token_layers(model).items():
        module.base.weight = nn.Parameter(module.weight.detach(), requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module.base)
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


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

"""LoRA's layers: low-rank adapters on a frozen model (model.lora_surgery puts them on and folds them in,
model.peft saves and loads them in Hugging Face PEFT's format).

A `LoRALinear` is an `nn.Linear` that keeps its frozen `weight` under the same name and adds
`lora_A`/`lora_B`, so a model with adapters still loads and saves base weights by their Hugging Face
names, and PEFT's adapter keys are ours with a prefix and a `.weight` suffix. Over a 4-bit base (an
`NF4Linear`, model.nf4) it computes dequant(W) x + B A x, the base kept under `base`, and is never merged:
the adapter is the same PEFT adapter, for the full-precision base.

Tokens a base model lacks (ChatML's, which train.py adds to a base that has no chat format) need rows
of their own in the embedding and the LM head. `TrainableTokens` trains just those rows, the rest of
the matrix frozen, saved as PEFT's `trainable_token_indices` saves them.
"""

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from model.lora_config import AdapterError, LoRAConfig
from model.nf4 import NF4Linear


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
        if self.merged or not self.scaling:  # merged, or switched off (adapters_off): nothing to add
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
        """What the model computes with; model.loss's chunked_cross_entropy reads an LM head's `weight` directly."""
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


@contextmanager
def adapters_merged(model: nn.Module):
    """The tuned model as sample.py runs it, for the duration: every adapter folded into its weight, one matrix a
    projection (generating about as fast as the base model, where unmerged adapters add two small multiplies to
    each), then taken out again; the weights come back to within rounding. Adapters over a 4-bit base, which
    cannot hold them, stay beside it."""
    layers = [layer for layer in lora_layers(model).values() if not layer.merged and layer.base is None]
    for layer in layers:
        layer.merge()
    try:
        yield model
    finally:
        for layer in layers:
            layer.unmerge()

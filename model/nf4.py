"""4-bit NormalFloat (NF4) weights, QLoRA's format, in plain PyTorch: a frozen linear layer of a quarter
of a bf16 one's memory, for LoRA on a base that would not otherwise fit (`--quantize nf4`).

The format is the QLoRA paper's, computed as torchao's `NF4Tensor` computes it, bit for bit (tests/test_nf4.py
holds it to torchao): the weight, row-major, is cut into blocks of 64 values; each block is divided by its
absolute maximum and each value replaced by the index of the nearest of 16 NormalFloat levels, two indices
a byte. The block maxima are double-quantized: less their mean, in blocks of 256, each such block scaled by
128 / its absolute maximum and rounded to 8 bits. So a value costs 4 bits, plus 8 bits per 64 values for
its block's scale: 4.125 bits. Every step runs in the weight's dtype, as torchao's does; the levels, the
scale factors and the mean are kept in it too.

Unlike torchao, a block of zeros is kept as zeros (torchao divides it by its zero maximum, and the NaNs
come back as its smallest level), and any shape is taken: the flat weight and its scales are padded
with zeros to whole blocks.
"""

import functools
import os
import re

import torch
import torch.nn.functional as F
from torch import nn

from model.weights import CheckpointError

BLOCK = 64  # values per absmax scale
SCALE_BLOCK = 256  # absmax scales per 8-bit scale factor
# The 16 NormalFloat levels: quantiles of a standard normal scaled to [-1, 1], as torchao rounds them.
LEVELS = (
    -1.0,
    -0.6962,
    -0.5251,
    -0.3949,
    -0.2844,
    -0.1848,
    -0.0911,
    0.0,
    0.0796,
    0.1609,
    0.2461,
    0.3379,
    0.4407,
    0.5626,
    0.7230,
    1.0,
)
CHUNK_BLOCKS = 2**14  # blocks given their levels at once: bounds the temporaries to a few MiB per weight
# The linear weights of the decoder layers; embeddings, norms and the LM head keep the model's dtype.
QUANTIZED_WEIGHT = re.compile(r"model\.layers\.\d+\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj\.weight")


def levels(dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.tensor(LEVELS, dtype=dtype, device=device)


def nearest_level(values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The index of the level nearest each value, distances measured in the values' dtype and a tie
    going to the lower level, as torchao's argmin over all 16 distances chooses (the levels lie
    further apart than a rounding step, so the nearest is always one of a value's two neighbours)."""
    upper = torch.searchsorted(table, values).clamp_(1, len(table) - 1)
    lower = upper - 1
    take_upper = (values - table[upper]).abs() < (values - table[lower]).abs()
    return (lower + take_upper).to(torch.uint8)


@functools.cache
def level_of_each_pattern(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """For a 16-bit dtype, the nearest level of each of its 65,536 bit patterns: looking a value up
    here is a fifth of the time of searching the levels for it."""
    patterns = torch.arange(2**16, dtype=torch.int32, device=device).to(torch.int16).view(dtype)
    return nearest_level(patterns, levels(dtype, device))


@functools.cache
def level_pairs(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Byte -> the two levels its halves code, [256, 2]: built once, not in every forward and backward
    pass (on a GPU, building it from the Python list is a copy that waits for the host)."""
    table = levels(dtype, device)
    return torch.stack([table.repeat_interleave(16), table.repeat(16)], dim=1)


def nearest_levels(values: torch.Tensor) -> torch.Tensor:
    """`nearest_level` of each value, looked up by bit pattern where the dtype has 16 bits."""
    if values.element_size() != 2:
        return nearest_level(values, levels(values.dtype, values.device))
    patterns = values.view(torch.int16).int().flatten() & 0xFFFF
    return level_of_each_pattern(values.dtype, values.device).index_select(0, patterns).view(values.shape)


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight is stored in NF4: y = x dequant(W)^T + b.

    The weight is dequantized for each use and dropped after it, in the backward pass too, so no
    full-precision copy of it lives between the forward and the backward pass (see `DequantizedLinear`).
    """

    def __init__(self, weight: torch.Tensor, bias: nn.Parameter | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        codes, scale_codes, scale_factors, scale_mean = quantize(weight.detach())
        self.register_buffer("codes", codes)  # uint8: two level indices a byte, the first in the high half
        self.register_buffer("scale_codes", scale_codes)  # int8: each block's absmax less the mean, quantized
        self.register_buffer("scale_factors", scale_factors)  # one per SCALE_BLOCK scales
        self.register_buffer("scale_mean", scale_mean)
        self.register_parameter("bias", bias)
        if bias is not None:
            bias.requires_grad_(False)

    def hold_as_parameters(self) -> None:
        """Hold the packed weight and its scales as frozen parameters rather than buffers, for FSDP2: it
        shards parameters over the ranks (buffers it leaves whole on every rank) and gathers a layer's
        before that layer computes, so each rank keeps 1/world of the bytes and dequantizes the gathered
        weight for each use, as on one device. The scale mean, one number, stays a buffer."""
        for name in ("codes", "scale_codes", "scale_factors"):
            self.register_parameter(name, nn.Parameter(self._buffers.pop(name), requires_grad=False))

    @property
    def dtype(self) -> torch.dtype:
        return self.scale_mean.dtype

    def dequantize(self) -> torch.Tensor:
        """The weight, in the dtype it was quantized from."""
        blocks = (self.out_features * self.in_features + BLOCK - 1) // BLOCK
        scales = (self.scale_codes.view(-1, SCALE_BLOCK) / self.scale_factors[:, None]).flatten()[:blocks]
        scales = scales + self.scale_mean
        values = (
            level_pairs(self.dtype, self.codes.device)
            .index_select(0, self.codes.int())
            .view(blocks, BLOCK)
            .mul_(scales[:, None])
        )
        return values.flatten()[: self.out_features * self.in_features].view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = DequantizedLinear.apply(x, self)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, nf4"


class DequantizedLinear(torch.autograd.Function):
    """x dequant(W)^T for a frozen NF4 weight. It saves no tensor for the backward pass: the input's
    gradient, grad dequant(W), dequantizes W afresh, and W itself has no gradient. So activation
    checkpointing has nothing of it to recompute, and memory holds one layer's dequantized weight at a time."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: NF4Linear) -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.dequantize().to(x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None
        return grad @ ctx.layer.dequantize().to(grad.dtype), None


@torch.no_grad()
def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A weight in NF4: (codes, scale codes, scale factors, scale mean), as `NF4Linear` keeps them.
    ValueError if it holds NaN or infinity, which would make its every block garbage."""
    flat = weight.flatten()
    blocks = F.pad(flat, (0, -flat.numel() % BLOCK)).view(-1, BLOCK)
    absmax = blocks.abs().amax(dim=1)
    if weight.device.type != "meta" and not torch.isfinite(absmax).all():  # meta: the shapes alone
        raise ValueError("holds NaN or infinite values")
    scale_mean = absmax.mean()
    centred = F.pad(absmax - scale_mean, (0, -absmax.numel() % SCALE_BLOCK)).view(-1, SCALE_BLOCK)
    spread = centred.abs().amax(dim=1)
    scale_factors = 256 / (2 * spread.masked_fill(spread == 0, 1))  # all scales equal: any factor gives 0s
    scale_codes = (centred * scale_factors[:, None]).round().clamp(-128, 127).to(torch.int8).flatten()

    divisors = absmax.masked_fill(absmax == 0, 1)[:, None]  # a block of zeros stays zeros (level 0.0)
    codes = torch.empty(blocks.shape, dtype=torch.uint8, device=weight.device)
    for start in range(0, len(blocks), CHUNK_BLOCKS):
        chunk = slice(start, start + CHUNK_BLOCKS)
        codes[chunk] = nearest_levels(blocks[chunk] / divisors[chunk])
    pairs = codes.view(-1, 2)
    return pairs[:, 0] << 4 | pairs[:, 1], scale_codes, scale_factors, scale_mean


def quantize_weight(model: nn.Module, name: str, weight: torch.Tensor, source: str | os.PathLike) -> None:
    """Put `weight`, read from `source`, into `model` as parameter `name` of a linear layer, stored as an
    `NF4Linear` in its place (the layer's bias, loaded or not yet, goes with it)."""
    module_name = name.removesuffix(".weight")
    parent_name, _, child = module_name.rpartition(".")
    try:
        quantized = NF4Linear(weight, model.get_submodule(module_name).bias)
    except ValueError as error:  # NaN or infinity, which a check of the loaded model cannot see in 4 bits
        raise CheckpointError(f"{source}: weight {name} {error}") from None
    setattr(model.get_submodule(parent_name), child, quantized)


def quantize_model(model: nn.Module, source: str | os.PathLike) -> None:
    """Store every decoder-layer linear weight of a model loaded from `source` in NF4, one at a time."""
    names = [name for name, _ in model.named_parameters() if QUANTIZED_WEIGHT.fullmatch(name)]
    for name in names:  # each full-precision weight is freed as its 4-bit one replaces it
        quantize_weight(model, name, model.get_parameter(name).detach(), source)


def quantized_count(model: nn.Module) -> int:
    """The weights the model holds in NF4, which `model.parameters()` does not count."""
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, NF4Linear))

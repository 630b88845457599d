"""The decoder of Mistral, Llama (2 and 3), Qwen2/2.5, Qwen3 and Gemma 3 in one file.

They are one architecture with a few switches. What a family always does (its activation, its norms'
form and places, a scaled embedding, q/k norms, biases) is its entry in model.architectures; what one
model of it does (sizes, each layer's window, RoPE bases and scaling such as Llama 3.1's, the attention
scale, a tied LM head) is its `ModelConfig`.

Parameter names equal Hugging Face's (`model.layers.0.self_attn.q_proj.weight`, ...), so loading a
checkpoint is a plain copy of tensors, and rotary embeddings use Hugging Face's rotate-half layout,
so neither checkpoints nor LoRA adapters need their q/k rows permuted.
"""

import functools
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from torch.utils.checkpoint import checkpoint

from model.architectures import Architecture, architecture, text_config

LLAMA3_ROPE_FIELDS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
LAYER_TYPES = ("sliding_attention", "full_attention")  # config.json's names of a layer's attention
ACTIVATIONS = {"silu": F.silu, "gelu_pytorch_tanh": functools.partial(F.gelu, approximate="tanh")}
# The devices where packed rows attend through FlexAttention, in one call per layer; elsewhere they
# attend document by document through SDPA. On CPU, torch's FlexAttention has no backward pass, and
# its forward is slower than SDPA document by document (4 x 512 tokens, 16/4 heads of 64, bf16,
# one thread: 728 ms eager and 105 ms compiled against 35 ms), so CPU keeps SDPA.
FLEX_ATTENTION_DEVICES = {"cuda"}


@dataclass
class ModelConfig:
    vocab_size: int = 32002
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # None, Llama 3's {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}, or {"rope_type": "linear", "factor"} (Gemma 3's full layers)
    rope_scaling: dict | None = None
    max_position_embeddings: int = 32768
    sliding_window: int | None = 4096  # None: full causal attention
    max_window_layers: int = 0  # Qwen: the layers before this one attend fully, the rest through the window
    attention_bias: bool = False  # biases on q, k, v and o (Llama's and Qwen3's `attention_bias`)
    tie_word_embeddings: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2
    model_type: str = "mistral"  # its entry in model.architectures says how the family computes
    # Each layer's attention, "sliding_attention" (through the window) or "full_attention" (Gemma 3);
    # None: the window holds from layer max_window_layers on.
    layer_types: tuple[str, ...] | None = None
    rope_local_theta: float | None = None  # the sliding layers' RoPE base, unscaled (Gemma 3); None: rope_theta's
    query_pre_attn_scalar: float | None = None  # attention scores are scaled by its -0.5 power; None: head_dim's

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    @property
    def architecture(self) -> Architecture:
        return architecture(self.model_type)

    @property
    def qkv_bias(self) -> bool:
        """Biases on q, k and v: always in Qwen2; in Llama, Qwen3 and Gemma 3 with `attention_bias` (o too)."""
        return self.attention_bias or self.architecture.qkv_bias

    def window_of(self, layer: int) -> int | None:
        """The sliding window of this decoder layer; None where it attends to the whole context."""
        if self.layer_types is not None:
            return self.sliding_window if self.layer_types[layer] == "sliding_attention" else None
        return self.sliding_window if layer >= self.max_window_layers else None

    def local_rope(self, layer: int) -> bool:
        """Whether this layer rotates with the sliding layers' own RoPE base instead of rope_theta's."""
        return self.rope_local_theta is not None and self.window_of(layer) is not None

    @property
    def windows(self) -> set[int | None]:
        """The layers' distinct windows: one attention mask each, shared by the layers that have it."""
        return {self.window_of(layer) for layer in range(self.num_hidden_layers)}

    @property
    def attention_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @classmethod
    def from_hf(cls, hf: dict) -> "ModelConfig":
        """Read a Hugging Face `config.json` dict (a multimodal one's text part); refuse what its
        architecture does not compute."""
        hf = text_config(hf)
        family = architecture(hf.get("model_type"))
        refused = {
            family.hf_activation_key: (hf.get(family.hf_activation_key, family.activation), (family.activation,)),
            "mlp_bias": (hf.get("mlp_bias", False), (False,)),
            "pretraining_tp": (hf.get("pretraining_tp", 1), (1,)),
            **{name: (hf.get(name, value), (value,)) for name, value in family.refused_values.items()},
        }
        if not family.attention_bias:
            refused["attention_bias"] = (hf.get("attention_bias", False), (False,))
        for field_name, (value, allowed) in refused.items():
            if value not in allowed:
                raise ValueError(f"{field_name} = {value!r} is not supported (expected {allowed[0]!r})")
        rope, local_theta = read_rope(hf, family)
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", *family.rope_scalings):
            raise ValueError(
                f"rope_scaling of type {rope_type!r} is not supported in {family.model_type} "
                f"(only {', '.join(map(repr, family.rope_scalings))})"
            )
        rope_scaling = (
            {"rope_type": "llama3", **{name: rope[name] for name in LLAMA3_ROPE_FIELDS}}
            if rope_type == "llama3"
            else {"rope_type": "linear", "factor": rope["factor"]}
            if rope_type == "linear"
            else None
        )

        sliding_window, max_window_layers, layer_types = hf.get("sliding_window"), 0, None
        if family.windows == "none":
            sliding_window = None
        elif family.windows == "qwen":  # a window only with use_sliding_window, from layer max_window_layers on
            sliding_window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
            max_window_layers = hf.get("max_window_layers", 28) if sliding_window else 0
            expected = [
                "sliding_attention" if sliding_window and i >= max_window_layers else "full_attention"
                for i in range(hf["num_hidden_layers"])
            ]
            if hf.get("layer_types") not in (None, expected):
                raise ValueError(
                    f"layer_types = {hf['layer_types']!r} is not supported (expected "
                    f"{expected!r}, what use_sliding_window and max_window_layers say)"
                )
        elif family.windows == "layer_types":
            layer_types = read_layer_types(hf)
        eos = hf.get("eos_token_id", 2)
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=hf["num_attention_heads"],
            num_key_value_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=hf.get("head_dim"),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
            rope_scaling=rope_scaling,
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            sliding_window=sliding_window,
            max_window_layers=max_window_layers,
            attention_bias=family.attention_bias and hf.get("attention_bias", False),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            bos_token_id=hf.get("bos_token_id", 1),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            model_type=family.model_type,
            layer_types=layer_types,
            rope_local_theta=local_theta,
            query_pre_attn_scalar=hf.get("query_pre_attn_scalar"),
        )

    def to_hf(self, dtype: torch.dtype) -> dict:
        """The `config.json` dict that transformers reads back into the same architecture."""
        family = self.architecture
        hf = asdict(self)
        hf["architectures"] = [family.hf_class]
        hf[family.hf_activation_key] = family.activation
        hf["torch_dtype"] = str(dtype).removeprefix("torch.")
        for name in ("layer_types", "rope_local_theta", "query_pre_attn_scalar"):
            if hf[name] is None:
                del hf[name]
        if self.layer_types is not None:
            hf["layer_types"] = list(self.layer_types)
        if family.local_rope:  # transformers 5's rope settings per kind of layer
            del hf["rope_theta"], hf["rope_scaling"], hf["rope_local_theta"]
            hf["rope_parameters"] = {
                "full_attention": {"rope_type": "default", "rope_theta": self.rope_theta, **(self.rope_scaling or {})},
                "sliding_attention": {"rope_type": "default", "rope_theta": self.rope_local_theta},
            }
        if family.windows == "qwen":
            hf["use_sliding_window"] = self.sliding_window is not None
        else:
            del hf["max_window_layers"]
        if family.windows == "none":
            del hf["sliding_window"]
        if not family.attention_bias:  # fixed by the architecture
            del hf["attention_bias"]
        return hf


def read_rope(hf: dict, family: Architecture) -> tuple[dict, float | None]:
    """The full layers' RoPE settings (rope_theta, rope_type and the scaling's fields) and the sliding
    layers' own base where the family has one. transformers 5 writes them as `rope_parameters`
    (per kind of layer where they differ), older versions as `rope_theta`, `rope_scaling` (whose type
    was once called `type`) and Gemma 3's `rope_local_base_freq`."""
    parameters = hf.get("rope_parameters") or {}
    if "full_attention" in parameters:
        rope, local = dict(parameters["full_attention"] or {}), dict(parameters.get("sliding_attention") or {})
    else:
        rope, local = {**(hf.get("rope_scaling") or {}), **parameters}, {}
    if not family.local_rope:
        return rope, None
    if local.get("rope_type", "default") != "default":
        raise ValueError(f"rope_parameters.sliding_attention of type {local['rope_type']!r} is not supported")
    theta = local.get("rope_theta", hf.get("rope_local_base_freq", 10000.0))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not 0 < theta < math.inf:
        raise ValueError(f"the sliding layers' rope_theta must be a positive number, got {theta!r}")
    return rope, theta


def read_layer_types(hf: dict) -> tuple[str, ...]:
    """Each layer's attention: config.json's layer_types, or else every sliding_window_pattern-th
    layer full and the rest sliding (how older Gemma 3 configs say it)."""
    layers = hf["num_hidden_layers"]
    pattern = hf.get("sliding_window_pattern", 6)
    if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 1:
        raise ValueError(f"sliding_window_pattern must be a whole number of at least 1, got {pattern!r}")
    layer_types = hf.get("layer_types") or [
        "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)
    ]
    if (
        not isinstance(layer_types, (list, tuple))
        or len(layer_types) != layers
        or any(kind not in LAYER_TYPES for kind in layer_types)
    ):
        raise ValueError(f"layer_types must list {layers} of {LAYER_TYPES}, got {str(layer_types)[:100]}")
    return tuple(layer_types)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, unit_offset: bool = False):
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset  # the weight is an offset from one (Gemma's), stored as zeros
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32, and apply the weight where each family's reference does (before casting back
        # for Gemma, after for the rest), so that bf16 matches it.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            return (x * (1.0 + self.weight.float())).to(dtype)
        return self.weight * x.to(dtype)


def rotary_frequencies(config: ModelConfig, device: torch.device, local: bool = False) -> torch.Tensor:
    """The angle each pair of a head's dimensions turns by per position, [head_dim / 2], in fp32; `local`:
    the sliding layers' own (config.rope_local_theta, unscaled)."""
    dim = config.head_dim
    theta = config.rope_local_theta if local else config.rope_theta
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, device=device).float() / dim)
    if config.rope_scaling is None or local:
        return inv_freq
    if config.rope_scaling["rope_type"] == "linear":  # positions divided by the factor
        return inv_freq / config.rope_scaling["factor"]
    # Llama 3.1's long context: wavelengths longer than the original context stretch by `factor`,
    # those shorter than original / high_freq_factor stay, and the band between blends the two.
    scaling = config.rope_scaling
    factor, original = scaling["factor"], scaling["original_max_position_embeddings"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    wavelength = 2 * math.pi / inv_freq
    smooth = (original / wavelength - low) / (high - low)  # 0 at the band's long end, 1 at its short end
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    blended = torch.where(wavelength > original / low, inv_freq / factor, blended)
    return torch.where(wavelength < original / high, inv_freq, blended)


def rotary_cos_sin(position_ids: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype):
    """cos and sin of each position's rotation, [batch, seq, head_dim], in rotate-half layout."""
    angles = position_ids.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated for `max_len` tokens."""

    def __init__(
        self, config: ModelConfig, batch_size: int, max_len: int, dtype: torch.dtype, device: torch.device | str
    ):
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0  # tokens stored; advanced by the model after all layers have written

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, position: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this layer's new keys/values and return all of them so far.

        With `position` [1] (a decoding step of static shapes) the one new token goes there, and the
        whole cache comes back: what lies past `position` is for the caller's mask to hide.
        """
        if position is not None:
            return self.keys[layer].index_copy_(2, position, k), self.values[layer].index_copy_(2, position, v)
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def truncate(self, length: int) -> None:
        """Forget everything after the first `length` tokens (to re-sample a reply)."""
        self.length = min(self.length, length)


def visible_keys(query_pos: torch.Tensor, key_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Whether a query at `query_pos` sees the key at `key_pos` (broadcast): itself and the keys before
    it, the last `window` of them where there is a window."""
    allowed = key_pos <= query_pos
    return allowed if window is None else allowed & (query_pos - key_pos < window)


def attention_mask(
    query_len: int, key_len: int, window: int | None, device: torch.device, padding: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Boolean mask [1 or batch, 1, query, key] of what each query may attend to; None where SDPA needs none.

    Queries are the last `query_len` of `key_len` tokens. A token sees itself and up to `window - 1`
    tokens before it, and no key among the first `padding[row]` of its row.
    """
    # Without a window or padding in play, a full causal prefill is SDPA's `is_causal`, and a lone
    # query (a decoding step) sees every key: neither needs a mask built.
    if padding is None and query_len in (1, key_len) and (window is None or key_len <= window):
        return None
    query_pos = torch.arange(key_len - query_len, key_len, device=device)[:, None]
    key_pos = torch.arange(key_len, device=device)[None, :]
    allowed = visible_keys(query_pos, key_pos, window)
    if padding is None:
        return allowed[None, None]
    # A padding query sees itself: one that saw nothing would give NaN, which would reach the real
    # tokens through its values (masked to weight 0, but 0 x NaN is NaN).
    real_key = key_pos[None] >= padding[:, None, None]
    return ((allowed[None] & real_key) | (key_pos == query_pos)[None])[:, None]


@dataclass(frozen=True)
class DocumentSpans:
    """For each row of a packed batch, the (start, end) of each of its documents.

    An object, not a bare list: FSDP's forward hooks rebuild the lists and tuples among a layer's
    arguments on the way in, and would scramble these.
    """

    rows: list[list[tuple[int, int]]]

    @classmethod
    def of(cls, document_ids: torch.Tensor) -> "DocumentSpans":
        """The runs of equal ids in each row of `document_ids` [batch, seq]."""
        batch, seq = document_ids.shape
        starts: list[list[int]] = [[0] for _ in range(batch)]
        for row, before in (document_ids[:, 1:] != document_ids[:, :-1]).nonzero().tolist():
            starts[row].append(before + 1)
        return cls([list(zip(row, row[1:] + [seq])) for row in starts])


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float | None = None
) -> torch.Tensor:
    """Scaled dot-product attention of q to the keys it may see: `mask`, or causal where None; scores
    scaled by `scale` (None: 1 / sqrt(head_dim)).

    Grouped-query attention: each key/value head serves n_heads / n_kv_heads query heads. A lone query
    (a decoding step) lets those heads attend as that key/value head's queries, with no copies. Else
    SDPA shares the heads, except on CUDA with a mask: the memory-efficient kernel, the one that takes
    a mask, wants them expanded.
    """
    grouped = k.shape[1] != q.shape[1]
    if grouped and q.shape[2] == 1:
        batch, heads, _, head_dim = q.shape
        grouped_q = q.view(batch, k.shape[1], heads // k.shape[1], head_dim)
        return F.scaled_dot_product_attention(grouped_q, k, v, attn_mask=mask, scale=scale).view(q.shape)
    if grouped and mask is not None and q.device.type == "cuda":
        repeats = q.shape[1] // k.shape[1]
        k, v, grouped = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1), False
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=mask is None and q.shape[2] > 1, enable_gqa=grouped, scale=scale
    )


def document_block_mask(document_ids: torch.Tensor, window: int | None) -> BlockMask:
    """FlexAttention's mask for packed rows `document_ids` [batch, seq]: a token sees the tokens of its
    own document up to itself, and only the last `window` of them where there is a window.

    Built on the device from the ids alone, with no copy to the host, so that a step never waits on it.
    """

    def same_document_causal(batch, head, query, key):
        return (document_ids[batch, query] == document_ids[batch, key]) & (key <= query)

    def within_window(batch, head, query, key):
        return same_document_causal(batch, head, query, key) & (query - key < window)

    batch, seq = document_ids.shape
    return create_block_mask(
        same_document_causal if window is None else within_window, batch, None, seq, seq, device=document_ids.device
    )


@functools.cache
def compiled_flex_attention():
    """FlexAttention compiled into one fused kernel; uncompiled it is a slow reference, used on CPU."""
    return torch.compile(flex_attention, dynamic=False)


def attend_packed(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, scale: float | None = None
) -> torch.Tensor:
    """Packed rows' attention in one call, key/value heads shared by their query heads without copies."""
    kernel = compiled_flex_attention() if q.device.type == "cuda" else flex_attention
    return kernel(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, index: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        self.window = config.window_of(index)
        self.scale = config.attention_scale
        self.q_proj = nn.Linear(config.hidden_size, self.n_heads * self.head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=config.attention_bias)
        family = config.architecture
        self.qk_norm = family.qk_norm
        if self.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, family.norm_unit_offset)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, family.norm_unit_offset)

    def forward(
        self,
        x,
        cos,
        sin,
        mask,
        documents: DocumentSpans | None,
        kv_cache: KVCache | None,
        layer_index: int,
        cache_position: torch.Tensor | None = None,
    ):
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q.transpose(1, 2), cos, sin), apply_rotary(k.transpose(1, 2), cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(layer_index, k, v, cache_position)
        if isinstance(mask, BlockMask):  # packed rows where FlexAttention runs
            y = attend_packed(q, k, v, mask, self.scale)
        elif documents is None or batch == 0:  # (an FSDP rank evaluates an empty batch when out of rows)
            y = attend(q, k, v, mask, self.scale)
        else:
            # Packed rows elsewhere: each document attends to itself alone, document by document,
            # never computing the blocks between documents that a mask would only discard.
            y = torch.cat(
                [
                    torch.cat(
                        [
                            attend(
                                q[row : row + 1, :, start:end],
                                k[row : row + 1, :, start:end],
                                v[row : row + 1, :, start:end],
                                attention_mask(end - start, end - start, self.window, x.device),
                                self.scale,
                            )
                            for start, end in spans
                        ],
                        dim=2,
                    )
                    for row, spans in enumerate(documents.rows)
                ]
            )
        return self.o_proj(y.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.activation = ACTIVATIONS[config.architecture.activation]

    def forward(self, x):
        return self.down_proj(self.activation(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Attention, then the MLP, each inside a residual and between the norms its family has there
    (`LayerNorms`), each norm under its family's name."""

    def __init__(self, config: ModelConfig, index: int):
        super().__init__()
        self.index = index
        self.local_rope = config.local_rope(index)
        self.norms = norms = config.architecture.norms
        for name in (norms.before_attention, norms.after_attention, norms.before_mlp, norms.after_mlp):
            if name is not None:
                self.add_module(
                    name, RMSNorm(config.hidden_size, config.rms_norm_eps, config.architecture.norm_unit_offset)
                )
        self.self_attn = Attention(config, index)
        self.mlp = MLP(config)

    def normed(self, name: str | None, x: torch.Tensor) -> torch.Tensor:
        return x if name is None else self.get_submodule(name)(x)

    def forward(
        self,
        x,
        cos,
        sin,
        mask,
        documents=None,
        kv_cache: KVCache | None = None,
        cache_position: torch.Tensor | None = None,
    ):
        norms = self.norms
        attended = self.self_attn(
            self.normed(norms.before_attention, x), cos, sin, mask, documents, kv_cache, self.index, cache_position
        )
        x = x + self.normed(norms.after_attention, attended)
        return x + self.normed(norms.after_mlp, self.mlp(self.normed(norms.before_mlp, x)))


class TransformerBody(nn.Module):
    """Everything but the LM head; named `model` in the checkpoint."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.architecture.norm_unit_offset)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = TransformerBody(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # Recompute each decoder layer's activations in the backward pass instead of storing them.
        self.activation_checkpointing = False

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The tokens' embeddings, times sqrt(hidden_size) in the families that scale them (that scale
        rounded to the embedding's dtype first, as the reference rounds it)."""
        x = self.model.embed_tokens(input_ids)
        if not self.config.architecture.embedding_scale:
            return x
        return x * torch.tensor(self.config.hidden_size**0.5, dtype=x.dtype)

    def rotations(self, position_ids: torch.Tensor, dtype: torch.dtype) -> dict[bool, tuple]:
        """`rotary_cos_sin` of the full layers (key False) and, where the family gives the sliding layers
        their own RoPE base, of those (key True)."""
        return {
            local: rotary_cos_sin(position_ids, rotary_frequencies(self.config, position_ids.device, local), dtype)
            for local in {self.config.local_rope(layer) for layer in range(self.config.num_hidden_layers)}
        }

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [batch, seq, vocab] of `hidden_states` (which says what the arguments mean)."""
        return self.lm_head(self.hidden_states(input_ids, position_ids, document_ids, kv_cache, padding))

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final normalised hidden states [batch, seq, hidden], what the LM head and the loss read.

        `position_ids`/`document_ids` [batch, seq] describe packed rows: positions restart at 0 for
        each document and no token attends to another document. `kv_cache` serves decoding: the
        tokens continue what the cache holds, and the cache grows by them. `padding` [batch] counts
        the padding tokens at the start of each row of a batch of prompts decoded together: no token
        attends to them, and positions start after them.
        """
        batch, seq = input_ids.shape
        past = kv_cache.length if kv_cache is not None else 0
        if kv_cache is not None and document_ids is not None:
            raise ValueError("document_ids (packed rows) cannot be combined with a KV cache")
        if kv_cache is not None and past + seq > kv_cache.max_len:
            raise ValueError(f"KV cache holds {kv_cache.max_len} tokens; {past} + {seq} do not fit")
        if position_ids is None:
            position_ids = torch.arange(past, past + seq, device=input_ids.device).expand(batch, seq)
            if padding is not None:
                position_ids = (position_ids - padding[:, None]).clamp(min=0)

        x = self.embed(input_ids)
        rotations = self.rotations(position_ids, x.dtype)
        # One mask per distinct window (Qwen's first layers attend fully, the rest through a window),
        # shared by the layers. Packed rows attend through FlexAttention's block masks where it runs,
        # and elsewhere document by document, needing no mask.
        windows = self.config.windows
        documents = None
        if document_ids is None:
            masks = {window: attention_mask(seq, past + seq, window, x.device, padding) for window in windows}
        elif x.device.type in FLEX_ATTENTION_DEVICES and batch:
            masks = {window: document_block_mask(document_ids, window) for window in windows}
        else:
            documents, masks = DocumentSpans.of(document_ids), dict.fromkeys(windows)
        for layer in self.model.layers:
            mask, (cos, sin) = masks[layer.self_attn.window], rotations[layer.local_rope]
            if self.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, mask, documents, kv_cache, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, documents, kv_cache)
        if kv_cache is not None:
            kv_cache.length += seq
        return self.model.norm(x)

    def decode_step(self, input_ids: torch.Tensor, position: torch.Tensor, kv_cache: KVCache) -> torch.Tensor:
        """Logits [batch, vocab] of one new token per row, `input_ids` [batch, 1], at `position` [1].

        The same computation as `forward` with a cache, in shapes that never change from one token
        to the next, so that a compiled step replays as one CUDA graph: the token's keys and values go
        to `position`, and attention runs over the whole cache, masked past the token. The caller
        advances `position` and `kv_cache.length`.
        """
        x = self.embed(input_ids)
        rotations = self.rotations(position.expand(input_ids.shape[0], 1), x.dtype)
        key_pos = torch.arange(kv_cache.max_len, device=x.device)
        masks = {window: visible_keys(position, key_pos, window)[None, None, None] for window in self.config.windows}
        for layer in self.model.layers:
            x = layer(x, *rotations[layer.local_rope], masks[layer.self_attn.window], None, kv_cache, position)
        return self.lm_head(self.model.norm(x[:, -1]))

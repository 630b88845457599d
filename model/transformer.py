"""The decoder of Mistral, Llama (2 and 3), Qwen2/2.5 and Qwen3 in one file.

They are one architecture with a few switches, all in `ModelConfig`: Transformer attends through a
sliding window; Llama 3.1+ stretches the long rotary wavelengths (`rope_scaling`); Qwen2 adds biases
to q, k and v; Qwen3 normalises each head's queries and keys; any of them may tie the LM head to the
embedding.

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

HF_ARCHITECTURES = {"mistral": "MistralForCausalLM", "llama": "LlamaForCausalLM",
                    "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
LLAMA3_ROPE_FIELDS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
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
    # None, or Llama 3's {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}
    rope_scaling: dict | None = None
    max_position_embeddings: int = 32768
    sliding_window: int | None = 4096  # None: full causal attention
    max_window_layers: int = 0  # Qwen: the layers before this one attend fully, the rest through the window
    attention_bias: bool = False  # biases on q, k, v and o (Llama's and Qwen3's `attention_bias`)
    tie_word_embeddings: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2
    model_type: str = "mistral"

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")

    @property
    def qkv_bias(self) -> bool:
        """Biases on q, k and v: always in Qwen2; in Llama and Qwen3 with `attention_bias` (o too)."""
        return self.attention_bias or self.model_type == "qwen2"

    @property
    def qk_norm(self) -> bool:
        """Qwen3 RMS-normalises each head's queries and keys before rotating them."""
        return self.model_type == "qwen3"

    def window_of(self, layer: int) -> int | None:
        """The sliding window of this decoder layer; None where it attends to the whole context."""
        return self.sliding_window if layer >= self.max_window_layers else None

    @property
    def windows(self) -> set[int | None]:
        """The layers' distinct windows: one attention mask each, shared by the layers that have it."""
        return {self.window_of(layer) for layer in range(self.num_hidden_layers)}

    @classmethod
    def from_hf(cls, hf: dict) -> "ModelConfig":
        """Read a Hugging Face `config.json` dict; refuse what this architecture does not compute."""
        model_type = hf.get("model_type")
        if model_type not in HF_ARCHITECTURES:
            raise ValueError(f"model_type {model_type!r} is not supported "
                             f"(only {', '.join(map(repr, HF_ARCHITECTURES))})")
        refused = {
            "hidden_act": (hf.get("hidden_act", "silu"), ("silu",)),
            "mlp_bias": (hf.get("mlp_bias", False), (False,)),
            "pretraining_tp": (hf.get("pretraining_tp", 1), (1,)),
        }
        if model_type == "mistral":
            refused["attention_bias"] = (hf.get("attention_bias", False), (False,))
        for field_name, (value, allowed) in refused.items():
            if value not in allowed:
                raise ValueError(f"{field_name} = {value!r} is not supported (expected {allowed[0]!r})")
        # transformers 5 writes rope settings as `rope_parameters`, older versions as `rope_theta`
        # and `rope_scaling` (whose type was once called `type`).
        rope = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "llama3"):
            raise ValueError(f"rope_scaling of type {rope_type!r} is not supported (only Llama 3's 'llama3')")
        rope_scaling = ({"rope_type": "llama3", **{name: rope[name] for name in LLAMA3_ROPE_FIELDS}}
                        if rope_type == "llama3" else None)

        if model_type == "mistral":
            sliding_window, max_window_layers = hf.get("sliding_window"), 0
        elif model_type == "llama":
            sliding_window, max_window_layers = None, 0
        else:  # Qwen: a window only with use_sliding_window, and then only from layer max_window_layers on
            sliding_window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
            max_window_layers = hf.get("max_window_layers", 28) if sliding_window else 0
            layer_types = ["sliding_attention" if sliding_window and i >= max_window_layers else "full_attention"
                           for i in range(hf["num_hidden_layers"])]
            if hf.get("layer_types") not in (None, layer_types):
                raise ValueError(f"layer_types = {hf['layer_types']!r} is not supported (expected "
                                 f"{layer_types!r}, what use_sliding_window and max_window_layers say)")
        eos = hf.get("eos_token_id", 2)
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=hf["num_attention_heads"],
            num_key_value_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            # (Qwen3's head_dim defaults to 128, not hidden_size / heads)
            head_dim=hf.get("head_dim", 128 if model_type == "qwen3" else None),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
            rope_scaling=rope_scaling,
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            sliding_window=sliding_window,
            max_window_layers=max_window_layers,
            attention_bias=model_type in ("llama", "qwen3") and hf.get("attention_bias", False),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            bos_token_id=hf.get("bos_token_id", 1),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            model_type=model_type,
        )

    def to_hf(self, dtype: torch.dtype) -> dict:
        """The `config.json` dict that transformers reads back into the same architecture."""
        hf = asdict(self)
        hf["architectures"] = [HF_ARCHITECTURES[self.model_type]]
        hf["hidden_act"] = "silu"
        hf["torch_dtype"] = str(dtype).removeprefix("torch.")
        if self.model_type in ("qwen2", "qwen3"):
            hf["use_sliding_window"] = self.sliding_window is not None
        else:
            del hf["max_window_layers"]
        if self.model_type == "llama":
            del hf["sliding_window"]
        if self.model_type in ("mistral", "qwen2"):  # fixed by the architecture
            del hf["attention_bias"]
        return hf


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 and cast back before the weight, as the reference does, so bf16 matches it.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary_frequencies(config: ModelConfig, device: torch.device) -> torch.Tensor:
    """The angle each pair of a head's dimensions turns by per position, [head_dim / 2], in fp32."""
    dim = config.head_dim
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, dim, 2, device=device).float() / dim)
    if config.rope_scaling is None:
        return inv_freq
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

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0  # tokens stored; advanced by the model after all layers have written

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               position: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this layer's new keys/values and return all of them so far.

        With `position` [1] (a decoding step of static shapes) the one new token goes there, and the
        whole cache comes back: what lies past `position` is for the caller's mask to hide.
        """
        if position is not None:
            return self.keys[layer].index_copy_(2, position, k), self.values[layer].index_copy_(2, position, v)
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def truncate(self, length: int) -> None:
        """Forget everything after the first `length` tokens (to re-sample a reply)."""
        self.length = min(self.length, length)


def visible_keys(query_pos: torch.Tensor, key_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Whether a query at `query_pos` sees the key at `key_pos` (broadcast): itself and the keys before
    it, the last `window` of them where there is a window."""
    allowed = key_pos <= query_pos
    return allowed if window is None else allowed & (query_pos - key_pos < window)


def attention_mask(query_len: int, key_len: int, window: int | None, device: torch.device,
                   padding: torch.Tensor | None = None) -> torch.Tensor | None:
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


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention of q to the keys it may see: `mask`, or causal where None.

    Grouped-query attention: each key/value head serves n_heads / n_kv_heads query heads. A lone query
    (a decoding step) lets those heads attend as that key/value head's queries, with no copies. Else
    SDPA shares the heads, except on CUDA with a mask: the memory-efficient kernel, the one that takes
    a mask, wants them expanded.
    """
    grouped = k.shape[1] != q.shape[1]
    if grouped and q.shape[2] == 1:
        batch, heads, _, head_dim = q.shape
        grouped_q = q.view(batch, k.shape[1], heads // k.shape[1], head_dim)
        return F.scaled_dot_product_attention(grouped_q, k, v, attn_mask=mask).view(q.shape)
    if grouped and mask is not None and q.device.type == "cuda":
        repeats = q.shape[1] // k.shape[1]
        k, v, grouped = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1), False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and q.shape[2] > 1,
                                          enable_gqa=grouped)


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
    return create_block_mask(same_document_causal if window is None else within_window, batch, None, seq, seq,
                             device=document_ids.device)


@functools.cache
def compiled_flex_attention():
    """FlexAttention compiled into one fused kernel; uncompiled it is a slow reference, used on CPU."""
    return torch.compile(flex_attention, dynamic=False)


def attend_packed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask) -> torch.Tensor:
    """Packed rows' attention in one call, key/value heads shared by their query heads without copies."""
    kernel = compiled_flex_attention() if q.device.type == "cuda" else flex_attention
    return kernel(q, k, v, block_mask=block_mask, enable_gqa=k.shape[1] != q.shape[1])


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, index: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim)
        self.window = config.window_of(index)
        self.q_proj = nn.Linear(config.hidden_size, self.n_heads * self.head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=config.attention_bias)
        self.qk_norm = config.qk_norm
        if self.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, documents: DocumentSpans | None, kv_cache: KVCache | None,
                layer_index: int, cache_position: torch.Tensor | None = None):
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
            y = attend_packed(q, k, v, mask)
        elif documents is None or batch == 0:  # (an FSDP rank evaluates an empty batch when out of rows)
            y = attend(q, k, v, mask)
        else:
            # Packed rows elsewhere: each document attends to itself alone, document by document,
            # never computing the blocks between documents that a mask would only discard.
            y = torch.cat([
                torch.cat([attend(q[row:row + 1, :, start:end], k[row:row + 1, :, start:end],
                                  v[row:row + 1, :, start:end],
                                  attention_mask(end - start, end - start, self.window, x.device))
                           for start, end in spans], dim=2)
                for row, spans in enumerate(documents.rows)])
        return self.o_proj(y.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, index: int):
        super().__init__()
        self.index = index
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, documents=None, kv_cache: KVCache | None = None,
                cache_position: torch.Tensor | None = None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, documents, kv_cache, self.index,
                               cache_position)
        return x + self.mlp(self.post_attention_layernorm(x))


class TransformerBody(nn.Module):
    """Everything but the LM head; named `model` in the checkpoint."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


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

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                padding: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [batch, seq, vocab] of `hidden_states` (which says what the arguments mean)."""
        return self.lm_head(self.hidden_states(input_ids, position_ids, document_ids, kv_cache, padding))

    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                      document_ids: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                      padding: torch.Tensor | None = None) -> torch.Tensor:
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

        x = self.model.embed_tokens(input_ids)
        cos, sin = rotary_cos_sin(position_ids, rotary_frequencies(self.config, x.device), x.dtype)
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
            mask = masks[layer.self_attn.window]
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
        x = self.model.embed_tokens(input_ids)
        cos, sin = rotary_cos_sin(position.expand(input_ids.shape[0], 1),
                                  rotary_frequencies(self.config, x.device), x.dtype)
        key_pos = torch.arange(kv_cache.max_len, device=x.device)
        masks = {window: visible_keys(position, key_pos, window)[None, None, None] for window in self.config.windows}
        for layer in self.model.layers:
            x = layer(x, cos, sin, masks[layer.self_attn.window], None, kv_cache, position)
        return self.lm_head(self.model.norm(x[:, -1]))

"""Every base family twin computes, as data: one `Architecture` entry each, the only place a family is
described. The model (model.transformer), the checkpoint and GGUF readers and writers and FSDP's
wrapping read these fields; none of them asks which family it holds.

An entry says how the family's Hugging Face config.json and weights are named, what llama.cpp calls
it in a GGUF file, and the behaviour fields the forward pass reads. Per-model values (sizes, each
layer's window, RoPE bases and scaling, the attention scale) are `ModelConfig`'s, read from the
model's own config; an entry only says where to find them. Adding a family is one entry here, plus a
new behaviour field where the family brings a behaviour no other has (docs/adding-an-architecture.md).
"""

from dataclasses import dataclass, field

# twin's names of the two weights with one row per token (the same in every family): sharded loading
# grows them for new tokens, and FSDP leaves them to the root module.
EMBEDDING = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
VOCABULARY_WEIGHTS = (EMBEDDING, LM_HEAD)


@dataclass(frozen=True)
class LayerNorms:
    """The names of a decoder layer's RMS norms (Hugging Face's, which twin keeps) by where they sit;
    None where the family has no norm there. Llama's second norm is named `post_attention_layernorm`
    but normalises the MLP's input; Gemma's of that name normalises the attention's output."""

    before_attention: str = "input_layernorm"
    after_attention: str | None = None
    before_mlp: str = "post_attention_layernorm"
    after_mlp: str | None = None


@dataclass(frozen=True)
class Architecture:
    model_type: str  # config.json's model_type, and ModelConfig.model_type
    hf_class: str  # the transformers class a saved folder names in config.json's "architectures"
    gguf_name: str  # llama.cpp's general.architecture
    activation: str = "silu"  # the MLP's gate: "silu" or "gelu_pytorch_tanh"
    hf_activation_key: str = "hidden_act"  # the config.json field that names it
    # RMSNorm: False scales by w after casting back to the input's dtype (Llama); True scales by (1 + w)
    # in fp32, then casts (Gemma, whose norm weights are stored as offsets from one).
    norm_unit_offset: bool = False
    norms: LayerNorms = LayerNorms()
    embedding_scale: bool = False  # the embedding's output is multiplied by sqrt(hidden_size)
    qk_norm: bool = False  # each head's queries and keys are RMS-normalised before rotating
    qkv_bias: bool = False  # q, k and v always have biases (Qwen2)
    attention_bias: bool = True  # config.json's `attention_bias` may put biases on q, k, v and o
    # Which layers config.json's sliding_window applies to: "all" (Mistral), "none" (Llama), "qwen"
    # (with use_sliding_window, the layers from max_window_layers on), "layer_types" (config.json's list).
    windows: str = "all"
    # Sliding layers rotate with their own RoPE base (config.json's rope_local_base_freq, or
    # rope_parameters["sliding_attention"]) and no scaling; full layers with rope_theta and rope_scaling.
    local_rope: bool = False
    rope_scalings: tuple[str, ...] = ("llama3",)  # the rope_type values of scaling it computes (beside "default")
    # config.json's values where it has none, as the family's transformers config class defaults them
    # (Gemma 3's multimodal configs leave most of the text model's to those)
    hf_defaults: dict = field(default_factory=dict)
    # Fields of config.json whose values twin does not compute, each with the one value it does.
    refused_values: dict = field(default_factory=dict)
    # A multimodal family whose config.json holds this one's in "text_config", and whose weights hold
    # this one's under other prefixes: (prefix, twin's prefix), twin's None for weights twin ignores.
    hf_multimodal_type: str | None = None
    hf_weight_prefixes: tuple[tuple[str, str | None], ...] = ()
    gguf_rotary_interleaved: bool = False  # llama.cpp's llama stores q/k rows in interleaved rotary order
    gguf_norm_shift: float = 0.0  # llama.cpp stores norm weights plus this (Gemma's 1 + w, as it computes w * x)
    # How llama.cpp lays out the layers a GGUF file does not list: every `pattern`th layer is full, the
    # rest slide (Gemma 3); 0 where the file's sliding_window, if any, holds for every layer.
    gguf_full_layer_every: int = 0
    # The block counts of the models whose attention llama.cpp scales by 1 / sqrt(hidden / heads) rather than
    # 1 / sqrt(head_dim) where the file says no attention.scale (Gemma 3 27B, 62 layers)
    gguf_wide_attention_scale_layers: tuple[int, ...] = ()


ARCHITECTURES = {
    architecture.model_type: architecture
    for architecture in [
        Architecture("mistral", "MistralForCausalLM", "llama", gguf_rotary_interleaved=True, attention_bias=False),
        Architecture("llama", "LlamaForCausalLM", "llama", gguf_rotary_interleaved=True, windows="none"),
        Architecture("qwen2", "Qwen2ForCausalLM", "qwen2", qkv_bias=True, attention_bias=False, windows="qwen"),
        Architecture("qwen3", "Qwen3ForCausalLM", "qwen3", qk_norm=True, windows="qwen", hf_defaults={"head_dim": 128}),
        Architecture(
            "gemma3_text",
            "Gemma3ForCausalLM",
            "gemma3",
            activation="gelu_pytorch_tanh",
            hf_activation_key="hidden_activation",
            norm_unit_offset=True,
            norms=LayerNorms(
                after_attention="post_attention_layernorm",
                before_mlp="pre_feedforward_layernorm",
                after_mlp="post_feedforward_layernorm",
            ),
            embedding_scale=True,
            qk_norm=True,
            windows="layer_types",
            local_rope=True,
            rope_scalings=("linear",),
            hf_defaults={
                "vocab_size": 262_208,
                "hidden_size": 2304,
                "intermediate_size": 9216,
                "num_hidden_layers": 26,
                "num_attention_heads": 8,
                "num_key_value_heads": 4,
                "head_dim": 256,
                "rms_norm_eps": 1e-6,
                "max_position_embeddings": 131_072,
                "query_pre_attn_scalar": 256,
                "sliding_window": 4096,
                "rope_theta": 1_000_000.0,
                "rope_local_base_freq": 10_000.0,
                "tie_word_embeddings": True,
                "bos_token_id": 2,
                "eos_token_id": 1,
            },
            refused_values={
                "final_logit_softcapping": None,
                "attn_logit_softcapping": None,
                "use_bidirectional_attention": False,
            },
            hf_multimodal_type="gemma3",
            # transformers 4's Gemma3ForConditionalGeneration saved "language_model.model.", 5's "model.language_model."
            hf_weight_prefixes=(
                ("language_model.model.", "model."),
                ("model.language_model.", "model."),
                ("language_model.lm_head.", "lm_head."),
                ("vision_tower.", None),
                ("multi_modal_projector.", None),
                ("model.vision_tower.", None),
                ("model.multi_modal_projector.", None),
            ),
            gguf_norm_shift=1.0,
            gguf_full_layer_every=6,
            gguf_wide_attention_scale_layers=(62,),
        ),
    ]
}
GGUF_NAMES = {architecture.gguf_name for architecture in ARCHITECTURES.values()}


class UnsupportedArchitecture(ValueError):
    """A model_type or GGUF architecture with no entry here."""


def architecture(model_type: str) -> Architecture:
    """The entry of config.json's model_type (a multimodal one's text part included)."""
    for entry in ARCHITECTURES.values():
        if model_type in (entry.model_type, entry.hf_multimodal_type):
            return entry
    supported = sorted(
        {*ARCHITECTURES, *(a.hf_multimodal_type for a in ARCHITECTURES.values() if a.hf_multimodal_type)}
    )
    raise UnsupportedArchitecture(
        f"model_type {model_type!r} is not supported (only {', '.join(map(repr, supported))})"
    )


def gguf_architecture(gguf_name: str) -> Architecture:
    """The entry that reads a GGUF file of this general.architecture (llama's reads as Llama: Mistral's
    GGUFs are llama too, and the two compute alike once llama.cpp's file says the window)."""
    for entry in ARCHITECTURES.values():
        if entry.gguf_name == gguf_name and (entry.model_type == gguf_name or gguf_name != "llama"):
            return entry
    raise UnsupportedArchitecture(
        f"GGUF architecture {gguf_name!r} is not supported (only "
        f"{', '.join(map(repr, sorted(GGUF_NAMES)))}; Mistral's GGUFs are 'llama')"
    )


def text_config(hf: object) -> object:
    """config.json's text model with its family's defaults under it: a multimodal family's "text_config",
    else all of it. Anything else comes back as it is, for the caller to refuse."""
    if not isinstance(hf, dict):
        return hf
    entry = next((a for a in ARCHITECTURES.values() if a.hf_multimodal_type == hf.get("model_type")), None)
    if entry is not None and isinstance(hf.get("text_config"), dict):
        hf = {**hf["text_config"], "model_type": entry.model_type}
    entry = ARCHITECTURES.get(hf.get("model_type"))
    return {**entry.hf_defaults, **hf} if entry is not None else hf


WEIGHT_PREFIXES = tuple(prefix for entry in ARCHITECTURES.values() for prefix in entry.hf_weight_prefixes)


def twin_weight_name(name: str) -> str | None:
    """A checkpoint's weight name as twin's model names it; None for a weight twin ignores (a
    multimodal checkpoint's vision tower). Prefixes are unique to their family, so no family's
    names are renamed by another's entry."""
    for prefix, ours in WEIGHT_PREFIXES:
        if name.startswith(prefix):
            return None if ours is None else ours + name[len(prefix) :]
    return name


# The chat formats twin renders turns in (data.chatml), by their tokens; a base's is the first whose tokens its
# tokenizer has.
CHATML = dict(header_start="<|im_start|>", name_end="", header_newlines="\n", turn_end="<|im_end|>", separator="\n")
LLAMA3 = dict(
    header_start="<|start_header_id|>",
    name_end="<|end_header_id|>",
    header_newlines="\n\n",
    turn_end="<|eot_id|>",
    separator="",
)
GEMMA = dict(
    header_start="<start_of_turn>", name_end="", header_newlines="\n", turn_end="<end_of_turn>", separator="\n"
)
# Every layout, in the order they are looked for: a tokenizer with ChatML's tokens (train.py may add them
# to any) writes ChatML.
CHAT_FORMATS = {"chatml": CHATML, "llama3": LLAMA3, "gemma": GEMMA}

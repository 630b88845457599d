"""GGUF files in: tiny random models written with the gguf package's own writer, loaded by us and by
transformers' GGUF loader (the oracle), for each architecture and quantization type."""

import math
from dataclasses import replace

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from model.checkpoint import CheckpointError, load_model
from model.gguf import gguf_tensor_names
from model.lora import lora_layers
from model.lora_config import LoRAConfig
from model.lora_surgery import apply_lora
from model.peft import load_adapter, save_adapter
from model.transformer import ModelConfig
from tests.helpers import fast_gguf_reader, hf_reference, tiny_config

# head_dim 128 for Qwen3: transformers' GGUF loader does not read attention.key_length and assumes it.
ARCHITECTURES = {
    "llama": tiny_config(model_type="llama", rope_theta=500000.0),
    "llama-tied": tiny_config(model_type="llama", tie_word_embeddings=True, num_key_value_heads=1),
    "mistral": tiny_config(model_type="llama"),  # llama.cpp converts Mistral to its llama architecture
    "qwen2": tiny_config(model_type="qwen2", rope_theta=1000000.0, rms_norm_eps=1e-6),
    "qwen2-tied": tiny_config(model_type="qwen2", tie_word_embeddings=True),
    "qwen3": tiny_config(model_type="qwen3", head_dim=128),
}
# Rows of 256 values: the K-quants pack 256 values a block.
WIDE = tiny_config(
    model_type="llama",
    vocab_size=256,
    hidden_size=256,
    intermediate_size=256,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=1,
)
K_QUANT_SCALES = {Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [-2]}  # byte offsets of each block's fp16 scales


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute: rows that rotate together side by side."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def random_k_quant(rows: int, columns: int, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """Random K-quant blocks (the gguf package can read them but not make them) with small fp16 scales."""
    block_values, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (rows * columns // block_values, block_bytes), dtype=np.uint8)
    for offset in K_QUANT_SCALES[qtype]:
        scales = rng.uniform(1e-4, 4e-4, len(blocks)).astype(np.float16)
        blocks[:, offset if offset >= 0 else block_bytes + offset :][:, :2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


def write_gguf(
    path, hf_model, config: ModelConfig, qtype: Q = Q.F32, name: str = "tiny", extra_tensors: dict | None = None
):
    """The model as llama.cpp's converter writes it: renamed tensors, q/k rows permuted for llama,
    2-D weights in `qtype`, norms and biases in F32, no output.weight when tied."""
    arch = config.model_type
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_vocab_size(config.vocab_size)
    names = gguf_tensor_names(hf_model)
    rng = np.random.default_rng(0)
    for our_name, tensor in hf_model.state_dict().items():
        if our_name not in names:  # the tied head
            continue
        data = tensor.float().numpy()
        if arch == "llama" and our_name.split(".")[-2] in ("q_proj", "k_proj"):
            data = llama_cpp_permute(
                data, config.num_attention_heads if "q_proj" in our_name else config.num_key_value_heads
            )
        if data.ndim == 1 or qtype == Q.F32:
            writer.add_tensor(names[our_name], data)
        elif qtype in K_QUANT_SCALES:
            writer.add_tensor(names[our_name], random_k_quant(*data.shape, qtype, rng), raw_dtype=qtype)
        else:
            writer.add_tensor(names[our_name], gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    for tensor_name, data in (extra_tensors or {}).items():
        writer.add_tensor(tensor_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def transformers_gguf(path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()


def sample_ids(config, seed=1):
    return torch.randint(0, config.vocab_size, (2, 19), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_architecture_equals_transformers_gguf_loading_and_the_original_model(tmp_path, name):
    config = ARCHITECTURES[name]
    original = hf_reference(config)
    path = write_gguf(tmp_path / f"{name}.gguf", original, config, name=f"{name} tiny")
    ours = load_model(path, torch.float32).eval()
    assert ours.config == replace(config, rms_norm_eps=ours.config.rms_norm_eps, bos_token_id=1, eos_token_id=2)
    reference = transformers_gguf(path)
    ids = sample_ids(config)
    with torch.no_grad():
        logits = ours(ids)
        torch.testing.assert_close(logits, reference(ids).logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(logits, original(ids).logits, atol=1e-4, rtol=0)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight if config.tie_word_embeddings else True


@pytest.mark.parametrize(
    "qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q4_K, Q.Q5_K, Q.Q6_K], ids=lambda qtype: qtype.name
)
def test_quantization_type_equals_transformers_and_the_gguf_dequantization(tmp_path, qtype):
    path = write_gguf(tmp_path / "wide.gguf", hf_reference(WIDE), WIDE, qtype)
    ours = load_model(path, torch.float32).eval()
    reader = gguf.GGUFReader(path)
    down = next(tensor for tensor in reader.tensors if tensor.name == "blk.0.ffn_down.weight")
    assert down.tensor_type == qtype
    expected = torch.from_numpy(gguf.quants.dequantize(down.data, qtype))
    assert torch.equal(ours.model.layers[0].mlp.down_proj.weight, expected)
    ids = sample_ids(WIDE)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), transformers_gguf(path)(ids).logits, atol=1e-4, rtol=0)


def test_loads_into_the_requested_dtype(tmp_path):
    config = ARCHITECTURES["llama-tied"]
    path = write_gguf(tmp_path / "tiny.gguf", hf_reference(config), config, Q.Q8_0)
    model = load_model(path, torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in model.parameters())


def llama3_rope_factors(config: ModelConfig) -> np.ndarray:
    """rope_freqs.weight as llama.cpp's converter computes it for Llama 3.1 (LlamaModel.generate_extra_tensors)."""
    scaling = config.rope_scaling
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    factors = []
    for freq in 1.0 / (config.rope_theta ** (np.arange(0, config.head_dim, 2, dtype=np.float32) / config.head_dim)):
        wavelength = 2 * math.pi / freq
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def test_llama3_rope_scaling_is_read_back_from_rope_freqs(tmp_path):
    """llama.cpp bakes Llama 3.1's scaling into a rope_freqs tensor; transformers' GGUF loader ignores
    it, so the oracle is the original model. (The 16-wide heads have frequencies in all three bands.)"""
    config = tiny_config(
        model_type="llama",
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    original = hf_reference(config)
    path = write_gguf(
        tmp_path / "llama3.gguf", original, config, extra_tensors={"rope_freqs.weight": llama3_rope_factors(config)}
    )
    ours = load_model(path, torch.float32).eval()
    assert ours.config.rope_scaling == config.rope_scaling
    with torch.no_grad():
        torch.testing.assert_close(ours(sample_ids(config)), original(sample_ids(config)).logits, atol=1e-4, rtol=0)

    other = write_gguf(
        tmp_path / "other.gguf",
        original,
        config,
        extra_tensors={"rope_freqs.weight": np.linspace(1, 4, 8, dtype=np.float32)},
    )
    with pytest.raises(CheckpointError, match="rope_freqs.weight is not Llama 3's rope scaling"):
        load_model(other)


@pytest.fixture(scope="module")
def good_gguf(tmp_path_factory):
    config = ARCHITECTURES["llama-tied"]
    return write_gguf(tmp_path_factory.mktemp("good") / "tiny.gguf", hf_reference(config), config, Q.Q8_0)


def test_damaged_files_are_refused_in_one_line_naming_the_file(tmp_path, good_gguf):
    data = good_gguf.read_bytes()
    damaged = {
        "empty.gguf": b"",
        "text.gguf": b"not a model at all\n" * 10,
        "truncated-header.gguf": data[:100],
        "truncated-weights.gguf": data[:-500],
    }
    for name, content in damaged.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=rf"^{tmp_path / name}: not a readable GGUF file, or a damaged"):
            load_model(tmp_path / name)
    with pytest.raises(CheckpointError, match=r"missing\.gguf: no such file$"):
        load_model(tmp_path / "missing.gguf")


@pytest.mark.parametrize(
    "damage, message",
    [
        ("architecture", "GGUF architecture 'gpt2' is not supported"),
        ("no block count", "metadata llama.block_count is missing"),
        ("layer missing", r"llama.block_count is 2, but the weights hold 1 layers"),
        ("tensor missing", r"missing tensors \['blk.1.attn_norm.weight'"),
        ("extra tensor", r"unexpected \['blk.0.attn_extra.weight'\]"),
        ("wrong shape", r"tensor blk.0.ffn_up.weight has shape \[128, 32\], the metadata needs \[128, 64\]"),
        ("rope scaling", "llama.rope.scaling.type = 'yarn' is not supported"),
        ("partial rotary", "llama.rope.dimension_count = 8 is not supported"),
        ("head count as text", "llama.attention.head_count must be a whole number of at least 1, got 'four'"),
    ],
)
def test_files_we_cannot_compute_are_refused_naming_what(tmp_path, damage, message):
    config = tiny_config(model_type="llama", tie_word_embeddings=True)
    writer = gguf.GGUFWriter(tmp_path / "bad.gguf", "gpt2" if damage == "architecture" else "llama")
    metadata = {
        "block_count": config.num_hidden_layers,
        "context_length": 512,
        "embedding_length": 64,
        "feed_forward_length": 128,
        "attention.head_count": 4,
        "attention.head_count_kv": 2,
        "attention.layer_norm_rms_epsilon": 1e-5,
        "rope.dimension_count": 16,
    }
    if damage == "no block count":
        del metadata["block_count"]
    if damage == "partial rotary":
        metadata["rope.dimension_count"] = 8
    if damage == "head count as text":
        metadata["attention.head_count"] = "four"
    for key, value in metadata.items():
        add = {float: writer.add_float32, int: writer.add_uint32, str: writer.add_string}[type(value)]
        add(f"{writer.arch}.{key}", value)
    if damage == "rope scaling":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    model = hf_reference(config)
    for our_name, gguf_name in gguf_tensor_names(model).items():
        data = model.state_dict()[our_name].numpy()
        if damage == "layer missing" and gguf_name.startswith("blk.1."):
            continue
        if damage == "tensor missing" and gguf_name == "blk.1.attn_norm.weight":
            continue
        if damage == "wrong shape" and gguf_name == "blk.0.ffn_up.weight":
            data = data[:, :32].copy()
        writer.add_tensor(gguf_name, data)
    if damage == "extra tensor":
        writer.add_tensor("blk.0.attn_extra.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match=f"bad.gguf: .*{message}"):
        load_model(tmp_path / "bad.gguf")


# SmolLM2-135M-Instruct, a real trained chat model (Q4_1; llama architecture, tied embeddings), loaded
# once for these tests by us and by transformers. Slow: transformers alone takes 10 s to read it.
SMOLLM2_PROMPTS = {  # ids as transformers' GGUF tokenizer gives them; each greedy reply runs past 30 tokens
    "chatml-russian": [
        1,
        9690,
        198,
        2683,
        359,
        16435,
        28,
        36498,
        335,
        14308,
        3852,
        30,
        2,
        198,
        1,
        50,
        40237,
        198,
        36991,
        21985,
        46879,
        16464,
        32547,
        17,
        31338,
        6511,
        13760,
        33427,
        42292,
        6511,
        47,
        2,
        198,
        1,
        46484,
        198,
    ],  # system "You are Anna, chatting on Telegram.", Boris "привет! как дела?"
    "chatml-english": [
        1,
        4093,
        198,
        19161,
        253,
        1890,
        8216,
        563,
        260,
        3426,
        30,
        2,
        198,
        1,
        520,
        9531,
        198,
    ],  # user "Write a short poem about the sea."
    "code": [1604, 3987, 46477, 24, 94, 727, 2367],  # "def fibonacci(n):\n    "
}


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    with pytest.MonkeyPatch.context() as patch:  # transformers parses its 49,152 tokens faster (see fast_gguf_reader)
        patch.setattr(gguf, "GGUFReader", fast_gguf_reader())
        reference = transformers_gguf(smollm2_gguf)
    return load_model(smollm2_gguf, torch.float32).eval(), reference


@pytest.mark.slow
def test_smollm2_logits_equal_transformers(smollm2):
    ours, reference = smollm2
    assert ours.config.tie_word_embeddings and ours.config.model_type == "llama"
    for name, prompt in SMOLLM2_PROMPTS.items():
        ids = torch.tensor([prompt])
        with torch.no_grad():
            torch.testing.assert_close(ours(ids), reference(ids).logits, atol=1e-4, rtol=0, msg=name)


@pytest.mark.slow
def test_smollm2_greedy_tokens_equal_transformers(smollm2):
    from model.generation import Generator, SamplingConfig

    ours, reference = smollm2
    generator = Generator(ours, max_len=128, device=torch.device("cpu"))
    greedy = SamplingConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=30)
    for name in ("chatml-russian", "chatml-english"):
        prompt = SMOLLM2_PROMPTS[name]
        tokens = list(generator.generate(prompt, greedy, stop_ids={ours.config.eos_token_id}))
        expected = reference.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=30)[0, len(prompt) :]
        assert len(tokens) == 30 and tokens == expected.tolist(), name


@pytest.mark.slow
def test_smollm2_lora_adapters_go_both_ways_through_peft(smollm2, smollm2_gguf, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    _, reference = smollm2
    ids = torch.tensor([SMOLLM2_PROMPTS["chatml-english"]])
    ours = load_model(smollm2_gguf, torch.float32)
    lora = LoRAConfig(r=4, alpha=8, targets=("k_proj", "o_proj", "up_proj", "down_proj"))
    apply_lora(ours, lora)
    torch.manual_seed(0)
    with torch.no_grad():
        for module in lora_layers(ours).values():
            module.lora_B.normal_(0, 0.02)
    ours.eval()
    save_adapter(ours, tmp_path / "ours", lora, base_model=str(smollm2_gguf))
    peft_model = PeftModel.from_pretrained(reference, tmp_path / "ours").eval()
    try:
        with torch.no_grad():
            tuned = ours(ids)
            torch.testing.assert_close(tuned, peft_model(ids).logits, atol=1e-4, rtol=0)
        peft_config = LoraConfig(
            r=4, lora_alpha=8, init_lora_weights=False, task_type="CAUSAL_LM", target_modules=list(lora.targets)
        )
        peft_model = get_peft_model(peft_model.unload(), peft_config).eval()
        peft_model.save_pretrained(tmp_path / "peft")
        load_adapter(ours, tmp_path / "peft")
        with torch.no_grad():
            torch.testing.assert_close(ours(ids), peft_model(ids).logits, atol=1e-4, rtol=0)
            assert not torch.allclose(tuned, peft_model(ids).logits, atol=1e-2)
    finally:
        peft_model.unload()  # the shared transformers model without adapters again

"""Llama 3 RoPE scaling, Qwen2/2.5, Qwen3 and tied heads hold to transformers on tiny random configs:
logits, packed rows, the KV cache, a save round trip and LoRA adapters both ways through PEFT."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import train
from model.checkpoint import load_model, save_model
from model.lora import lora_layers
from model.lora_config import LoRAConfig
from model.lora_surgery import apply_lora, merge_lora
from model.peft import load_adapter, save_adapter
from model.transformer import KVCache, ModelConfig
from tests.helpers import GEMMA3, hf_reference, random_model, save_hf_checkpoint, tiny_config

# Llama 3.1's scaling, shrunk so that a 16-wide head has frequencies in all three bands: kept
# (wavelength < 16), blended and stretched (wavelength > 64).
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

ARCHITECTURES = {
    # Llama 3.2 1B/3B: scaled RoPE and a tied head
    "llama3-rope-scaling-tied": tiny_config(
        model_type="llama", rope_theta=500000.0, rope_scaling=LLAMA3_ROPE, tie_word_embeddings=True
    ),
    "qwen2": tiny_config(model_type="qwen2", rope_theta=1000000.0, rms_norm_eps=1e-6),
    # Layer 0 attends fully, layer 1 through a window shorter than the sequences; tied like Qwen2.5 0.5B-3B.
    "qwen2-sliding-window-tied": tiny_config(
        model_type="qwen2", sliding_window=5, max_window_layers=1, tie_word_embeddings=True
    ),
    "qwen3": tiny_config(model_type="qwen3", head_dim=24),
    # attention_bias puts biases on all four projections, as in Llama
    "qwen3-bias-tied": tiny_config(model_type="qwen3", head_dim=24, attention_bias=True, tie_word_embeddings=True),
    "gemma3": GEMMA3,
}


@pytest.fixture(scope="module", params=ARCHITECTURES)
def pair(request, tmp_path_factory):
    """transformers' random model of the architecture, its checkpoint, and ours loaded from it (fp32)."""
    config = ARCHITECTURES[request.param]
    hf_model = hf_reference(config)
    path = save_hf_checkpoint(hf_model, tmp_path_factory.mktemp(request.param))
    return config, path, hf_model, load_model(path, torch.float32).eval()


# LoRA through PEFT on Gemma 3 crosses no new code (its projections are named as Llama's; its new behaviour is the
# base's, which the parity tests check): slow there, to keep the fast tier short.
LORA_PAIRS = [pytest.param(name, marks=pytest.mark.slow) if name == "gemma3" else name for name in ARCHITECTURES]


def sample_ids(config: ModelConfig, length: int = 23, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (2, length), generator=torch.Generator().manual_seed(seed))


def test_config_round_trips_through_the_hf_dict():
    for config in ARCHITECTURES.values():
        assert ModelConfig.from_hf(config.to_hf(torch.float32)) == config


def test_logits_equal_transformers(pair):
    config, _, hf_model, ours = pair
    assert ours.config == config  # read back from the config.json transformers wrote
    with torch.no_grad():
        torch.testing.assert_close(ours(sample_ids(config)), hf_model(sample_ids(config)).logits, atol=1e-4, rtol=0)


def test_llama3_scaling_changes_the_logits_of_the_config_tested():
    """Else the tests above would pass with the scaling ignored."""
    scaled = ARCHITECTURES["llama3-rope-scaling-tied"]
    ids = sample_ids(scaled)
    with torch.no_grad():  # (the same seed gives both the same weights)
        difference = hf_reference(scaled)(ids).logits - hf_reference(replace(scaled, rope_scaling=None))(ids).logits
    assert difference.abs().max() > 1e-3


def test_packed_rows_equal_transformers_on_each_session_alone(pair):
    config, _, hf_model, ours = pair
    rows = [[5, 9, 4], [12, 1, 5]]  # session lengths; 9 and 12 are longer than qwen2's window of 5
    ids = sample_ids(config, length=18)
    position_ids = torch.stack([torch.cat([torch.arange(n) for n in lengths]) for lengths in rows])
    document_ids = torch.stack([torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)]) for lengths in rows])
    with torch.no_grad():
        packed = ours(ids, position_ids=position_ids, document_ids=document_ids)
        alone = torch.cat(
            [
                torch.cat([hf_model(session[None]).logits for session in row.split(lengths)], dim=1)
                for row, lengths in zip(ids, rows)
            ]
        )
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=0)


def test_kv_cache_prefill_and_decode_equal_transformers_full_forward(pair):
    config, _, hf_model, ours = pair
    ids = sample_ids(config, length=14)[:1]
    with torch.no_grad():
        full = hf_model(ids).logits
        cache = KVCache(config, batch_size=1, max_len=16, dtype=torch.float32, device="cpu")
        steps = [ours(ids[:, :7], kv_cache=cache)]
        steps += [ours(ids[:, i : i + 1], kv_cache=cache) for i in range(7, 11)]
        steps.append(ours(ids[:, 11:], kv_cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=0)


def test_saved_model_loads_in_transformers_with_the_same_logits(pair, tmp_path):
    import transformers

    config, _, _, ours = pair
    save_model(ours, tmp_path / "saved")
    saved_config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved_config["model_type"] == config.model_type
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    assert type(exported).__name__ == saved_config["architectures"][0]
    with torch.no_grad():
        torch.testing.assert_close(exported(sample_ids(config)).logits, ours(sample_ids(config)), atol=1e-4, rtol=0)
    assert load_model(tmp_path / "saved", torch.float32).config == config


@pytest.mark.parametrize("pair", LORA_PAIRS, indirect=True)
def test_our_adapter_loads_in_peft_with_our_logits(pair, tmp_path):
    from peft import PeftModel

    config, path, hf_model, _ = pair
    ours = load_model(path, torch.float32)
    lora = LoRAConfig(r=4, alpha=8, targets=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"))
    apply_lora(ours, lora)
    torch.manual_seed(0)
    with torch.no_grad():
        for module in lora_layers(ours).values():
            module.lora_B.normal_(0, 0.1)
    ours.eval()
    save_adapter(ours, tmp_path / "adapter", lora, base_model=str(path))
    peft_model = PeftModel.from_pretrained(hf_reference(config), tmp_path / "adapter").eval()
    with torch.no_grad():
        tuned = ours(sample_ids(config))
        torch.testing.assert_close(tuned, peft_model(sample_ids(config)).logits, atol=1e-4, rtol=0)
        assert not torch.allclose(tuned, hf_model(sample_ids(config)).logits, atol=1e-3)
        merge_lora(ours)  # the biases of Qwen2's q, k and v stay on the plain layers it puts back
        torch.testing.assert_close(ours(sample_ids(config)), tuned, atol=1e-4, rtol=0)


@pytest.mark.parametrize("pair", LORA_PAIRS, indirect=True)
def test_peft_made_adapter_loads_in_ours_with_peft_logits(pair, tmp_path):
    from peft import LoraConfig, get_peft_model

    config, path, _, _ = pair
    peft_config = LoraConfig(
        r=6,
        lora_alpha=3,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "o_proj", "up_proj"],
    )
    torch.manual_seed(0)
    peft_model = get_peft_model(hf_reference(config), peft_config).eval()
    peft_model.save_pretrained(tmp_path / "peft-adapter")
    ours = load_model(path, torch.float32)
    load_adapter(ours, tmp_path / "peft-adapter")
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(sample_ids(config)), peft_model(sample_ids(config)).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "gemma2"}, "model_type 'gemma2' is not supported"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling of type 'yarn' is not supported"),
        ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e6, "factor": 2.0}}, "type 'dynamic'"),
        ({"mlp_bias": True}, "mlp_bias = True is not supported"),
        ({"layer_types": ["sliding_attention", "full_attention"]}, "layer_types = .* is not supported"),
    ],
)
def test_unsupported_variants_are_refused_in_one_line(change, message):
    hf = {**tiny_config(model_type="qwen2").to_hf(torch.float32), **change}
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_hf(hf)


def test_llama3_scaling_is_read_from_transformers_5_rope_parameters():
    hf = tiny_config(model_type="llama").to_hf(torch.float32)
    del hf["rope_theta"], hf["rope_scaling"]
    hf["rope_parameters"] = {**LLAMA3_ROPE, "rope_theta": 500000.0}
    config = ModelConfig.from_hf(hf)
    assert config.rope_scaling == LLAMA3_ROPE and config.rope_theta == 500000.0


def test_qwen_defaults_window_off_and_head_dim_128():
    hf = tiny_config(model_type="qwen3").to_hf(torch.float32)
    for field in ("head_dim", "use_sliding_window", "max_window_layers"):
        del hf[field]
    hf["sliding_window"] = 4096  # as Qwen's configs say, with use_sliding_window false
    config = ModelConfig.from_hf(hf)
    assert config.head_dim == 128 and config.sliding_window is None and config.window_of(1) is None


@pytest.mark.slow
def test_train_lora_merge_on_a_qwen2_base_exports_what_the_adapter_computes(tmp_path, dolphin_tokenizer):
    import transformers

    config = tiny_config(
        model_type="qwen2", vocab_size=32002, hidden_size=32, intermediate_size=64, tie_word_embeddings=True
    )
    save_model(random_model(config), tmp_path / "base", tokenizer=dolphin_tokenizer)
    sample = Path(__file__).resolve().parents[1] / "examples" / "telegram_export"
    train.main(
        [
            "--lora",
            "--model",
            str(tmp_path / "base"),
            "--data",
            str(sample),
            "--out",
            str(tmp_path / "run"),
            "--seq-len",
            "256",
            "--micro-batch",
            "4",
            "--batch",
            "4",
            "--max-steps",
            "2",
            "--lr",
            "1e-2",
            "--lora-r",
            "4",
            "--lora-alpha",
            "8",
            "--eval-every",
            "0",
            "--save-every",
            "0",
            "--merge",
            "--eval-contexts",
            "1",
        ]
    )
    tuned = load_model(tmp_path / "base", torch.float32)
    load_adapter(tuned, tmp_path / "run" / "adapter")
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "merged", dtype=torch.float32)
    assert type(merged).__name__ == "Qwen2ForCausalLM"
    ids = sample_ids(config)
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(ids).logits, tuned.eval()(ids), atol=1e-3, rtol=0)

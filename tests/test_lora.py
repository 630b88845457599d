"""LoRA layers, and adapters that Hugging Face PEFT and twin exchange in both directions."""
import json

import pytest
import torch

from lora import (AdapterError, LoRAConfig, LoRALinear, adapters_off, apply_lora, dropout, load_adapter,
                  lora_layers, merge_lora, save_adapter)
from model import load_model, save_model
from tests.helpers import hf_reference, save_hf_checkpoint, tiny_config

CONFIG = tiny_config(sliding_window=6)


@pytest.fixture
def base(tmp_path):
    """A tiny base checkpoint on disk and transformers' model of it."""
    hf_model = hf_reference(CONFIG)
    save_hf_checkpoint(hf_model, tmp_path / "base")
    return tmp_path / "base", hf_model


def sample_ids(seed=0):
    return torch.randint(0, CONFIG.vocab_size, (2, 15), generator=torch.Generator().manual_seed(seed))


def randomize_adapters(model, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in lora_layers(model).values():
            module.lora_B.normal_(0, 0.1)


def test_apply_lora_wraps_targets_and_freezes_the_rest(base):
    model = load_model(base[0], torch.float32)
    summary = apply_lora(model, LoRAConfig(r=4, alpha=8))
    names = sorted(lora_layers(model))
    assert len(names) == CONFIG.num_hidden_layers * 5
    assert all(name.rsplit(".", 1)[1] in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj") for name in names)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{part}" for n in names for part in ("lora_A", "lora_B")}
    lora_count = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    assert f"{lora_count:,} trainable" in summary
    # Base weights keep their Hugging Face names.
    assert "model.layers.0.self_attn.q_proj.weight" in dict(model.named_parameters())


def test_fresh_adapter_changes_nothing_and_b_starts_at_zero(base):
    model = load_model(base[0], torch.float32).eval()
    with torch.no_grad():
        before = model(sample_ids())
        apply_lora(model, LoRAConfig(r=4, alpha=8))
        after = model(sample_ids())
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    module = next(iter(lora_layers(model).values()))
    assert module.lora_A.abs().sum() > 0 and module.lora_B.abs().sum() == 0


def test_unknown_target_is_refused(base):
    with pytest.raises(ValueError, match=r"unknown LoRA targets \['qkv'\]"):
        apply_lora(load_model(base[0], torch.float32), LoRAConfig(targets=("qkv",)))


def test_our_adapter_loads_in_peft_with_our_logits(base, tmp_path):
    from peft import PeftModel

    path, hf_model = base
    ours = load_model(path, torch.float32)
    apply_lora(ours, LoRAConfig(r=4, alpha=8))
    randomize_adapters(ours)
    ours.eval()
    save_adapter(ours, tmp_path / "adapter", LoRAConfig(r=4, alpha=8), base_model=str(path))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["r"] == 4
    peft_model = PeftModel.from_pretrained(hf_model, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(sample_ids()), peft_model(sample_ids()).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("use_rslora", [False, True], ids=["lora", "rslora"])
def test_peft_made_adapter_loads_in_ours_with_peft_logits(base, tmp_path, use_rslora):
    from peft import LoraConfig, get_peft_model

    path, hf_model = base
    peft_config = LoraConfig(r=6, lora_alpha=3, lora_dropout=0.1, init_lora_weights=False, use_rslora=use_rslora,
                             target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM")
    torch.manual_seed(0)
    peft_model = get_peft_model(hf_model, peft_config).eval()
    peft_model.save_pretrained(tmp_path / "peft-adapter")
    ours = load_model(path, torch.float32)
    config = load_adapter(ours, tmp_path / "peft-adapter")
    assert config.targets == ("down_proj", "q_proj", "up_proj", "v_proj") and config.r == 6
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(sample_ids()), peft_model(sample_ids()).logits, atol=1e-4, rtol=0)


def test_merged_equals_unmerged_and_exports_for_transformers(base, tmp_path):
    import transformers

    ours = load_model(base[0], torch.float32)
    apply_lora(ours, LoRAConfig(r=4, alpha=8, targets=("q_proj", "down_proj")))
    randomize_adapters(ours)
    ours.eval()
    with torch.no_grad():
        unmerged = ours(sample_ids())
        layer = next(iter(lora_layers(ours).values()))
        layer.merge()
        layer.unmerge()
        torch.testing.assert_close(ours(sample_ids()), unmerged, atol=1e-5, rtol=0)
        merge_lora(ours)
        assert not lora_layers(ours)
        torch.testing.assert_close(ours(sample_ids()), unmerged, atol=1e-4, rtol=0)
    save_model(ours, tmp_path / "merged")
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(sample_ids()).logits, unmerged, atol=1e-4, rtol=0)


def test_lora_path_computes_in_the_input_dtype_with_fp32_adapter_weights():
    linear = torch.nn.Linear(8, 6, bias=False).to(torch.bfloat16)
    layer = LoRALinear(linear, LoRAConfig(r=2, alpha=4, dropout=0.0))
    assert layer.lora_A.dtype == torch.float32 and not layer.weight.requires_grad
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    layer(x).float().sum().backward()
    assert layer.lora_A.grad.dtype == torch.float32 and layer.lora_B.grad is not None


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5])
def test_dropout_keeps_each_element_with_probability_1_minus_p_and_scales_it(p):
    torch.manual_seed(0)
    x = torch.rand(64, 4096).add_(1).requires_grad_()
    y = dropout(x, p)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / (1 - p), rtol=1e-3)
    # Each of the four elements cut from one 64-bit word is kept alike (the word's top bit is not random).
    for lane in range(4):
        assert abs(kept.flatten()[lane::4].float().mean().item() - (1 - p)) < 0.005
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / (1 - p), rtol=1e-3)
    assert abs(y.mean().item() / x.mean().item() - 1) < 0.01


def test_dropout_is_reproducible_from_the_seed_and_off_in_eval_mode():
    layer = LoRALinear(torch.nn.Linear(16, 8, bias=False), LoRAConfig(r=4, dropout=0.5))
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(5, 16)
    outputs = []
    for _ in range(2):
        torch.manual_seed(1)
        outputs.append(layer(x))
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], layer(x))
    layer.eval()
    assert torch.equal(layer(x), layer(x))


@pytest.mark.parametrize("settings, message", [({"dropout": 1.0}, "dropout must be in \\[0, 1\\), got 1.0"),
                                               ({"dropout": -0.1}, "dropout must be in"), ({"r": 0}, "rank")])
def test_impossible_lora_settings_are_refused(settings, message):
    with pytest.raises(AdapterError, match=message):
        LoRAConfig(**settings)


@pytest.mark.parametrize("change, message", [
    ({"use_dora": True}, "use_dora = True is not supported"),
    ({"target_modules": ["lm_head"]}, "target_modules"),
    ({"peft_type": "IA3"}, "peft_type = 'IA3' is not supported"),
])
def test_unsupported_adapter_configs_are_named(base, tmp_path, change, message):
    ours = load_model(base[0], torch.float32)
    apply_lora(ours, LoRAConfig(r=2))
    save_adapter(ours, tmp_path / "adapter", LoRAConfig(r=2), base_model="x")
    config_file = tmp_path / "adapter" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **change}))
    with pytest.raises(AdapterError, match=message):
        load_adapter(load_model(base[0], torch.float32), tmp_path / "adapter")


def test_adapter_of_another_rank_is_refused_with_shapes(base, tmp_path):
    ours = load_model(base[0], torch.float32)
    apply_lora(ours, LoRAConfig(r=2))
    save_adapter(ours, tmp_path / "adapter", LoRAConfig(r=2), base_model="x")
    other = load_model(base[0], torch.float32)
    apply_lora(other, LoRAConfig(r=4))
    with pytest.raises(AdapterError, match=r"lora_A has shape \[2, 64\], the model needs \[4, 64\]"):
        load_adapter(other, tmp_path / "adapter")


def test_missing_adapter_directory_is_named(tmp_path):
    with pytest.raises(AdapterError, match="adapter_config.json: missing"):
        load_adapter(None, tmp_path)


def test_adapters_off_is_the_base_model_and_the_adapters_come_back(base):
    model = load_model(base[0], torch.float32).eval()
    with torch.no_grad():
        base_logits = model(sample_ids())
        apply_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.0))
        randomize_adapters(model)
        tuned_logits = model(sample_ids())
        with adapters_off(model):
            assert torch.equal(model(sample_ids()), base_logits)
        assert torch.equal(model(sample_ids()), tuned_logits)
        assert not torch.allclose(tuned_logits, base_logits)
        next(iter(lora_layers(model).values())).merge()
        with pytest.raises(AdapterError, match="merged"):
            with adapters_off(model):
                pass

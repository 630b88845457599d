"""LoRA layers, and adapters that Hugging Face PEFT and twin exchange in both directions."""

import json
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_model, save_model
from model.lora import LoRALinear, adapters_merged, adapters_off, dropout, lora_layers, token_layers
from model.lora_config import AdapterError, LoRAConfig
from model.lora_surgery import apply_lora, merge_lora
from model.loss import chunked_cross_entropy
from model.peft import load_adapter, save_adapter
from tests.helpers import exit_status, hf_reference, save_hf_checkpoint, tiny_config

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
    peft_config = LoraConfig(
        r=6,
        lora_alpha=3,
        lora_dropout=0.1,
        init_lora_weights=False,
        use_rslora=use_rslora,
        target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
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


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"dropout": 1.0}, "dropout must be in \\[0, 1\\), got 1.0"),
        ({"dropout": -0.1}, "dropout must be in"),
        ({"r": 0}, "rank"),
    ],
)
def test_impossible_lora_settings_are_refused(settings, message):
    with pytest.raises(AdapterError, match=message):
        LoRAConfig(**settings)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"use_dora": True}, "use_dora = True is not supported"),
        ({"target_modules": ["lm_head"]}, "target_modules"),
        ({"peft_type": "IA3"}, "peft_type = 'IA3' is not supported"),
    ],
)
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


def test_adapters_merged_is_the_tuned_model_in_one_matrix_a_projection_and_the_weights_come_back(base):
    model = load_model(base[0], torch.float32).eval()
    apply_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.0))
    randomize_adapters(model)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        tuned_logits = model(sample_ids())
        with adapters_merged(model):
            assert all(layer.merged for layer in lora_layers(model).values())
            torch.testing.assert_close(model(sample_ids()), tuned_logits, atol=1e-5, rtol=0)
        assert not any(layer.merged for layer in lora_layers(model).values())
        for name, tensor in model.state_dict().items():
            torch.testing.assert_close(tensor, before[name], atol=1e-6, rtol=0)
        with adapters_off(model):  # unmerged again: the base model is there to switch to
            assert not torch.allclose(model(sample_ids()), tuned_logits)


def test_adapters_over_an_nf4_base_stay_beside_it_when_merged_for_a_while(base, tmp_path):
    quantized = load_model(base[0], torch.float32, quantize="nf4")
    apply_lora(quantized, LoRAConfig(r=4, alpha=8, dropout=0.0))
    randomize_adapters(quantized)
    with torch.no_grad():
        expected = quantized.eval()(sample_ids())
        with adapters_merged(quantized):
            assert not any(layer.merged for layer in lora_layers(quantized).values())
            assert torch.equal(quantized(sample_ids()), expected)


# --- Trainable tokens: the rows of tokens added to a base model (ChatML's), in PEFT's format ----------

NEW_TOKENS = (CONFIG.vocab_size, CONFIG.vocab_size + 1)  # two tokens added after the base vocabulary


@pytest.fixture(params=[False, True], ids=["untied", "tied"])
def base_of_either_head(request, tmp_path):
    """A tiny base checkpoint with an LM head of its own or tied to the embedding, and transformers' model."""
    config = tiny_config(sliding_window=6, tie_word_embeddings=request.param)
    hf_model = hf_reference(config)
    save_hf_checkpoint(hf_model, tmp_path / "base")
    return tmp_path / "base", hf_model


def ids_with_new_tokens(seed=0):
    ids = torch.randint(0, CONFIG.vocab_size, (2, 15), generator=torch.Generator().manual_seed(seed))
    ids[:, ::4] = torch.tensor(NEW_TOKENS).repeat(2, 2)[:, : ids[:, ::4].shape[1]]
    return ids


def with_new_tokens(**settings) -> LoRAConfig:
    return LoRAConfig(
        r=4, alpha=8, dropout=0.0, trainable_tokens={"embed_tokens": NEW_TOKENS, "lm_head": NEW_TOKENS}, **settings
    )


def randomize_token_rows(model, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in token_layers(model).values():
            module.rows.normal_(0, 0.5)


def test_new_token_rows_start_at_the_mean_and_only_they_train(base_of_either_head):
    model = load_model(base_of_either_head[0], torch.float32)
    embedding_before = model.model.embed_tokens.weight.detach().clone()
    summary = apply_lora(model, with_new_tokens())
    assert "the rows of 2 new tokens" in summary and model.config.vocab_size == CONFIG.vocab_size + 2
    weight = model.model.embed_tokens.weight
    assert torch.equal(weight[: CONFIG.vocab_size], embedding_before)
    torch.testing.assert_close(weight[CONFIG.vocab_size :], embedding_before.mean(0).expand(2, -1))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    tied = model.config.tie_word_embeddings  # a tied head shares the embedding's rows
    assert {name for name in trainable if "lora_" not in name} == (
        {"model.embed_tokens.rows"} | (set() if tied else {"lm_head.rows"})
    )
    labels = ids_with_new_tokens(1)
    chunked_cross_entropy(model.hidden_states(ids_with_new_tokens()), model.lm_head, labels).backward()
    rows = model.model.embed_tokens.rows
    assert rows.grad is not None and rows.grad.abs().sum() > 0
    assert all(p.grad is None for name, p in model.named_parameters() if name not in trainable)


def test_adapter_with_new_tokens_loads_in_peft_with_our_logits(base_of_either_head, tmp_path):
    from peft import PeftModel

    path, hf_model = base_of_either_head
    ours = load_model(path, torch.float32)
    apply_lora(ours, with_new_tokens())
    randomize_adapters(ours)
    randomize_token_rows(ours)
    ours.eval()
    save_adapter(ours, tmp_path / "adapter", with_new_tokens(), base_model=str(path))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == {"embed_tokens": list(NEW_TOKENS), "lm_head": list(NEW_TOKENS)}
    hf_model.resize_token_embeddings(CONFIG.vocab_size + 2)  # as the tokenizer saved with the adapter asks
    peft_model = PeftModel.from_pretrained(hf_model, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            ours(ids_with_new_tokens()), peft_model(ids_with_new_tokens()).logits, atol=1e-4, rtol=0
        )


def test_peft_made_adapter_with_new_tokens_loads_in_ours_with_peft_logits(base_of_either_head, tmp_path):
    from peft import LoraConfig, get_peft_model

    path, hf_model = base_of_either_head
    hf_model.resize_token_embeddings(CONFIG.vocab_size + 2)
    tied = hf_model.config.tie_word_embeddings
    indices = list(NEW_TOKENS) if tied else {"embed_tokens": list(NEW_TOKENS), "lm_head": list(NEW_TOKENS)}
    peft_config = LoraConfig(
        r=4,
        lora_alpha=8,
        init_lora_weights=False,
        target_modules=["q_proj", "down_proj"],
        trainable_token_indices=indices,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(0)
    peft_model = get_peft_model(hf_model, peft_config).eval()
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "trainable_tokens_delta" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path / "peft-adapter")
    ours = load_model(path, torch.float32)  # the base vocabulary: loading the adapter grows it
    config = load_adapter(ours, tmp_path / "peft-adapter")
    assert config.trainable_tokens["embed_tokens"] == NEW_TOKENS
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            ours(ids_with_new_tokens()), peft_model(ids_with_new_tokens()).logits, atol=1e-4, rtol=0
        )


def test_new_token_rows_merge_and_switch_off(base_of_either_head, tmp_path):
    import transformers

    model = load_model(base_of_either_head[0], torch.float32).eval()
    apply_lora(model, with_new_tokens())
    with torch.no_grad():
        untrained = model(ids_with_new_tokens())
        randomize_token_rows(model)
        tuned = model(ids_with_new_tokens())
        with adapters_off(model):
            assert torch.equal(model(ids_with_new_tokens()), untrained)
        assert torch.equal(model(ids_with_new_tokens()), tuned) and not torch.allclose(tuned, untrained)
        merge_lora(model)
        assert not token_layers(model) and model.model.embed_tokens.weight.shape[0] == CONFIG.vocab_size + 2
        assert (model.lm_head.weight is model.model.embed_tokens.weight) == model.config.tie_word_embeddings
        torch.testing.assert_close(model(ids_with_new_tokens()), tuned, atol=1e-5, rtol=0)
    save_model(model, tmp_path / "merged")
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(ids_with_new_tokens()).logits, tuned, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "indices, message",
    [
        ([-1], "trainable_token_indices must be"),
        ([1.5], "trainable_token_indices must be"),
        ([], "trainable_token_indices must be"),
        ([3, 3], "trainable_token_indices must be"),
        ({"wte": [3]}, "trainable_token_indices must be"),
        ("256", "trainable_token_indices must be"),
        ([10**9], "trainable_token_indices must be"),
        (
            [CONFIG.vocab_size + 5],
            "adapter_config.json: trainable token 261 of embed_tokens is beyond the model's vocabulary of 256 tokens",
        ),
    ],
)
def test_impossible_trainable_tokens_are_named_and_leave_the_model_as_it_was(base, tmp_path, indices, message):
    ours = load_model(base[0], torch.float32)
    apply_lora(ours, with_new_tokens())
    save_adapter(ours, tmp_path / "adapter", with_new_tokens(), base_model="x")
    config_file = tmp_path / "adapter" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "trainable_token_indices": indices}))
    fresh = load_model(base[0], torch.float32)
    with pytest.raises(AdapterError, match=message):
        load_adapter(fresh, tmp_path / "adapter")
    assert not lora_layers(fresh) and not token_layers(fresh) and fresh.config.vocab_size == CONFIG.vocab_size


# What vLLM's LoRA loader requires of a PEFT adapter (vllm/lora/peft_helper.py, lora_model.py and utils.py, read
# for vLLM 0.11-0.13), restated here: vLLM is no test dependency, as it needs a GPU build. Its Llama, Mistral
# and Qwen2/3 models take LoRA on these projections (q/k/v and gate/up as parts of their packed qkv_proj and
# gate_up_proj); --max-lora-rank (default 16) is one of VLLM_MAX_LORA_RANKS.
VLLM_LORA_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_refusals(adapter_dir) -> list[str]:
    """Each reason vLLM's loader would refuse the adapter; none for one it serves."""
    from safetensors import safe_open

    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    refusals = [f"missing {key}" for key in ("r", "lora_alpha", "target_modules") if key not in config]
    refusals += [
        f"{key} is not supported"
        for key, supported in [("modules_to_save", None), ("use_dora", False), ("bias", "none")]
        if config.get(key, supported) not in (supported, [])
    ]
    refusals += [f"target module {name}" for name in config.get("target_modules", []) if name not in VLLM_LORA_MODULES]
    if config.get("r", 0) > VLLM_MAX_LORA_RANKS[-1]:
        refusals.append(f"rank {config['r']} is above every --max-lora-rank")
    with safe_open(adapter_dir / "adapter_model.safetensors", framework="pt") as weights:
        for key in weights.keys():  # vllm.lora.utils.parse_fine_tuned_lora_name, then the module check
            parts = key.removeprefix("base_model.model.").split(".")
            if parts[-1] == "weight" and parts[-2] in ("lora_A", "lora_B"):
                module = parts[-3]
            elif parts[-1] in ("lora_embedding_A", "lora_embedding_B"):
                module = parts[-2]
            else:
                refusals.append(f"{key} is unsupported LoRA weight")
                continue
            if module not in VLLM_LORA_MODULES:
                refusals.append(f"{key}: unexpected module {module}")
    return refusals


def test_the_adapter_of_a_run_is_one_vllm_serves(tiny_run):
    from safetensors import safe_open

    adapter = tiny_run / "adapter"
    assert vllm_refusals(adapter) == []
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    assert (
        config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    )  # served with --max-lora-rank 8
    assert config["base_model_name_or_path"] and config["trainable_token_indices"] is None
    layers = range(load_model(config["base_model_name_or_path"], torch.float32).config.num_hidden_layers)
    expected = {
        f"base_model.model.model.layers.{layer}.{block}.{name}.lora_{part}.weight"
        for layer in layers
        for name in config["target_modules"]
        for part in "AB"
        for block in ["mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"]
    }
    with safe_open(adapter / "adapter_model.safetensors", framework="pt") as weights:
        assert set(weights.keys()) == expected and weights.metadata() == {"format": "pt"}
        assert all(
            weights.get_tensor(key).shape[0 if key.endswith("lora_A.weight") else 1] == config["r"] for key in expected
        )


def test_an_adapter_with_new_token_rows_is_one_vllm_refuses(base, tmp_path):
    """train.py gives a base without ChatML's tokens their rows (PEFT's trainable tokens). vLLM dropped
    LoRA's extra vocabulary (lora_extra_vocab_size) and reads no trainable_tokens_delta: such a run is served
    from its merged model (train.py --merge) instead, which the check must say rather than pass."""
    model = load_model(base[0], torch.float32)
    config = with_new_tokens()
    apply_lora(model, config)
    save_adapter(model, tmp_path / "adapter", config, base_model=str(base[0]))
    refusals = sorted(vllm_refusals(tmp_path / "adapter"))
    assert refusals == [
        f"base_model.model.{layer}.token_adapter.trainable_tokens_delta is unsupported LoRA weight"
        for layer in ("lm_head", "model.embed_tokens")
    ]


# -- LoRA over a 4-bit base (--quantize nf4) -------------------------------------------------------------


def lm_loss(model, ids):
    labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)
    return chunked_cross_entropy(model.hidden_states(ids), model.lm_head, labels) / labels.numel()


def test_lora_over_an_nf4_base_learns_with_checkpointing_and_saves_a_peft_adapter_of_the_full_base(base, tmp_path):
    from peft import PeftModel

    path, hf_model = base
    config = LoRAConfig(r=4, alpha=8, dropout=0.0, targets=("q_proj", "v_proj", "gate_proj", "down_proj"))
    model = load_model(path, torch.float32, quantize="nf4")
    apply_lora(model, config)
    model.train()
    # Activation checkpointing recomputes the 4-bit layers' forward pass: the gradients are the same.
    gradients = []
    for checkpointing in (False, True):
        model.activation_checkpointing = checkpointing
        model.zero_grad()
        lm_loss(model, sample_ids()).backward()
        gradients.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    for without, with_checkpointing in zip(*gradients):
        torch.testing.assert_close(with_checkpointing, without, atol=1e-6, rtol=1e-5)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        loss = lm_loss(model, sample_ids())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses

    model.eval()
    save_adapter(model, tmp_path / "adapter", config, base_model=str(path))
    peft_model = PeftModel.from_pretrained(hf_model, tmp_path / "adapter").eval()
    full = load_model(path, torch.float32)
    load_adapter(full, tmp_path / "adapter")
    with torch.no_grad():
        expected = peft_model(sample_ids()).logits
        torch.testing.assert_close(full.eval()(sample_ids()), expected, atol=1e-4, rtol=0)
        assert (model(sample_ids()) - expected).norm() / expected.norm() < 0.3  # test_nf4's tolerance


def test_an_adapter_loads_unmerged_over_an_nf4_base_and_merging_it_is_refused(base, tmp_path):
    path, _ = base
    ours = load_model(path, torch.float32)
    apply_lora(ours, LoRAConfig(r=4, alpha=8))
    randomize_adapters(ours)
    save_adapter(ours, tmp_path / "adapter", LoRAConfig(r=4, alpha=8), base_model=str(path))
    quantized = load_model(path, torch.float32, quantize="nf4")
    load_adapter(quantized, tmp_path / "adapter")
    layer = quantized.model.layers[0].self_attn.q_proj
    assert isinstance(layer, LoRALinear) and layer.weight is None and layer.base is not None
    with pytest.raises(AdapterError, match="4-bit base is not merged"):
        merge_lora(quantized)


def test_quantize_with_merge_or_fsdp_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    import train

    monkeypatch.setenv("RANK", "0")  # as under torchrun, which --fsdp asks for first
    for flags in (["--lora", "--merge"], ["--fsdp"]):
        status = exit_status(train.main, [*flags, "--quantize", "nf4", "--data", tmp_path, "--out", tmp_path / "run"])
        error = capsys.readouterr().err
        assert status == 2 and error.count("\n") == 1 and "--quantize nf4 goes with --lora" in error, error


@pytest.mark.slow
def test_train_and_sample_on_an_nf4_base(tiny_checkpoint, tmp_path, capsys):
    import sample
    import train

    out = tmp_path / "run"
    export = Path(__file__).resolve().parents[1] / "examples" / "telegram_export"
    train.main(
        [
            "--lora",
            "--quantize",
            "nf4",
            "--model",
            str(tiny_checkpoint),
            "--data",
            str(export),
            "--out",
            str(out),
            "--seq-len",
            "128",
            "--micro-batch",
            "2",
            "--batch",
            "2",
            "--max-steps",
            "2",
            "--lora-r",
            "4",
            "--eval-every",
            "0",
            "--save-every",
            "0",
            "--no-eval-report",
        ]
    )
    printed = capsys.readouterr().out
    assert "quantized to nf4" in printed and f"python sample.py --checkpoint {out} --quantize nf4" in printed
    assert json.loads((out / "run.json").read_text())["settings"]["lora"]["quantize"] == "nf4"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    sample.main(
        ["--checkpoint", str(out), "--quantize", "nf4", "--prompt", "привет", "--max-new-tokens", "6", "--seed", "0"]
    )
    captured = capsys.readouterr()
    assert "linear weights in nf4" in captured.err and captured.out.strip()

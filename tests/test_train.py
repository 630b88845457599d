"""train.py --lora end to end on a tiny model and the bundled sample export."""

import json
import math
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from model.loss import chunked_cross_entropy
from tests.helpers import random_model, tiny_config
from training import run as runs
from training import settings
from training.loop import cosine_schedule, train_step

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "telegram_export"
FAST = [
    "--seq-len",
    "256",
    "--micro-batch",
    "2",
    "--batch",
    "4",
    "--lora-r",
    "4",
    "--lora-alpha",
    "8",
    "--no-eval-report",
    "--eval-every",
    "0",
    "--save-every",
    "0",
]


def run_train(*args: str):
    train.main(["--lora", *map(str, args)])


def adapter_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


def test_lora_run_writes_adapter_metrics_and_record(tmp_path, tiny_checkpoint):
    out = tmp_path / "run"
    run_train(
        "--model",
        tiny_checkpoint,
        "--data",
        SAMPLE,
        "--out",
        out,
        "--max-steps",
        6,
        "--lr",
        1e-2,
        "--eval-every",
        3,
        *FAST[:-4],
        "--save-every",
        3,
    )
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "adapter" / "tokenizer.model").exists()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "lr", "tokens_per_s"} <= r.keys() for r in steps)
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert evals[-1]["eval_perplexity"] == pytest.approx(math.exp(evals[-1]["eval_loss"]))
    assert steps[-1]["loss"] < steps[0]["loss"]
    run = json.loads((out / "run.json").read_text())
    assert run["figures"]["steps"] == 6 and run["figures"]["target"] == "Alexander Smirnov"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]
    assert not (out / "report").exists()  # --no-eval-report


def test_keep_best_ends_with_the_checkpoint_of_the_lowest_held_out_loss(tmp_path, tiny_checkpoint, monkeypatch):
    losses = iter([3.0, 1.0, 2.0])  # the held-out losses of steps 1 to 3 (the last: the final evaluation)
    monkeypatch.setattr(runs, "evaluate", lambda *args: (next(losses), 100))
    out = tmp_path / "run"
    run_train(
        "--model",
        tiny_checkpoint,
        "--data",
        SAMPLE,
        "--out",
        out,
        "--max-steps",
        3,
        "--lr",
        1e-2,
        *FAST[:-4],
        "--eval-every",
        1,
        "--save-every",
        0,
        "--keep-checkpoints",
        1,
        "--keep-best",
    )
    figures = json.loads((out / "run.json").read_text())["figures"]
    assert figures["best_step"] == 2 and figures["eval_loss"] == 1.0 and figures["steps"] == 3
    assert [path.name for path in (out / "checkpoints").iterdir() if path.is_dir()] == ["step-00000002"]
    best = load_file(out / "checkpoints" / "step-00000002" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(best[name], weights) for name, weights in adapter_weights(out).items())


@pytest.mark.slow  # three runs
def test_stop_and_resume_gives_the_same_adapter_as_a_straight_run(tmp_path, tiny_checkpoint):
    common = ["--model", tiny_checkpoint, "--data", SAMPLE, "--max-steps", 6, "--lr", 5e-3, *FAST]
    run_train(*common, "--out", tmp_path / "straight")
    run_train(*common, "--out", tmp_path / "split", "--stop-at", 3)
    assert not (tmp_path / "split" / "adapter").exists()
    train.main(["--resume", str(tmp_path / "split")])
    straight, resumed = adapter_weights(tmp_path / "straight"), adapter_weights(tmp_path / "split")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], atol=0, rtol=0, msg=name)
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert len(losses) == 6


def test_merge_writes_a_full_model(tiny_run):
    import transformers

    merged = transformers.AutoModelForCausalLM.from_pretrained(tiny_run / "merged")  # a train.py --merge run
    assert merged.config.vocab_size == 32002


def test_accumulated_gradient_equals_the_full_batch_gradient():
    config = tiny_config()
    ids = torch.randint(0, config.vocab_size, (3, 12))
    labels = ids.clone()
    labels[0, :10] = -100
    batch = {
        "input_ids": ids,
        "labels": labels,
        "position_ids": torch.arange(12).expand(3, 12),
        "document_ids": torch.zeros(3, 12, dtype=torch.long),
    }
    split = [{k: v[:1] for k, v in batch.items()}, {k: v[1:] for k, v in batch.items()}]

    def gradient_after(window):
        model = random_model(config).train()
        captured = {}
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        optimizer.step = lambda: captured.update(g=model.lm_head.weight.grad.clone())
        loss, _ = train_step(model, optimizer, window, torch.device("cpu"), grad_clip=0)
        return loss, captured["g"]

    full_loss, full_grad = gradient_after([batch])
    split_loss, split_grad = gradient_after(split)
    assert split_loss == pytest.approx(full_loss, rel=1e-5)
    torch.testing.assert_close(split_grad, full_grad, atol=1e-6, rtol=1e-4)
    # And it is the mean over all 26 trained tokens, not a mean of per-micro-batch means.
    model = random_model(config)
    with torch.no_grad():
        per_token = chunked_cross_entropy(model.hidden_states(ids), model.lm_head, labels).item() / 26
    assert full_loss == pytest.approx(per_token, rel=1e-5)


def test_micro_batches_without_trained_tokens_add_nothing_and_a_window_of_them_no_step():
    config = tiny_config()
    ids = torch.randint(0, config.vocab_size, (1, 12))
    untrained = {
        "input_ids": ids,
        "labels": torch.full_like(ids, -100),
        "position_ids": torch.arange(12)[None],
        "document_ids": torch.zeros(1, 12, dtype=torch.long),
    }
    trained = {**untrained, "labels": ids.roll(-1, dims=1)}
    model = random_model(config).train()  # every weight trains, the LM head's too
    before = {n: p.clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert train_step(model, optimizer, [untrained], torch.device("cpu"), grad_clip=1.0) == (0.0, 0.0)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    _, with_empty = train_step(
        random_model(config).train(),
        torch.optim.SGD(model.parameters(), lr=0.0),
        [trained, untrained],
        torch.device("cpu"),
        grad_clip=0,
    )
    _, alone = train_step(
        random_model(config).train(),
        torch.optim.SGD(model.parameters(), lr=0.0),
        [trained],
        torch.device("cpu"),
        grad_clip=0,
    )
    assert with_empty == pytest.approx(alone, rel=1e-6)


def test_a_metrics_line_cut_short_by_a_crash_is_dropped(tmp_path):
    from training.loop import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n{"step": 3, "lo')
    MetricsLog(path, after_step=2).write({"step": 3, "loss": 1.8})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    MetricsLog(path)  # a fresh start
    assert path.read_text() == ""


def test_cosine_schedule_warms_up_then_decays_to_zero():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = cosine_schedule(optimizer, warmup_steps=4, total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:])) and lrs[-1] < 0.01


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    out = tmp_path / "run"
    from training import loop as training

    real_forward_loss = training.forward_loss
    calls = {"n": 0}

    def poisoned(model, batch, device):
        calls["n"] += 1
        loss = real_forward_loss(model, batch, device)
        return loss * float("nan") if calls["n"] > 4 else loss  # steps 1-2 fine (2 micro-batches each)

    monkeypatch.setattr(training, "forward_loss", poisoned)
    with pytest.raises(SystemExit) as exit_info:
        run_train(
            "--model", tiny_checkpoint, "--data", SAMPLE, "--out", out, "--max-steps", 5, *FAST[:-2], "--save-every", 2
        )
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: loss is nan") and "step-00000002" in error
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    assert not (out / "adapter").exists()


def refused(argv: list, capsys) -> str:
    """What train.py said, in one line on stderr, ending with the status of a user error."""
    with pytest.raises(SystemExit) as exit_info:
        train.main(list(map(str, argv)))
    said = capsys.readouterr().err
    assert exit_info.value.code == 2 and said.count("\n") == 1 and said.startswith("error: "), said
    return said


def test_bad_data_path_is_one_error_line(tmp_path, tiny_checkpoint, capsys):
    # In this process, where a traceback would fail the test; a process of its own: tests/test_distributed.py.
    argv = ["--lora", "--model", tiny_checkpoint, "--data", tmp_path / "missing.json", "--out", tmp_path / "o"]
    assert "missing.json" in refused(argv, capsys)


def test_an_out_holding_a_run_is_refused_and_resume_needs_a_run(tmp_path, tiny_run, tiny_checkpoint, capsys):
    before = sorted(p.relative_to(tiny_run) for p in tiny_run.rglob("*"))
    fresh = refused(["--lora", "--model", tiny_checkpoint, "--data", SAMPLE, "--out", tiny_run], capsys)
    assert f"--out {tiny_run} holds a finished run" in fresh
    assert "--resume" not in fresh  # a finished run cannot be continued
    assert sorted(p.relative_to(tiny_run) for p in tiny_run.rglob("*")) == before
    assert f"{tmp_path / 'run.json'} not found" in refused(["--resume", tmp_path], capsys)


def test_a_fresh_run_into_an_unfinished_one_points_to_resume(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "run"
    run_train("--model", tiny_checkpoint, "--data", SAMPLE, "--out", out, "--max-steps", 2, "--stop-at", 1, *FAST)
    capsys.readouterr()
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "running" and record["settings"]["optimization"]["max_steps"] == 2
    assert "invocation" not in record["settings"]  # a stop belongs to the invocation that asked for it
    assert refused(["--lora", "--model", tiny_checkpoint, "--data", SAMPLE, "--out", out, *FAST], capsys) == (
        f"error: --out {out} holds an unfinished run; continue it with --resume {out}, or choose another --out\n"
    )


def test_resuming_a_finished_run_says_so_and_changes_nothing(tiny_run, capsys):
    before = {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*")}
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--resume", str(tiny_run)])
    assert exit_info.value.code == 0
    said = capsys.readouterr()
    assert said.err == "" and said.out.count("\n") == 1 and f"{tiny_run} is a finished run" in said.out
    assert {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*")} == before


@pytest.mark.slow  # with the fidelity report; tests/test_hostile_runs.py resumes such a run without it
def test_a_run_killed_after_its_final_checkpoint_is_finished_by_resume(tmp_path, tiny_checkpoint):
    # --save-every divides the steps: the newest checkpoint is at the final step, and resuming from it
    # has no step left to train, only the results to write.
    out = tmp_path / "run"
    run_train(
        "--model", tiny_checkpoint, "--data", SAMPLE, "--out", out, "--max-steps", 2, *FAST[:-2], "--save-every", 2
    )
    finished = json.loads((out / "run.json").read_text())
    adapter = adapter_weights(out)
    # Killed before the results were written: the adapter missing, the record still "running".
    shutil.rmtree(out / "adapter")
    (out / "run.json").write_text(json.dumps({"status": "running", "settings": finished["settings"]}))
    previous = os.umask(0o022)
    try:
        train.main(["--resume", str(out), "--eval-report", "--eval-contexts", "1"])
    finally:
        os.umask(previous)
    resumed = json.loads((out / "run.json").read_text())
    assert resumed["figures"]["steps"] == 2 and resumed["figures"]["final_loss"] == finished["figures"]["final_loss"]
    assert resumed["figures"]["eval_loss"] == pytest.approx(finished["figures"]["eval_loss"], rel=1e-6)
    for name, tensor in adapter_weights(out).items():
        torch.testing.assert_close(tensor, adapter[name], atol=0, rtol=0, msg=name)
    assert (out / "report" / "report.md").exists()
    report = [out / "report", *(out / "report").iterdir()]  # private too (the rest: the test below)
    assert {stat.S_IMODE(p.stat().st_mode) for p in report} == {0o700, 0o600}


@pytest.mark.slow  # a run with every output: checkpoints, adapter, merged model
def test_everything_a_run_writes_is_private_to_its_owner(tmp_path, tiny_checkpoint):
    out = tmp_path / "run"
    previous = os.umask(0o022)  # an ordinary umask: train.py itself must make its files private
    try:
        run_train(
            "--model",
            tiny_checkpoint,
            "--data",
            SAMPLE,
            "--out",
            out,
            "--max-steps",
            2,
            "--merge",
            *FAST[:-2],
            "--save-every",
            1,
        )
    finally:
        os.umask(previous)
    written = [out, *out.rglob("*")]
    assert {"cache", "checkpoints", "adapter", "merged", "metrics.jsonl", "run.json"} <= {p.name for p in written}
    assert (out / "checkpoints" / "step-00000002" / "training_state.pt").exists()
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in written}
    assert {
        name: mode for name, mode in modes.items() if mode != (0o700 if (tmp_path / name).is_dir() else 0o600)
    } == {}


def test_a_run_with_nothing_held_out_skips_evaluation(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "run"
    run_train(
        "--model",
        tiny_checkpoint,
        "--data",
        SAMPLE,
        "--out",
        out,
        "--max-steps",
        2,
        "--val-fraction",
        0,
        *FAST[:-4],
        "--eval-every",
        1,
        "--save-every",
        0,
    )
    assert "no held-out sessions, so no evaluation" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and not any("eval_loss" in r for r in records)
    assert "eval_loss" not in json.loads((out / "run.json").read_text())["figures"]


def test_unknown_target_lists_the_top_speakers(tmp_path, tiny_checkpoint, capsys):
    with pytest.raises(SystemExit):
        run_train("--model", tiny_checkpoint, "--data", SAMPLE, "--out", tmp_path / "o", "--target", "Nobody Here")
    error = capsys.readouterr().err
    assert "Nobody Here" in error and "Alexander Smirnov" in error


def test_help_documents_every_flag_with_its_default():
    import argparse

    for action in settings.build_parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.dest
            if action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in action.help, action.dest


def test_out_of_memory_names_the_knobs(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(runs, "train_step", out_of_memory)
    with pytest.raises(SystemExit) as exit_info:
        run_train("--model", tiny_checkpoint, "--data", SAMPLE, "--out", tmp_path / "o", *FAST)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: the GPU ran out of memory at --micro-batch 2, --seq-len 256")
    assert "--activation-checkpointing" in error


def test_a_lora_run_ends_with_the_fidelity_report(tiny_run):
    report = json.loads((tiny_run / "report" / "report.json").read_text())
    assert (tiny_run / "report" / "report.md").exists()
    assert (tiny_run / "loss_curves.png").read_bytes().startswith(b"\x89PNG")  # beside the run, as well
    assert "Alexander Smirnov" in json.dumps(report)


# --- A base of each chat format, end to end: train.py --lora, then sample.py on the run ----------------


def tiny_base(path: Path, tokenizer, **config) -> Path:
    """A tiny random model of the tokenizer's vocabulary, saved with the tokenizer like a Hugging Face model."""
    from model.checkpoint import save_model

    model = random_model(tiny_config(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, **config))
    save_model(model, path, tokenizer=tokenizer)
    return path


def train_then_chat(base: Path, out: Path, capsys) -> str:
    """A two-step LoRA run on the sample export, then sample.py's reply to "привет" as the target."""
    import sample

    run_train("--model", base, "--data", SAMPLE, "--out", out, "--max-steps", 2, "--lr", 1e-2, *FAST)
    capsys.readouterr()
    sample.main(
        [
            "--checkpoint",
            str(out),
            "--speaker",
            "Alexander Smirnov",
            "--prompt",
            "привет",
            "--max-new-tokens",
            "8",
            "--seed",
            "0",
        ]
    )
    return capsys.readouterr().out


@pytest.mark.slow  # a run, then a chat
@pytest.mark.parametrize(
    "name, config, turn_end",
    [
        ("llama3", dict(model_type="llama", rope_theta=500000.0, tie_word_embeddings=True), "<|eot_id|>"),
        ("qwen2", dict(model_type="qwen2", rope_theta=1000000.0), "<|im_end|>"),
    ],
)
def test_llama3_and_qwen2_bases_train_in_their_own_format_and_chat(request, tmp_path, capsys, name, config, turn_end):
    from data.chatml import chat_format
    from model.checkpoint import load_tokenizer

    tokenizer_dir = request.getfixturevalue(f"{name}_tokenizer_dir")
    base = tiny_base(tmp_path / "base", load_tokenizer(tokenizer_dir), **config)
    reply = train_then_chat(base, tmp_path / "run", capsys)
    assert reply.startswith("\nAlexander Smirnov:\n") and reply.strip() != "Alexander Smirnov:"
    adapter_config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["trainable_token_indices"] is None  # the tokenizer had its chat tokens already
    assert chat_format(load_tokenizer(tmp_path / "run" / "adapter")).turn_end == turn_end


@pytest.mark.slow  # a run, a chat, then PEFT on its adapter
def test_a_base_without_chat_tokens_learns_chatml_rows_with_lora_and_chats(tmp_path, capsys, mistral_tokenizer_dir):
    from model.checkpoint import load_tokenizer
    from model.sentencepiece_tokenizer import SentencePieceTokenizer

    base = tiny_base(tmp_path / "base", SentencePieceTokenizer.from_dir(mistral_tokenizer_dir))
    reply = train_then_chat(base, tmp_path / "run", capsys)
    assert reply.startswith("\nAlexander Smirnov:\n")
    adapter = tmp_path / "run" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == {"embed_tokens": [32000, 32001], "lm_head": [32000, 32001]}
    grown = load_tokenizer(adapter)
    assert (grown.vocab_size, grown.im_end_id, grown.im_start_id) == (32002, 32000, 32001)
    rows = load_file(adapter / "adapter_model.safetensors")[
        "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"
    ]
    start = load_file(base / "model.safetensors")["model.embed_tokens.weight"].float().mean(0)
    assert rows.shape == (2, 32) and not torch.allclose(rows, start.expand(2, -1))  # trained from the mean

    # PEFT loads the adapter on the base grown to the saved tokenizer, and computes what twin does
    import transformers
    from peft import PeftModel

    from model.checkpoint import load_model
    from model.peft import load_adapter

    hf_base = transformers.AutoModelForCausalLM.from_pretrained(base)
    hf_base.resize_token_embeddings(grown.vocab_size)
    peft_model = PeftModel.from_pretrained(hf_base, adapter).eval()
    ours = load_model(base, torch.float32)
    load_adapter(ours, adapter)
    ids = torch.tensor([grown.encode("<|im_start|>Alexander Smirnov\n>>> привет<|im_end|>")])
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(ids), peft_model(ids).logits, atol=1e-4, rtol=0)


@pytest.mark.slow  # three runs
def test_new_token_rows_resume_as_if_never_stopped(tmp_path, mistral_tokenizer_dir):
    from model.sentencepiece_tokenizer import SentencePieceTokenizer

    base = tiny_base(tmp_path / "base", SentencePieceTokenizer.from_dir(mistral_tokenizer_dir))
    common = ["--model", base, "--data", SAMPLE, "--max-steps", 4, "--lr", 5e-3, *FAST]
    run_train(*common, "--out", tmp_path / "straight")
    run_train(*common, "--out", tmp_path / "split", "--stop-at", 2)
    train.main(["--resume", str(tmp_path / "split")])
    straight, resumed = adapter_weights(tmp_path / "straight"), adapter_weights(tmp_path / "split")
    assert straight.keys() == resumed.keys() and any("trainable_tokens" in key for key in straight)
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], atol=0, rtol=0, msg=name)


def test_fsdp_refuses_a_gguf_file_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")  # as under torchrun
    said = refused(["--fsdp", "--model", tmp_path / "model.gguf", "--data", SAMPLE, "--out", tmp_path / "run"], capsys)
    assert "--fsdp reads Hugging Face model folders, not GGUF files" in said and not (tmp_path / "run").exists()

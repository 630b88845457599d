"""evaluate.py, the program: a run folder or --model/--adapter in, a report and the next command out; a tuned
model that beats its base; one line and status 2 for bad arguments. The mechanics are tested beside their
modules in fidelity/ (tests/test_plan.py, test_measure.py, test_report.py, test_markdown.py)."""

import json
from pathlib import Path

import pytest
import torch

import evaluate
import fidelity.evaluation
import sample
import train
from data.dataset import prepare_data
from data.settings import DataConfig
from fidelity.measure import measure
from fidelity.plan import EvalSettings, plan_evaluation
from fidelity.verdict import ANSWERS_FILE
from model.checkpoint import load_model, save_model
from model.lora import lora_layers
from tests.helpers import random_model, tiny_config

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "telegram_export"
TARGET = "Alexander Smirnov"
CPU = torch.device("cpu")


def tiny_model(seed: int = 0):
    return random_model(tiny_config(vocab_size=32002, hidden_size=32, intermediate_size=64), seed=seed)


@pytest.mark.slow
def test_report_after_training_shows_the_tuned_model_beating_its_base(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "run"
    train.main(
        [
            "--lora",
            "--model",
            str(tiny_checkpoint),
            "--data",
            str(SAMPLE),
            "--out",
            str(out),
            "--val-fraction",
            "0.1",
            "--seq-len",
            "256",
            "--micro-batch",
            "2",
            "--batch",
            "4",
            "--max-steps",
            "6",
            "--lr",
            "2e-2",
            "--lora-r",
            "4",
            "--lora-alpha",
            "8",
            "--eval-every",
            "3",
            "--save-every",
            "0",
            "--no-eval-report",
            # The report's loss table is each speaker's loss without the memory (its memory section has both):
            # trained without one, the run's own held-out loss is the same sum.
            "--history-tokens",
            "0",
            "--recall",
            "0",
        ]
    )
    evaluate.main(["--checkpoint", str(out), "--speakers", "100", "--contexts", "1", "--max-new-tokens", "4"])
    figures = json.loads((out / "report" / "report.json").read_text())
    speakers = figures["speakers"]
    assert speakers[0]["speaker"] == TARGET and len(speakers) >= 3
    for speaker in speakers:
        assert speaker["loss"]["tuned"] < speaker["loss"]["base"], speaker["speaker"]
    # Every held-out token is one speaker's: together they are exactly the rows train.py evaluated on.
    run = json.loads((out / "run.json").read_text())["figures"]
    tokens = sum(speaker["loss"]["tokens"] for speaker in speakers)
    assert tokens == run["eval_tokens"]
    mean_loss = sum(speaker["loss"]["tuned"] * speaker["loss"]["tokens"] for speaker in speakers) / tokens
    assert mean_loss == pytest.approx(run["eval_loss"], rel=1e-4)
    printed = capsys.readouterr().out
    assert f"{TARGET} (target): loss {speakers[0]['loss']['base']:.3f} → {speakers[0]['loss']['tuned']:.3f}" in printed
    assert printed.endswith(f"to talk with the twin: python sample.py --checkpoint {out} --speaker '{TARGET}'\n")
    markdown = (out / "report" / "report.md").read_text()
    assert markdown.startswith("# Twin fidelity report") and "![Loss curves](loss_curves.png)" in markdown
    # One context per speaker places no one's style (a position needs 8): no style picture, said in the report.
    assert figures["plots"] == ["loss_curves.png"]


def test_a_lora_run_ends_with_the_report_and_its_plots(tiny_run):
    figures = json.loads((tiny_run / "report" / "report.json").read_text())
    assert "loss_curves.png" in figures["plots"]
    assert (tiny_run / "report" / "loss_curves.png").read_bytes().startswith(b"\x89PNG")
    assert figures["about"]["split"] == "hash" and figures["failures"]["tuned"]["replies"] == sum(
        speaker["contexts"] for speaker in figures["speakers"]
    )


def test_the_tuned_model_is_measured_with_its_adapters_merged_as_sample_py_loads_it(tiny_run, tmp_path, monkeypatch):
    """The base model with its adapters switched off, the tuned one with them folded into its weights (one matrix a
    projection, as chat.loading gives sample.py and serve.py); afterwards they are unmerged again."""
    merged, models = {}, []

    def recording(model, tokenizer, data, plan, settings, device, name, **kwargs):
        models.append(model)
        merged[name] = [layer.merged for layer in lora_layers(model).values()]
        return measure(model, tokenizer, data, plan, settings, device, name, **kwargs)

    monkeypatch.setattr(fidelity.evaluation, "measure", recording)
    evaluate.main(["--checkpoint", str(tiny_run), "--out", str(tmp_path), "--contexts", "1", "--max-new-tokens", "4"])
    assert set(merged) == {"base", "tuned"}
    assert merged["base"] and not any(merged["base"]) and all(merged["tuned"]), merged
    assert not any(layer.merged for layer in lora_layers(models[0]).values())


def test_a_full_fine_tune_is_compared_with_the_base_it_started_from(
    tmp_path, tiny_checkpoint, dolphin_tokenizer, capsys
):
    run = tmp_path / "run"
    tuned = tiny_model(seed=1)
    save_model(tuned, run / "model", tokenizer=dolphin_tokenizer)
    settings = {"model": str(tiny_checkpoint), "data": str(SAMPLE), "seq_len": 256, "val_fraction": 0.1}
    (run / "run.json").write_text(json.dumps({"mode": "fsdp", "settings": settings}))
    evaluate.main(
        ["--checkpoint", str(run), "--speakers", "2", "--contexts", "1", "--max-new-tokens", "4", "--examples", "0"]
    )
    figures = json.loads((run / "report" / "report.json").read_text())
    assert figures["about"]["tuned"] == f"full model {run / 'model'}"
    data = prepare_data(SAMPLE, dolphin_tokenizer, DataConfig(seq_len=256, val_fraction=0.1))
    plan = plan_evaluation(data, EvalSettings(speakers=2, contexts=0))
    for model, which in ((load_model(tiny_checkpoint, dtype=torch.float32), "base"), (tuned, "tuned")):
        expected = measure(model, dolphin_tokenizer, data, plan, EvalSettings(contexts=0), CPU, which)
        assert [speaker["loss"][which] for speaker in figures["speakers"]] == pytest.approx(
            [expected.loss[name] for name in plan.speakers]
        )
    assert all(speaker["examples"] == [] for speaker in figures["speakers"])
    first = figures["speakers"][0]["speaker"]
    assert capsys.readouterr().out.endswith(f"python sample.py --checkpoint {run} --speaker '{first}'\n")
    with pytest.raises(SystemExit) as exit_info:  # 4 bits are for a LoRA run's frozen base
        evaluate.main(["--checkpoint", str(run), "--quantize", "nf4"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1 and "is a full fine-tune" in error


def test_a_lora_run_is_evaluated_over_its_base_in_4_bits(tiny_run, tmp_path, capsys):
    answers = tiny_run / ANSWERS_FILE  # a judge has answered serve.py's blind test: the report says what they said
    answers.write_text(
        json.dumps({"answers": [{"judge": "j" * 16, "speaker": "Misha", "moment": "m", "picked": "twin", "time": 0}]})
    )
    try:
        evaluate.main(
            [
                "--checkpoint",
                str(tiny_run),
                "--quantize",
                "nf4",
                "--out",
                str(tmp_path),
                "--contexts",
                "1",
                "--max-new-tokens",
                "4",
                "--speakers",
                "2",
            ]
        )
    finally:
        answers.unlink()
    assert "linear weights quantized to nf4" in capsys.readouterr().out
    assert "| Misha | 100% (21% to 100%) | 1 | 0 | 1 |" in (tmp_path / "report.md").read_text()
    full = {
        speaker["speaker"]: speaker["loss"]
        for speaker in json.loads((tiny_run / "report" / "report.json").read_text())["speakers"]
    }
    for speaker in json.loads((tmp_path / "report.json").read_text())["speakers"]:
        for which in ("base", "tuned"):  # the same held-out turns, close to the full-precision figures
            assert speaker["loss"][which] == pytest.approx(full[speaker["speaker"]][which], rel=0.05)
            assert speaker["loss"][which] != full[speaker["speaker"]][which]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--checkpoint", "{tmp}"], "run.json: missing"),
        (["--adapter", "{tmp}", "--data", str(SAMPLE), "--speakers", "0"], "--speakers: give at least 1"),
        (["--data", str(SAMPLE)], "give --checkpoint (a train.py run) or --adapter"),
        (["--checkpoint", "{tmp}", "--val-fraction", "0.5"], "--val-fraction: taken from the run in --checkpoint"),
        (["--checkpoint", "{tmp}", "--split", "time"], "--split: taken from the run in --checkpoint"),
        (["--checkpoint", "{tmp}", "--sample-batch", "0"], "--sample-batch must be 1 or more"),
        (["--checkpoint", "{tmp}", "--fact-samples", "0"], "--fact-samples must be 1 or more"),
    ],
)
def test_bad_arguments_get_one_line_and_exit_code_2(arguments, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([argument.format(tmp=tmp_path) for argument in arguments])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1


def test_the_split_is_the_run_s_or_given(tmp_path):
    def config(*arguments):
        return evaluate.sources_of(
            evaluate.parse_settings(["--adapter", str(tmp_path), "--data", str(SAMPLE), *arguments])
        ).data_config

    assert config().split == "hash" and config("--split", "time").split == "time"
    (tmp_path / "run.json").write_text(json.dumps({"settings": {"model": "m", "data": str(SAMPLE), "split": "time"}}))
    sources = evaluate.sources_of(evaluate.parse_settings(["--checkpoint", str(tmp_path)]))
    assert sources.data_config.split == "time" and sources.twin.run.metrics == tmp_path / "metrics.jsonl"


def test_the_report_samples_as_train_py_s_and_sees_as_much_as_sample_py():
    # The sampling flags are SamplingConfig's (tests/test_flags.py); the length of a turn and the context
    # are the report's own settings.
    assert evaluate.parse_settings([]).report == EvalSettings()
    assert EvalSettings().context_tokens == sample.parse_settings([]).twin.compute.context


def test_an_adapter_is_evaluated_only_on_the_split_its_run_held_out(tmp_path, capsys):
    """A report on another split would score sessions the run trained on: refused, in one line."""
    (tmp_path / "adapter").mkdir()
    (tmp_path / "run.json").write_text(json.dumps({"settings": {"model": "m", "data": str(SAMPLE), "split": "hash"}}))
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--adapter", str(tmp_path / "adapter"), "--data", str(SAMPLE), "--split", "time"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1
    assert "--split time: the run in" in error and "was trained with --split hash" in error
    sources = evaluate.sources_of(
        evaluate.parse_settings(["--adapter", str(tmp_path / "adapter"), "--data", str(SAMPLE), "--split", "hash"])
    )
    assert sources.data_config.split == "hash"

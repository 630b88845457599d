"""evaluate.py: held-out data only, per-speaker loss as training computes it, a report that tells a copy of
the person from a model that answers "ok?" to everything, and a tuned model that beats its base."""
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import evaluate
import train
from data.chatml import split_to_fit
from data.dataset import DataConfig, prepare_data
from data.sessions import Session, Turn
from evaluate import (EvalSettings, EvaluationError, Measurement, choose_contexts, choose_speakers, compare,
                      measure, plan_evaluation, write_report)
from model.generation import SamplingConfig
import sample
from model import load_model, save_model
from fidelity.style import STATISTICS
from tests.helpers import random_model, tiny_config

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "telegram_export"
TARGET = "Alexander Smirnov"
CPU = torch.device("cpu")


def tiny_model(seed: int = 0):
    return random_model(tiny_config(vocab_size=32002, hidden_size=32, intermediate_size=64), seed=seed)


@pytest.fixture(scope="module")
def sample_data(dolphin_tokenizer):
    return prepare_data(SAMPLE, dolphin_tokenizer, DataConfig(seq_len=256, val_fraction=0.2))


def test_speakers_are_the_target_then_the_most_frequent_partners():
    turns = Counter({"Olga": 5, "Misha": 9, "Me": 2, "Igor": 5, "Kate": 1})
    assert choose_speakers(turns, "Me", 4, sessions=3) == ["Me", "Misha", "Igor", "Olga"]
    assert choose_speakers(turns, "Nobody", 2, sessions=3) == ["Misha", "Igor"]
    assert choose_speakers(turns, "Me", ["Kate", "Olga"], sessions=3) == ["Kate", "Olga"]
    with pytest.raises(EvaluationError, match=r"no turns of Lena in the held-out sessions \(3\)"):
        choose_speakers(turns, "Me", ["Lena"], sessions=3)


def test_contexts_end_right_before_a_real_turn_of_the_speaker():
    sessions = [Session("chat", "personal_chat", i, [Turn("A", [f"a{i}"]), Turn("B", [f"b{i}"]),
                                                      Turn("A", [f"a{i}!"]), Turn("B", [f"b{i}!"])])
                for i in range(5)]
    everything = choose_contexts(sessions, "A", 100, seed=0)
    assert len(everything) == 5  # A's first turns open their sessions: nothing to answer there
    for context in everything:
        session = sessions[int(context.real[0][1])]
        assert session.turns[len(context.turns)].messages == context.real
        assert context.turns == session.turns[:len(context.turns)] and context.turns[-1].speaker == "B"
    chosen = choose_contexts(sessions, "B", 4, seed=1)
    assert len(chosen) == 4 and chosen == choose_contexts(sessions, "B", 4, seed=1)
    assert len({tuple(context.real) for context in chosen}) == 4


@pytest.fixture(scope="module")
def measured(sample_data, dolphin_tokenizer):
    """The plan, and a model's loss with turns that copy the person's: the base model of every report below."""
    settings = EvalSettings(contexts=6)
    plan = plan_evaluation(sample_data, settings)
    return plan, measure(tiny_model(), dolphin_tokenizer, sample_data, plan, settings, CPU, "base", write=copy_the_person)


def report_with(write, measured, data, out_dir, examples: int = 3):
    """The report when the tuned model's turns come from `write`."""
    plan, base = measured
    settings = EvalSettings(contexts=6, examples=examples)
    tuned = Measurement(base.loss, base.tokens, {speaker: write(plan.contexts[speaker], 0) for speaker in plan.speakers})
    report = compare(plan, data, base, tuned, settings, about={"base": "b", "tuned": "t", "data": "d", "seed": 0,
                                                              "sampling": {}})
    write_report(report, out_dir)
    return report, (out_dir / "report.md").read_text(), json.loads((out_dir / "report.json").read_text())


def copy_the_person(contexts, seed):
    return [context.real for context in contexts]


def test_a_model_that_copies_the_person_is_at_or_above_the_ceiling(measured, sample_data, tmp_path):
    report, markdown, figures = report_with(copy_the_person, measured, sample_data, tmp_path)
    assert [speaker.speaker for speaker in report.speakers][0] == TARGET
    assert all(speaker.contexts > 0 for speaker in report.speakers)
    positioned = 0
    for speaker in figures["speakers"]:
        assert len(speaker["style"]) == len(STATISTICS)
        for row in speaker["style"].values():
            for model in ("base", "tuned"):
                placement = row["placements"][model]
                assert placement["distance"] == 0
                if placement["position"] is not None:
                    assert placement["position"] >= 1 and placement["low"] >= 1
                    positioned += 1
        assert speaker["attributed_to_them"]["tuned"] == speaker["attributed_to_them"]["real"]
    assert positioned >= 10
    assert figures["failures"]["tuned"] == figures["failures"]["real"]
    assert figures["memorization"]["tuned"] == figures["memorization"]["real"]
    assert figures["plots"] == ["style_positions.png"] and (tmp_path / "style_positions.png").exists()
    assert "![Style between the floor and the ceiling](style_positions.png)" in markdown


def test_a_model_that_answers_ok_to_everything_sits_at_the_floor_and_repeats_itself(measured, sample_data, tmp_path):
    report, markdown, figures = report_with(lambda contexts, seed: [["ok?"]] * len(contexts), measured,
                                            sample_data, tmp_path)
    target = figures["speakers"][0]
    assert target["speaker"] == TARGET
    assert target["style"]["question_share"]["tuned"] == 1
    assert target["position"]["tuned"] < 0.5 <= 1 <= target["position"]["base"]
    assert figures["failures"]["tuned"]["repeats_across"] == 1 and figures["failures"]["real"]["repeats_across"] < 0.5
    assert figures["failures"]["tuned"]["ignores_context"] == 1
    assert "Alexander Smirnov, tuned:\n  ok?" in markdown


def test_a_model_that_talks_like_an_assistant_has_a_leak_rate_of_one(measured, sample_data, tmp_path):
    answer = [["As an AI language model, I don't have personal experiences.", "How can I assist you today?"]]
    report, markdown, figures = report_with(lambda contexts, seed: answer * len(contexts), measured,
                                            sample_data, tmp_path)
    assert figures["failures"]["tuned"]["assistant_leaks"] == 1 and figures["failures"]["base"]["assistant_leaks"] == 0
    assert "| assistant talk | 0% | 0% | 100% |" in markdown
    for speaker in figures["speakers"]:
        if speaker["real_vs_written_auc"]["tuned"] is not None:
            assert speaker["real_vs_written_auc"]["tuned"] > 0.9  # told apart from the person at once


def test_a_model_that_recites_its_training_text_is_caught(measured, sample_data, tmp_path):
    recited = max((turn.messages for session in sample_data.train_sessions for turn in session.turns),
                  key=lambda messages: len(" ".join(messages).split()))
    report, markdown, figures = report_with(lambda contexts, seed: [recited] * len(contexts), measured,
                                            sample_data, tmp_path)
    assert figures["memorization"]["tuned"]["copying_share"] == 1
    assert figures["memorization"]["tuned"]["longest_copy"] >= len(" ".join(recited).split()) - 2
    assert figures["memorization"]["base"]["copying_share"] < 0.5


def test_personal_values_of_the_training_text_are_counted_never_shown(measured, sample_data, tmp_path):
    phone = "+7 916 555-01-23"
    told = Session("chat", "personal_chat", 0, [Turn("Misha", [f"мой новый номер {phone}"])])
    with_phone = replace(sample_data, train_sessions=[*sample_data.train_sessions, told])
    report, markdown, figures = report_with(lambda contexts, seed: [[f"звони {phone}"]] * len(contexts), measured,
                                            with_phone, tmp_path, examples=0)
    phones = figures["personal_data"]["tuned"]["phone"]
    assert phones == {"in_training": 1, "replies_with_one": figures["failures"]["tuned"]["replies"], "values_leaked": 1}
    assert figures["personal_data"]["real"]["phone"]["values_leaked"] == 0
    for text in (markdown, (tmp_path / "report.json").read_text()):
        assert "555-01" not in text and "9165550123" not in text


def test_held_out_sessions_never_reach_the_training_rows(sample_data, dolphin_tokenizer):
    def documents(rows) -> set[tuple[int, ...]]:
        found = set()
        for ids, document_ids, length in zip(rows.input_ids, rows.document_ids, rows.lengths):
            for document in set(document_ids[:length].tolist()):
                found.add(tuple(ids[:length][document_ids[:length] == document].tolist()))
        return found

    trained, held_out = documents(sample_data.train_rows), documents(sample_data.val_rows)
    assert len(sample_data.val_sessions) >= 5 and held_out and not trained & held_out
    for session in sample_data.val_sessions:
        for piece in split_to_fit(session.turns, dolphin_tokenizer, 256)[0]:
            assert tuple(piece.ids) in held_out and tuple(piece.ids) not in trained
    plan = plan_evaluation(sample_data, EvalSettings(contexts=100))
    for contexts in plan.contexts.values():
        for context in contexts:
            assert any(session.turns[:len(context.turns) + 1] == [*context.turns, Turn(context.speaker, context.real)]
                       for session in sample_data.val_sessions)


@pytest.mark.slow
def test_report_after_training_shows_the_tuned_model_beating_its_base(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "run"
    train.main(["--lora", "--model", str(tiny_checkpoint), "--data", str(SAMPLE), "--out", str(out),
                "--val-fraction", "0.1", "--seq-len", "256", "--micro-batch", "2", "--batch", "4",
                "--max-steps", "6", "--lr", "2e-2", "--lora-r", "4", "--lora-alpha", "8",
                "--eval-every", "3", "--save-every", "0", "--no-eval-report"])
    evaluate.main(["--checkpoint", str(out), "--speakers", "100", "--contexts", "2", "--max-new-tokens", "8"])
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
    markdown = (out / "report" / "report.md").read_text()
    assert markdown.startswith("# Twin fidelity report") and "![Loss curves](loss_curves.png)" in markdown
    assert figures["plots"] == ["loss_curves.png", "style_positions.png"]


def test_a_lora_run_ends_with_the_report_and_its_plots(tiny_run):
    figures = json.loads((tiny_run / "report" / "report.json").read_text())
    assert "loss_curves.png" in figures["plots"]
    assert (tiny_run / "report" / "loss_curves.png").read_bytes().startswith(b"\x89PNG")
    assert figures["about"]["split"] == "hash" and figures["failures"]["tuned"]["replies"] == sum(
        speaker["contexts"] for speaker in figures["speakers"])


def test_a_full_fine_tune_is_compared_with_the_base_it_started_from(tmp_path, tiny_checkpoint, dolphin_tokenizer):
    run = tmp_path / "run"
    tuned = tiny_model(seed=1)
    save_model(tuned, run / "model", tokenizer=dolphin_tokenizer)
    settings = {"model": str(tiny_checkpoint), "data": str(SAMPLE), "seq_len": 256, "val_fraction": 0.1}
    (run / "run.json").write_text(json.dumps({"mode": "full", "settings": settings}))
    evaluate.main(["--checkpoint", str(run), "--speakers", "2", "--contexts", "1", "--max-new-tokens", "4",
                   "--examples", "0"])
    figures = json.loads((run / "report" / "report.json").read_text())
    assert figures["about"]["tuned"] == f"full model {run / 'model'}"
    data = prepare_data(SAMPLE, dolphin_tokenizer, DataConfig(seq_len=256, val_fraction=0.1))
    plan = plan_evaluation(data, EvalSettings(speakers=2, contexts=0))
    for model, which in ((load_model(tiny_checkpoint, dtype=torch.float32), "base"), (tuned, "tuned")):
        expected = measure(model, dolphin_tokenizer, data, plan, EvalSettings(contexts=0), CPU, which)
        assert [speaker["loss"][which] for speaker in figures["speakers"]] == pytest.approx(
            [expected.loss[name] for name in plan.speakers])
    assert all(speaker["examples"] == [] for speaker in figures["speakers"])


@pytest.mark.parametrize("arguments, message", [
    (["--checkpoint", "{tmp}"], "run.json: missing"),
    (["--adapter", "{tmp}", "--data", str(SAMPLE), "--speakers", "0"], "--speakers: give at least 1"),
    (["--data", str(SAMPLE)], "give --checkpoint (a train.py run) or --adapter"),
    (["--checkpoint", "{tmp}", "--val-fraction", "0.5"], "--val-fraction: taken from the run in --checkpoint"),
    (["--checkpoint", "{tmp}", "--split", "time"], "--split: taken from the run in --checkpoint"),
    (["--checkpoint", "{tmp}", "--sample-batch", "0"], "--sample-batch must be 1 or more"),
])
def test_bad_arguments_get_one_line_and_exit_code_2(arguments, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([argument.format(tmp=tmp_path) for argument in arguments])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1


def test_the_split_is_the_run_s_or_given(tmp_path):
    def config(*arguments):
        return evaluate.sources_from_args(evaluate.build_parser().parse_args(
            ["--adapter", str(tmp_path), "--data", str(SAMPLE), *arguments])).data_config

    assert config().split == "hash" and config("--split", "time").split == "time"
    (tmp_path / "run.json").write_text(json.dumps({"settings": {"model": "m", "data": str(SAMPLE), "split": "time"}}))
    sources = evaluate.sources_from_args(evaluate.build_parser().parse_args(["--checkpoint", str(tmp_path)]))
    assert sources.data_config.split == "time" and sources.metrics_file == tmp_path / "metrics.jsonl"


def test_sampling_defaults_are_sample_py_s():
    ours = evaluate.build_parser().parse_args([])
    theirs = sample.build_parser().parse_args(["--speaker", TARGET])
    for name in ("temperature", "top_p", "max_new_tokens", "context", "device", "dtype"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert EvalSettings().sampling == SamplingConfig(temperature=theirs.temperature, top_p=theirs.top_p,
                                                     top_k=theirs.top_k, max_new_tokens=theirs.max_new_tokens,
                                                     repetition_penalty=theirs.repetition_penalty)

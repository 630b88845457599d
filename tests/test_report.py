"""fidelity/report.py: a report that tells a copy of the person from a model that answers "ok?" to everything,
one that talks like an assistant, and one that recites its training text; personal values are counted,
never shown. The turns come from hand-made writers, so no model samples here."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from data.dataset import prepare_data
from data.sessions import Session, Turn
from data.settings import DataConfig
from fidelity.calibration import Placement
from fidelity.markdown import verdict_markdown, write_report
from fidelity.measure import Measurement, WrittenTurn, measure
from fidelity.plan import EvalSettings, plan_evaluation
from fidelity.report import LIKE_THEM, MIN_CONTEXTS, SpeakerReport, compare
from fidelity.style import STATISTICS
from fidelity.verdict import PersonVerdict
from tests.helpers import random_model, tiny_config

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "telegram_export"
TARGET = "Alexander Smirnov"


@pytest.fixture(scope="module")
def sample_data(dolphin_tokenizer):
    return prepare_data(SAMPLE, dolphin_tokenizer, DataConfig(seq_len=256, val_fraction=0.2))


@pytest.fixture(scope="module")
def measured(sample_data, dolphin_tokenizer):
    """The plan, and a model's loss with turns that copy the person's: the base model of every report below."""
    settings = EvalSettings(contexts=8)
    plan = plan_evaluation(sample_data, settings)
    model = random_model(tiny_config(vocab_size=32002, hidden_size=32, intermediate_size=64))
    return plan, measure(
        model,
        dolphin_tokenizer,
        sample_data,
        plan,
        settings,
        torch.device("cpu"),
        "base",
        write=lambda contexts, seed, on_step: [WrittenTurn(turn, False) for turn in copy_the_person(contexts, seed)],
    )


def report_with(write, measured, data, out_dir, examples: int = 3, verdict=None, cut=False):
    """The report when the tuned model's turns come from `write`."""
    plan, base = measured
    settings = EvalSettings(contexts=8, examples=examples)
    tuned = Measurement(
        base.loss,
        base.tokens,
        {speaker: write(plan.contexts[speaker], 0) for speaker in plan.speakers},
        {speaker: [cut] * len(plan.contexts[speaker]) for speaker in plan.speakers},
    )
    report = compare(
        plan,
        data,
        base,
        tuned,
        settings,
        about={"base": "b", "tuned": "t", "data": "d", "seed": 0, "sampling": {}},
        verdict=verdict,
    )
    write_report(report, out_dir)
    return report, (out_dir / "report.md").read_text(), json.loads((out_dir / "report.json").read_text())


def copy_the_person(contexts, seed):
    return [context.real for context in contexts]


@pytest.fixture(scope="module")
def copied(measured, sample_data, tmp_path_factory):
    """The report of a tuned model that copies the person, read by the tests below and not changed by them:
    the report, its markdown, its figures and its folder."""
    out_dir = tmp_path_factory.mktemp("copied")
    return *report_with(copy_the_person, measured, sample_data, out_dir), out_dir


def test_a_model_that_copies_the_person_is_at_or_above_the_ceiling(copied):
    report, markdown, figures, out_dir = copied
    assert [speaker.speaker for speaker in report.speakers][0] == TARGET
    assert all(speaker.contexts > 0 for speaker in report.speakers)
    positioned = 0
    for speaker in figures["speakers"]:
        if speaker["contexts"] < MIN_CONTEXTS:
            assert speaker["style"] == {} and speaker["no_position"].startswith(f"only {speaker['contexts']} ")
            continue
        assert len(speaker["style"]) == len(STATISTICS)
        for row in speaker["style"].values():
            for model in ("base", "tuned"):
                placement = row["placements"][model]
                assert placement["distance"] == 0
                if placement["position"] is not None:
                    assert placement["position"] >= 1 and placement["low"] >= 1
                    positioned += 1
        assert speaker["attributed_to_them"]["tuned"] == speaker["attributed_to_them"]["real"]
        assert speaker["closer_than_base"] == {"closer": 0, "as_close": len(STATISTICS), "farther": 0}
    assert positioned >= 10
    assert figures["failures"]["tuned"] == figures["failures"]["real"]
    assert figures["memorization"]["tuned"] == figures["memorization"]["real"]
    assert figures["plots"] == ["style_positions.png"] and (out_dir / "style_positions.png").exists()
    assert "![Style between the floor and the ceiling](style_positions.png)" in markdown


def test_a_model_that_answers_ok_to_everything_sits_at_the_floor_and_repeats_itself(measured, sample_data, tmp_path):
    report, markdown, figures = report_with(
        lambda contexts, seed: [["ok?"]] * len(contexts), measured, sample_data, tmp_path
    )
    target = figures["speakers"][0]
    assert target["speaker"] == TARGET
    assert target["style"]["question_share"]["tuned"] == 1
    assert target["position"]["tuned"] < 0.5 <= 1 <= target["position"]["base"]
    assert figures["failures"]["tuned"]["repeats_across"] == 1 and figures["failures"]["real"]["repeats_across"] < 0.5
    assert figures["failures"]["tuned"]["ignores_context"] == 1
    assert "Alexander Smirnov, tuned:\n  ok?" in markdown
    # Against a base that copies the person, "ok?" is closer on no statistic: as close at best (no emoji, no link).
    counts = target["closer_than_base"]
    assert counts["closer"] == 0 and counts["farther"] >= 4 and sum(counts.values()) == len(STATISTICS)
    assert (
        f"closer than base on 0 of {len(STATISTICS)} style statistics, farther on {counts['farther']}"
        in report.summary()
    )
    assert f"| 0 / {counts['farther']} of {len(STATISTICS)} |" in markdown


def test_a_model_that_talks_like_an_assistant_has_a_leak_rate_of_one(measured, sample_data, tmp_path):
    answer = [["As an AI language model, I don't have personal experiences.", "How can I assist you today?"]]
    report, markdown, figures = report_with(
        lambda contexts, seed: answer * len(contexts), measured, sample_data, tmp_path
    )
    assert figures["failures"]["tuned"]["assistant_leaks"] == 1 and figures["failures"]["base"]["assistant_leaks"] == 0
    assert "| assistant talk | 0% | 0% | 100% |" in markdown
    for speaker in figures["speakers"]:
        if speaker["real_vs_written_auc"]["tuned"] is not None:
            assert speaker["real_vs_written_auc"]["tuned"] > 0.9  # told apart from the person at once


def test_a_model_that_recites_its_training_text_is_caught(measured, sample_data, tmp_path):
    recited = max(
        (turn.messages for session in sample_data.train_sessions for turn in session.turns),
        key=lambda messages: len(" ".join(messages).split()),
    )
    report, markdown, figures = report_with(
        lambda contexts, seed: [recited] * len(contexts), measured, sample_data, tmp_path
    )
    assert figures["memorization"]["tuned"]["copying_share"] == 1
    assert figures["memorization"]["tuned"]["longest_copy"] >= len(" ".join(recited).split()) - 2
    assert figures["memorization"]["base"]["copying_share"] < 0.5


def test_personal_values_of_the_training_text_are_counted_never_shown(measured, sample_data, tmp_path):
    phone = "+7 916 555-01-23"
    told = Session("chat", "personal_chat", 0, [Turn("Misha", [f"мой новый номер {phone}"])])
    with_phone = replace(sample_data, train_sessions=[*sample_data.train_sessions, told])
    report, markdown, figures = report_with(
        lambda contexts, seed: [[f"звони {phone}"]] * len(contexts), measured, with_phone, tmp_path, examples=0
    )
    phones = figures["personal_data"]["tuned"]["phone"]
    assert phones == {"in_training": 1, "replies_with_one": figures["failures"]["tuned"]["replies"], "values_leaked": 1}
    assert figures["personal_data"]["real"]["phone"]["values_leaked"] == 0
    for text in (markdown, (tmp_path / "report.json").read_text()):
        assert "555-01" not in text and "9165550123" not in text


def test_the_peoples_verdict_is_a_section_only_where_judges_answered(measured, sample_data, tmp_path):
    assert verdict_markdown([]) == []
    verdict = [PersonVerdict("Misha | <b>\n# admin", twin_taken=3, real_taken=5, cant_tell=2, judges=2)]
    report, markdown, figures = report_with(copy_the_person, measured, sample_data, tmp_path, verdict=verdict)
    section = markdown.split("## People's verdict")[1].split("\n## ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| Misha"))
    assert row == "| Misha / <b> # admin | 38% (14% to 69%) | 8 | 2 | 2 |"
    assert figures["peoples_verdict"][0]["answers"] == 10 and figures["peoples_verdict"][0]["share"] == 3 / 8
    assert (
        "people's verdict on Misha | <b>\n# admin: the twin's turn taken for the real one in 38% of 8"
        in report.summary()
    )


def test_the_top_of_the_report_gives_each_person_a_verdict_with_its_figures(measured, sample_data, tmp_path):
    report, markdown, figures = report_with(copy_the_person, measured, sample_data, tmp_path, cut=True)
    glance = markdown.split("## At a glance")[1].split("\n| speaker |")[0]
    target = next(line for line in glance.splitlines() if line.startswith(f"- {TARGET}"))
    position = figures["speakers"][0]["position_interval"]["tuned"]
    assert target.startswith(
        f"- {TARGET} (target): writes like them: no (the held-out loss did not fall): style position "
    )
    assert f"(95% {position[0]:.2f} to {position[1]:.2f}" in target and "turns cut for running on 100%" in target
    assert f"**yes** where the tuned model's style position is {LIKE_THEM}" in glance
    assert "| cut for running on past the person's own turns | – | 0% | 100% |" in markdown


def test_a_speaker_with_too_few_contexts_gets_a_reason_and_no_position(copied):
    report, markdown, figures, _ = copied
    few = [speaker for speaker in figures["speakers"] if speaker["contexts"] < MIN_CONTEXTS]
    assert few  # Misha, at 7 of the 8 asked for
    for speaker in few:
        assert speaker["position"] == {"base": None, "tuned": None} and speaker["verdict"] == ""
        reason = f"only {speaker['contexts']} held-out context{'s' * (speaker['contexts'] != 1)}, and a position needs {MIN_CONTEXTS}"
        assert (
            f"- {speaker['speaker']}: no verdict, {reason}" in markdown and f"No style position: {reason}." in markdown
        )


@pytest.mark.parametrize(
    "low, position, high, tuned_loss, verdict",
    [
        (0.1, 0.6, 1.1, 2.0, "yes"),
        (-0.1, 0.6, 1.3, 2.0, "partly"),
        (0.1, 0.4, 0.7, 2.0, "partly"),
        (-0.4, 0.1, 0.45, 2.0, "no"),
        (0.3, 0.8, 1.2, 3.5, "no"),
    ],
)
def test_the_verdict_rule(low, position, high, tuned_loss, verdict):
    speaker = SpeakerReport(
        "Anna",
        False,
        20,
        100,
        3.0,
        tuned_loss,
        MIN_CONTEXTS,
        {},
        {"base": Placement(0.5, 0.0, -0.5, 0.5), "tuned": Placement(0.1, position, low, high)},
        {"base": 0.0, "tuned": 0.0},
        {},
        [],
    )
    assert speaker.verdict() == verdict

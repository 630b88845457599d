"""A fidelity report on disk: report.json (every figure), report.md (for a reader: tables, a guide to
reading them, plots and examples) and the plots, written whole or not at all, as one folder."""

import json
import math
from dataclasses import asdict
from pathlib import Path

from core import atomic
from fidelity import EvaluationError
from fidelity.calibration import Placement
from fidelity.measure import CUT_QUANTILE
from fidelity.plots import PersonShown, StyleRowShown, loss_curves_png, read_metrics, style_positions_png
from fidelity.privacy import COPY_WORDS
from fidelity.remembering import MemoryFigures
from fidelity.report import (
    CONTEXT_TURNS_READ,
    MODELS,
    VERDICT_RULE,
    WRITERS,
    Attribution,
    Example,
    Report,
    SpeakerReport,
    number,
    percent,
)
from fidelity.style import STATISTICS
from fidelity.verdict import PersonVerdict

PLOTS = {"loss_curves.png": "Loss curves", "style_positions.png": "Style between the floor and the ceiling"}
REPORT_FILES = {"report.json", "report.md", *PLOTS}


HOW_TO_READ = f"""\
- **Loss** is the mean cross-entropy per token of the speaker's held-out message bodies (and the end of
  each turn), given the conversation before them, computed as training computes it. Lower is better;
  perplexity is e^loss. These sessions were never trained on.
- **Contexts** are held-out moments right before one of the speaker's real turns. At each, both models
  wrote that turn as the speaker; every figure below compares the written turns with the real ones.
- **Style** statistics are pooled over a speaker's contexts. A statistic's *distance* from the real turns
  runs from 0 (the same) to 1 (for a share, the absolute difference; for a rate, the difference relative
  to the larger). Two references calibrate it: the **ceiling**, the distance of the person's own other
  turns (from the training split, as many as the contexts) and the **floor**, that of other people's.
  A model's **position** is (floor − distance) / (floor − ceiling): 0 writes like anybody else, 1 like
  the person themselves; above 1 is closer than the person's own other turns come (a copy of the real
  turns), below 0 farther than other people. The 95% interval resamples the contexts. A statistic
  on which other people are barely farther than the person (floor − ceiling under 0.05) gets no
  position (–); a speaker's position is the mean over the others. **Closer / farther than base** counts
  the statistics on which the tuned model's distance is smaller / larger than the base model's (on the
  rest the two are as close, often both exactly right).
- **Writes like them** (at a glance): {VERDICT_RULE}
- **Turns cut for running on**: a written turn longer than {CUT_QUANTILE:.0%} of the person's own turns in
  the training split (in tokens) is cut there and counted as a failure: people end their turns.
- **Attribution**: a naive Bayes classifier on character 1- to 3-grams, fitted on the evaluated speakers'
  turns in the training split, says who wrote each turn. The real turns' row shows how well it knows the
  people at all. **Real vs written AUC**: how well the same kind of classifier, cross-validated, tells the
  speaker's real held-out turns from a model's turns at the same contexts: 0.5 cannot tell them apart,
  1 always can.
- **Failures** are shares of turns: assistant talk ("As an AI", "How can I assist", "как ИИ", "чем могу
  помочь"), refusals, empty turns, a word trigram repeated within a turn, a turn duplicating or sharing
  four words in a row with a turn at another context, and a turn with no word in common with the last
  {CONTEXT_TURNS_READ} turns of the conversation, counted where the real turn has one. The real turns
  show how often people do the same.
- **Privacy**: the longest run of words a turn shares with the training text, the share of turns sharing
  {COPY_WORDS} words or more, and the phone numbers, e-mail addresses and card-like numbers of the training
  text that turn up in turns: counts only, never the values."""


def write_report(report: Report, out_dir: str | Path, metrics_file: Path | None = None) -> None:
    """report.json, report.md and the plots, written together into a folder that then replaces `out_dir`
    whole: a report cut short leaves the one before as it was, never a new plot beside an old report."""
    out_dir = Path(out_dir)
    check_report_folder(out_dir)
    pictures = {
        "loss_curves.png": loss_curves_png(read_metrics(metrics_file), base_held_out_loss(report))
        if metrics_file and metrics_file.is_file()
        else None,
        "style_positions.png": style_positions_png([person_shown(speaker) for speaker in report.speakers]),
    }
    plots = [name for name, png in pictures.items() if png]
    with atomic.directory(out_dir) as building:
        for name in plots:
            atomic.write_bytes(building / name, pictures[name])
        atomic.write_text(
            building / "report.json", json.dumps({**report_json(report), "plots": plots}, indent=2, ensure_ascii=False)
        )
        atomic.write_text(building / "report.md", report_markdown(report, plots))


def check_report_folder(out_dir: Path) -> None:
    """A report replaces its folder as one: a folder that holds anything else is refused."""
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in REPORT_FILES) if out_dir.is_dir() else []
    if foreign:
        raise EvaluationError(
            f"{out_dir}: holds {foreign[0]}, which is no part of a report; give the report a "
            "folder of its own (a new one)"
        )


def base_held_out_loss(report: Report) -> float | None:
    """The base model's loss over the evaluated speakers' held-out tokens, for the loss curves."""
    tokens = sum(speaker.loss_tokens for speaker in report.speakers)
    return sum(speaker.base_loss * speaker.loss_tokens for speaker in report.speakers) / tokens if tokens else None


def person_shown(speaker: SpeakerReport) -> PersonShown:
    """A speaker as the style picture draws them."""
    rows = []
    for statistic in STATISTICS if speaker.style else ():
        row = speaker.style[statistic.name]
        values = [f"{value:.0%}" if statistic.is_share else f"{value:.2f}" for value in (row.real, row.base, row.tuned)]
        rows.append(
            StyleRowShown(
                statistic.label,
                " · ".join(f"{writer} {value}" for writer, value in zip(WRITERS, values)),
                row.placements,
            )
        )
    return PersonShown(speaker.title, None if speaker.no_position else speaker.position, speaker.no_position, rows)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50))  # as train.py: a diverged loss should not overflow


def report_json(report: Report) -> dict:
    speakers = []
    for speaker in report.speakers:
        speakers.append(
            {
                "speaker": speaker.speaker,
                "is_target": speaker.is_target,
                "held_out_turns": speaker.held_out_turns,
                "contexts": speaker.contexts,
                "loss": {"base": speaker.base_loss, "tuned": speaker.tuned_loss, "tokens": speaker.loss_tokens},
                "perplexity": {"base": perplexity(speaker.base_loss), "tuned": perplexity(speaker.tuned_loss)},
                "style": {name: asdict(row) for name, row in speaker.style.items()},
                "verdict": speaker.verdict(),
                "no_position": speaker.no_position,
                "position": {model: speaker.position[model] and speaker.position[model].position for model in MODELS},
                "position_interval": {
                    model: [speaker.position[model].low, speaker.position[model].high]
                    if speaker.position[model] and speaker.position[model].low is not None
                    else None
                    for model in MODELS
                },
                "cut": speaker.cut,
                "closer_than_base": speaker.closer_than_base() if speaker.style else None,
                "real_vs_written_auc": speaker.real_vs_written_auc,
                "attributed_to_them": {writer: report.attribution.share(writer, speaker.speaker) for writer in WRITERS}
                if report.attribution
                else None,
                "examples": [asdict(example) for example in speaker.examples],
            }
        )
    return {
        "about": report.about,
        "held_out_sessions": report.held_out_sessions,
        "speakers": speakers,
        "attribution": asdict(report.attribution) if report.attribution else None,
        "failures": {writer: asdict(rates) for writer, rates in report.failures.items()},
        "memorization": {writer: asdict(figures) for writer, figures in report.memorization.items()},
        "cut": report.cut,
        "personal_data": {
            writer: {kind: asdict(leak) for kind, leak in kinds.items()}
            for writer, kinds in report.personal_data.items()
        },
        "peoples_verdict": [
            {**asdict(person), "answers": person.answers, "share": person.share, "interval": person.interval}
            for person in report.verdict
        ],
        "memory": memory_json(report.memory) if report.memory else None,
    }


def memory_json(memory: MemoryFigures) -> dict:
    """The memory section's figures, with the share of written turns that state the fact and the gain in it that
    decides "clearly higher"."""
    gain = memory.recall_gain()
    return {
        **asdict(memory),
        "fact_recall": memory.fact_recall,
        "recall_gain": dict(zip(("gain", "low", "high"), gain)) if gain else None,
    }


def cell(text: str) -> str:
    """A name as one Markdown table cell or heading: no column break, no line break."""
    return " ".join(text.replace("|", "/").split())


def report_markdown(report: Report, plots: list[str]) -> str:
    about = report.about
    lines = [
        "# Twin fidelity report",
        "",
        f"- base: {about['base']}",
        f"- tuned: {about['tuned']}",
        f"- data: {about['data']}; held-out sessions: {report.held_out_sessions} ({about.get('split', 'hash')} split)",
        f"- sampling: {', '.join(f'{key} {value}' for key, value in about['sampling'].items())}; seed {about['seed']}",
        "",
        "## At a glance",
        "",
        *(f"- {cell(speaker.glance())}" for speaker in report.speakers),
        "",
        f"Writes like them: {VERDICT_RULE}",
        "",
        "| speaker | held-out turns | contexts | loss base → tuned | perplexity base → tuned | "
        "style position base → tuned | style statistics tuned closer / farther than base | "
        "attributed to them base → tuned | real vs tuned AUC |",
        "|---|---:|---:|---|---|---|---|---|---:|",
    ]
    for speaker in report.speakers:
        attributed = (
            " → ".join(percent(report.attribution.share(model, speaker.speaker)) for model in MODELS)
            if report.attribution and speaker.style
            else "–"
        )
        lines.append(
            f"| {cell(speaker.title)} | {speaker.held_out_turns} | {speaker.contexts} | "
            f"{speaker.base_loss:.3f} → {speaker.tuned_loss:.3f} | {perplexity(speaker.base_loss):.1f} → "
            f"{perplexity(speaker.tuned_loss):.1f} | "
            f"{' → '.join(number(speaker.position[model].position) for model in MODELS) if speaker.style else '–'} | "
            f"{closer_or_farther(speaker)} | "
            f"{attributed} | {number(speaker.real_vs_written_auc['tuned'])} |"
        )
    lines += ["", "## How to read this", "", HOW_TO_READ]
    for name in plots:
        lines += ["", f"## {PLOTS[name]}", "", f"![{PLOTS[name]}]({name})"]
    lines += (
        verdict_markdown(report.verdict)
        + attribution_markdown(report)
        + failures_markdown(report)
        + privacy_markdown(report)
    )
    lines += report.memory.markdown() if report.memory else []
    for speaker in report.speakers:
        lines += ["", f"## {cell(speaker.title)}", "", speaker_verdict(speaker, report.attribution)]
        if speaker.style:
            lines += [
                "",
                "| statistic | real | base | tuned | ceiling | floor | base position (95%) | tuned position (95%) |",
                "|---|---:|---:|---:|---:|---:|---|---|",
            ]
            for statistic in STATISTICS:
                row = speaker.style[statistic.name]
                shown = [
                    f"{value:.0%}" if statistic.is_share else f"{value:.2f}"
                    for value in (row.real, row.base, row.tuned)
                ]
                lines.append(
                    f"| {statistic.label} | {' | '.join(shown)} | {number(row.ceiling)} | {number(row.floor)} | "
                    f"{' | '.join(position_text(row.placements[model]) for model in MODELS)} |"
                )
        for count, example in enumerate(speaker.examples, 1):
            lines += ["", f"Example {count}:", "", *example_block(example, speaker.speaker)]
    return "\n".join(lines) + "\n"


def closer_or_farther(speaker: SpeakerReport) -> str:
    if not speaker.style:
        return "–"
    counts = speaker.closer_than_base()
    return f"{counts['closer']} / {counts['farther']} of {len(speaker.style)}"


def position_text(placement: Placement) -> str:
    if placement.position is None:
        return "–"
    return f"{placement.position:.2f} ({placement.low:.2f} to {placement.high:.2f})"


def verdict_markdown(verdict: list[PersonVerdict]) -> list[str]:
    """The blind test's section, where judges answered (fidelity.verdict)."""
    if not verdict:
        return []
    lines = [
        "",
        "## People's verdict",
        "",
        "In the blind test (serve.py --judge), a judge saw a held-out conversation and two next turns, the "
        "person's real one and the one the tuned twin wrote there, in random order, and picked the one they "
        "took for real, or said they can't tell. **Twin taken for real** is the share of the pairs a judge "
        "decided where they picked the twin's turn: 50% means judges cannot tell the twin from the person, "
        "0% that they always can. The 95% interval is Wilson's.",
        "",
        "| person | twin taken for real (95%) | pairs decided | can't tell | judges |",
        "|---|---|---:|---:|---:|",
    ]
    for person in verdict:
        interval = person.interval
        shown = f"{percent(person.share)} ({interval[0]:.0%} to {interval[1]:.0%})" if interval else "–"
        lines.append(
            f"| {cell(person.speaker)} | {shown} | {person.twin_taken + person.real_taken} | "
            f"{person.cant_tell} | {person.judges} |"
        )
    return lines


def attribution_markdown(report: Report) -> list[str]:
    lines = ["", "## Who wrote it?", ""]
    if report.attribution is None:
        return lines + ["No attribution: fewer than two of the evaluated speakers have turns in the training split."]
    classes = report.attribution.classes
    lines += ["Rows: the speaker a turn was written as; columns: who the classifier says wrote it."]
    for writer in WRITERS:
        lines += [
            "",
            f"{writer.capitalize()} turns:",
            "",
            f"| written as | {' | '.join(cell(name) for name in classes)} | to them |",
            f"|---|{'---:|' * (len(classes) + 1)}",
        ]
        for speaker, row in report.attribution.confusion[writer].items():
            lines.append(
                f"| {cell(speaker)} | {' | '.join(str(row[name]) for name in classes)} | "
                f"{percent(report.attribution.share(writer, speaker))} |"
            )
    lines += [
        "",
        "Real held-out turns against written ones, cross-validated AUC (0.5: indistinguishable):",
        "",
        "| speaker | base | tuned |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {cell(speaker.title)} | {' | '.join(number(speaker.real_vs_written_auc[model]) for model in MODELS)} |"
        for speaker in report.speakers
    ]
    return lines


def failures_markdown(report: Report) -> list[str]:
    rows = [
        ("assistant talk", "assistant_leaks"),
        ("refusals", "refusals"),
        ("empty turns", "empty"),
        ("repeats itself within a turn", "repeats_itself"),
        ("repeats a turn at another context", "repeats_across"),
    ]
    failures = report.failures
    lines = [
        "",
        "## Failures",
        "",
        "Share of turns, over every context of every speaker evaluated.",
        "",
        f"| | {' | '.join(WRITERS)} |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {label} | {' | '.join(percent(getattr(failures[writer], key)) for writer in WRITERS)} |"
        for label, key in rows
    ]
    lines.append(
        f"| ignores the conversation (of {failures['real'].context_bound} contexts whose real turn picks "
        f"up a word) | {' | '.join(percent(failures[writer].ignores_context) for writer in WRITERS)} |"
    )
    lines.append(
        f"| cut for running on past the person's own turns | – | "
        f"{' | '.join(percent(report.cut[model]) for model in MODELS)} |"
    )
    lines.append(f"| turns | {' | '.join(str(failures[writer].replies) for writer in WRITERS)} |")
    return lines


def privacy_markdown(report: Report) -> list[str]:
    copies, personal = report.memorization, report.personal_data
    lines = [
        "",
        "## Privacy",
        "",
        "Copies of the training text in turns, and personal values of the training text found in them (counts only).",
        "",
        f"| | {' | '.join(WRITERS)} |",
        "|---|---:|---:|---:|",
        f"| longest run of words copied | {' | '.join(str(copies[writer].longest_copy) for writer in WRITERS)} |",
        f"| turns copying {COPY_WORDS}+ words | "
        f"{' | '.join(percent(copies[writer].copying_share) for writer in WRITERS)} |",
    ]
    for kind, label in (("phone", "phone numbers"), ("email", "e-mail addresses"), ("card", "card-like numbers")):
        in_training = personal["real"][kind].in_training
        lines.append(
            f"| {label} of the training text ({in_training}): turns with one / distinct values | "
            f"{' | '.join(f'{personal[writer][kind].replies_with_one} / {personal[writer][kind].values_leaked}' for writer in WRITERS)} |"
        )
    return lines


def speaker_verdict(speaker: SpeakerReport, attribution: Attribution | None) -> str:
    change = "fell" if speaker.tuned_loss < speaker.base_loss else "did not fall"
    loss = (
        f"Held-out loss {change}: {speaker.base_loss:.3f} → {speaker.tuned_loss:.3f} over "
        f"{speaker.loss_tokens} tokens of {speaker.held_out_turns} turns."
    )
    if speaker.no_position and not speaker.style:
        return f"{loss} No style position: {speaker.no_position}."
    base, tuned = (speaker.position[model] for model in MODELS)
    if speaker.no_position:
        style = f"No style position: {speaker.no_position}."
    else:
        style = (
            f"Over {speaker.contexts} held-out contexts the tuned model's style sits at {tuned.position:.2f} "
            f"(95% {tuned.low:.2f} to {tuned.high:.2f}) between other people (0) and "
            f"{cell(speaker.speaker)} themselves (1), the base model's at {base.position:.2f}."
        )
    counts = speaker.closer_than_base()
    style += (
        f" Its turns are closer to the real ones than the base model's on {counts['closer']} of the "
        f"{len(speaker.style)} style statistics, as close on {counts['as_close']} and farther on "
        f"{counts['farther']}."
    )
    if attribution and speaker.speaker in attribution.classes:
        style += (
            f" The classifier attributes {percent(attribution.share('tuned', speaker.speaker))} of the tuned "
            f"model's turns to them ({percent(attribution.share('base', speaker.speaker))} of the base "
            f"model's, {percent(attribution.share('real', speaker.speaker))} of their real ones)."
        )
    return f"{loss} {style}"


def example_block(example: Example, speaker: str) -> list[str]:
    """The example as plain text in a fence no message can close."""

    def turn_lines(who: str, messages: list[str]) -> list[str]:
        return [f"{who}:", *(f"  {message}" for message in messages or ["(nothing)"])]

    body = [f"({example.earlier_turns} earlier turns)"] if example.earlier_turns else []
    for turn in example.context:
        body += turn_lines(turn.speaker, turn.messages)
    body += turn_lines(f"{speaker}, real", example.real) + turn_lines(f"{speaker}, tuned", example.tuned)
    fence = "`" * max(3, max_backtick_run(body) + 1)
    return [fence + "text", *body, fence]


def max_backtick_run(lines: list[str]) -> int:
    longest = current = 0
    for character in "\n".join(lines):
        current = current + 1 if character == "`" else 0
        longest = max(longest, current)
    return longest

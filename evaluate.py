"""Did the twin work? How close the tuned model comes to each person, against its base model, on a scale
from the other people in the chats to the person themselves.

    python evaluate.py --checkpoint runs/me
    python evaluate.py --model BASE --adapter runs/me/adapter --data export/ --speakers "Misha,Olga"

Only the sessions training held out are used, split exactly as the run split them (with `--split time`,
the newest). For the target and their most frequent partners (or the speakers named):
  - loss and perplexity on the speaker's held-out turns, for the base model and the tuned model;
  - held-out moments right before one of the speaker's real turns: each model writes that turn as the
    speaker (sampled as sample.py samples, many moments decoded as one batch), and the written turns are
    measured against the real ones and the training split's (the mechanics are in fidelity/):
      - style, placed between the floor of other people's real turns and the ceiling of the person's
        own other turns, with bootstrap intervals (fidelity.calibration, fidelity.style);
      - attribution: who a character n-gram classifier fitted on the training split says wrote each
        turn, and whether real turns can be told from written ones (fidelity.attribution);
      - failures: assistant talk, refusals, empty replies, repetition, replies that ignore the
        conversation (fidelity.failures);
      - privacy: verbatim copies of the training text, and its phone numbers, e-mail addresses and card
        numbers, as counts only (fidelity.privacy);
  - side-by-side examples: the end of the conversation, the real turn, the tuned model's turn.
Writes DIR/report.md, DIR/report.json and the plots (PNG) beside them, and prints a summary. train.py calls
`run_evaluation` at the end of a LoRA run.
"""
import argparse
import json
import math
import random
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from core import atomic
from core.cli import program
from data.chatml import fit_prompt, parse_body, split_to_fit
from data.dataset import SPLITS, DataConfig, PreparedData, data_config_from_args, prepare_data
from data.packing import pack
from data.sessions import DataError, Session, Turn
from data.telegram import ExportOptions
from fidelity.attribution import NgramClassifier, confusion_matrix, real_vs_generated_auc
from fidelity.calibration import Placement, mean_position, place, style_bounds
from fidelity.failures import FailureRates, failure_rates
from fidelity.plots import loss_curves_png, read_metrics, style_positions_png
from fidelity.privacy import COPY_WORDS, Memorization, PersonalDataLeak, TrainingText, memorization, personal_data_leaks
from fidelity.sampling import generate_batch
from fidelity.style import STATISTICS, style_statistics
from model.generation import SamplingConfig
from model.lora import AdapterError, adapters_off, load_adapter, lora_layers, tokenizer_source
from model import CheckpointError, Transformer, load_model, load_tokenizer
from model.checkpoint import check_finite
from model.loss import IGNORE_INDEX, chunked_cross_entropy
from model.tokenizer import Tokenizer, TokenizerError
from core.device import DTYPES, resolve_device
from training.settings import DEFAULT_MODEL, read_run_record, recorded_args
from core.errors import TwinError

MODELS = ("base", "tuned")
WRITERS = ("real", *MODELS)  # the person at the same contexts, as the reference for every figure
CONTEXT_TURNS_SHOWN = 3  # turns of conversation before each example's reply
CONTEXT_TURNS_READ = 3  # the turns before a reply it should pick up words from (fidelity.failures)
REFERENCE_TURNS = 2000  # training turns drawn per speaker, and of everyone else, as style references
PLOTS = {"loss_curves.png": "Loss curves", "style_positions.png": "Style between the floor and the ceiling"}


class EvaluationError(TwinError):
    """Nothing to evaluate, or a request that cannot be met; the message says which and why."""


@dataclass
class EvalSettings:
    speakers: int | list[str] = 5  # how many (the target and the most frequent partners), or names
    contexts: int = 32  # held-out moments per speaker, where the held-out sessions have that many
    examples: int = 3  # shown side by side per speaker
    seed: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # sample.py's defaults
    context_tokens: int = 4096  # conversation the model sees when sampling, as sample.py's --context
    micro_batch: int = 4  # rows per forward pass for the loss
    sample_batch: int = 16  # moments whose turns are written together


# --- What to evaluate: speakers, held-out moments, and the people to compare with ----------------

@dataclass
class Context:
    """A held-out conversation up to one of `speaker`'s real turns."""
    speaker: str
    turns: list[Turn]
    real: list[str]  # the messages the speaker really wrote next

    @property
    def characters(self) -> int:
        """Of the conversation: how long its prompt is, give or take."""
        return sum(len(message) for turn in self.turns for message in turn.messages)


@dataclass
class Plan:
    speakers: list[str]
    held_out_turns: Counter  # speaker -> turns in the held-out sessions
    contexts: dict[str, list[Context]]
    own_turns: dict[str, list[list[str]]]  # speaker -> their turns in the training split (drawn)
    others_turns: dict[str, list[list[str]]]  # speaker -> everyone else's there (drawn)


def plan_evaluation(data: PreparedData, settings: EvalSettings) -> Plan:
    if not data.val_sessions:
        raise EvaluationError("no held-out sessions to evaluate on: the run held none out "
                              "(--val-fraction 0, or a single session)")
    turns = Counter(turn.speaker for session in data.val_sessions for turn in session.turns)
    speakers = choose_speakers(turns, data.target, settings.speakers, len(data.val_sessions))
    contexts = {speaker: choose_contexts(data.val_sessions, speaker, settings.contexts, settings.seed)
                for speaker in speakers}
    replies = [turn for session in data.train_sessions for turn in session.turns[1:]]
    own = {speaker: draw([turn.messages for turn in replies if turn.speaker == speaker], settings.seed)
           for speaker in speakers}
    others = {speaker: draw([turn.messages for turn in replies if turn.speaker != speaker], settings.seed)
              for speaker in speakers}
    return Plan(speakers, turns, contexts, own, others)


def choose_speakers(turns: Counter, target: str, wanted: int | list[str], sessions: int) -> list[str]:
    """The named speakers, or the target and the partners with the most held-out turns."""
    if isinstance(wanted, list):
        missing = [name for name in wanted if name not in turns]
        if missing:
            present = ", ".join(name for name, _ in turns.most_common(10))
            raise EvaluationError(f"--speakers: no turns of {', '.join(missing)} in the held-out sessions "
                                  f"({sessions}); speakers there: {present}")
        return wanted
    by_turns = sorted(turns, key=lambda name: (-turns[name], name))
    first = [target] if target in turns else []
    return (first + [name for name in by_turns if name != target])[:wanted]


def choose_contexts(sessions: list[Session], speaker: str, count: int, seed: int) -> list[Context]:
    """Up to `count` moments right before one of the speaker's turns, chosen at random (seeded).

    A session's first turn is never one: with nothing before it there is nothing to answer.
    """
    candidates = [Context(speaker, session.turns[:index], turn.messages)
                  for session in sessions for index, turn in enumerate(session.turns)
                  if index > 0 and turn.speaker == speaker]
    if len(candidates) <= count:
        return candidates
    chosen = sorted(random.Random(seed).sample(range(len(candidates)), count))
    return [candidates[index] for index in chosen]


def draw(turns: list[list[str]], seed: int) -> list[list[str]]:
    """Up to REFERENCE_TURNS of the turns, at random (seeded): enough to know a person's habits."""
    return turns if len(turns) <= REFERENCE_TURNS else random.Random(seed).sample(turns, REFERENCE_TURNS)


# --- Measuring one model: loss per speaker, turns it writes --------------------------------------

Writer = Callable[[list[Context], int], list[list[str]]]  # (contexts, seed) -> the turn written at each


@dataclass
class Measurement:
    """What one model (base or tuned) did on a plan."""
    loss: dict[str, float]  # speaker -> mean cross-entropy per trained token of their held-out turns
    tokens: dict[str, int]  # speaker -> those tokens
    replies: dict[str, list[list[str]]]  # speaker -> the turn written at each of their contexts


@torch.no_grad()
def speaker_losses(model: Transformer, tokenizer: Tokenizer, sessions: list[Session], speakers: list[str],
                   seq_len: int, micro_batch: int, device: torch.device) -> tuple[dict[str, float], dict[str, int]]:
    """Each speaker's loss on their held-out turns, and its tokens: the held-out sessions cut and packed as
    training cut and packed them, with only the speaker's message bodies (and end of turn) counted.

    The model runs over the rows once for all speakers: their rows differ only in which tokens count,
    as cutting and packing depend on the tokens alone.
    """
    rows = {speaker: pack([piece for session in sessions for piece in
                           split_to_fit(session.turns, tokenizer, seq_len, trained_speakers={speaker})[0]], seq_len)
            for speaker in speakers}
    layout = rows[speakers[0]]
    sums, tokens = dict.fromkeys(speakers, 0.0), dict.fromkeys(speakers, 0)
    for start in range(0, len(layout), micro_batch):
        window = slice(start, start + micro_batch)
        batch = [torch.from_numpy(array[window]).long().to(device)
                 for array in (layout.input_ids, layout.position_ids, layout.document_ids)]
        hidden = model.hidden_states(batch[0], position_ids=batch[1], document_ids=batch[2])
        for speaker in speakers:
            labels = torch.from_numpy(rows[speaker].labels[window]).long().to(device)
            sums[speaker] += chunked_cross_entropy(hidden, model.lm_head, labels).item()
            tokens[speaker] += int((labels != IGNORE_INDEX).sum())
    return {speaker: sums[speaker] / max(tokens[speaker], 1) for speaker in speakers}, tokens


def model_writer(model: Transformer, tokenizer: Tokenizer, settings: EvalSettings, device: torch.device) -> Writer:
    """The model writing each speaker's next turn: the prompt, stop tokens and sampling of sample.py."""
    max_len = min(settings.context_tokens, model.config.max_position_embeddings)
    if settings.sampling.max_new_tokens >= max_len:
        raise EvaluationError(f"max_new_tokens ({settings.sampling.max_new_tokens}) must be below the "
                              f"context ({max_len} tokens)")
    stop_ids = {tokenizer.im_end_id, tokenizer.im_start_id, tokenizer.eos_id}

    def write(contexts: list[Context], seed: int) -> list[list[str]]:
        prompts = [fit_prompt(context.turns, tokenizer, context.speaker, max_len - settings.sampling.max_new_tokens)
                   for context in contexts]
        written = generate_batch(model, prompts, settings.sampling, stop_ids, torch.Generator().manual_seed(seed),
                                 device)
        return [parse_body(tokenizer.decode(tokens)) for tokens in written]

    return write


def measure(model: Transformer, tokenizer: Tokenizer, data: PreparedData, plan: Plan, settings: EvalSettings,
            device: torch.device, name: str, write: Writer | None = None) -> Measurement:
    """Loss per speaker, and a turn written at every context (by `write`, default the model itself)."""
    was_training = model.training
    model.eval()  # no adapter dropout while sampling
    try:
        loss, tokens = speaker_losses(model, tokenizer, data.val_sessions, plan.speakers, data.report.seq_len,
                                      settings.micro_batch, device)
        write = write or model_writer(model, tokenizer, settings, device)
        everywhere = [context for speaker in plan.speakers for context in plan.contexts[speaker]]
        # Batches of conversations of about one length waste little on padding. Batch n is sampled with
        # seed + n under both models, so their replies differ by the model only.
        order = sorted(range(len(everywhere)), key=lambda index: everywhere[index].characters)
        written: list[list[str]] = [[] for _ in everywhere]
        with tqdm(total=len(everywhere), desc=f"writing as each speaker ({name} model)", unit="turn",
                  leave=False) as bar:
            for number, start in enumerate(range(0, len(order), settings.sample_batch)):
                batch = order[start:start + settings.sample_batch]
                for index, reply in zip(batch, write([everywhere[index] for index in batch], settings.seed + number)):
                    written[index] = reply
                bar.update(len(batch))
        replies = {speaker: [] for speaker in plan.speakers}
        for context, reply in zip(everywhere, written):
            replies[context.speaker].append(reply)
        return Measurement(loss, tokens, replies)
    finally:
        model.train(was_training)


# --- Comparing base and tuned with the real person -------------------------------------------------

@dataclass
class StyleRow:
    real: float
    base: float
    tuned: float
    ceiling: float | None  # how far the person's own other turns are from the real ones (fidelity.calibration)
    floor: float | None  # how far other people's turns are
    placements: dict[str, Placement]  # model -> how far its turns are, and where that falls between the two


@dataclass
class Example:
    earlier_turns: int  # of the conversation, not shown
    context: list[Turn]  # the last turns before the reply
    real: list[str]
    tuned: list[str]


@dataclass
class SpeakerReport:
    speaker: str
    is_target: bool
    held_out_turns: int
    loss_tokens: int
    base_loss: float
    tuned_loss: float
    contexts: int
    style: dict[str, StyleRow]  # statistic name -> figures; empty without contexts
    position: dict[str, float | None]  # model -> mean position over the statistics that tell the person apart
    real_vs_written_auc: dict[str, float | None]  # model -> how well real turns are told from its turns
    examples: list[Example]

    @property
    def title(self) -> str:
        return f"{self.speaker} (target)" if self.is_target else self.speaker


@dataclass
class Attribution:
    classes: list[str]  # the speakers the classifier knows (those with turns in the training split)
    confusion: dict[str, dict[str, dict[str, int]]]  # writer -> speaker written as -> class -> turns

    def share(self, writer: str, speaker: str) -> float | None:
        """The share of the turns written as `speaker` that the classifier gives to them."""
        row = self.confusion[writer].get(speaker, {})
        total = sum(row.values())
        return row.get(speaker, 0) / total if total and speaker in self.classes else None


@dataclass
class Report:
    speakers: list[SpeakerReport]
    held_out_sessions: int
    attribution: Attribution | None  # None when fewer than two speakers have training turns
    failures: dict[str, FailureRates]  # writer -> over all contexts
    memorization: dict[str, Memorization]  # writer -> over all contexts
    personal_data: dict[str, dict[str, PersonalDataLeak]]  # writer -> kind -> counts
    about: dict  # what was evaluated, and how

    def summary(self) -> str:
        lines = [f"fidelity, base → tuned (held-out sessions: {self.held_out_sessions}):"]
        for speaker in self.speakers:
            figures = [f"loss {speaker.base_loss:.3f} → {speaker.tuned_loss:.3f}"]
            if speaker.style:
                figures.append(f"style position {' → '.join(number(speaker.position[model]) for model in MODELS)}")
            if self.attribution and speaker.style:
                figures.append("attributed to them " + " → ".join(
                    percent(self.attribution.share(model, speaker.speaker)) for model in MODELS))
            figures.append(f"contexts: {speaker.contexts}")
            lines.append(f"  {speaker.title}: {', '.join(figures)}")
        tuned = self.failures["tuned"]
        lines.append(f"  tuned model: assistant talk {tuned.assistant_leaks:.0%}, refusals {tuned.refusals:.0%}, "
                     f"empty {tuned.empty:.0%}, copies of {COPY_WORDS}+ training words "
                     f"{self.memorization['tuned'].copying_share:.0%}, personal values from training "
                     f"{sum(leak.values_leaked for leak in self.personal_data['tuned'].values())}")
        return "\n".join(lines)


def number(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def compare(plan: Plan, data: PreparedData, base: Measurement, tuned: Measurement,
            settings: EvalSettings, about: dict) -> Report:
    written = {"real": {speaker: [context.real for context in plan.contexts[speaker]] for speaker in plan.speakers},
               "base": base.replies, "tuned": tuned.replies}
    speakers = [speaker_report(speaker, plan, data, base, tuned, written, settings) for speaker in plan.speakers]

    # Failures and privacy, over every context of every speaker.
    everywhere = {writer: [turn for speaker in plan.speakers for turn in written[writer][speaker]] for writer in WRITERS}
    conversations = [[message for turn in context.turns[-CONTEXT_TURNS_READ:] for message in turn.messages]
                     for speaker in plan.speakers for context in plan.contexts[speaker]]
    training = TrainingText([turn.messages for session in data.train_sessions for turn in session.turns])
    return Report(
        speakers, len(data.val_sessions), attribute(plan, written),
        failures={writer: failure_rates(turns, everywhere["real"], conversations) for writer, turns in everywhere.items()},
        memorization={writer: memorization(training, turns) for writer, turns in everywhere.items()},
        personal_data={writer: personal_data_leaks(training, turns) for writer, turns in everywhere.items()},
        about=about)


def speaker_report(speaker: str, plan: Plan, data: PreparedData, base: Measurement, tuned: Measurement,
                   written: dict[str, dict[str, list[list[str]]]], settings: EvalSettings) -> SpeakerReport:
    contexts, real = plan.contexts[speaker], written["real"][speaker]
    style, position, auc = {}, dict.fromkeys(MODELS), dict.fromkeys(MODELS)
    if contexts:
        bounds = style_bounds(real, plan.own_turns[speaker], plan.others_turns[speaker], settings.seed)
        placements = {model: place(written[model][speaker], real, bounds, settings.seed) for model in MODELS}
        values = {writer: style_statistics(written[writer][speaker]) for writer in WRITERS}
        style = {statistic.name: StyleRow(*(values[writer][statistic.name] for writer in WRITERS),
                                          bounds[statistic.name].ceiling, bounds[statistic.name].floor,
                                          {model: placements[model][statistic.name] for model in MODELS})
                 for statistic in STATISTICS}
        position = {model: mean_position(placements[model]) for model in MODELS}
        auc = {model: real_vs_generated_auc(real, written[model][speaker], settings.seed) for model in MODELS}
    examples = [Example(max(0, len(context.turns) - CONTEXT_TURNS_SHOWN), context.turns[-CONTEXT_TURNS_SHOWN:],
                        context.real, reply)
                for context, reply in zip(contexts[:settings.examples], tuned.replies[speaker])]
    return SpeakerReport(speaker, speaker == data.target, plan.held_out_turns[speaker], tuned.tokens[speaker],
                         base.loss[speaker], tuned.loss[speaker], len(contexts), style, position, auc, examples)


def attribute(plan: Plan, written: dict[str, dict[str, list[list[str]]]]) -> Attribution | None:
    """Who the classifier, fitted on the evaluated speakers' training turns, says wrote each turn."""
    known = {speaker: plan.own_turns[speaker] for speaker in plan.speakers if plan.own_turns[speaker]}
    if len(known) < 2:
        return None
    classifier = NgramClassifier(known)
    return Attribution(classifier.classes, {writer: confusion_matrix(classifier, written[writer]) for writer in WRITERS})


# --- Writing the report --------------------------------------------------------------------------

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
  position (–); a speaker's position is the mean over the others.
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
    """report.json, report.md and the plots, each written whole or not at all."""
    out_dir = Path(out_dir)
    pictures = {"loss_curves.png": loss_curves_png(read_metrics(metrics_file))
                if metrics_file and metrics_file.is_file() else None,
                "style_positions.png": style_positions_png(
                    {speaker.title: {statistic.label: speaker.style[statistic.name].placements for statistic in STATISTICS}
                     for speaker in report.speakers if speaker.style})}
    for name, png in pictures.items():
        if png:
            atomic.write_bytes(out_dir / name, png)
    plots = [name for name, png in pictures.items() if png]
    atomic.write_text(out_dir / "report.json", json.dumps({**report_json(report), "plots": plots}, indent=2,
                                                          ensure_ascii=False))
    atomic.write_text(out_dir / "report.md", report_markdown(report, plots))


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50))  # as train.py: a diverged loss should not overflow


def report_json(report: Report) -> dict:
    speakers = []
    for speaker in report.speakers:
        speakers.append({
            "speaker": speaker.speaker, "is_target": speaker.is_target,
            "held_out_turns": speaker.held_out_turns, "contexts": speaker.contexts,
            "loss": {"base": speaker.base_loss, "tuned": speaker.tuned_loss, "tokens": speaker.loss_tokens},
            "perplexity": {"base": perplexity(speaker.base_loss), "tuned": perplexity(speaker.tuned_loss)},
            "style": {name: asdict(row) for name, row in speaker.style.items()},
            "position": speaker.position, "real_vs_written_auc": speaker.real_vs_written_auc,
            "attributed_to_them": {writer: report.attribution.share(writer, speaker.speaker) for writer in WRITERS}
            if report.attribution else None,
            "examples": [asdict(example) for example in speaker.examples],
        })
    return {"about": report.about, "held_out_sessions": report.held_out_sessions, "speakers": speakers,
            "attribution": asdict(report.attribution) if report.attribution else None,
            "failures": {writer: asdict(rates) for writer, rates in report.failures.items()},
            "memorization": {writer: asdict(figures) for writer, figures in report.memorization.items()},
            "personal_data": {writer: {kind: asdict(leak) for kind, leak in kinds.items()}
                              for writer, kinds in report.personal_data.items()}}


def cell(text: str) -> str:
    """A name as one Markdown table cell or heading: no column break, no line break."""
    return " ".join(text.replace("|", "/").split())


def report_markdown(report: Report, plots: list[str]) -> str:
    about = report.about
    lines = ["# Twin fidelity report", "",
             f"- base: {about['base']}", f"- tuned: {about['tuned']}",
             f"- data: {about['data']}; held-out sessions: {report.held_out_sessions} ({about.get('split', 'hash')} split)",
             f"- sampling: {', '.join(f'{key} {value}' for key, value in about['sampling'].items())}; "
             f"seed {about['seed']}", "",
             "| speaker | held-out turns | contexts | loss base → tuned | perplexity base → tuned | "
             "style position base → tuned | attributed to them base → tuned | real vs tuned AUC |",
             "|---|---:|---:|---|---|---|---|---:|"]
    for speaker in report.speakers:
        attributed = (" → ".join(percent(report.attribution.share(model, speaker.speaker)) for model in MODELS)
                      if report.attribution and speaker.style else "–")
        lines.append(f"| {cell(speaker.title)} | {speaker.held_out_turns} | {speaker.contexts} | "
                     f"{speaker.base_loss:.3f} → {speaker.tuned_loss:.3f} | {perplexity(speaker.base_loss):.1f} → "
                     f"{perplexity(speaker.tuned_loss):.1f} | "
                     f"{' → '.join(number(speaker.position[model]) for model in MODELS) if speaker.style else '–'} | "
                     f"{attributed} | {number(speaker.real_vs_written_auc['tuned'])} |")
    lines += ["", "## How to read this", "", HOW_TO_READ]
    for name in plots:
        lines += ["", f"## {PLOTS[name]}", "", f"![{PLOTS[name]}]({name})"]
    lines += attribution_markdown(report) + failures_markdown(report) + privacy_markdown(report)
    for speaker in report.speakers:
        lines += ["", f"## {cell(speaker.title)}", "", speaker_verdict(speaker, report.attribution)]
        if speaker.style:
            lines += ["", "| statistic | real | base | tuned | ceiling | floor | base position (95%) | "
                      "tuned position (95%) |", "|---|---:|---:|---:|---:|---:|---|---|"]
            for statistic in STATISTICS:
                row = speaker.style[statistic.name]
                shown = [f"{value:.0%}" if statistic.is_share else f"{value:.2f}"
                         for value in (row.real, row.base, row.tuned)]
                lines.append(f"| {statistic.label} | {' | '.join(shown)} | {number(row.ceiling)} | {number(row.floor)} | "
                             f"{' | '.join(position_text(row.placements[model]) for model in MODELS)} |")
        for count, example in enumerate(speaker.examples, 1):
            lines += ["", f"Example {count}:", "", *example_block(example, speaker.speaker)]
    return "\n".join(lines) + "\n"


def position_text(placement: Placement) -> str:
    if placement.position is None:
        return "–"
    return f"{placement.position:.2f} ({placement.low:.2f} to {placement.high:.2f})"


def attribution_markdown(report: Report) -> list[str]:
    lines = ["", "## Who wrote it?", ""]
    if report.attribution is None:
        return lines + ["No attribution: fewer than two of the evaluated speakers have turns in the training split."]
    classes = report.attribution.classes
    lines += ["Rows: the speaker a turn was written as; columns: who the classifier says wrote it."]
    for writer in WRITERS:
        lines += ["", f"{writer.capitalize()} turns:", "",
                  f"| written as | {' | '.join(cell(name) for name in classes)} | to them |",
                  f"|---|{'---:|' * (len(classes) + 1)}"]
        for speaker, row in report.attribution.confusion[writer].items():
            lines.append(f"| {cell(speaker)} | {' | '.join(str(row[name]) for name in classes)} | "
                         f"{percent(report.attribution.share(writer, speaker))} |")
    lines += ["", "Real held-out turns against written ones, cross-validated AUC (0.5: indistinguishable):", "",
              "| speaker | base | tuned |", "|---|---:|---:|"]
    lines += [f"| {cell(speaker.title)} | {' | '.join(number(speaker.real_vs_written_auc[model]) for model in MODELS)} |"
              for speaker in report.speakers]
    return lines


def failures_markdown(report: Report) -> list[str]:
    rows = [("assistant talk", "assistant_leaks"), ("refusals", "refusals"), ("empty turns", "empty"),
            ("repeats itself within a turn", "repeats_itself"), ("repeats a turn at another context", "repeats_across")]
    failures = report.failures
    lines = ["", "## Failures", "", "Share of turns, over every context of every speaker evaluated.", "",
             f"| | {' | '.join(WRITERS)} |", "|---|---:|---:|---:|"]
    lines += [f"| {label} | {' | '.join(percent(getattr(failures[writer], key)) for writer in WRITERS)} |"
              for label, key in rows]
    lines.append(f"| ignores the conversation (of {failures['real'].context_bound} contexts whose real turn picks "
                 f"up a word) | {' | '.join(percent(failures[writer].ignores_context) for writer in WRITERS)} |")
    lines.append(f"| turns | {' | '.join(str(failures[writer].replies) for writer in WRITERS)} |")
    return lines


def privacy_markdown(report: Report) -> list[str]:
    copies, personal = report.memorization, report.personal_data
    lines = ["", "## Privacy", "", "Copies of the training text in turns, and personal values of the training text "
             "found in them (counts only).", "", f"| | {' | '.join(WRITERS)} |", "|---|---:|---:|---:|",
             f"| longest run of words copied | {' | '.join(str(copies[writer].longest_copy) for writer in WRITERS)} |",
             f"| turns copying {COPY_WORDS}+ words | "
             f"{' | '.join(percent(copies[writer].copying_share) for writer in WRITERS)} |"]
    for kind, label in (("phone", "phone numbers"), ("email", "e-mail addresses"), ("card", "card-like numbers")):
        in_training = personal["real"][kind].in_training
        lines.append(f"| {label} of the training text ({in_training}): turns with one / distinct values | "
                     f"{' | '.join(f'{personal[writer][kind].replies_with_one} / {personal[writer][kind].values_leaked}' for writer in WRITERS)} |")
    return lines


def speaker_verdict(speaker: SpeakerReport, attribution: Attribution | None) -> str:
    change = "fell" if speaker.tuned_loss < speaker.base_loss else "did not fall"
    loss = (f"Held-out loss {change}: {speaker.base_loss:.3f} → {speaker.tuned_loss:.3f} over "
            f"{speaker.loss_tokens} tokens of {speaker.held_out_turns} turns.")
    if not speaker.style:
        return (f"{loss} No style comparison: no held-out moment to write their turn at (--contexts 0, "
                "or each of their turns opens a session).")
    base, tuned = (speaker.position[model] for model in MODELS)
    if tuned is None:
        style = (f"Over {speaker.contexts} held-out contexts no statistic tells them from other people "
                 "(or there is no training turn of theirs or of others to compare with), so style has no position.")
    else:
        style = (f"Over {speaker.contexts} held-out contexts the tuned model's style sits at {tuned:.2f} between "
                 f"other people (0) and {cell(speaker.speaker)} themselves (1), the base model's at {number(base)}.")
    if attribution and speaker.speaker in attribution.classes:
        style += (f" The classifier attributes {percent(attribution.share('tuned', speaker.speaker))} of the tuned "
                  f"model's turns to them ({percent(attribution.share('base', speaker.speaker))} of the base "
                  f"model's, {percent(attribution.share('real', speaker.speaker))} of their real ones).")
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


# --- Putting it together -----------------------------------------------------------------------

def run_evaluation(model: Transformer, tokenizer: Tokenizer, data: PreparedData, out_dir: str | Path,
                   settings: EvalSettings | None = None, device: torch.device = torch.device("cpu"),
                   about: dict | None = None, metrics_file: Path | None = None) -> Report:
    """Evaluate a model carrying LoRA adapters against itself with them switched off; write the report.

    `about` says what the report is about: "base", "tuned", "data" (strings for the reader).
    `metrics_file`: the run's metrics.jsonl, for the loss curves.
    The model is left as it came: adapters on, same training mode.
    """
    settings = settings or EvalSettings()
    if not lora_layers(model):
        raise EvaluationError("the model carries no LoRA adapters, so there is no base model to switch to")
    plan = plan_evaluation(data, settings)
    with adapters_off(model):
        base = measure(model, tokenizer, data, plan, settings, device, "base")
    tuned = measure(model, tokenizer, data, plan, settings, device, "tuned")
    return compare_and_write(plan, data, base, tuned, settings, out_dir, about or {}, metrics_file)


def compare_and_write(plan: Plan, data: PreparedData, base: Measurement, tuned: Measurement,
                      settings: EvalSettings, out_dir: str | Path, about: dict,
                      metrics_file: Path | None = None) -> Report:
    about = {"base": "base model", "tuned": "tuned model", "data": "held-out sessions", **about,
             "speakers": plan.speakers, "contexts": settings.contexts, "seed": settings.seed,
             "sampling": asdict(settings.sampling)}
    report = compare(plan, data, base, tuned, settings, about)
    write_report(report, out_dir, metrics_file)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("what to evaluate")
    source.add_argument("--checkpoint", metavar="OUT", help="a train.py output directory: it knows its base model, adapter or "
                        "full model, data and held-out split; replaces --model/--adapter and the data flags")
    source.add_argument("--model", metavar="DIR_OR_REPO", help=f"the base model: directory or Hub repo id (default: {DEFAULT_MODEL})")
    source.add_argument("--adapter", metavar="DIR", help="a LoRA adapter directory (twin or PEFT) trained on --model")
    data = parser.add_argument_group("held-out data (given by the run with --checkpoint)")
    data.add_argument("--data", metavar="PATH", help="the Telegram export or sessions file trained on (default with --checkpoint: the run's)")
    data.add_argument("--target", metavar="NAME", help="the person cloned, as given to train.py (default: the export's owner)")
    data.add_argument("--val-fraction", type=float, help="as given to train.py, so the held-out split agrees (default: 0.02)")
    data.add_argument("--split", choices=SPLITS, help="as given to train.py: hash, or time for the newest sessions (default: hash)")
    data.add_argument("--seq-len", type=int, help="as given to train.py (default: 1024). An export read with other "
                      "train.py data options needs --checkpoint, which knows them")
    report = parser.add_argument_group("report")
    report.add_argument("--speakers", default="5", metavar="N|NAME,...", help="how many speakers (the target and the most frequent partners "
                        "in the held-out sessions), or names separated by commas (default: %(default)s)")
    report.add_argument("--contexts", type=int, metavar="K", default=EvalSettings.contexts, help="held-out moments each model writes a turn at, per speaker, where there are that many (default: %(default)s)")
    report.add_argument("--examples", type=int, default=EvalSettings.examples, help="examples shown per speaker; 0 keeps message text out of the report (default: %(default)s)")
    report.add_argument("--out", metavar="DIR", help="report directory (default: CHECKPOINT/report with --checkpoint, else ./report)")
    sampling = parser.add_argument_group("sampling (sample.py's defaults)")
    sampling.add_argument("--seed", type=int, default=EvalSettings.seed, help="seed of the contexts chosen and of sampling (default: %(default)s)")
    sampling.add_argument("--temperature", type=float, default=SamplingConfig.temperature, help="0: greedy (default: %(default)s)")
    sampling.add_argument("--top-p", type=float, default=SamplingConfig.top_p, help="nucleus sampling mass (default: %(default)s)")
    sampling.add_argument("--max-new-tokens", type=int, default=SamplingConfig.max_new_tokens, help="longest turn in tokens (default: %(default)s)")
    run = parser.add_argument_group("run")
    run.add_argument("--context", type=int, default=EvalSettings.context_tokens, help="tokens of conversation the model sees when writing (default: %(default)s)")
    run.add_argument("--micro-batch", type=int, default=EvalSettings.micro_batch, help="rows per forward pass for the loss (default: %(default)s)")
    run.add_argument("--sample-batch", type=int, default=EvalSettings.sample_batch, help="held-out moments whose turns are written together (default: %(default)s)")
    run.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: %(default)s)")
    run.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="default: bf16 on cuda, fp32 on cpu")
    return parser


def settings_from_args(args) -> EvalSettings:
    text = args.speakers.strip()
    if text.isdigit():
        speakers = int(text)
        if speakers < 1:
            raise EvaluationError("--speakers: give at least 1 speaker, or names separated by commas")
    else:
        speakers = [name.strip() for name in text.split(",") if name.strip()]
        if not speakers:
            raise EvaluationError("--speakers: give a number of speakers or names separated by commas")
    for flag, value in (("--contexts", args.contexts), ("--examples", args.examples)):
        if value < 0:
            raise EvaluationError(f"{flag} must be 0 or more, got {value}")
    if args.sample_batch < 1:
        raise EvaluationError(f"--sample-batch must be 1 or more, got {args.sample_batch}")
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens)
    return EvalSettings(speakers=speakers, contexts=args.contexts, examples=args.examples, seed=args.seed,
                        sampling=sampling, context_tokens=args.context, micro_batch=args.micro_batch,
                        sample_batch=args.sample_batch)


@program
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        report, out_dir = evaluate_from_args(args)
    except (EvaluationError, CheckpointError, TokenizerError, AdapterError, DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(report.summary())
    print(f"report written to {out_dir / 'report.md'} (tables, plots and examples) and {out_dir / 'report.json'}")


@dataclass
class Sources:
    """Where an evaluation's models and held-out data come from."""
    base: str
    adapter: Path | None  # None: a full fine-tune, in `full_model`
    full_model: Path | None
    data: str
    data_config: DataConfig
    cache_dir: Path | None  # the run's token cache, when there is a run
    metrics_file: Path | None  # the run's metrics.jsonl, when there is a run
    out_dir: Path


def sources_from_args(args) -> Sources:
    if not args.checkpoint:
        if not args.adapter:
            raise EvaluationError("give --checkpoint (a train.py run) or --adapter: the report compares a tuned "
                                  "model with its base")
        if not args.data:
            raise EvaluationError("--data: give the Telegram export or sessions file the adapter was trained on")
        defaults = DataConfig()
        config = DataConfig(seq_len=args.seq_len or defaults.seq_len,
                            val_fraction=defaults.val_fraction if args.val_fraction is None else args.val_fraction,
                            split=args.split or defaults.split, export=ExportOptions(target=args.target))
        return Sources(args.model or DEFAULT_MODEL, Path(args.adapter), None, args.data, config, None, None,
                       Path(args.out or "report"))

    given = [flag for flag, value in (("--model", args.model), ("--adapter", args.adapter), ("--target", args.target),
                                      ("--val-fraction", args.val_fraction), ("--split", args.split),
                                      ("--seq-len", args.seq_len))
             if value is not None]
    if given:
        raise EvaluationError(f"{', '.join(given)}: taken from the run in --checkpoint; leave out")
    out = Path(args.checkpoint)
    settings = read_run_record(out)["settings"]
    base, data = settings["model"], args.data or settings["data"]
    full_model = out / "model"
    adapter, full_model = (None, full_model) if full_model.exists() else (out / "adapter", None)
    return Sources(base, adapter, full_model, data, data_config_from_args(recorded_args(settings)), out / "cache",
                   out / "metrics.jsonl", Path(args.out or out / "report"))


def evaluate_from_args(args) -> tuple[Report, Path]:
    settings = settings_from_args(args)
    sources = sources_from_args(args)
    device, dtype = resolve_device(args)
    adapter = sources.adapter
    tokenizer = load_tokenizer(tokenizer_source(sources.base, adapter))
    data = prepare_data(sources.data, tokenizer, sources.data_config, cache_dir=sources.cache_dir)
    about = {"base": str(sources.base), "data": str(sources.data), "split": sources.data_config.split,
             "tuned": f"adapter {adapter}" if adapter else f"full model {sources.full_model}"}

    if adapter:  # one model in memory, its adapters switched off for the base figures
        model = load_model(sources.base, dtype=dtype, device=device)
        check_finite(model, sources.base)
        load_adapter(model, adapter)
        report = run_evaluation(model, tokenizer, data, sources.out_dir, settings, device, about, sources.metrics_file)
    else:  # a full fine-tune: two models, one after the other (two 7B models rarely fit at once)
        plan = plan_evaluation(data, settings)
        base = measure_checkpoint(sources.base, tokenizer, data, plan, settings, device, dtype, "base")
        tuned = measure_checkpoint(sources.full_model, tokenizer, data, plan, settings, device, dtype, "tuned")
        report = compare_and_write(plan, data, base, tuned, settings, sources.out_dir, about, sources.metrics_file)
    return report, sources.out_dir


def measure_checkpoint(source, tokenizer: Tokenizer, data: PreparedData, plan: Plan, settings: EvalSettings,
                       device: torch.device, dtype: torch.dtype, name: str) -> Measurement:
    """Load a model, measure it, and let it go (it is freed when this returns)."""
    model = load_model(source, dtype=dtype, device=device)
    check_finite(model, source)
    measurement = measure(model, tokenizer, data, plan, settings, device, name)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return measurement


if __name__ == "__main__":
    main()

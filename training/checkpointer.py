"""A run's checkpoints, `OUT/checkpoints/step-00000100`: written whole or not at all (a killed write
leaves a temporary folder, removed at the next start), the newest few kept, and resumed from the
newest intact one, exactly: weights or adapters, optimizer, schedule, data position and random state.

One Checkpointer serves both recipes; what a checkpoint holds is its backend's: `AdapterCheckpoints`
(LoRA: the adapter in PEFT's format and the training state) here, `ShardedCheckpoints` (every weight,
or under LoRA the adapters alone, and its optimizer state, sharded with torch.distributed.checkpoint)
in training.distributed.
"""

import json
import math
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

import torch

from core import atomic
from core.run_folder import CHECKPOINT_NAME, checkpoint_path, checkpoints
from data.packing import RowLoader
from model.lora_config import AdapterError, LoRAConfig
from model.peft import load_adapter, save_adapter
from training.loop import TrainingError


class DamagedCheckpoint(TrainingError):
    """A checkpoint whose files cannot be read back as one; an older checkpoint may still serve."""


# What a write cut short leaves: atomic.directory's `.step-00000100.k3j_x2.tmp` (or `.adapter.…`,
# `.report.…`) and the `.step-00000100.old` it swaps out, training.distributed.save_checkpoint's
# `.step-00000100.tmp`, atomic.file's `.run.json.k3j_x2.tmp`.
UNFINISHED_WRITE = re.compile(
    r"\.(step-\d{8}|adapter|merged|model|report|run\.json|loss_curves\.png|best\.json)(\.\w+)?\.(tmp|old)"
)
BEST = "best.json"  # in OUT/checkpoints with --keep-best: the held-out evaluation of the best checkpoint


def rng_state() -> dict:
    # Dropout is the only randomness after start-up; the loader's order comes from its own seed.
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prune_checkpoints(out: Path, keep: int, spared: Path | None = None) -> None:
    """Delete all but the newest `keep` checkpoints, and `spared` (the best one)."""
    for old in checkpoints(out)[:-keep] if keep > 0 else []:
        if old != spared:
            shutil.rmtree(old)


def remove_unfinished_writes(out: Path) -> list[Path]:
    """Delete what killed writes left in the run (a 7B checkpoint's is up to 0.5 GB); returns what went.

    A `.NAME.old` whose NAME is missing was complete: the write was killed in the middle of swapping it
    for its replacement, so it goes back in place instead."""
    removed = []
    for folder in (out, out / "checkpoints"):
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            found = UNFINISHED_WRITE.fullmatch(path.name)
            if not found:
                continue
            if found[3] == "old" and not (folder / found[1]).exists() and not path.is_symlink():
                os.replace(path, folder / found[1])
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def save_training_state(directory: Path, step: int, loss: float, optimizer, scheduler, loader: RowLoader) -> None:
    torch.save(
        {
            "step": step,
            "loss": loss,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "loader": loader.state_dict(),
            "rng": rng_state(),
        },
        directory / "training_state.pt",
    )


def read_training_state(directory: Path) -> dict:
    """A checkpoint's `training_state.pt`, checked to be the state of the step the folder is named after."""
    path = directory / "training_state.pt"
    try:
        state = torch.load(path, weights_only=True)  # tensors and plain containers: no code of the file's runs
    except Exception as error:  # for a damaged file torch raises anything from EOFError to KeyError
        raise DamagedCheckpoint(f"{path}: unreadable ({reason(error)})") from None
    step = int(CHECKPOINT_NAME.fullmatch(directory.name)[1])
    loader = state.get("loader") if isinstance(state, dict) else None
    if not (
        isinstance(state, dict)
        and type(state.get("step")) is int
        and state["step"] == step
        and isinstance(state.get("loss", 0.0), (float, type(None)))
        and isinstance(state.get("scheduler"), dict)
        and isinstance(loader, dict)
        and all(type(loader.get(key)) is int for key in ("epoch", "step"))
        and all(type(loader.get(key, 1)) is int and loader.get(key, 1) >= 1 for key in ("world_size", "batch_size"))
    ):
        raise DamagedCheckpoint(f"{path}: not the training state of step {step}")
    return state


def load_training_state(directory: Path, optimizer, scheduler, loader: RowLoader) -> dict:
    """Restore what `save_training_state` wrote; returns the state (its step is the one to continue after)."""
    state = read_training_state(directory)
    try:
        if not state["scheduler"].keys() <= scheduler.state_dict().keys():  # it would set any attribute it is given
            raise ValueError(f"scheduler state {sorted(state['scheduler'])}")
        optimizer.load_state_dict(state["optimizer"])
        for param, moments in optimizer.state.items():
            if any(torch.is_tensor(v) and v.shape not in (param.shape, torch.Size()) for v in moments.values()):
                raise ValueError("optimizer moments of another shape than their parameter's")
        scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
        restore_rng_state(state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise DamagedCheckpoint(f"{directory / 'training_state.pt'}: does not fit this run ({reason(error)})") from None
    return state


Loaded = TypeVar("Loaded")


def resume_from(out: Path, load: Callable[[Path], Loaded], warn: Callable[[str], None]) -> tuple[Path, Loaded]:
    """The newest checkpoint that `load` takes, and what it returned. A damaged one is skipped with a
    warning, for the one before it."""
    found = checkpoints(out)
    if not found:
        raise TrainingError(f"{out}: no checkpoint to resume from in {out / 'checkpoints'}")
    problems = []
    for directory in reversed(found):
        try:
            return directory, load(directory)
        except DamagedCheckpoint as error:
            problems.append(error)
            warn(f"warning: cannot resume from {directory.name}: {error}")
    raise TrainingError(f"{out / 'checkpoints'}: no checkpoint to resume from is intact; the newest: {problems[0]}")


def reason(error: BaseException, limit: int = 200) -> str:
    """An exception's first line, for a one-line message (some have none, some a page)."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__


class Backend(Protocol):
    def save(self, directory: Path, state: dict) -> None: ...
    def resume(self, out: Path, warn: Callable[[str], None]) -> tuple[Path, dict]: ...
    def load_weights(self, directory: Path) -> None: ...


class Checkpointer:
    """Saves a checkpoint every `every` steps (and when asked), keeps the newest `keep`, resumes.

    With `keep_best`, every held-out evaluation better than all before it is saved as a checkpoint too,
    and that checkpoint is kept until a better one comes: `best` is its evaluation record, which
    OUT/checkpoints/best.json keeps for a resumed run."""

    def __init__(
        self, out: Path, backend: Backend, every: int, keep: int, is_main: bool = True, keep_best: bool = False
    ):
        self.out, self.backend, self.every, self.keep, self.is_main = out, backend, every, keep, is_main
        self.keep_best, self.best = keep_best, None

    def due(self, step: int, evaluation: dict | None = None) -> bool:
        """Whether step `step`, whose held-out evaluation (if any) is `evaluation`, is saved."""
        return bool(self.every) and step % self.every == 0 or self.is_better(evaluation)

    def is_better(self, evaluation: dict | None) -> bool:
        """With keep_best: whether this evaluation's held-out loss is the lowest so far."""
        return bool(
            self.keep_best
            and evaluation
            and math.isfinite(evaluation["eval_loss"])
            and (self.best is None or evaluation["eval_loss"] < self.best["eval_loss"])
        )

    def save(self, step: int, state: dict, evaluation: dict | None = None) -> None:
        """`state`: the step, its loss, and the schedule's and loader's states; the backend adds the rest.
        `evaluation`: the step's held-out evaluation, which makes it the best checkpoint if it is better."""
        better = self.is_better(evaluation)
        self.backend.save(checkpoint_path(self.out, step), state)
        if better:
            self.best = evaluation
            if self.is_main:
                atomic.write_text(self.out / "checkpoints" / BEST, json.dumps(evaluation))
        if self.is_main:
            prune_checkpoints(self.out, self.keep, checkpoint_path(self.out, self.best["step"]) if self.best else None)

    def resume(self, warn: Callable[[str], None]) -> tuple[Path, dict]:
        resumed = self.backend.resume(self.out, warn)
        if self.keep_best:
            self.best = read_best(self.out, resumed[1]["step"])
        return resumed

    def load_best(self, final: dict) -> dict:
        """The evaluation of the model the run ends with: the best checkpoint's, loaded, where its held-out
        loss is lower than `final`'s (the last step's), else `final`."""
        if not (self.keep_best and self.best and final and self.best["eval_loss"] < final["eval_loss"]):
            return final
        self.backend.load_weights(checkpoint_path(self.out, self.best["step"]))
        return self.best


def read_best(out: Path, resumed_step: int) -> dict | None:
    """The best checkpoint's evaluation, as best.json keeps it: None where there is none, or it is not one
    of the checkpoints up to the one resumed from (a damaged file is none: the next evaluation sets it)."""
    try:
        best = json.loads((out / "checkpoints" / BEST).read_text())
        step, loss = best["step"], best["eval_loss"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    if not (
        type(step) is int
        and step <= resumed_step
        and checkpoint_path(out, step) in checkpoints(out)
        and isinstance(loss, float)
        and math.isfinite(loss)
    ):
        return None
    tokens = best.get("eval_tokens")
    return {
        "step": step,
        "eval_loss": loss,
        "eval_perplexity": math.exp(min(loss, 50)),
        "eval_tokens": tokens if type(tokens) is int else 0,
    }


class AdapterCheckpoints:
    """A LoRA checkpoint: `adapter/` in PEFT's format and `training_state.pt` (optimizer, schedule,
    loader, random state), written together into one folder that replaces nothing until complete."""

    def __init__(self, model, lora_config: LoRAConfig, base_model: str, optimizer, scheduler, loader: RowLoader):
        self.model, self.lora_config, self.base_model = model, lora_config, base_model
        self.optimizer, self.scheduler, self.loader = optimizer, scheduler, loader

    def save(self, directory: Path, state: dict) -> None:
        with atomic.directory(directory) as building:
            save_adapter(self.model, building / "adapter", self.lora_config, base_model=self.base_model)
            save_training_state(building, state["step"], state["loss"], self.optimizer, self.scheduler, self.loader)

    def resume(self, out: Path, warn: Callable[[str], None]) -> tuple[Path, dict]:
        return resume_from(out, self._load, warn)

    def load_weights(self, directory: Path) -> None:
        load_adapter(self.model, directory / "adapter")

    def _load(self, directory: Path) -> dict:
        try:
            load_adapter(self.model, directory / "adapter")
        except AdapterError as error:
            raise DamagedCheckpoint(str(error)) from None
        return load_training_state(directory, self.optimizer, self.scheduler, self.loader)

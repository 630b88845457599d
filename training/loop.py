"""The mechanics of a training run: optimizer and schedule, one optimizer step over an accumulation
window, evaluation, the metrics file, and checkpoints that a run resumes from exactly."""
import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from core import atomic
from data.packing import PackedRows, RowLoader
from model.loss import IGNORE_INDEX, chunked_cross_entropy
from core.errors import TwinError


class TrainingError(TwinError):
    """A run that cannot go on; the message says why and what to do."""


class DamagedCheckpoint(TrainingError):
    """A checkpoint whose files cannot be read back as one; an older checkpoint may still serve."""


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; norms and other vectors get no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.999),
                             fused=device.type == "cuda")


def cosine_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warmup to the peak learning rate, then cosine decay to zero at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def endless(loader: RowLoader):
    """Micro-batches across epochs; the loader's state says where the stream is."""
    while True:
        yield from loader


def trained_token_count(batches: list[dict[str, torch.Tensor]]) -> int:
    return sum(int((batch["labels"] != IGNORE_INDEX).sum()) for batch in batches)


def forward_loss(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Summed cross-entropy over the batch's trained tokens."""
    batch = {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}
    hidden = model.hidden_states(batch["input_ids"], position_ids=batch["position_ids"],
                                 document_ids=batch["document_ids"])
    return chunked_cross_entropy(hidden, model.lm_head, batch["labels"])


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, window: list[dict[str, torch.Tensor]],
               device: torch.device, grad_clip: float, token_total: int | None = None,
               loss_scale: float = 1.0) -> tuple[float, float]:
    """Accumulate gradients over the window's micro-batches and return (mean loss, gradient norm).

    The loss is normalised by the trained tokens of the whole window (`token_total`, which a
    distributed run counts over all ranks), so every token weighs the same whatever micro-batch it
    fell in. `loss_scale` undoes the averaging of gradients over ranks that FSDP applies.
    The optimizer is not stepped when the loss is not finite: the caller stops the run.
    """
    token_total = token_total or trained_token_count(window)
    loss_sum = 0.0
    for batch in window:
        loss = forward_loss(model, batch, device)
        # Even a micro-batch without trained tokens goes backward (with zero gradients), so the ranks
        # of a sharded run meet in the same gradient collectives; a window without any has no step.
        if token_total and loss.requires_grad:
            (loss * loss_scale / token_total).backward()
        loss_sum += loss.item()
    mean_loss = loss_sum / max(token_total, 1)
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    grad_norm = float(grad_norm.full_tensor() if isinstance(grad_norm, DTensor) else grad_norm)  # sharded: global norm
    if math.isfinite(mean_loss) and math.isfinite(grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return mean_loss, grad_norm


@torch.no_grad()
def evaluate(model: nn.Module, rows: PackedRows, micro_batch: int, device: torch.device) -> tuple[float, int]:
    """Mean cross-entropy over the trained tokens of `rows` and how many tokens that was."""
    if len(rows) == 0:
        return float("nan"), 0
    was_training = model.training
    model.eval()
    loss_sum, tokens = 0.0, 0
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    # Without wrapping every row comes once; every rank still runs the same number of batches
    # (some empty), as sharded models need all ranks in each forward pass.
    for batch in RowLoader(rows, micro_batch, rank=rank, world_size=world_size, shuffle=False, wrap=False):
        loss_sum += forward_loss(model, batch, device).item()
        tokens += trained_token_count([batch])
    if dist.is_initialized():
        totals = torch.tensor([loss_sum, tokens], dtype=torch.float64, device=device)
        dist.all_reduce(totals)
        loss_sum, tokens = totals[0].item(), int(totals[1].item())
    model.train(was_training)
    return loss_sum / max(tokens, 1), tokens


class MetricsLog:
    """`metrics.jsonl`: one JSON object per logged step or evaluation, appended as they happen."""

    def __init__(self, path: Path, after_step: int = 0):
        self.path = path
        # The run goes on from `after_step` (0: a fresh start); records past it are from an attempt
        # that died before its next checkpoint, and never happened as far as this run is concerned.
        kept = [line for line in path.read_text(errors="replace").splitlines()
                if _step_of(line) <= after_step] if path.exists() else []
        atomic.write_text(path, "".join(line + "\n" for line in kept))  # private, like all of a run

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _step_of(record: str) -> float:
    """The step of a metrics line; infinite for a line a crash cut short (or any other), so it is dropped."""
    try:
        step = json.loads(record)["step"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return math.inf
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else math.inf


# Checkpoints are directories `OUT/checkpoints/step-00000100`, written with `atomic.directory`, so
# the newest complete one is always safe to resume from.
CHECKPOINT_NAME = re.compile(r"step-(\d{8})")
# What a write cut short leaves: atomic.directory's `.step-00000100.k3j_x2.tmp` (or `.adapter.…`) and
# the `.step-00000100.old` it swaps out, fsdp.save_checkpoint's `.step-00000100.tmp`.
UNFINISHED_WRITE = re.compile(r"\.(step-\d{8}|adapter|merged|model)(\.\w+)?\.(tmp|old)")


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


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first. A link is none: pruning must never reach outside the run."""
    folder = out / "checkpoints"
    found = [p for p in folder.iterdir() if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink()
             ] if folder.is_dir() else []
    return sorted(found)


def checkpoint_path(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:08d}"


def prune_checkpoints(out: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for old in checkpoints(out)[:-keep] if keep > 0 else []:
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
    torch.save({"step": step, "loss": loss, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "loader": loader.state_dict(), "rng": rng_state()}, directory / "training_state.pt")


def read_training_state(directory: Path) -> dict:
    """A checkpoint's `training_state.pt`, checked to be the state of the step the folder is named after."""
    path = directory / "training_state.pt"
    try:
        state = torch.load(path, weights_only=True)  # tensors and plain containers: no code of the file's runs
    except Exception as error:  # for a damaged file torch raises anything from EOFError to KeyError
        raise DamagedCheckpoint(f"{path}: unreadable ({reason(error)})") from None
    step = int(CHECKPOINT_NAME.fullmatch(directory.name)[1])
    loader = state.get("loader") if isinstance(state, dict) else None
    if not (isinstance(state, dict) and type(state.get("step")) is int and state["step"] == step
            and isinstance(state.get("loss", 0.0), (float, type(None))) and isinstance(state.get("scheduler"), dict)
            and isinstance(loader, dict) and all(type(loader.get(key)) is int for key in ("epoch", "step"))):
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


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: allocated GPU memory on CUDA, resident host memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Throughput:
    """Tokens per second over the last optimizer step."""

    def __init__(self):
        self.start = time.perf_counter()

    def tick(self, tokens: int) -> float:
        now = time.perf_counter()
        rate = tokens / max(now - self.start, 1e-9)
        self.start = now
        return rate

"""The mechanics of a training run: optimizer and schedule, one optimizer step over an accumulation
window, evaluation, the metrics file, throughput and peak memory."""

import json
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from core import atomic
from core.errors import TwinError
from data.packing import PackedRows, RowLoader
from model.loss import IGNORE_INDEX, chunked_cross_entropy
from training.tracking import numbers_of


class TrainingError(TwinError):
    """A run that cannot go on; the message says why and what to do."""


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; norms and other vectors get no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.999), fused=device.type == "cuda")


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
    hidden = model.hidden_states(
        batch["input_ids"], position_ids=batch["position_ids"], document_ids=batch["document_ids"]
    )
    return chunked_cross_entropy(hidden, model.lm_head, batch["labels"])


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    window: list[dict[str, torch.Tensor]],
    device: torch.device,
    grad_clip: float,
    token_total: int | None = None,
    loss_scale: float = 1.0,
) -> tuple[float, float]:
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
    grad_norm = float(
        grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    )  # a DTensor: global norm
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
    """`metrics.jsonl`: one JSON object per logged step or evaluation, appended as they happen, and sent
    to the run's experiment trackers too (training.tracking)."""

    def __init__(self, path: Path, after_step: int = 0, trackers: list | None = None):
        self.path, self.trackers = path, trackers or []
        # The run goes on from `after_step` (0: a fresh start); records past it are from an attempt
        # that died before its next checkpoint, and never happened as far as this run is concerned.
        kept = (
            [line for line in path.read_text(errors="replace").splitlines() if _step_of(line) <= after_step]
            if path.exists()
            else []
        )
        atomic.write_text(path, "".join(line + "\n" for line in kept))  # private, like all of a run

    def write(self, record: dict) -> None:
        line = json.dumps(record) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as error:
            if atomic.is_full_disk(error, self.path.parent):
                raise atomic.full_disk(self.path, f"{len(line)} bytes more") from None
            raise
        self.track(record, record["step"])

    def track(self, figures: dict, step: int) -> None:
        """Send a record's numbers to the trackers alone (the run's and the report's final figures)."""
        for tracker in self.trackers:
            tracker.log(numbers_of(figures), step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def _step_of(record: str) -> float:
    """The step of a metrics line; infinite for a line a crash cut short (or any other), so it is dropped."""
    try:
        step = json.loads(record)["step"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return math.inf
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else math.inf


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

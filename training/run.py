"""What the two recipes (lora.py, fsdp.py) share: the run folder, the data, the schedule, the loop of
optimizer steps with its evaluations and checkpoints, and the record that marks a run trained, then finished.

A run is one process (LoRA) or one rank of a torchrun job (full fine-tuning); rank 0 alone prints,
writes the metrics and the record, and goes first where files are made that the others then read.
"""

import contextlib
import io
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from core import atomic
from core.device import resolve_device, set_threads
from core.flags import to_dict
from core.run_folder import FINISHED, RUNNING, TRAINED, RunFolder, checkpoints
from data.chatml import add_chatml_tokens
from data.dataset import PreparedData, prepare_data
from data.packing import RowLoader
from fidelity.plots import loss_curves_png, read_metrics
from memory.context import remembering
from memory.store import save_store
from model.checkpoint import load_tokenizer
from training import ranks
from training.checkpointer import Checkpointer, remove_unfinished_writes
from training.loop import (
    MetricsLog,
    Throughput,
    TrainingError,
    cosine_schedule,
    endless,
    evaluate,
    make_optimizer,
    peak_memory_mb,
    train_step,
    trained_token_count,
)
from training.settings import TrainSettings
from training.tracking import check_installed, open_trackers


@dataclass
class Run:
    """One invocation of a recipe: its settings, folder, place in the job, device and dtype."""

    settings: TrainSettings
    world: "ranks.World | None" = None
    out: Path = field(init=False)
    folder: RunFolder = field(init=False)
    device: torch.device = field(init=False)
    dtype: torch.dtype = field(init=False)

    def __post_init__(self):
        self.out = Path(self.settings.job.out)
        self.folder = RunFolder(self.out)
        device, self.dtype = resolve_device(self.settings.compute)
        self.device = self.world.device if self.world else device

    @property
    def rank(self) -> int:
        return self.world.rank if self.world else 0

    @property
    def world_size(self) -> int:
        return self.world.size if self.world else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def resumed(self) -> bool:
        return self.settings.invocation.resume is not None

    def say(self, *line) -> None:
        if self.is_main:
            print(*line)

    def warn(self, line: str) -> None:
        if self.is_main:
            print(line, file=sys.stderr)


def start(run: Run) -> None:
    """Compute on --threads (by default this rank's share of the machine's cores), seed, clear what
    killed writes left in the run folder (training.run_folder.claimed made it), and record the run as
    running, with the settings a `--resume` continues with (a stop belongs to this invocation only)."""
    set_threads(run.settings.compute, sys.stdout, quiet=not run.is_main)
    check_installed(run.settings.cadence.log_to)
    torch.manual_seed(run.settings.optimization.seed)
    if not run.is_main:
        return
    for path in remove_unfinished_writes(run.out):
        run.say(f"removed {path}, left by a write that was cut short")
    if not run.resumed:
        run.folder.write_record(RUNNING, run.settings.mode, to_dict(run.settings))


def trained_figures(run: Run) -> dict | None:
    """The figures of a resumed run whose adapter or model was final before it stopped (in its report or
    merge, say): it has only the rest to write. None for a run still to train."""
    if not run.resumed:
        return None
    record = run.folder.read_record()
    return record.figures if record.status == TRAINED else None


def prepare(run: Run) -> tuple:
    """The tokenizer, the ids of the ChatML tokens it had to be given (none for a base with a chat
    format), and the packed rows. In a sharded run rank 0 goes first and caches the tokens."""

    def work():
        tokenizer = load_tokenizer(run.settings.job.model)
        new_tokens = tuple(add_chatml_tokens(tokenizer, always=run.settings.job.add_chatml_tokens))
        with contextlib.redirect_stderr(io.StringIO()) if not run.is_main else contextlib.nullcontext():
            data = prepare_data(
                run.settings.job.data,
                tokenizer,
                run.settings.data,
                cache_dir=run.folder.cache,
                memory=remembering(memory_config, tokenizer),
            )
        if run.is_main:  # what sample.py, serve.py and evaluate.py remember: every conversation of the export
            save_store(run.folder.memory, data.train_sessions + data.val_sessions)
        return tokenizer, new_tokens, data

    memory_config = run.settings.memory
    tokenizer, new_tokens, data = ranks.main_first(run.world, work) if run.world else work()
    run.say(data.summary())
    run.say(
        f"memory: {memory_config.describe()}; {len(data.train_sessions) + len(data.val_sessions):,} "
        f"conversations kept in {run.out / 'memory'}"
    )
    return tokenizer, new_tokens, data


@dataclass
class Schedule:
    """Optimizer steps of `--batch` rows over all ranks, each accumulated over micro-batches."""

    loader: RowLoader
    accumulation: int
    total_steps: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR


def make_schedule(run: Run, model: torch.nn.Module, data: PreparedData) -> Schedule:
    settings = run.settings.optimization
    loader = RowLoader(
        data.train_rows, settings.micro_batch, rank=run.rank, world_size=run.world_size, seed=settings.seed
    )
    if settings.batch % (settings.micro_batch * run.world_size):
        raise TrainingError(
            f"--batch ({settings.batch}) must be a multiple of --micro-batch x ranks "
            f"({settings.micro_batch} x {run.world_size})"
        )
    accumulation = settings.batch // (settings.micro_batch * run.world_size)
    total_steps = settings.max_steps or max(1, math.ceil(settings.epochs * len(loader) / accumulation))
    optimizer = make_optimizer(model, run.settings.lr, settings.weight_decay, run.device)
    scheduler = cosine_schedule(optimizer, round(settings.warmup_ratio * total_steps), total_steps)
    return Schedule(loader, accumulation, total_steps, optimizer, scheduler)


@dataclass
class Progress:
    """Where the loop stands: the step done last, its loss, and each step's tokens per second."""

    step: int = 0
    loss: float | None = None
    rates: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    last_eval: dict = field(default_factory=dict)
    best_step: int | None = None  # --keep-best: the step whose checkpoint the run ends with


def resume(run: Run, checkpointer: Checkpointer, total_steps: int) -> Progress:
    if not run.resumed:
        return Progress()
    resumed, state = checkpointer.resume(run.warn)
    run.say(f"resumed from {resumed} at step {state['step']} of {total_steps}")
    return Progress(step=state["step"], loss=state.get("loss"))  # older checkpoints did not keep the loss


def held_out_loss(run: Run, model, data: PreparedData, step: int, metrics: MetricsLog | None) -> dict:
    if not data.val_rows:
        return {}
    loss, tokens = evaluate(model, data.val_rows, run.settings.optimization.micro_batch, run.device)
    record = {"step": step, "eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50)), "eval_tokens": tokens}
    if metrics:
        metrics.write(record)
    return record


def train_loop(
    run: Run,
    model,
    data: PreparedData,
    schedule: Schedule,
    checkpointer: Checkpointer,
    progress: Progress,
    metrics: MetricsLog | None,
) -> bool:
    """Optimizer steps until the schedule ends (True) or `--stop-at` (False), with evaluations and
    checkpoints on the way."""
    cadence, loader = run.settings.cadence, schedule.loader
    stop_at = run.settings.invocation.stop_at
    batches, throughput = endless(loader), Throughput()
    with tqdm(
        total=schedule.total_steps,
        initial=progress.step,
        desc="training",
        unit="step",
        dynamic_ncols=True,
        disable=not run.is_main,
    ) as bar:
        while progress.step < schedule.total_steps:
            loss, grad_norm, lr = step_once(run, model, schedule, [next(batches) for _ in range(schedule.accumulation)])
            progress.step, progress.loss = progress.step + 1, loss
            progress.rates.append(throughput.tick(run.settings.optimization.batch * run.settings.data.seq_len))
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{progress.rates[-1]:,.0f}")
            bar.update()
            step, evaluation = progress.step, None
            if metrics and (step % cadence.log_every == 0 or step == schedule.total_steps):
                metrics.write(
                    {
                        "step": step,
                        "loss": loss,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "tokens_per_s": progress.rates[-1],
                        "epoch": loader.epoch + loader.step / len(loader),
                    }
                )
            due = cadence.eval_every and step % cadence.eval_every == 0
            if due and step < schedule.total_steps and data.val_rows:
                progress.last_eval = evaluation = held_out_loss(run, model, data, step, metrics)
                if run.is_main:
                    bar.write(
                        f"step {step}: eval loss {progress.last_eval['eval_loss']:.4f}, "
                        f"perplexity {progress.last_eval['eval_perplexity']:.2f}"
                    )
            if checkpointer.due(step, evaluation) or step == stop_at:
                checkpointer.save(
                    step,
                    {
                        "step": step,
                        "loss": loss,
                        "scheduler": schedule.scheduler.state_dict(),
                        "loader": loader.state_dict(),
                    },
                    evaluation,
                )
            if step == stop_at and step < schedule.total_steps:
                bar.close()
                run.say(f"stopped after step {step} as asked; continue with: python train.py --resume {run.out}")
                return False
    return True


def step_once(run: Run, model, schedule: Schedule, window: list) -> tuple[float, float, float]:
    """One optimizer step over an accumulation window: (mean loss, gradient norm, learning rate)."""
    tokens = trained_token_count(window)
    if run.world:  # every token of the global batch weighs the same, whichever rank holds it
        tokens = int(ranks.all_reduce_sum([tokens], run.device)[0])
    loss, grad_norm = train_step(
        model,
        schedule.optimizer,
        window,
        run.device,
        run.settings.optimization.grad_clip,
        tokens,
        loss_scale=run.world_size,
    )
    if run.world:
        loss = ranks.all_reduce_sum([loss], run.device)[0]
    if not math.isfinite(loss) or not math.isfinite(grad_norm):
        saved = checkpoints(run.out)
        raise TrainingError(
            f"loss is {loss}, gradient norm {grad_norm}; stopped without updating the weights. "
            f"Last good checkpoint: {saved[-1] if saved else 'none'} (try a lower --lr, or --dtype fp32)"
        )
    lr = schedule.scheduler.get_last_lr()[0]
    schedule.scheduler.step()
    return loss, grad_norm, lr


def final_evaluation(run: Run, model, data: PreparedData, progress: Progress, metrics: MetricsLog | None) -> None:
    progress.last_eval = held_out_loss(run, model, data, progress.step, metrics)
    run.say(
        f"eval loss {progress.last_eval['eval_loss']:.4f}, perplexity {progress.last_eval['eval_perplexity']:.2f}"
        if progress.last_eval
        else "no held-out sessions, so no evaluation (--val-fraction sets the share held out)"
    )


def keep_best(run: Run, checkpointer: Checkpointer, progress: Progress) -> None:
    """--keep-best: end with the checkpoint of the lowest held-out loss, where the last step's is not lower."""
    if not run.settings.cadence.keep_best:
        return
    final_step = progress.step
    if not progress.last_eval:
        run.warn("--keep-best: no held-out sessions to choose a checkpoint by; the run ends with its last step")
    progress.last_eval = checkpointer.load_best(progress.last_eval)
    progress.best_step = progress.last_eval.get("step", final_step)
    if progress.best_step != final_step:
        run.say(
            f"--keep-best: the run ends with the checkpoint of step {progress.best_step}, whose held-out loss "
            f"{progress.last_eval['eval_loss']:.4f} is the lowest"
        )


def write_loss_curves(run: Run) -> Path | None:
    """OUT/loss_curves.png from the run's metrics.jsonl, as the report draws it; None on other ranks or
    with nothing to draw."""
    metrics = run.folder.metrics
    png = loss_curves_png(read_metrics(metrics)) if run.is_main and metrics.is_file() else None
    if png is None:
        return None
    atomic.write_bytes(run.folder.loss_curves, png)
    return run.folder.loss_curves


def record_trained(run: Run, data: PreparedData, progress: Progress, metrics: MetricsLog | None) -> dict:
    """Record the run as trained, with its figures, once its adapter or model is written and final:
    from here on --resume writes only what follows (report, merged model, loss curves), and a fresh run
    into the folder is refused. Until then --resume, even from a checkpoint of the final step, trains
    again from it. The figures go to the experiment trackers too; returns them."""
    memory = ranks.gather(peak_memory_mb(run.device)) if run.world else [peak_memory_mb(run.device)]
    figures = {
        "steps": progress.step,
        "final_loss": progress.loss,
        **progress.last_eval,
        "seconds": round(time.time() - progress.started, 1),
        "tokens_per_s": sum(progress.rates) / max(len(progress.rates), 1),
        "target": data.target,
        "train_rows": len(data.train_rows),
        "val_rows": len(data.val_rows),
        "ranks": run.world_size,
        "peak_memory_mb_per_rank": [round(m) for m in memory],
        "partners": data.partners,
        **({"best_step": progress.best_step} if progress.best_step is not None else {}),
    }
    if run.is_main:
        run.folder.write_record(TRAINED, run.settings.mode, to_dict(run.settings), figures)
    if metrics:
        metrics.track({"run": figures}, progress.step)
    return figures


def record_finished(run: Run, figures: dict, metrics: MetricsLog | None = None) -> None:
    """The record rewritten last, as finished: everything of the run is written."""
    if run.is_main:
        run.folder.write_record(FINISHED, run.settings.mode, to_dict(run.settings), figures)
    if metrics:
        metrics.close()


def metrics_log(run: Run, progress: Progress) -> MetricsLog | None:
    """Rank 0's metrics.jsonl and the experiment trackers of --log-to; None on the other ranks."""
    if not run.is_main:
        return None
    trackers = open_trackers(run.settings.cadence.log_to, run.out, to_dict(run.settings), progress.step)
    return MetricsLog(run.folder.metrics, after_step=progress.step, trackers=trackers)


def activation_checkpointing(run: Run) -> bool:
    """On by default on CUDA, where memory is short; off on CPU, where time is."""
    flag = run.settings.compute.activation_checkpointing
    return run.device.type == "cuda" if flag is None else flag

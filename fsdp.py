"""The full fine-tuning recipe: every weight trained, sharded over the ranks of a torchrun job with
FSDP2 (bf16 compute, fp32 master weights by default).

    torchrun --nproc-per-node 8 train.py --fsdp --data EXPORT --out runs/me-full

The story of a run: the data (rank 0 first), the sharded model (grown by the ChatML rows where the
base has no chat format), the optimizer steps with held-out evaluations and sharded checkpoints,
then the consolidated model in Hugging Face's format and the record of the run.
"""

from core.device import DTYPES
from training import distributed
from training import run as runs
from training.checkpointer import Checkpointer
from training.ranks import World
from training.settings import TrainSettings
from training.tracking import dashboard_commands


def train(settings: TrainSettings, world: World) -> None:
    run = runs.Run(settings, world)
    runs.start(run)
    figures = runs.trained_figures(run)  # of a run stopped after its model was final: only the rest is written
    if figures is None:
        figures = train_model(run, world)
        if figures is None:  # stopped at --stop-at
            return
    curves = runs.write_loss_curves(run)
    runs.record_finished(run, figures)
    if settings.cadence.eval_report:
        run.say(f"next: the fidelity report: python evaluate.py --checkpoint {run.out}")
    run.say(f"next: chat with it: python sample.py --checkpoint {run.out}")
    if curves:
        run.say(f"      see the loss curves: {curves}")
    for command in dashboard_commands(settings.cadence.log_to, run.out):
        run.say(f"      see the metrics: {command}")


def train_model(run: runs.Run, world: distributed.World) -> dict | None:
    """The optimizer steps, then the model exported and the run recorded as trained: its figures. None
    where --stop-at stopped it first."""
    settings = run.settings
    tokenizer, _, data = runs.prepare(run)

    model = distributed.load_sharded_model(
        settings.job.model, world, tokenizer.vocab_size, DTYPES[settings.full.param_dtype], run.dtype
    )
    run.say(
        f"full fine-tuning of {sum(p.numel() for p in model.parameters()):,} parameters sharded over {world.size} ranks"
    )
    model.activation_checkpointing = runs.activation_checkpointing(run)
    model.train()

    schedule = runs.make_schedule(run, model, data)
    backend = distributed.ShardedCheckpoints(world, model, schedule.optimizer, schedule.scheduler, schedule.loader)
    cadence = settings.cadence
    checkpointer = Checkpointer(
        run.out, backend, cadence.save_every, cadence.keep_checkpoints, is_main=run.is_main, keep_best=cadence.keep_best
    )
    progress = runs.resume(run, checkpointer, schedule.total_steps)
    metrics = runs.metrics_log(run, progress)
    if not runs.train_loop(run, model, data, schedule, checkpointer, progress, metrics):
        if metrics:
            metrics.close()
        return None

    runs.final_evaluation(run, model, data, progress, metrics)
    runs.keep_best(run, checkpointer, progress)
    distributed.export_model(model, run.folder.model, world, tokenizer, dtype=DTYPES[settings.full.export_dtype])
    run.say(f"model written to {run.folder.model}")
    figures = runs.record_trained(run, data, progress, metrics)
    if metrics:
        metrics.close()
    return figures

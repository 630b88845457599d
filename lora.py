"""The LoRA recipe: adapters on a frozen base, on one device or sharded over the ranks of a torchrun
job with FSDP2 (the base, in its dtype or in 4 bits, and the adapters and their optimizer states).

    python train.py --lora --data EXPORT --out runs/me
    torchrun --nproc-per-node 2 train.py --lora --quantize nf4 --data EXPORT --out runs/me

The story of a run: the data, the base with its adapters (and, for a base without a chat format, new
ChatML token rows), the optimizer steps with held-out evaluations and checkpoints, then the adapter
in PEFT's format, the fidelity report, the merged model if asked, and the record of the run.
"""

import dataclasses
from pathlib import Path

import torch

from fidelity import EvaluationError
from fidelity.evaluation import run_evaluation
from fidelity.plan import EvalSettings
from model.checkpoint import load_model, save_model
from model.lora_config import LoRAConfig
from model.lora_surgery import apply_lora, merge_lora
from model.peft import load_adapter, save_adapter
from training import distributed
from training import run as runs
from training.checkpointer import AdapterCheckpoints, Checkpointer
from training.loop import MetricsLog
from training.settings import TrainSettings
from training.tracking import dashboard_commands, report_numbers


def train(settings: TrainSettings, world: distributed.World | None = None) -> None:
    run = runs.Run(settings, world)
    runs.start(run)
    tokenizer, new_tokens, data = runs.prepare(run)

    model_name, quantize = settings.job.model, settings.lora.quantize
    if quantize:
        run.say(f"loading {model_name}, its linear weights quantized to {quantize} one by one...")
    lora_config = dataclasses.replace(
        settings.lora.adapter,
        trainable_tokens={"embed_tokens": new_tokens, "lm_head": new_tokens} if new_tokens else {},
    )
    if world:
        model, summary = distributed.load_sharded_lora_model(model_name, world, run.dtype, lora_config, quantize)
        run.say(f"{summary}, sharded over {world.size} ranks")
    else:
        model = load_model(model_name, dtype=run.dtype, device=run.device, quantize=quantize)
        run.say(apply_lora(model, lora_config))
    figures, metrics = runs.trained_figures(run), None
    if figures is not None:  # stopped in its report or merge: the adapter is final, only what follows is written
        if not world:  # a sharded run writes no report nor merged model: only the record is left to write
            load_adapter(model, run.folder.adapter)
        run.say(f"{run.folder.adapter} is final; writing what the run had not written yet")
    else:
        trained = train_adapter(run, model, lora_config, tokenizer, data, world)
        if trained is None:  # stopped at --stop-at
            return
        figures, metrics = trained
    report = settings.cadence.eval_report and not world  # the report generates replies, which a sharded model does not
    if report and not (run.resumed and run.folder.report.exists()):
        write_fidelity_report(settings, model, tokenizer, data, run.out, run.device, metrics, figures["steps"])
    elif world and settings.cadence.eval_report:
        run.say(f"next: the fidelity report: python evaluate.py --checkpoint {run.out}")
    if settings.lora.merge and not (run.resumed and run.folder.merged.exists()):
        save_model(merge_lora(model), run.folder.merged, tokenizer=tokenizer)
        run.say(f"merged model written to {run.folder.merged}")
    curves = runs.write_loss_curves(run)
    runs.record_finished(run, figures, metrics)
    run.say(
        f"next: chat with your twin: python sample.py --checkpoint {run.out}"
        + (f" --quantize {quantize}" if quantize else "")
        + (f"\n      read the report: {run.folder.report / 'report.md'}" if report else "")
        + (f"\n      see the loss curves: {curves}" if curves else "")
        + "".join(
            f"\n      see the metrics: {command}" for command in dashboard_commands(settings.cadence.log_to, run.out)
        )
    )


def train_adapter(
    run: runs.Run, model, lora_config: LoRAConfig, tokenizer, data, world: distributed.World | None
) -> tuple[dict, MetricsLog | None] | None:
    """The optimizer steps, then the adapter written and the run recorded as trained: its figures, and the
    metrics log still open for the report's figures. None where --stop-at stopped it first."""
    settings = run.settings
    model.activation_checkpointing = runs.activation_checkpointing(run)
    model.train()
    schedule = runs.make_schedule(run, model, data)
    if world:
        backend = distributed.ShardedCheckpoints(
            world, model, schedule.optimizer, schedule.scheduler, schedule.loader, adapters_only=True
        )
    else:
        backend = AdapterCheckpoints(
            model, lora_config, settings.job.model, schedule.optimizer, schedule.scheduler, schedule.loader
        )
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
    if world:
        model.reshard()  # after a forward pass without backward (evaluation) the root stays gathered
    # Sharded, every rank gathers each adapter weight and rank 0 alone writes: one ordinary PEFT adapter.
    save_adapter(
        model,
        run.folder.adapter,
        lora_config,
        base_model=settings.job.model,
        writes=run.is_main,
        gather=(lambda param: param.full_tensor()) if world else torch.Tensor.detach,
    )
    if run.is_main:
        tokenizer.save(run.folder.adapter)
    run.say(f"adapter written to {run.folder.adapter}")
    return runs.record_trained(run, data, progress, metrics), metrics


def write_fidelity_report(
    settings: TrainSettings,
    model,
    tokenizer,
    data,
    out: Path,
    device: torch.device,
    metrics: MetricsLog | None,
    step: int,
) -> None:
    """Held-out loss and style, tuned against base, per speaker: `OUT/report/`, its figures also sent to the
    experiment trackers."""
    about = {
        "base": settings.job.model,
        "tuned": f"adapter {out / 'adapter'}",
        "data": str(settings.job.data),
        "split": settings.data.split,
    }
    try:
        report = run_evaluation(
            model,
            tokenizer,
            data,
            out / "report",
            EvalSettings(contexts=settings.cadence.eval_contexts, fact_samples=settings.cadence.eval_fact_samples),
            device,
            about,
            metrics_file=out / "metrics.jsonl",
            memory=settings.memory,
        )
    except EvaluationError as error:  # e.g. nothing held out
        print(f"fidelity report skipped: {error}")
        return
    if metrics:
        metrics.track(report_numbers(report), step)
    print(report.summary())
    print(f"fidelity report: {out / 'report' / 'report.md'}")

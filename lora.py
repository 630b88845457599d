"""The LoRA recipe: adapters on a frozen base, on one device.

    python train.py --lora --data EXPORT --out runs/me

The story of a run: the data, the base with its adapters (and, for a base without a chat format, new
ChatML token rows), the optimizer steps with held-out evaluations and checkpoints, then the adapter
in PEFT's format, the fidelity report, the merged model if asked, and the record of the run.
"""
from pathlib import Path

import torch

from fidelity import EvaluationError
from fidelity.evaluation import run_evaluation
from fidelity.plan import EvalSettings
from core.flags import from_args
from model import load_model, save_model
from model.lora import LoRAConfig, apply_lora, load_adapter, merge_lora, save_adapter
from training import run as runs
from training.checkpointer import AdapterCheckpoints, Checkpointer
from training.loop import MetricsLog
from training.tracking import dashboard_commands, report_numbers


def train(args) -> None:
    run = runs.Run(args)
    runs.start(run)
    tokenizer, new_tokens, data = runs.prepare(run)

    if args.quantize:
        run.say(f"loading {args.model}, its linear weights quantized to {args.quantize} one by one...")
    model = load_model(args.model, dtype=run.dtype, device=run.device, quantize=args.quantize)
    lora_config = from_args(LoRAConfig, args, prefix="lora_",
                            trainable_tokens={"embed_tokens": new_tokens, "lm_head": new_tokens} if new_tokens else {})
    run.say(apply_lora(model, lora_config))
    figures, metrics = runs.trained_figures(run), None
    if figures is not None:  # stopped in its report or merge: the adapter is final, only what follows is written
        load_adapter(model, run.folder.adapter)
        run.say(f"{run.folder.adapter} is final; writing what the run had not written yet")
    else:
        trained = train_adapter(run, model, lora_config, tokenizer, data)
        if trained is None:  # stopped at --stop-at
            return
        figures, metrics = trained
    if args.eval_report and not (run.args.resume and run.folder.report.exists()):
        write_fidelity_report(args, model, tokenizer, data, run.out, run.device, metrics, figures["steps"])
    if args.merge and not (run.args.resume and run.folder.merged.exists()):
        save_model(merge_lora(model), run.folder.merged, tokenizer=tokenizer)
        run.say(f"merged model written to {run.folder.merged}")
    curves = runs.write_loss_curves(run)
    runs.record_finished(run, figures, metrics)
    run.say(f"next: chat with your twin: python sample.py --checkpoint {run.out}"
            + (f" --quantize {args.quantize}" if args.quantize else "")
            + (f"\n      read the report: {run.folder.report / 'report.md'}" if args.eval_report else "")
            + (f"\n      see the loss curves: {curves}" if curves else "")
            + "".join(f"\n      see the metrics: {command}" for command in dashboard_commands(args.log_to, run.out)))


def train_adapter(run: runs.Run, model, lora_config: LoRAConfig, tokenizer,
                  data) -> tuple[dict, MetricsLog | None] | None:
    """The optimizer steps, then the adapter written and the run recorded as trained: its figures, and the
    metrics log still open for the report's figures. None where --stop-at stopped it first."""
    args = run.args
    model.activation_checkpointing = runs.activation_checkpointing(run)
    model.train()
    schedule = runs.make_schedule(run, model, data)
    backend = AdapterCheckpoints(model, lora_config, args.model, schedule.optimizer, schedule.scheduler,
                                 schedule.loader)
    checkpointer = Checkpointer(run.out, backend, args.save_every, args.keep_checkpoints, keep_best=args.keep_best)
    progress = runs.resume(run, checkpointer, schedule.total_steps)
    metrics = runs.metrics_log(run, progress)
    if not runs.train_loop(run, model, data, schedule, checkpointer, progress, metrics):
        if metrics:
            metrics.close()
        return None

    runs.final_evaluation(run, model, data, progress, metrics)
    runs.keep_best(run, checkpointer, progress)
    save_adapter(model, run.folder.adapter, lora_config, base_model=args.model)
    tokenizer.save(run.folder.adapter)
    run.say(f"adapter written to {run.folder.adapter}")
    return runs.record_trained(run, data, progress, metrics), metrics


def write_fidelity_report(args, model, tokenizer, data, out: Path, device: torch.device,
                          metrics: MetricsLog | None, step: int) -> None:
    """Held-out loss and style, tuned against base, per speaker: `OUT/report/`, its figures also sent to the
    experiment trackers."""
    about = {"base": args.model, "tuned": f"adapter {out / 'adapter'}", "data": str(args.data), "split": args.split}
    try:
        report = run_evaluation(model, tokenizer, data, out / "report", EvalSettings(contexts=args.eval_contexts),
                                device, about, metrics_file=out / "metrics.jsonl")
    except EvaluationError as error:  # e.g. nothing held out
        print(f"fidelity report skipped: {error}")
        return
    if metrics:
        metrics.track(report_numbers(report), step)
    print(report.summary())
    print(f"fidelity report: {out / 'report' / 'report.md'}")


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
    figures = runs.trained_figures(run)
    if figures is not None:  # stopped in its report or merge: the adapter is final, only what follows is written
        load_adapter(model, run.folder.adapter)
        run.say(f"{run.folder.adapter} is final; writing what the run had not written yet")
    else:
        figures = train_adapter(run, model, lora_config, tokenizer, data)
        if figures is None:  # stopped at --stop-at
            return
    if args.eval_report and not (run.args.resume and run.folder.report.exists()):
        write_fidelity_report(args, model, tokenizer, data, run.out, run.device)
    if args.merge and not (run.args.resume and run.folder.merged.exists()):
        save_model(merge_lora(model), run.folder.merged, tokenizer=tokenizer)
        run.say(f"merged model written to {run.folder.merged}")
    curves = runs.write_loss_curves(run)
    runs.record_finished(run, figures)
    run.say(f"next: chat with your twin: python sample.py --checkpoint {run.out}"
            + (f" --quantize {args.quantize}" if args.quantize else "")
            + (f"\n      read the report: {run.folder.report / 'report.md'}" if args.eval_report else "")
            + (f"\n      see the loss curves: {curves}" if curves else ""))


def train_adapter(run: runs.Run, model, lora_config: LoRAConfig, tokenizer, data) -> dict | None:
    """The optimizer steps, then the adapter written and the run recorded as trained: its figures. None
    where --stop-at stopped it first."""
    args = run.args
    model.activation_checkpointing = runs.activation_checkpointing(run)
    model.train()
    schedule = runs.make_schedule(run, model, data)
    backend = AdapterCheckpoints(model, lora_config, args.model, schedule.optimizer, schedule.scheduler,
                                 schedule.loader)
    checkpointer = Checkpointer(run.out, backend, args.save_every, args.keep_checkpoints)
    progress = runs.resume(run, checkpointer, schedule.total_steps)
    metrics = runs.metrics_log(run, progress)
    if not runs.train_loop(run, model, data, schedule, checkpointer, progress, metrics):
        return None

    runs.final_evaluation(run, model, data, progress, metrics)
    save_adapter(model, run.folder.adapter, lora_config, base_model=args.model)
    tokenizer.save(run.folder.adapter)
    run.say(f"adapter written to {run.folder.adapter}")
    return runs.record_trained(run, data, progress)


def write_fidelity_report(args, model, tokenizer, data, out: Path, device: torch.device) -> None:
    """Held-out loss and style, tuned against base, per speaker: `OUT/report/`."""
    about = {"base": args.model, "tuned": f"adapter {out / 'adapter'}", "data": str(args.data), "split": args.split}
    try:
        report = run_evaluation(model, tokenizer, data, out / "report", EvalSettings(contexts=args.eval_contexts),
                                device, about, metrics_file=out / "metrics.jsonl")
    except EvaluationError as error:  # e.g. nothing held out
        print(f"fidelity report skipped: {error}")
        return
    print(report.summary())
    print(f"fidelity report: {out / 'report' / 'report.md'}")


"""The LoRA recipe: adapters on a frozen base, on one device or sharded over the ranks of a torchrun
job with FSDP2 (the base, in its dtype or in 4 bits, and the adapters and their optimizer states).

    python train.py --lora --data EXPORT --out runs/me
    torchrun --nproc-per-node 2 train.py --lora --quantize nf4 --data EXPORT --out runs/me

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
from model.lora import LoRAConfig, apply_lora, merge_lora, save_adapter
from training import distributed
from training import run as runs
from training.checkpointer import AdapterCheckpoints, Checkpointer


def train(args, world: distributed.World | None = None) -> None:
    run = runs.Run(args, world)
    runs.start(run)
    tokenizer, new_tokens, data = runs.prepare(run)

    if args.quantize:
        run.say(f"loading {args.model}, its linear weights quantized to {args.quantize} one by one...")
    lora_config = from_args(LoRAConfig, args, prefix="lora_",
                            trainable_tokens={"embed_tokens": new_tokens, "lm_head": new_tokens} if new_tokens else {})
    if world:
        model, summary = distributed.load_sharded_lora_model(args.model, world, run.dtype, lora_config, args.quantize)
        run.say(f"{summary}, sharded over {world.size} ranks")
    else:
        model = load_model(args.model, dtype=run.dtype, device=run.device, quantize=args.quantize)
        run.say(apply_lora(model, lora_config))
    model.activation_checkpointing = runs.activation_checkpointing(run)
    model.train()

    schedule = runs.make_schedule(run, model, data)
    if world:
        backend = distributed.ShardedCheckpoints(world, model, schedule.optimizer, schedule.scheduler, schedule.loader,
                                                 adapters_only=True)
    else:
        backend = AdapterCheckpoints(model, lora_config, args.model, schedule.optimizer, schedule.scheduler,
                                     schedule.loader)
    checkpointer = Checkpointer(run.out, backend, args.save_every, args.keep_checkpoints, is_main=run.is_main)
    progress = runs.resume(run, checkpointer, schedule.total_steps)
    metrics = runs.metrics_log(run, progress)
    if not runs.train_loop(run, model, data, schedule, checkpointer, progress, metrics):
        return

    runs.final_evaluation(run, model, data, progress, metrics)
    if world:
        model.reshard()  # after a forward pass without backward (evaluation) the root stays gathered
    # Sharded, every rank gathers each adapter weight and rank 0 alone writes: one ordinary PEFT adapter.
    save_adapter(model, run.out / "adapter", lora_config, base_model=args.model, writes=run.is_main,
                 gather=(lambda param: param.full_tensor()) if world else torch.Tensor.detach)
    if run.is_main:
        tokenizer.save(run.out / "adapter")
    run.say(f"adapter written to {run.out / 'adapter'}")
    report = args.eval_report and not world  # the report generates replies, which a sharded model does not
    if report:
        write_fidelity_report(args, model, tokenizer, data, run.out, run.device)
    elif world and args.eval_report:
        run.say(f"next: the fidelity report: python evaluate.py --checkpoint {run.out}")
    if args.merge:
        save_model(merge_lora(model), run.out / "merged", tokenizer=tokenizer)
        run.say(f"merged model written to {run.out / 'merged'}")
    curves = runs.write_loss_curves(run)
    runs.write_record(run, "lora", data, progress)
    run.say(f"next: chat with your twin: python sample.py --checkpoint {run.out}"
            + (f" --quantize {args.quantize}" if args.quantize else "")
            + (f"\n      read the report: {run.out / 'report' / 'report.md'}" if report else "")
            + (f"\n      see the loss curves: {curves}" if curves else ""))


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


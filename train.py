"""Fine-tune a Mistral chat model on a Telegram export, so that it writes as the people in it.

    python train.py --lora --data ~/Downloads/Telegram\\ Desktop/DataExport/ --out runs/me

LoRA adapters on one GPU (`--lora`), or every weight sharded over a node (`--fsdp`, under torchrun).
"""
import contextlib
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from core import atomic
from training import distributed
from core.cli import program
from core.device import DTYPES, resolve_device
from data.chatml import add_chatml_tokens
from data.dataset import data_config_from_args, prepare_data
from data.packing import RowLoader
from model.lora import AdapterError, LoRAConfig, apply_lora, load_adapter, merge_lora, save_adapter
from model import CheckpointError, load_model, load_tokenizer, save_model
from training.settings import lora_targets, parse_args
from training.loop import (DamagedCheckpoint, MetricsLog, Throughput, TrainingError, checkpoint_path, checkpoints,
                      cosine_schedule, endless, evaluate, load_training_state, make_optimizer, peak_memory_mb,
                      prune_checkpoints, remove_unfinished_writes, resume_from, save_training_state, train_step,
                      trained_token_count)

@program
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, __doc__)
    world = distributed.start() if args.fsdp else None
    exit_code = 0
    try:
        train(args, world)
    except (TrainingError, ValueError) as error:
        # Our ValueErrors (DataError, CheckpointError, TokenizerError, AdapterError), and torch's for a
        # setting it refuses, such as a negative --lr.
        print(f"error: {error}", file=sys.stderr)
        exit_code = 2
    except OSError as error:  # a run folder that cannot be written, a full disk
        print(f"error: {error.filename}: {error.strerror}" if error.filename else f"error: {error}", file=sys.stderr)
        exit_code = 2
    except distributed.MainRankFailed:  # rank 0 has printed the error
        exit_code = 2
    except torch.cuda.OutOfMemoryError:
        print(f"error: the GPU ran out of memory at --micro-batch {args.micro_batch}, --seq-len {args.seq_len}. "
              "Lower --micro-batch (keeping --batch: more accumulation), lower --seq-len, or turn on "
              "--activation-checkpointing.", file=sys.stderr)
        exit_code = 2
    if world is not None:
        distributed.stop(exit_code)  # the whole job ends: torchrun stops the other ranks when one fails
    if exit_code:
        sys.exit(exit_code)


def train(args, world: "fsdp.World | None") -> None:
    """One run: LoRA on one device (`world` None) or every weight sharded over the world's ranks."""
    rank, world_size = (world.rank, world.size) if world else (0, 1)
    is_main = rank == 0
    say = print if is_main else lambda *_, **__: None
    out = Path(args.out)
    device, dtype = (world.device, resolve_device(args)[1]) if world else resolve_device(args)
    torch.manual_seed(args.seed)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        for path in remove_unfinished_writes(out):
            say(f"removed {path}, left by a write that was cut short")
        if not args.resume:  # what --resume continues with; a stop belongs to this invocation only
            settings = {k: v for k, v in vars(args).items() if k not in ("resume", "stop_at")}
            atomic.write_text(out / "run_args.json", json.dumps(settings, indent=2))

    # Data: the export becomes sessions, held-out sessions, and packed rows of tokens. In a sharded
    # run rank 0 goes first and caches the tokens; the other ranks then read its cache.
    def prepare():
        tokenizer = load_tokenizer(args.model)
        # A base model without a chat format learns ChatML: the embedding and LM head grow rows for its
        # tokens, which a full fine-tune trains with everything else and LoRA trains on their own.
        new_tokens = tuple(add_chatml_tokens(tokenizer, always=args.add_chatml_tokens))
        with contextlib.redirect_stderr(io.StringIO()) if not is_main else contextlib.nullcontext():
            data = prepare_data(args.data, tokenizer, data_config_from_args(args), cache_dir=out / "cache")
        return tokenizer, new_tokens, data

    tokenizer, new_tokens, data = distributed.main_first(world, prepare) if world else prepare()
    say(data.summary())

    # Model: LoRA adapters on the frozen base, or every weight sharded, in fp32 master copies.
    if args.fsdp:
        model = distributed.load_sharded_model(args.model, world, tokenizer.vocab_size, DTYPES[args.param_dtype], dtype)
        say(f"full fine-tuning of {sum(p.numel() for p in model.parameters()):,} parameters "
            f"sharded over {world_size} ranks")
    else:
        model = load_model(args.model, dtype=dtype, device=device)
        lora_config = LoRAConfig(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                                 targets=lora_targets(args.lora_targets),
                                 trainable_tokens={"embed_tokens": new_tokens, "lm_head": new_tokens} if new_tokens
                                 else {})
        say(apply_lora(model, lora_config))
    model.activation_checkpointing = (device.type == "cuda" if args.activation_checkpointing is None
                                      else args.activation_checkpointing)
    model.train()

    # Schedule: optimizer steps of `batch` rows over all ranks, each accumulated over micro-batches.
    loader = RowLoader(data.train_rows, args.micro_batch, rank=rank, world_size=world_size, seed=args.seed)
    if args.batch % (args.micro_batch * world_size):
        raise TrainingError(f"--batch ({args.batch}) must be a multiple of --micro-batch x ranks "
                            f"({args.micro_batch} x {world_size})")
    accumulation = args.batch // (args.micro_batch * world_size)
    total_steps = args.max_steps or max(1, math.ceil(args.epochs * len(loader) / accumulation))
    optimizer = make_optimizer(model, args.lr, args.weight_decay, device)
    scheduler = cosine_schedule(optimizer, round(args.warmup_ratio * total_steps), total_steps)

    step, loss = 0, None
    if args.resume:
        def warn(line: str) -> None:
            if is_main:
                print(line, file=sys.stderr)

        if args.fsdp:  # rank 0 checks the checkpoints first and says what is wrong with them
            resumed, _ = distributed.main_first(world, lambda: resume_from(
                out, lambda directory: distributed.check_checkpoint(directory, world_size), warn))
            state = distributed.load_checkpoint(resumed, world, model, optimizer)
            scheduler.load_state_dict(state["scheduler"])
            loader.load_state_dict(state["loader"])
        else:
            def load_lora_checkpoint(directory: Path) -> dict:
                try:
                    load_adapter(model, directory / "adapter")
                except AdapterError as error:
                    raise DamagedCheckpoint(str(error)) from None
                return load_training_state(directory, optimizer, scheduler, loader)

            resumed, state = resume_from(out, load_lora_checkpoint, warn)
        step, loss = state["step"], state.get("loss")  # older checkpoints did not keep it
        say(f"resumed from {resumed} at step {step} of {total_steps}")
    metrics = MetricsLog(out / "metrics.jsonl", after_step=step) if is_main else None

    def save_checkpoint():
        if args.fsdp:
            state = {"step": step, "loss": loss, "scheduler": scheduler.state_dict(), "loader": loader.state_dict()}
            distributed.save_checkpoint(checkpoint_path(out, step), world, model, optimizer, state)
        else:
            with atomic.directory(checkpoint_path(out, step)) as building:
                save_adapter(model, building / "adapter", lora_config, base_model=args.model)
                save_training_state(building, step, loss, optimizer, scheduler, loader)
        if is_main:
            prune_checkpoints(out, args.keep_checkpoints)

    def run_evaluation() -> dict:
        if not data.val_rows:
            return {}
        loss, tokens = evaluate(model, data.val_rows, args.micro_batch, device)
        record = {"step": step, "eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50)), "eval_tokens": tokens}
        if metrics:
            metrics.write(record)
        return record

    # The run: optimizer steps until the schedule ends, with evaluation and checkpoints on the way.
    batches = endless(loader)
    tokens_per_step = args.batch * args.seq_len
    throughput, started, rates, last_eval = Throughput(), time.time(), [], {}
    with tqdm(total=total_steps, initial=step, desc="training", unit="step", dynamic_ncols=True,
              disable=not is_main) as bar:
        while step < total_steps:
            window = [next(batches) for _ in range(accumulation)]
            tokens = trained_token_count(window)
            if world:  # every token of the global batch weighs the same, whichever rank holds it
                tokens = int(distributed.all_reduce_sum([tokens], device)[0])
            loss, grad_norm = train_step(model, optimizer, window, device, args.grad_clip, tokens,
                                         loss_scale=world_size)
            if world:
                loss = distributed.all_reduce_sum([loss], device)[0]
            if not math.isfinite(loss) or not math.isfinite(grad_norm):
                saved = checkpoints(out)
                raise TrainingError(f"loss is {loss}, gradient norm {grad_norm} at step {step + 1}; stopped without "
                                    f"updating the weights. Last good checkpoint: {saved[-1] if saved else 'none'} "
                                    "(try a lower --lr, or --dtype fp32)")
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            step += 1
            rates.append(throughput.tick(tokens_per_step))
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{rates[-1]:,.0f}")
            bar.update()
            if metrics and (step % args.log_every == 0 or step == total_steps):
                metrics.write({"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                               "tokens_per_s": rates[-1], "epoch": loader.epoch + loader.step / len(loader)})
            if args.eval_every and step % args.eval_every == 0 and step < total_steps and data.val_rows:
                last_eval = run_evaluation()
                if is_main:
                    bar.write(f"step {step}: eval loss {last_eval['eval_loss']:.4f}, "
                              f"perplexity {last_eval['eval_perplexity']:.2f}")
            if (args.save_every and step % args.save_every == 0) or step == args.stop_at:
                save_checkpoint()
            if step == args.stop_at and step < total_steps:
                bar.close()
                say(f"stopped after step {step} as asked; continue with: python train.py --resume {out}")
                return

    # The result: the adapter in PEFT's format, or the whole model in Hugging Face's, with the
    # tokenizer, the fidelity report, and last a record of the run, which marks it finished (until
    # then --resume, even from a checkpoint of the final step, writes them all).
    last_eval = run_evaluation()
    say(f"eval loss {last_eval['eval_loss']:.4f}, perplexity {last_eval['eval_perplexity']:.2f}" if last_eval
        else "no held-out sessions, so no evaluation (--val-fraction sets the share held out)")
    if args.fsdp:
        distributed.export_model(model, out / "model", world, tokenizer, dtype=DTYPES[args.export_dtype])
        say(f"model written to {out / 'model'}")
    else:
        save_adapter(model, out / "adapter", lora_config, base_model=args.model)
        tokenizer.save(out / "adapter")
        say(f"adapter written to {out / 'adapter'}")
    if args.eval_report and not args.fsdp:
        write_fidelity_report(args, model, tokenizer, data, out, device)
    elif args.eval_report and is_main:
        say(f"for the fidelity report of the full fine-tune: python evaluate.py --checkpoint {out}")
    if args.merge and not args.fsdp:
        save_model(merge_lora(model), out / "merged", tokenizer=tokenizer)
        say(f"merged model written to {out / 'merged'}")
    memory = distributed.gather(peak_memory_mb(device)) if world else [peak_memory_mb(device)]
    if is_main:
        figures = {"steps": step, "final_loss": loss, **last_eval, "seconds": round(time.time() - started, 1),
                   "tokens_per_s": sum(rates) / max(len(rates), 1), "target": data.target,
                   "train_rows": len(data.train_rows), "val_rows": len(data.val_rows), "ranks": world_size,
                   "peak_memory_mb_per_rank": [round(m) for m in memory], "partners": data.partners}
        atomic.write_text(out / "run.json", json.dumps({"mode": "fsdp" if args.fsdp else "lora",
                                                        "settings": vars(args), "figures": figures}, indent=2))


def write_fidelity_report(args, model, tokenizer, data, out: Path, device: torch.device) -> None:
    """Held-out loss and style, tuned against base, per speaker: `OUT/report/`."""
    from fidelity import EvaluationError
    from fidelity.evaluation import run_evaluation
    from fidelity.plan import EvalSettings

    about = {"base": args.model, "tuned": f"adapter {out / 'adapter'}", "data": str(args.data), "split": args.split}
    try:
        report = run_evaluation(model, tokenizer, data, out / "report", EvalSettings(contexts=args.eval_contexts),
                                device, about, metrics_file=out / "metrics.jsonl")
    except EvaluationError as error:  # e.g. nothing held out
        print(f"fidelity report skipped: {error}")
        return
    print(report.summary())
    print(f"fidelity report: {out / 'report' / 'report.md'}")


if __name__ == "__main__":
    main()

"""Fine-tune a Mistral chat model on a Telegram export, so that it writes as the people in it.

    python train.py --lora --data ~/Downloads/Telegram\\ Desktop/DataExport/ --out runs/me

LoRA adapters on one GPU (`--lora`), or every weight sharded over a node (`--fsdp`, under torchrun).
"""
import argparse
import contextlib
import io
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

import torch
from tqdm import tqdm

from core import atomic
from training import distributed
from core.cli import program
from data.chatml import add_chatml_tokens
from data.dataset import data_config_from_args, prepare_data
from data.packing import RowLoader
from data.telegram import add_export_args
from model.lora import AdapterError, LoRAConfig, PROJECTIONS, apply_lora, load_adapter, merge_lora, save_adapter
from model import CheckpointError, load_model, load_tokenizer, save_model
from training.loop import (DamagedCheckpoint, MetricsLog, Throughput, TrainingError, checkpoint_path, checkpoints,
                      cosine_schedule, endless, evaluate, load_training_state, make_optimizer, peak_memory_mb,
                      prune_checkpoints, remove_unfinished_writes, resume_from, save_training_state, train_step,
                      trained_token_count)

DEFAULT_MODEL = "cognitivecomputations/dolphin-2.2.1-mistral-7b"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# What a run folder holds. Each is the run's own: a link there would lead reads and writes elsewhere.
RUN_ENTRIES = ("run_args.json", "run.json", "metrics.jsonl", "checkpoints", "cache", "adapter", "merged", "model",
               "report")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--lora", action="store_true", help="train LoRA adapters on a frozen model (the default)")
    mode.add_argument("--fsdp", action="store_true", help="train every weight, sharded with FSDP (run under torchrun) (default: off)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="base model: a local directory, a .gguf file (with --lora) or a Hugging Face repo id (default: %(default)s)")
    parser.add_argument("--add-chatml-tokens", action="store_true", help="add <|im_start|>/<|im_end|> to the tokenizer and train their rows, even where it has a chat format (default: automatic when it has neither ChatML's nor Llama 3's header tokens)")
    parser.add_argument("--data", help="Telegram export (result.json or its directory) or a sessions JSONL file (required unless --resume)")
    parser.add_argument("--out", default="runs/twin", help="output directory (default: %(default)s)")

    data = parser.add_argument_group("data")
    add_export_args(data)
    data.add_argument("--train-on", choices=["all", "target"], default="all", help="whose turns the loss covers (default: %(default)s)")
    data.add_argument("--seq-len", type=positive_int, default=1024, help="tokens per packed row (default: %(default)s)")
    data.add_argument("--val-fraction", type=float, default=0.02, help="share of sessions held out for evaluation (default: %(default)s)")
    data.add_argument("--split", choices=["hash", "time"], default="hash", help="which sessions are held out: hash spreads them over time, time holds out the newest (default: %(default)s)")

    optim = parser.add_argument_group("optimization")
    optim.add_argument("--micro-batch", type=positive_int, default=8, help="rows per forward pass (default: %(default)s)")
    optim.add_argument("--batch", type=positive_int, default=32, help="rows per optimizer step, over all ranks, reached by gradient accumulation (default: %(default)s)")
    optim.add_argument("--epochs", type=float, default=3, help="passes over the training rows (default: %(default)s)")
    optim.add_argument("--max-steps", type=positive_int, help="optimizer steps; overrides --epochs (default: from --epochs)")
    optim.add_argument("--lr", type=float, help="peak learning rate (default: 2e-4 with --lora, 2e-5 with --fsdp)")
    optim.add_argument("--warmup-ratio", type=float, default=0.03, help="share of steps of linear warmup (default: %(default)s)")
    optim.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay of matrices (default: %(default)s)")
    optim.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this; 0 disables (default: %(default)s)")
    optim.add_argument("--seed", type=int, default=42, help="seed of initialisation, dropout and shuffling (default: %(default)s)")

    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--lora-r", type=int, default=32, help="adapter rank (default: %(default)s)")
    lora.add_argument("--lora-alpha", type=float, default=16, help="adapter scaling numerator, scaling = alpha / r (default: %(default)s)")
    lora.add_argument("--lora-dropout", type=float, default=0.05, help="dropout on the adapter input (default: %(default)s)")
    lora.add_argument("--lora-targets", default="q,k,v,o,gate", help="projections to adapt, from q,k,v,o,gate,up,down (default: %(default)s)")
    lora.add_argument("--merge", action="store_true", help="also write the merged full model to OUT/merged (default: off)")

    full = parser.add_argument_group("full fine-tuning (--fsdp)")
    full.add_argument("--param-dtype", choices=list(DTYPES), default="fp32", help="dtype of the sharded master weights and AdamW states; bf16 halves their memory (default: %(default)s)")
    full.add_argument("--export-dtype", choices=list(DTYPES), default="bf16", help="dtype of the exported model in OUT/model (default: %(default)s)")

    run = parser.add_argument_group("run")
    run.add_argument("--eval-every", type=int, default=100, help="evaluate on the held-out split every N steps, and at the end; 0: only at the end (default: %(default)s)")
    run.add_argument("--save-every", type=int, default=100, help="write a checkpoint every N steps; 0: never (default: %(default)s)")
    run.add_argument("--keep-checkpoints", type=int, default=2, help="how many of the newest checkpoints to keep (default: %(default)s)")
    run.add_argument("--log-every", type=positive_int, default=1, help="append to OUT/metrics.jsonl every N steps (default: %(default)s)")
    run.add_argument("--eval-report", action=argparse.BooleanOptionalAction, default=True,
                     help="after training, write the fidelity report (held-out loss and style, tuned vs base, per speaker) to OUT/report (default: on)")
    run.add_argument("--eval-contexts", type=int, default=32, help="held-out contexts per speaker the report samples replies at (default: %(default)s)")
    run.add_argument("--stop-at", type=positive_int, help="save a checkpoint and stop after this step, to continue later with --resume (default: run to the end)")
    run.add_argument("--resume", metavar="OUT", help="continue the run in OUT from its newest checkpoint, with its settings (flags given here override them)")
    run.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: %(default)s: cuda when available)")
    run.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="weight and compute dtype (default: %(default)s: bf16 on cuda, fp32 on cpu)")
    run.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                     help="recompute each layer's activations in the backward pass (default: on with cuda, off on cpu)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume:
        out = Path(args.resume)
        check_run_folder(out, "--resume")
        if (out / "run.json").exists():
            if on_main_rank():
                print(f"{out} is a finished run ({out / 'run.json'} holds its result): nothing to resume. Chat with "
                      f"it: python sample.py --checkpoint {out}; or train anew with another --out")
            sys.exit(0)
        args = resumed_args(argv, out)
    elif not args.data:
        refuse("--data is required: a Telegram export (result.json or its folder) or a sessions file")
    else:
        out = Path(args.out)
        check_run_folder(out, "--out")
        # A fresh run would mix its checkpoints and metrics with the earlier run's, or overwrite its result.
        if (out / "run.json").exists():
            refuse(f"--out {out} holds a finished run ({out / 'run.json'}); choose another --out")
        if checkpoints(out):
            refuse(f"--out {out} holds an unfinished run; continue it with --resume {out}, or choose another --out")
    if args.fsdp and "RANK" not in os.environ:
        refuse("--fsdp runs under torchrun: torchrun --nproc-per-node N train.py --fsdp ...")
    if args.fsdp and args.model.endswith(".gguf"):
        refuse(f"--model {args.model}: --fsdp reads Hugging Face model folders, not GGUF files; train on a GGUF file "
               "with --lora")
    if Path(args.model).exists():  # recorded absolute, so `sample.py --checkpoint` works from anywhere
        args.model = str(Path(args.model).resolve())
    if args.lr is None:
        args.lr = 2e-5 if args.fsdp else 2e-4
    return args


def on_main_rank() -> bool:
    """Rank 0 of a torchrun job, or a plain process; known before the process group is."""
    return os.environ.get("RANK", "0") == "0"


def refuse(message: str) -> NoReturn:
    """End a bad command line: one error line (from one rank of a job) and the status of a user error."""
    if on_main_rank():
        print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_run_folder(out: Path, flag: str) -> None:
    """Refuse a run folder that is a file, or that links to files elsewhere."""
    if out.exists() and not out.is_dir():
        refuse(f"{flag} {out}: not a folder")
    for name in RUN_ENTRIES:
        if (out / name).is_symlink():
            refuse(f"{out / name}: a symbolic link; a run folder holds its own files, and twin follows no link "
                   "out of it")


def resumed_args(argv: list[str] | None, out: Path) -> argparse.Namespace:
    """The run's saved settings, then whatever was given explicitly on this command line."""
    settings_file = out / "run_args.json"
    if not settings_file.is_file():
        refuse(f"--resume: {settings_file} not found; is {out} a twin run directory?")
    try:
        settings = json.loads(settings_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: nested too deep
        refuse(f"{settings_file}: not readable as JSON ({error})")
    if not isinstance(settings, dict):
        refuse(f"{settings_file}: holds a JSON {type(settings).__name__}, not train.py's settings")
    try:
        recorded = recorded_args(settings)
    except ValueError as error:
        refuse(f"{settings_file}: {error}")
    explicit = argparse.Namespace()
    suppressing = build_parser()
    for action in suppressing._actions:
        action.default = argparse.SUPPRESS
    suppressing.parse_args(argv, namespace=explicit)
    args = argparse.Namespace(**{**vars(recorded), **vars(explicit)})
    args.out = str(out)
    return args


def recorded_args(settings: dict) -> argparse.Namespace:
    """A run's recorded settings over today's defaults (which cover flags newer than the record).

    Each value must be one the command line could have given: ValueError names the first that is not.
    Keys that are no flag are left out, and so are --resume and --stop-at, which belong to one invocation.
    """
    actions = {action.dest: action for action in build_parser()._actions if action.dest != "help"}
    recorded = {dest: recorded_value(actions[dest], value) for dest, value in settings.items()
                if dest in actions and dest not in ("resume", "stop_at")}
    return argparse.Namespace(**{**{dest: action.default for dest, action in actions.items()}, **recorded})


def recorded_value(action: argparse.Action, value):
    """`value` as the flag of `action` would have given it on the command line; ValueError if it cannot."""
    flag, shown = max(action.option_strings, key=len), json.dumps(value)[:60]
    if value is None and action.default is None:
        return None
    if action.nargs == 0:  # an on/off flag
        if isinstance(value, bool):
            return value
        raise ValueError(f"{flag}: {shown} is not true or false")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (isinstance(value, str) or action.type and number):
        raise ValueError(f"{flag}: {shown} is not a {'number' if action.type else 'string'}")
    try:
        value = action.type(str(value)) if action.type else value
    except (ValueError, argparse.ArgumentTypeError) as error:
        raise ValueError(f"{flag}: {shown} is refused ({error})") from None
    if action.choices and value not in action.choices:
        raise ValueError(f"{flag}: {shown} is not one of {', '.join(map(str, action.choices))}")
    return value


def read_run_record(out: Path) -> dict:
    """OUT/run.json of a finished run, checked: its settings are ones train.py takes (with a --data), and
    its partners are names. A damaged or foreign record raises CheckpointError naming the file."""
    run_file = out / "run.json"
    try:
        record = json.loads(run_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{run_file}: missing; is {out} a finished train.py run?") from None
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: nested too deep
        raise CheckpointError(f"{run_file}: not readable as JSON ({error})") from None
    settings = record.get("settings") if isinstance(record, dict) else None
    figures = record.get("figures", {}) if isinstance(record, dict) else None
    partners = figures.get("partners", {}) if isinstance(figures, dict) else None
    if not (isinstance(settings, dict) and isinstance(partners, dict)
            and all(isinstance(name, str) for pair in partners.items() for name in pair)):
        raise CheckpointError(f"{run_file}: not a train.py run record (its settings, figures or partners are "
                              "missing or of the wrong type)")
    try:
        recorded = recorded_args(settings)
    except ValueError as error:
        raise CheckpointError(f"{run_file}: {error}") from None
    if recorded.data is None:
        raise CheckpointError(f"{run_file}: records no --data")
    return record


def resolve_device(args) -> tuple[torch.device, torch.dtype]:
    try:
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              "cpu" if args.device == "auto" else args.device)
    except RuntimeError as error:
        raise ValueError(f"--device {args.device}: {error}") from None
    dtype = DTYPES[args.dtype] if args.dtype != "auto" else torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, dtype


@program
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
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
    from evaluate import EvalSettings, EvaluationError, run_evaluation  # evaluate imports this module

    about = {"base": args.model, "tuned": f"adapter {out / 'adapter'}", "data": str(args.data), "split": args.split}
    try:
        report = run_evaluation(model, tokenizer, data, out / "report", EvalSettings(contexts=args.eval_contexts),
                                device, about, metrics_file=out / "metrics.jsonl")
    except EvaluationError as error:  # e.g. nothing held out
        print(f"fidelity report skipped: {error}")
        return
    print(report.summary())
    print(f"fidelity report: {out / 'report' / 'report.md'}")


def lora_targets(text: str) -> tuple[str, ...]:
    names = tuple(f"{name.strip()}_proj" for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in PROJECTIONS]
    if unknown:
        raise AdapterError(f"--lora-targets: unknown {', '.join(unknown)}; choose from q,k,v,o,gate,up,down")
    return names


if __name__ == "__main__":
    main()

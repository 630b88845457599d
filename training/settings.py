"""train.py's settings: every flag with its default and help, and a run folder's record of them, read
back and checked, for train.py to resume a run and for sample.py and evaluate.py to use one."""
import argparse
import json
import os
import sys
from pathlib import Path
from typing import NoReturn

from core.device import DTYPES, add_threads_arg
from data.telegram import add_export_args
from model.checkpoint import CheckpointError
from model.lora import PROJECTIONS, AdapterError
from training.checkpointer import checkpoints

DEFAULT_MODEL = "cognitivecomputations/dolphin-2.2.1-mistral-7b"
# What a run folder holds. Each is the run's own: a link there would lead reads and writes elsewhere.
RUN_ENTRIES = ("run_args.json", "run.json", "metrics.jsonl", "checkpoints", "cache", "adapter", "merged", "model",
               "report")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def build_parser(description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    lora.add_argument("--quantize", choices=["nf4"], help="store the frozen base's linear weights in 4 bits (QLoRA's NF4), a quarter of their memory; the adapter stays a PEFT adapter of the full-precision base (default: off, the base in --dtype)")

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
    add_threads_arg(run)
    run.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="weight and compute dtype (default: %(default)s: bf16 on cuda, fp32 on cpu)")
    run.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                     help="recompute each layer's activations in the backward pass (default: on with cuda, off on cpu)")
    return parser


def parse_args(argv: list[str] | None = None, description: str = "") -> argparse.Namespace:
    parser = build_parser(description)
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
    if args.quantize and (args.fsdp or args.merge):
        refuse(f"--quantize {args.quantize} goes with --lora, without --merge: 4 bits hold no trained or merged "
               "weight (sample.py merges the adapter into the full-precision base as it loads)")
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


def lora_targets(text: str) -> tuple[str, ...]:
    names = tuple(f"{name.strip()}_proj" for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in PROJECTIONS]
    if unknown:
        raise AdapterError(f"--lora-targets: unknown {', '.join(unknown)}; choose from q,k,v,o,gate,up,down")
    return names

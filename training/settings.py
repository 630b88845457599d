"""train.py's settings: its flags, each declared once with its default and help on a dataclass below (or
on the library's own: DataConfig, LoRAConfig, ExportOptions), and a run's recorded settings read back
and checked as the command line would have given them."""

import argparse
import json
from dataclasses import dataclass

from core.device import DTYPES, add_compute_args
from core.flags import add_arguments, positive_int, setting
from data.conversion import add_export_args
from data.dataset import DataConfig
from memory import MemoryConfig
from model import DEFAULT_MODEL
from model.lora import LoRAConfig
from training.tracking import tracker_list


@dataclass
class Recipe:
    """Which recipe trains: one of the two."""

    lora: bool = setting(False, "train LoRA adapters on a frozen model (the default)")
    fsdp: bool = setting(False, "train every weight, sharded with FSDP (run under torchrun)")


@dataclass
class Job:
    """What is trained, on what, and where it goes."""

    model: str = setting(
        DEFAULT_MODEL, "base model: a local directory, a .gguf file (with --lora) or a Hugging Face repo id"
    )
    add_chatml_tokens: bool = setting(
        False,
        "add <|im_start|>/<|im_end|> to the tokenizer and train their rows, "
        "even where it has a chat format (default: automatic when it has neither "
        "ChatML's nor Llama 3's header tokens)",
    )
    data: str | None = setting(
        None, "Telegram export (result.json or its directory) or a sessions JSONL file (required unless --resume)"
    )
    out: str = setting("runs/twin", "output directory")


@dataclass
class Optimization:
    micro_batch: int = setting(8, "rows per forward pass", type=positive_int)
    batch: int = setting(
        32, "rows per optimizer step, over all ranks, reached by gradient accumulation", type=positive_int
    )
    epochs: float = setting(3, "passes over the training rows")
    max_steps: int | None = setting(
        None, "optimizer steps; overrides --epochs (default: from --epochs)", type=positive_int
    )
    lr: float | None = setting(None, "peak learning rate (default: 2e-4 with --lora, 2e-5 with --fsdp)")
    warmup_ratio: float = setting(0.03, "share of steps of linear warmup")
    weight_decay: float = setting(0.0, "AdamW weight decay of matrices")
    grad_clip: float = setting(1.0, "clip the gradient norm to this; 0 disables")
    seed: int = setting(42, "seed of initialisation, dropout and shuffling")


@dataclass
class LoRAOutputs:
    merge: bool = setting(False, "also write the merged full model to OUT/merged")


@dataclass
class LoRABase:
    quantize: str | None = setting(
        None,
        "store the frozen base's linear weights in 4 bits (QLoRA's NF4), a quarter "
        "of their memory; the adapter stays a PEFT adapter of the full-precision base "
        "(default: off, the base in --dtype)",
        choices=["nf4"],
    )


@dataclass
class FullFineTuning:
    param_dtype: str = setting(
        "fp32", "dtype of the sharded master weights and AdamW states; bf16 halves their memory", choices=list(DTYPES)
    )
    export_dtype: str = setting("bf16", "dtype of the exported model in OUT/model", choices=list(DTYPES))


@dataclass
class Cadence:
    """When a run evaluates, saves, logs and stops."""

    eval_every: int = setting(100, "evaluate on the held-out split every N steps, and at the end; 0: only at the end")
    save_every: int = setting(100, "write a checkpoint every N steps; 0: never")
    keep_checkpoints: int = setting(2, "how many of the newest checkpoints to keep")
    keep_best: bool = setting(
        False,
        "also save and keep the checkpoint of the lowest held-out loss (at each "
        "--eval-every evaluation), and end the run with it: the adapter or model written "
        "is that one, and run.json's best_step says which",
    )
    log_every: int = setting(1, "append to OUT/metrics.jsonl every N steps", type=positive_int)
    log_to: str | None = setting(
        None,
        "also log the metrics and the final figures to these trackers, "
        "comma-separated: tensorboard (OUT/tensorboard), trackio (its local database: "
        "`trackio show`); optional packages, pip install the one you use (default: none, "
        "OUT/metrics.jsonl alone)",
        type=tracker_list,
        metavar="TRACKERS",
    )
    eval_report: bool = setting(
        True,
        "after training, write the fidelity report (held-out loss and style, tuned "
        "vs base, per speaker) to OUT/report (default: on)",
    )
    eval_contexts: int = setting(32, "held-out contexts per speaker the report samples replies at")
    stop_at: int | None = setting(
        None,
        "save a checkpoint and stop after this step, to continue later with --resume (default: run to the end)",
        type=positive_int,
    )
    resume: str | None = setting(
        None,
        "continue the run in OUT from its newest checkpoint, with its settings (flags given here override them)",
        metavar="OUT",
    )


@dataclass
class Recompute:
    activation_checkpointing: bool | None = setting(
        None, "recompute each layer's activations in the backward pass (default: on with cuda, off on cpu)"
    )


def build_parser(description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser.add_mutually_exclusive_group(), Recipe)
    add_arguments(parser, Job)
    data = parser.add_argument_group("data")
    add_export_args(data)
    add_arguments(data, DataConfig)
    add_arguments(parser.add_argument_group("memory (earlier conversations before each one, as context)"), MemoryConfig)
    add_arguments(parser.add_argument_group("optimization"), Optimization)
    lora = parser.add_argument_group("LoRA")
    add_arguments(lora, LoRAConfig, prefix="lora_")
    add_arguments(lora, LoRAOutputs)
    add_arguments(lora, LoRABase)
    add_arguments(parser.add_argument_group("full fine-tuning (--fsdp)"), FullFineTuning)
    run = parser.add_argument_group("run")
    add_arguments(run, Cadence)
    add_compute_args(run)
    add_arguments(run, Recompute)
    return parser


def explicit_args(argv: list[str] | None) -> argparse.Namespace:
    """Only the flags given on this command line, none of the defaults."""
    explicit = argparse.Namespace()
    suppressing = build_parser()
    for action in suppressing._actions:
        action.default = argparse.SUPPRESS
    return suppressing.parse_args(argv, namespace=explicit)


def recorded_args(settings: dict) -> argparse.Namespace:
    """A run's recorded settings over today's defaults (which cover flags newer than the record).

    Each value must be one the command line could have given: ValueError names the first that is not.
    Keys that are no flag are left out, and so are --resume and --stop-at, which belong to one invocation.
    """
    actions = {action.dest: action for action in build_parser()._actions if action.dest != "help"}
    recorded = {
        dest: recorded_value(actions[dest], value)
        for dest, value in settings.items()
        if dest in actions and dest not in ("resume", "stop_at")
    }
    defaults = {dest: action.default for dest, action in actions.items()}
    return argparse.Namespace(**{**defaults, **recorded})


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

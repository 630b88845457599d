"""train.py's settings, one tree (TrainSettings): each flag declared once, with its default and help, on a
dataclass below or on the library's own (DataConfig, LoRAConfig, MemoryConfig, Compute); the checks that
span several of them; and the tree as a run records it in run.json and reads it back on --resume."""

import argparse
import os
from dataclasses import dataclass

from core.compute import DTYPE_NAMES, Compute
from core.flags import SettingsError, from_dict, positive_int, program_parser, section, setting
from core.run_folder import RunFolderError, RunRecord
from data.settings import DataConfig
from memory.settings import MemoryConfig
from model import DEFAULT_MODEL
from model.lora_config import LoRAConfig
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
class LoRARecipe:
    """--lora's: the adapters' shape, what else is written, and how the frozen base is kept."""

    adapter: LoRAConfig = section(LoRAConfig, prefix="lora_")
    merge: bool = setting(False, "also write the merged full model to OUT/merged")
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
        "fp32", "dtype of the sharded master weights and AdamW states; bf16 halves their memory", choices=DTYPE_NAMES
    )
    export_dtype: str = setting("bf16", "dtype of the exported model in OUT/model", choices=DTYPE_NAMES)


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
    eval_fact_samples: int = setting(
        8,
        "turns the report's memory section writes at each moment that takes up an earlier conversation's fact",
        type=positive_int,
    )


@dataclass
class Invocation:
    """What belongs to this command alone, never to the run's record: a stop, and which run to continue."""

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
class TrainCompute(Compute):
    activation_checkpointing: bool | None = setting(
        None, "recompute each layer's activations in the backward pass (default: on with cuda, off on cpu)"
    )


@dataclass
class TrainSettings:
    """Everything train.py is told: the tree its flags are built from and its run.json records."""

    recipe: Recipe = section(Recipe, exclusive=True)
    job: Job = section(Job)
    data: DataConfig = section(DataConfig, "data")
    memory: MemoryConfig = section(MemoryConfig, "memory (earlier conversations before each one, as context)")
    optimization: Optimization = section(Optimization, "optimization")
    lora: LoRARecipe = section(LoRARecipe, "LoRA")
    full: FullFineTuning = section(FullFineTuning, "full fine-tuning (--fsdp)")
    cadence: Cadence = section(Cadence, "run")
    invocation: Invocation = section(Invocation, "run", recorded=False)
    compute: TrainCompute = section(TrainCompute, "run")

    @property
    def mode(self) -> str:
        """The run's mode as its record names it: lora, or fsdp."""
        return "fsdp" if self.recipe.fsdp else "lora"

    @property
    def lr(self) -> float:
        """The peak learning rate: --lr, else the recipe's."""
        if self.optimization.lr is not None:
            return self.optimization.lr
        return 2e-5 if self.recipe.fsdp else 2e-4

    def check(self) -> None:
        """The checks that span several flags, and the launch (a job under torchrun or not); SettingsError
        names the flags. Run on the settings a run trains with: its model resolved, its record read."""
        model, sharded = self.job.model, "RANK" in os.environ
        if self.recipe.fsdp and not sharded:
            raise SettingsError("--fsdp runs under torchrun: torchrun --nproc-per-node N train.py --fsdp ...")
        if self.recipe.fsdp and model.endswith(".gguf"):
            raise SettingsError(
                f"--model {model}: --fsdp reads Hugging Face model folders, not GGUF files; train on a GGUF file "
                "with --lora"
            )
        if self.lora.quantize and (self.recipe.fsdp or self.lora.merge):
            raise SettingsError(
                f"--quantize {self.lora.quantize} goes with --lora, without --merge: 4 bits hold no trained or "
                "merged weight (sample.py merges the adapter into the full-precision base as it loads)"
            )
        if not self.recipe.fsdp and sharded and model.endswith(".gguf"):
            raise SettingsError(
                f"--model {model}: LoRA under torchrun reads Hugging Face model folders, not GGUF files; train "
                "on a GGUF file with python train.py --lora"
            )
        if not self.recipe.fsdp and sharded and self.lora.merge:
            raise SettingsError(
                "--merge runs on one device, not under torchrun: train sharded, then sample.py merges the adapter "
                "into the base as it loads"
            )

    @classmethod
    def of_run(cls, record: RunRecord) -> "TrainSettings":
        """The settings a run recorded, over today's defaults (which cover flags newer than the record),
        each checked as a value of its flag; RunFolderError names the record and the flag. Records of
        before the tree hold every flag in one flat dict, and are read too."""
        try:
            return from_dict(cls, record.settings, flat=record.flat)
        except SettingsError as error:
            raise RunFolderError(f"{record.file}: {error}") from None


def build_parser(description: str = "") -> argparse.ArgumentParser:
    return program_parser(TrainSettings, description)

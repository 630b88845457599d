"""A twin from its training run folder, or from a model and an adapter: the flags that say which and how
(sample.py's and serve.py's alike), what to load (the one way sample.py, serve.py, evaluate.py and the
GGUF export find it), then loading it."""

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from chat.people import People
from chat.recall import TwinMemory, add_memory_arguments, memory_of_run
from core.device import add_compute_args, add_quantize_arg, dtype_name, resolve_device, set_threads
from core.errors import TwinError
from core.run_folder import RunFolder, RunRecord
from model import DEFAULT_MODEL, Tokenizer, Transformer, load_model, load_tokenizer
from model.checkpoint import check_finite
from model.generation import Generator
from model.lora_surgery import merge_lora
from model.peft import load_adapter, tokenizer_source


def add_twin_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a program that talks as a twin: which twin, and where and how it computes."""
    source = parser.add_argument_group("model")
    source.add_argument(
        "--checkpoint",
        help="a train.py output directory (it knows its base model and speakers); replaces --model/--adapter",
    )
    source.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="base, merged or exported model: directory, .gguf file or Hub repo id (default: %(default)s)",
    )
    source.add_argument(
        "--adapter", help="a LoRA adapter directory (twin or PEFT), merged into the model at load (default: none)"
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--context",
        type=int,
        default=4096,
        help="tokens of conversation the model sees; older turns are dropped (default: %(default)s)",
    )
    add_compute_args(run)
    add_quantize_arg(run)
    add_memory_arguments(parser)
    run.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (CUDA; slow start, faster decoding) (default: off)",
    )


@dataclass(frozen=True)
class TwinSource:
    """Where a twin's weights are, and the people its run saw (none known without a run folder)."""

    model: str | Path
    adapter: Path | None = None
    people: People = People()
    run: RunFolder | None = None  # the run it was read from, and its record
    record: RunRecord | None = None
    memory: TwinMemory | None = None  # the run's, as it trained (chat.recall)

    def describe(self) -> str:
        return f"{self.model}" + (f" with the adapter {self.adapter}" if self.adapter else "")


def source_of_run(out: str | Path) -> TwinSource:
    """A trained train.py run: its full fine-tune's export, or its base model and LoRA adapter, as its
    record's mode says."""
    run = RunFolder(Path(out))
    record = run.read_trained_record()
    people = People.from_figures(record.figures)
    if record.mode == "fsdp":
        return TwinSource(run.model, None, people, run, record)
    return TwinSource(record.model, run.adapter, people, run, record)


def source_from_args(args) -> TwinSource:
    """--checkpoint (with the run's memory, unless --no-memory), or else --model and --adapter."""
    if args.checkpoint:
        source = source_of_run(Path(args.checkpoint))
        return dataclasses.replace(source, memory=memory_of_run(source.run, source.record, args))
    return TwinSource(args.model, Path(args.adapter) if args.adapter else None)


def load_twin(
    source: TwinSource, device: torch.device, dtype: torch.dtype, quantize: str | None = None
) -> tuple[Transformer, Tokenizer]:
    """The model, any adapter merged in (kept beside a base quantized to 4 bits), in eval mode, and its
    tokenizer. Says on stderr (stdout is the chat's) what it loads and how long that took: a 7B model is
    minutes of silence otherwise."""
    print(
        f"loading {source.describe()} on {device.type} in {dtype_name(dtype)}"
        + (f", linear weights in {quantize}" if quantize else "")
        + "...",
        file=sys.stderr,
        flush=True,
    )
    started = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer_source(source.model, source.adapter))
    model = load_model(source.model, dtype=dtype, device=device, quantize=quantize)
    check_finite(model, source.model)  # the adapter's weights are checked as it loads
    if source.adapter:
        load_adapter(model, source.adapter)
        if not quantize:  # 4 bits cannot hold a merged adapter: it stays beside the base
            merge_lora(model)  # one matrix per projection again: decoding as fast as the base model
    print(f"loaded in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return model.eval(), tokenizer


def start_twin(args: argparse.Namespace, source: TwinSource) -> tuple[Generator, Tokenizer]:
    """The flags of add_twin_arguments at work: torch on its device and threads, the twin loaded, and its
    generator over a cache of --context tokens (or the model's own, where shorter)."""
    device, dtype = resolve_device(args)
    set_threads(args)
    model, tokenizer = load_twin(source, device, dtype, args.quantize)
    context = min(args.context, model.config.max_position_embeddings)
    if args.max_new_tokens >= context:
        raise TwinError(f"--max-new-tokens ({args.max_new_tokens}) must be below --context ({context})")
    return Generator(model, max_len=context, device=device, compile=args.compile), tokenizer

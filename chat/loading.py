"""A twin from its training run folder, or from a model and an adapter: the settings that say which and how
(sample.py's and serve.py's alike), what to load (open_source and source_of_run: the one way sample.py,
serve.py, evaluate.py and export.py find it, a run's mode read from its record), then loading it."""

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from chat.people import People
from chat.recall import MemoryChoice, TwinMemory, memory_of_run
from core.compute import Compute, Quantization
from core.device import dtype_name, resolve_device, set_threads
from core.errors import TwinError
from core.flags import section, setting
from core.run_folder import RunFolder, RunRecord
from model import DEFAULT_MODEL
from model.checkpoint import check_finite, load_model, load_tokenizer
from model.generation import Generator
from model.lora_surgery import merge_lora
from model.peft import load_adapter, tokenizer_source
from model.tokenizer import Tokenizer
from model.transformer import Transformer


@dataclass
class TwinChoice:
    """Which twin: a train.py run, or a model and an adapter."""

    checkpoint: str | None = setting(
        None, "a train.py output directory (it knows its base model and speakers); replaces --model/--adapter"
    )
    model: str = setting(
        DEFAULT_MODEL, "base, merged or exported model: directory, .gguf file or Hub repo id (default: %(default)s)"
    )
    adapter: str | None = setting(
        None, "a LoRA adapter directory (twin or PEFT), merged into the model at load (default: none)"
    )


@dataclass
class TwinCompute(Compute, Quantization):
    """How the twin computes: its context, device, dtype, threads and weights."""

    context: int = setting(
        4096, "tokens of conversation the model sees; older turns are dropped (default: %(default)s)"
    )
    compile: bool = setting(False, "torch.compile the model (CUDA; slow start, faster decoding) (default: off)")


@dataclass
class TwinSettings:
    """The settings of a program that talks as a twin (sample.py, serve.py): which twin, and where and how
    it computes and remembers."""

    choice: TwinChoice = section(TwinChoice, "model")
    compute: TwinCompute = section(TwinCompute, "run")
    memory: MemoryChoice = section(MemoryChoice, "memory")


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


def open_source(choice: TwinChoice, memory: MemoryChoice | None = None) -> TwinSource:
    """The one way a program finds its twin: --checkpoint, a train.py run, with the run's memory (where
    `memory` asks for it); or else --model and --adapter."""
    if not choice.checkpoint:
        return TwinSource(choice.model, Path(choice.adapter) if choice.adapter else None)
    source = source_of_run(Path(choice.checkpoint))
    return dataclasses.replace(source, memory=memory_of_run(source.run, source.record, memory) if memory else None)


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


def start_twin(settings: TwinCompute, source: TwinSource, max_new_tokens: int) -> tuple[Generator, Tokenizer]:
    """The twin's compute settings at work: torch on its device and threads, the twin loaded, and its
    generator over a cache of --context tokens (or the model's own, where shorter), which replies of
    `max_new_tokens` must fit in."""
    device, dtype = resolve_device(settings)
    set_threads(settings)
    model, tokenizer = load_twin(source, device, dtype, settings.quantize)
    context = min(settings.context, model.config.max_position_embeddings)
    if max_new_tokens >= context:
        raise TwinError(f"--max-new-tokens ({max_new_tokens}) must be below --context ({context})")
    return Generator(model, max_len=context, device=device, compile=settings.compile), tokenizer

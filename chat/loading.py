"""A twin from its training run folder, or from a model and an adapter: what to load, then loading it."""
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from chat.people import People
from core.device import dtype_name
from model import Tokenizer, Transformer, load_model, load_tokenizer
from model.checkpoint import check_finite
from model.lora import load_adapter, merge_lora, tokenizer_source
from training.run_folder import read_finished_record


@dataclass(frozen=True)
class TwinSource:
    """Where a twin's weights are, and the people its run saw (none known without a run folder)."""
    model: str | Path
    adapter: Path | None = None
    people: People = People()

    def describe(self) -> str:
        return f"{self.model}" + (f" with the adapter {self.adapter}" if self.adapter else "")


def source_of_run(out: Path) -> TwinSource:
    """A finished train.py run: its full fine-tune's export, or its base model and LoRA adapter."""
    record = read_finished_record(out)
    people = People.from_run_record({"figures": record.figures})
    if (out / "model").exists():
        return TwinSource(out / "model", None, people)
    return TwinSource(record.args.model, out / "adapter", people)


def source_from_args(args) -> TwinSource:
    """--checkpoint, or else --model and --adapter."""
    if args.checkpoint:
        return source_of_run(Path(args.checkpoint))
    return TwinSource(args.model, Path(args.adapter) if args.adapter else None)


def load_twin(source: TwinSource, device: torch.device, dtype: torch.dtype,
              quantize: str | None = None) -> tuple[Transformer, Tokenizer]:
    """The model, any adapter merged in (kept beside a base quantized to 4 bits), in eval mode, and its
    tokenizer. Says on stderr (stdout is the chat's) what it loads and how long that took: a 7B model is
    minutes of silence otherwise."""
    print(f"loading {source.describe()} on {device.type} in {dtype_name(dtype)}"
          + (f", linear weights in {quantize}" if quantize else "") + "...", file=sys.stderr, flush=True)
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

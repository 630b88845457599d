"""Peak host memory of a LoRA step at Dolphin-2.2.1-Mistral-7B's exact shapes, on CPU, in bf16.

    python bench/bench_lora_memory.py [--micro-batches 1,2] [--seq-len 1024] [--checkpoint DIR]
                                      [--sides twin,twin-nf4,peer]

Writes a checkpoint of random bf16 weights with the 7B's shapes (vocab 32002, hidden 4096, MLP 14336,
32 layers, GQA 32/8, window 4096; ~14.5 GB, one shard per layer so the writer stays small), then for
each micro-batch starts a fresh process that loads it with `load_model`, adds LoRA (r 32, alpha 16 on
q,k,v,o,gate), turns activation checkpointing on and runs one training step (forward, backward,
AdamW) on packed rows. Its figure is the peak resident set during the step minus the resident set
after imports; the loader's own peak is given beside it. A least-squares line through the figures
gives the cost of each extra row, and the projection to --project rows. `--sides twin-nf4` loads the
base with `quantize="nf4"` (QLoRA: the linear weights in 4 bits, quantized as they are read), `peer`
measures transformers + PEFT the same way; processes run one at a time, never two 7B models at once.

By default glibc serves blocks below a threshold it raises as the program runs (up to 32 MiB) from
its heap, and keeps what is freed there for reuse; a step's activations are such blocks, so the
resident set climbs above what the tensors hold at any moment. The workers run with
MALLOC_MMAP_THRESHOLD_ fixed (--mmap-threshold) so that every block of 128 KiB or more is returned
to the system when freed: the resident set then follows the live tensors, as a GPU's memory does
under PyTorch's caching allocator. --mmap-threshold 0 measures under glibc's defaults.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# bench_lora also puts the repository root on sys.path.
from bases import write_random_checkpoint
from bench_lora import SIDE_NAMES, packed_batch, start_worker

from model.lora_config import LoRAConfig  # noqa: E402
from model.loss import IGNORE_INDEX  # noqa: E402
from model.transformer import ModelConfig  # noqa: E402

DOLPHIN_7B = ModelConfig(
    vocab_size=32002,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    sliding_window=4096,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=32768,
)
CHECKPOINT_GB = 14.5
TARGETS = {"twin": (8, 20e9 / 2**30, "20 GB"), "twin-nf4": (4, 10, "10 GiB")}  # side -> micro-batch, GiB, as said


def measure(side: str, checkpoint: Path, micro_batch: int, seq_len: int, threads: int) -> dict:
    """One step in a fresh process: its memory figures, step seconds and loss."""
    batch = packed_batch(DOLPHIN_7B.vocab_size, seq_len, micro_batch)
    started = time.perf_counter()
    process, connection = start_worker(side, checkpoint, torch.bfloat16, LoRAConfig(), batch, threads)
    if connection.recv() != "ready":
        raise RuntimeError(f"{side} worker failed to start")
    loaded_seconds = time.perf_counter() - started
    connection.send("step")
    seconds, loss = connection.recv()
    connection.send("done")
    memory = connection.recv()
    process.join()
    return {
        "side": side,
        "micro_batch": micro_batch,
        "tokens": batch["input_ids"].numel(),
        "trained": int((batch["labels"] != IGNORE_INDEX).sum()),
        "load_s": loaded_seconds,
        "step_s": seconds,
        "loss": loss,
        "mib": memory["peak"] - memory["baseline"],
        "load_mib": memory["loaded"] - memory["baseline"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--micro-batches",
        default="1,2",
        help="comma-separated rows per step, one fresh process each (default: %(default)s)",
    )
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per row (default: %(default)s)")
    parser.add_argument("--project", type=int, default=8, help="micro-batch to project to (default: %(default)s)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="folder for the random checkpoint, kept afterwards and reused if it already holds one "
        "(default: a temporary folder, deleted at the end)",
    )
    parser.add_argument(
        "--sides",
        default="twin",
        help="comma-separated sides to measure: twin, twin-nf4 (its base in 4 bits), peer "
        "(transformers + PEFT) (default: %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=128 * 1024,
        help="glibc's MALLOC_MMAP_THRESHOLD_ for the workers, in bytes; 0: glibc's default (default: %(default)s)",
    )
    args = parser.parse_args()
    if args.mmap_threshold:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)  # the spawned workers inherit it
    micro_batches = [int(n) for n in args.micro_batches.split(",")]
    sides = [side.strip() for side in args.sides.split(",")]
    if not set(sides) <= set(SIDE_NAMES):
        parser.error(f"--sides: choose from {', '.join(SIDE_NAMES)}")

    directory = args.checkpoint or Path(tempfile.mkdtemp(prefix="twin-bench-7b-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        if not (directory / "model.safetensors.index.json").exists():
            free_gb = shutil.disk_usage(directory).free / 1e9
            if free_gb < CHECKPOINT_GB + 1:
                sys.exit(f"error: {directory} has {free_gb:.1f} GB free; the checkpoint needs ~{CHECKPOINT_GB} GB")
            started = time.perf_counter()
            size = write_random_checkpoint(directory, DOLPHIN_7B, torch.bfloat16)
            print(
                f"wrote {size / 1e9:.1f} GB of random bf16 weights to {directory} "
                f"in {time.perf_counter() - started:.0f} s"
            )
        weights_mib = sum(f.stat().st_size for f in directory.glob("*.safetensors")) / 2**20
        print(
            f"Dolphin-2.2.1-Mistral-7B shapes, bf16, seq {args.seq_len}, LoRA r=32 on q,k,v,o,gate, "
            f"activation checkpointing, {args.threads} threads; weights {weights_mib:,.0f} MiB; "
            f"malloc mmap threshold {args.mmap_threshold or 'glibc default'}"
        )
        results = []
        for side in sides:
            for micro_batch in micro_batches:
                result = measure(side, directory, micro_batch, args.seq_len, args.threads)
                results.append(result)
                print(
                    f"  {SIDE_NAMES[side]:>17} micro-batch {micro_batch}: peak {result['mib']:,.0f} MiB, "
                    f"step {result['step_s']:.0f} s ({result['tokens'] / result['step_s']:.0f} tokens/s), "
                    f"load {result['load_s']:.0f} s (peak {result['load_mib']:,.0f} MiB), loss {result['loss']:.4f}",
                    flush=True,
                )
    finally:
        if not args.checkpoint:
            shutil.rmtree(directory)

    print(
        f"\n{'':18}"
        + "".join(f"{f'micro-batch {n}':>16}" for n in micro_batches)
        + f"{'per extra row':>16}{f'projected at {args.project}':>18}"
    )
    projected, lines = {}, {}
    for side in sides:
        figures = [r["mib"] for r in results if r["side"] == side]
        # Weights, adapters and optimizer state are the intercept; activations grow with the rows.
        per_row, fixed = np.polyfit(micro_batches, figures, 1) if len(figures) > 1 else (float("nan"), figures[0])
        lines[side], projected[side] = (per_row, fixed), fixed + per_row * args.project
        print(
            f"{SIDE_NAMES[side]:18}"
            + "".join(f"{f'{mib:,.0f} MiB':>16}" for mib in figures)
            + f"{f'{per_row:,.0f} MiB':>16}{f'{projected[side]:,.0f} MiB':>18}"
        )
    for side, (rows, target_gib, target) in TARGETS.items():
        if side not in projected:
            continue
        measured = next((r["mib"] for r in results if r["side"] == side and r["micro_batch"] == rows), None)
        per_row, fixed = lines[side]
        if measured is None and len(micro_batches) < 2:  # neither measured nor projected
            continue
        figure = (
            f"{measured / 1024:.1f} GiB measured"
            if measured
            else f"{(fixed + per_row * rows) / 1024:.1f} GiB projected"
        )
        print(
            f"{SIDE_NAMES[side]} at micro-batch {rows}, seq {args.seq_len}: {figure} "
            f"(target: within {target} = {target_gib:.1f} GiB)"
        )
    if "twin" in projected and "peer" in projected:
        print(
            f"ratio twin/transformers+PEFT at micro-batch {args.project}: {projected['twin'] / projected['peer']:.2f}"
        )


if __name__ == "__main__":
    main()

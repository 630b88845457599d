"""LoRA and QLoRA sharded over 2 CPU ranks against 1: peak memory per rank at a 7B's layer shapes,
measured on a few layers and projected per layer to whole models.

    python bench/bench_lora_ranks.py [--layers 1,3] [--seq-len 32] [--settings bf16,nf4] [--small]

Writes a checkpoint of random bf16 weights with Dolphin-2.2.1-Mistral-7B's shapes (vocabulary 32002,
hidden 4096, MLP 14336, GQA 32/8) but only a few decoder layers (--layers: 1 and 3, ~1.8 GB), then
runs `train.py --lora` (r 32 on q,k,v,o,gate, activation checkpointing, bf16, one optimizer step of
one row of --seq-len tokens per rank) under torchrun with 1 and with 2 ranks, over the bf16 base and
with `--quantize nf4`, and reads each rank's peak resident memory from run.json. Every run is its own
processes, one run at a time, so the machine never holds more than one such model.

Two layer counts give each setting's cost per decoder layer (the difference over the extra layers)
and its fixed part (embedding, LM head, the gathered layer, Python, torch, data). From 1 and 2 ranks
each splits into what sharding divides (weights, adapters, optimizer states) and what every rank keeps
(activations, the gathered layer): per rank = kept + divided / ranks. The projection to a whole model
multiplies the per-layer figure by its number of layers and by the ratio of its layer's parameters to
the 7B's, adds its embedding and LM head (bf16; each rank keeps its share of both, and the LM head, in
FSDP2's root, is held whole through the step besides; the embedding is gathered only for its own forward
pass, before the peak) in place of the 7B's, and grows the kept part by two gathered layers (the one
computing and the one prefetched) at the larger layer's size.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bases import chatml_tokenizer, write_random_checkpoint  # noqa: E402
from bench_lora_memory import DOLPHIN_7B  # noqa: E402

from model.transformer import ModelConfig  # noqa: E402

MIB = 2**20
BYTES_PER_WEIGHT = {"bf16": 2, "nf4": 4.125 / 8}
SMALL = replace(DOLPHIN_7B, hidden_size=256, intermediate_size=896, num_attention_heads=8, num_key_value_heads=2)
# What the figures are projected to: (name, layer shapes, layers, vocabulary, ranks, memory per rank in GiB).
TARGETS = (
    (
        "Llama-3-70B",
        ModelConfig(hidden_size=8192, intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8),
        80,
        128256,
        2,
        24,
    ),
    (
        "Llama-3-8B",
        ModelConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8),
        32,
        128256,
        8,
        24,
    ),
)


def layer_parameters(config: ModelConfig) -> int:
    head_dim = config.hidden_size // config.num_attention_heads
    attention = 2 * config.hidden_size * config.num_attention_heads * head_dim
    attention += 2 * config.hidden_size * config.num_key_value_heads * head_dim
    return attention + 3 * config.hidden_size * config.intermediate_size


def edges_mib(vocab: int, hidden: int) -> float:
    """The embedding and the LM head (untied), bf16."""
    return 2 * vocab * hidden * 2 / MIB


def adapter_parameters(config: ModelConfig, r: int = 32) -> int:
    """A layer's LoRA parameters, r x (in + out) for each of q, k, v, o and gate."""
    head_dim = config.hidden_size // config.num_attention_heads
    q = o = config.hidden_size + config.num_attention_heads * head_dim
    k = v = config.hidden_size + config.num_key_value_heads * head_dim
    return r * (q + k + v + o + config.hidden_size + config.intermediate_size)


def write_model(directory: Path, config: ModelConfig) -> None:
    write_random_checkpoint(directory, config, __import__("torch").bfloat16)
    chatml_tokenizer(directory.parent / "tokenizer").save(directory)


def wait_for_memory(needed_mib: float, patience_s: int = 1200) -> None:
    """On a shared machine: start a run only while the memory it needs is available, waiting a while
    for it, so that the measurement never pushes the machine out of memory."""
    for _ in range(patience_s // 10):
        available = (
            int(
                next(
                    line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemAvailable")
                ).split()[1]
            )
            / 1024
        )
        if available >= needed_mib:
            return
        time.sleep(10)
    sys.exit(f"error: {needed_mib:,.0f} MiB needed, {available:,.0f} MiB available for {patience_s} s; try later")


def peak_per_rank(model: Path, out: Path, ranks: int, quantize: bool, seq_len: int) -> float:
    """The highest of the ranks' peak resident memory in MiB over one `train.py --lora` step."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={ranks}",
        "train.py",
        "--lora",
        "--model",
        str(model),
        "--data",
        "examples/telegram_export",
        "--out",
        str(out),
        "--seq-len",
        str(seq_len),
        "--micro-batch",
        "1",
        "--batch",
        str(ranks),
        "--max-steps",
        "1",
        "--dtype",
        "bf16",
        "--activation-checkpointing",
        "--eval-every",
        "0",
        "--save-every",
        "0",
        "--val-fraction",
        "0",
        "--no-eval-report",
        "--lora-r",
        "32",
        "--threads",
        "1",
        *(["--quantize", "nf4"] if quantize else []),
    ]
    # Blocks of 128 KiB or more go back to the system when freed, so the resident set follows the live
    # tensors as a GPU's memory does (bench_lora_memory.py explains why).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, env=env)
    from core.run_folder import RunFolder

    return max(RunFolder(out).read_trained_record().figures["peak_memory_mb_per_rank"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="1,3", help="the two decoder layer counts measured (default: %(default)s)")
    parser.add_argument(
        "--settings", default="bf16,nf4", help="the bases measured: bf16, nf4 or both (default: %(default)s)"
    )
    parser.add_argument(
        "--seq-len", type=int, default=32, help="tokens of the row each rank trains on (default: %(default)s)"
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="hidden 256 instead of the 7B's shapes: a check that the script runs, in a minute",
    )
    args = parser.parse_args()
    layer_counts = [int(n) for n in args.layers.split(",")]
    settings = args.settings.split(",")
    if not set(settings) <= {"bf16", "nf4"}:
        parser.error(f"--settings {args.settings!r}: choose among bf16 and nf4")
    shapes = SMALL if args.small else DOLPHIN_7B
    figures = {}  # (setting, ranks, layers) -> MiB
    with tempfile.TemporaryDirectory(prefix="twin-bench-lora-ranks-") as scratch:
        scratch = Path(scratch)
        for layers in layer_counts:
            model = scratch / f"model-{layers}"
            model.mkdir()
            write_model(model, replace(shapes, num_hidden_layers=layers))
            for setting in settings:
                for ranks in (1, 2):
                    out = scratch / f"run-{layers}-{setting}-{ranks}"
                    # The weights, read by the ranks together, and for each rank its own 1.5 GiB of the rest.
                    weights_mib = sum(f.stat().st_size for f in model.glob("*.safetensors")) / MIB
                    wait_for_memory(weights_mib + ranks * 1536)
                    figures[setting, ranks, layers] = peak_per_rank(model, out, ranks, setting == "nf4", args.seq_len)
                    print(
                        f"{layers} layers, {setting}, {ranks} rank(s): peak {figures[setting, ranks, layers]:,.0f} "
                        f"MiB per rank",
                        flush=True,
                    )
                    shutil.rmtree(out)
            shutil.rmtree(model)

    few, more = layer_counts
    print(
        f"\n{'hidden ' + str(shapes.hidden_size)} layer shapes, seq {args.seq_len}, LoRA r 32 on q,k,v,o,gate, "
        f"bf16 compute, activation checkpointing; peak resident memory per rank, MiB"
    )
    print(f"{'setting':8}{'ranks':>6}{f'{few} layers':>10}{f'{more} layers':>10}{'per layer':>11}{'fixed':>9}")
    per_layer, fixed = {}, {}
    for setting in settings:
        for ranks in (1, 2):
            low, high = figures[setting, ranks, few], figures[setting, ranks, more]
            per_layer[setting, ranks] = (high - low) / (more - few)
            fixed[setting, ranks] = low - few * per_layer[setting, ranks]
            print(
                f"{setting:8}{ranks:>6}{low:>10,.0f}{high:>10,.0f}{per_layer[setting, ranks]:>11,.1f}"
                f"{fixed[setting, ranks]:>9,.0f}"
            )
        print(
            f"{'':8}2 ranks / 1: per layer {per_layer[setting, 2] / per_layer[setting, 1]:.2f}x, "
            f"at {more} layers {figures[setting, 2, more] / figures[setting, 1, more]:.2f}x"
        )
        # What sharding should halve: the frozen weights as stored (NF4: the packed bytes and their scales) and
        # the adapters with their gradients and AdamW's two moments (fp32: 16 bytes a parameter).
        weights = layer_parameters(shapes) * BYTES_PER_WEIGHT[setting] / MIB
        adapters = 16 * adapter_parameters(shapes) / MIB
        print(
            f"{'':8}divided by the ranks, per layer: {2 * (per_layer[setting, 1] - per_layer[setting, 2]):,.0f} MiB "
            f"measured; expected {weights + adapters:,.0f} MiB ({weights:,.0f} frozen weights, {adapters:,.0f} "
            f"adapters, gradients and AdamW)"
        )

    print("\nprojected (per rank = kept + divided / ranks, from the 1- and 2-rank figures):")
    base_layer = layer_parameters(shapes)
    for name, layer_shapes, layers, vocab, ranks, budget in TARGETS:
        scale = layer_parameters(layer_shapes) / base_layer
        for setting in settings:
            divided = 2 * (per_layer[setting, 1] - per_layer[setting, 2])  # per layer: a / 1 - a / 2 = a / 2
            layer_mib = (per_layer[setting, 1] - divided + divided / ranks) * scale
            # Embedding and LM head (untied) in bf16 whatever the setting: NF4 is for decoder layers only. Every
            # rank keeps its share of both; the LM head is in FSDP2's root, held gathered from the forward pass to
            # the end of the backward pass: half of them whole, plus 1/ranks. The 7B's are swapped for the model's.
            edges = edges_mib(vocab, layer_shapes.hidden_size) * (1 / 2 + 1 / ranks)
            divided_fixed = 2 * (fixed[setting, 1] - fixed[setting, 2])
            rest = fixed[setting, 1] - divided_fixed + divided_fixed / ranks
            rest -= edges_mib(shapes.vocab_size, shapes.hidden_size) * (1 / 2 + 1 / ranks)
            # Kept whole on every rank: the gathered layer and the one FSDP2 prefetches, at the larger shapes.
            rest += (scale - 1) * 2 * base_layer * BYTES_PER_WEIGHT[setting] / MIB
            total = layers * layer_mib + edges + max(rest, 0.0)
            print(
                f"  {name} on {ranks} ranks, {setting}: {layers} layers x {layer_mib:,.0f} MiB + embedding and head "
                f"{edges:,.0f} MiB + the rest {max(rest, 0.0):,.0f} MiB = {total / 1024:,.1f} GiB per rank "
                f"({'fits' if total / 1024 <= budget else 'does not fit'} {budget} GiB)"
            )


if __name__ == "__main__":
    main()

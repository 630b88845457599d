"""Full fine-tuning sharded over 2 CPU ranks against 1: time per optimizer step and peak memory per rank.

    python bench/bench_fsdp.py [--hidden 512] [--layers 8] [--steps 4]

Builds a random Mistral (vocabulary 32002) with the bundled sample's tokenizer needs, then runs
`train.py --fsdp` under torchrun with 1 and with 2 ranks on the same global batch, and reads each
run's figures from run.json. On 2 cores the ranks share the same compute, so the point is memory:
weights, gradients and AdamW states are split between the ranks.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_model(directory: Path, hidden: int, layers: int) -> int:
    from bases import chatml_tokenizer

    from model.checkpoint import save_model
    from model.transformer import ModelConfig, Transformer

    tokenizer = chatml_tokenizer(directory / "tokenizer")
    config = ModelConfig(
        vocab_size=32002,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        sliding_window=4096,
    )
    model = Transformer(config)
    save_model(model, directory / "model", tokenizer=tokenizer)
    return sum(p.numel() for p in model.parameters())


def run(ranks: int, model: Path, out: Path, steps: int) -> dict:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={ranks}",
        "train.py",
        "--fsdp",
        "--model",
        str(model),
        "--data",
        "examples/telegram_export",
        "--out",
        str(out),
        "--seq-len",
        "256",
        "--micro-batch",
        "2",
        "--batch",
        "8",
        "--max-steps",
        str(steps),
        "--dtype",
        "fp32",
        "--eval-every",
        "0",
        "--save-every",
        "0",
        "--val-fraction",
        "0.02",
        "--threads",
        str(max(1, 2 // ranks)),
    ]  # 2 cores shared by the ranks, whatever the machine has
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    from core.run_folder import RunFolder

    return RunFolder(out).read_trained_record().figures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512, help="hidden size (default: %(default)s)")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        params = build_model(scratch, args.hidden, args.layers)
        print(f"model: {params / 1e6:.1f}M parameters; global batch 8 rows x 256 tokens; fp32; 2 CPU cores")
        results = {ranks: run(ranks, scratch / "model", scratch / f"run{ranks}", args.steps) for ranks in (1, 2)}
    for ranks, figures in results.items():
        step_seconds = 8 * 256 / figures["tokens_per_s"]
        print(
            f"{ranks} rank(s): {step_seconds:.2f} s per step, peak memory per rank "
            f"{', '.join(f'{m:,} MiB' for m in figures['peak_memory_mb_per_rank'])}"
        )
    one, two = results[1], results[2]
    print(
        f"ratio 2 ranks / 1 rank: step time {one['tokens_per_s'] / two['tokens_per_s']:.2f}x, "
        f"peak memory per rank {max(two['peak_memory_mb_per_rank']) / one['peak_memory_mb_per_rank'][0]:.2f}x"
    )


if __name__ == "__main__":
    main()

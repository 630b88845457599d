"""How long the fidelity report takes for a model of SmolLM2-135M's shape on the bundled sample, on this machine.

    python bench/bench_report.py                # SmolLM2-135M's shape, random weights, a LoRA adapter
    python bench/bench_report.py --max-new-tokens 256
    python bench/bench_report.py --before 85f79e9    # and the report of that commit, same model and data
    python bench/bench_report.py --checkpoint runs/demo --contexts 12 --before 85f79e9   # a trained run's report

With --checkpoint, the report of a trained run (examples/demo.sh's, say) is timed instead: a trained model
ends its turns, so this is the time a user waits. Each report's process CPU seconds are printed beside its
wall time: on a machine others share, they are what it costs on cores of its own.

Random weights never write the end of a turn, so every reply runs to its cut: --max-new-tokens before the
report cut turns at the person's own length (fidelity.measure.CUT_QUANTILE), that length after. The script
first times the model alone (a prefill, a decoding step) at a few batch sizes, from which the time at other
reply lengths follows. Random weights also spread the next token's probability flat, so top-p sampling sorts
the whole vocabulary at every token (a trained model's nucleus lies among its 512 likeliest tokens): the
whole report's time is an upper bound.
"""

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bases import chatml_tokenizer, random_model  # noqa: E402
from trees import trees  # noqa: E402

from core.device import DTYPES  # noqa: E402
from model.checkpoint import save_model  # noqa: E402
from model.lora_config import LoRAConfig  # noqa: E402
from model.lora_surgery import apply_lora  # noqa: E402
from model.peft import save_adapter  # noqa: E402
from model.transformer import KVCache, ModelConfig, Transformer  # noqa: E402

# SmolLM2-135M's shape, with the vocabulary of the tokenizer at hand (Dolphin's 32,002 ids, not 49,152):
# 125M parameters.
SMOLLM2_135M = ModelConfig(
    vocab_size=32002,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    sliding_window=None,
    tie_word_embeddings=True,
    model_type="llama",
    rope_theta=100000.0,
)


def median_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def children_cpu_seconds() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


@torch.inference_mode()
def step_costs(model: Transformer, batch: int, prompt_tokens: int = 200) -> tuple[float, float]:
    """(prompt tokens per second in a prefill, seconds per decoding step) of the model alone, without
    sampling, for `batch` replies at once."""
    dtype = next(model.parameters()).dtype
    cache = KVCache(model.config, batch, prompt_tokens + 1, dtype=dtype, device="cpu")
    padding = torch.zeros(batch, dtype=torch.long)

    def prefill():
        cache.length = 0
        model.hidden_states(torch.randint(0, 1000, (batch, prompt_tokens)), kv_cache=cache, padding=padding)

    def step():
        cache.length = prompt_tokens
        model.lm_head(model.hidden_states(torch.randint(0, 1000, (batch, 1)), kv_cache=cache, padding=padding))

    return batch * prompt_tokens / median_seconds(prefill, 3), median_seconds(step, 15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-new-tokens", type=int, default=48, help="every reply's length (default: %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--split", default="time")
    parser.add_argument("--sample-batch", type=int, help="turns written together (default: evaluate.py's, 48 on a CPU)")
    parser.add_argument("--fact-samples", type=int, help="turns a fact moment (default: evaluate.py's, 8)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--contexts", type=int, default=32, help="per speaker (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="(default: %(default)s)")
    parser.add_argument(
        "--batches", default="1,4,8,16,32", help="batch sizes the model alone is timed at (not with --checkpoint)"
    )
    parser.add_argument("--checkpoint", metavar="RUN", help="time the report of this train.py run instead")
    parser.add_argument("--seed", type=int, default=0, help="of the contexts and sampling (default: %(default)s)")
    parser.add_argument(
        "--before",
        metavar="COMMIT",
        help="also time evaluate.py of this commit (its files, from git archive), same flags, and print the ratio",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        if not args.checkpoint:
            tokenizer = chatml_tokenizer(directory / "tokenizer")
            model = random_model(SMOLLM2_135M)
            print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, SmolLM2-135M's shape")
            save_model(model, directory / "model", tokenizer=tokenizer)
            apply_lora(model, LoRAConfig(r=8, alpha=16))
            save_adapter(model, directory / "adapter", LoRAConfig(r=8, alpha=16), base_model=str(directory / "model"))
            model.eval()
            for batch in map(int, args.batches.split(",")):
                prefill, step = step_costs(model.to(DTYPES[args.dtype]), batch)
                print(
                    f"{args.dtype}, {batch} replies at once: prefill {prefill:.0f} tokens/s, decoding step "
                    f"{step * 1000:.0f} ms"
                )
        if args.checkpoint:
            evaluated = ["--checkpoint", str(Path(args.checkpoint).resolve())]
        else:
            evaluated = [
                "--model",
                str(directory / "model"),
                "--adapter",
                str(directory / "adapter"),
                "--data",
                str(ROOT / "examples" / "telegram_export"),
                "--val-fraction",
                str(args.val_fraction),
                "--split",
                args.split,
                "--seq-len",
                "256",
            ]
        chosen = [
            (flag, str(value))
            for flag, value in (("--sample-batch", args.sample_batch), ("--fact-samples", args.fact_samples))
            if value is not None
        ]
        flags = evaluated + [flag_or_value for pair in chosen for flag_or_value in pair]
        flags += [
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--contexts",
            str(args.contexts),
            "--seed",
            str(args.seed),
            "--device",
            "cpu",
            "--dtype",
            args.dtype,
            "--threads",
            str(args.threads),
        ]
        model = " ".join(evaluated) if args.checkpoint else "random weights"
        seconds = {}
        for name, tree in trees(args.before, directory / "before").items():
            started, cpu = time.perf_counter(), children_cpu_seconds()
            subprocess.run(
                [sys.executable, str(tree / "evaluate.py"), *flags, "--out", str(directory / name)],
                check=True,
                cwd=tree,
            )
            seconds[name] = time.perf_counter() - started
            print(
                f"whole report, {name} (evaluate.py, {model}, --max-new-tokens {args.max_new_tokens}, --contexts "
                f"{args.contexts}{''.join(f', {flag} {value}' for flag, value in chosen)}): {seconds[name]:.1f} s, "
                f"{children_cpu_seconds() - cpu:.1f} CPU seconds"
            )
        if args.before:
            print(f"ratio {args.before} / this tree: {seconds[args.before] / seconds['this tree']:.2f}x")


if __name__ == "__main__":
    main()

"""How long the fidelity report takes for a model of SmolLM2-135M's shape on the bundled sample, on this machine.

    python bench/bench_report.py                # SmolLM2-135M's shape, random weights, a LoRA adapter
    python bench/bench_report.py --max-new-tokens 256

Random weights never write the end of a turn, so every reply runs to --max-new-tokens: the time is that
of replies of exactly that length. The script also times one batched decoding step and one step alone,
from which the time at other reply lengths follows (replies of a batch end when its longest does).
"""
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fidelity.sampling import generate_batch  # noqa: E402
from model.generation import SamplingConfig  # noqa: E402
from model.lora import LoRAConfig, apply_lora, save_adapter  # noqa: E402
from model import save_model  # noqa: E402
from model.transformer import Transformer, ModelConfig  # noqa: E402
from tests.helpers import random_model  # noqa: E402
from tests.conftest import (DOLPHIN_ADDED_TOKENS, DOLPHIN_SPECIAL_TOKENS_MAP, DOLPHIN_TOKENIZER_CONFIG,  # noqa: E402
                            write_tokenizer_dir)

# SmolLM2-135M's shape, with the vocabulary of the tokenizer at hand (Dolphin's 32,002 ids, not 49,152):
# 125M parameters.
SMOLLM2_135M = ModelConfig(vocab_size=32002, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                             sliding_window=None, tie_word_embeddings=True, model_type="llama", rope_theta=100000.0)


def decode_step_seconds(model: Transformer, batch: int, steps: int = 24) -> float:
    """Seconds per decoding step of `batch` replies after 200-token prompts (prefill excluded)."""
    config = SamplingConfig(temperature=0.7, max_new_tokens=1)
    prompts = [list(range(100, 300))] * batch
    generate_batch(model, prompts, config, set(), None, torch.device("cpu"))  # warm up
    started = time.perf_counter()
    generate_batch(model, prompts, SamplingConfig(temperature=0.7, max_new_tokens=steps + 1), set(), None,
                   torch.device("cpu"))
    with_prefill = time.perf_counter() - started
    started = time.perf_counter()
    generate_batch(model, prompts, config, set(), None, torch.device("cpu"))
    prefill = time.perf_counter() - started
    return (with_prefill - prefill) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-new-tokens", type=int, default=48, help="every reply's length (default: %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--split", default="time")
    parser.add_argument("--sample-batch", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        tokenizer_dir = write_tokenizer_dir(directory / "tokenizer", {
            "tokenizer_config.json": DOLPHIN_TOKENIZER_CONFIG, "added_tokens.json": DOLPHIN_ADDED_TOKENS,
            "special_tokens_map.json": DOLPHIN_SPECIAL_TOKENS_MAP})
        from model.tokenizer import Tokenizer
        tokenizer = Tokenizer.from_dir(tokenizer_dir)
        model = random_model(SMOLLM2_135M)
        print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, SmolLM2-135M's shape")
        save_model(model, directory / "model", tokenizer=tokenizer)
        apply_lora(model, LoRAConfig(r=8, alpha=16))
        save_adapter(model, directory / "adapter", LoRAConfig(r=8, alpha=16), base_model=str(directory / "model"))
        model.eval()
        for batch in (1, 8, args.sample_batch):
            print(f"decoding step, {batch} replies at once: {decode_step_seconds(model, batch) * 1000:.0f} ms")
        started = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--model", str(directory / "model"),
                        "--adapter", str(directory / "adapter"), "--data", str(ROOT / "examples" / "telegram_export"),
                        "--val-fraction", str(args.val_fraction), "--split", args.split, "--seq-len", "256",
                        "--max-new-tokens", str(args.max_new_tokens), "--sample-batch", str(args.sample_batch),
                        "--out", str(directory / "report"), "--device", "cpu"], check=True, cwd=ROOT)
        print(f"whole report (evaluate.py, replies of {args.max_new_tokens} tokens): "
              f"{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

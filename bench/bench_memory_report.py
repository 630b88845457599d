"""How long the fidelity report's memory section takes, and what it says, for SmolLM2-135M-Instruct (untuned)
on the bundled sample at the demo's split (--split time, 5% held out, rows of 512, train.py's memory).

    python bench/bench_memory_report.py                     # this tree
    python bench/bench_memory_report.py --before 9066e84    # and that commit's memory section, same model and data
    python bench/bench_memory_report.py --sessions 8        # 8 of the 31 held-out sessions, spread over the chats

The section's losses only (no turns written: --eval-contexts 0): before, one pass over the held-out rows per
speaker and setting; now one pass per setting. The untuned model shows what the memory gives by itself: on
turns that stand in the memory word for word it can copy them without any training.
"""

import argparse
import tempfile
from pathlib import Path

from trees import printed, trees

ROOT = Path(__file__).resolve().parents[1]

# Run inside a tree (this one or the --before commit's): the same calls exist in both.
MEASURE = """
import sys, time, torch
torch.set_num_threads({threads})
from data.settings import DataConfig
from data.dataset import prepare_data
from fidelity.plan import EvalSettings, plan_evaluation
from fidelity.remembering import measure_memory
from memory.settings import MemoryConfig
from model.checkpoint import load_model, load_tokenizer
from model import shelf
path = shelf.resolve("SmolLM2-135M-Instruct")
tokenizer, model = load_tokenizer(path), load_model(path, dtype=torch.float32, device="cpu")
data = prepare_data("{data}", tokenizer, DataConfig(seq_len=512, val_fraction=0.05, split="time"))
count = {sessions} or len(data.val_sessions)
data.val_sessions = data.val_sessions[:: max(1, len(data.val_sessions) // count)][:count]  # spread over the chats
settings = EvalSettings(contexts=0)
plan = plan_evaluation(data, settings)
started = time.perf_counter()
figures = measure_memory(model, tokenizer, data, plan.speakers, MemoryConfig(), settings, torch.device("cpu"))
print("seconds", time.perf_counter() - started)
print("\\n".join(figures.summary()))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="(default: %(default)s)")
    parser.add_argument("--sessions", type=int, help="held-out sessions measured (default: all)")
    parser.add_argument(
        "--before", metavar="COMMIT", help="also time that commit's memory section, and print the ratio"
    )
    args = parser.parse_args()
    snippet = MEASURE.format(threads=args.threads, data=ROOT / "examples" / "telegram_export", sessions=args.sessions)
    with tempfile.TemporaryDirectory() as directory:
        seconds = {}
        for name, tree in trees(args.before, Path(directory)).items():
            lines = printed(snippet, tree)
            seconds[name] = float(next(line for line in lines if line.startswith("seconds")).split()[1])
            print(f"memory section's losses, {name}: {seconds[name]:.1f} s")
            print("\n".join(line for line in lines if not line.startswith("seconds")))
        if args.before:
            print(f"ratio {args.before} / this tree: {seconds[args.before] / seconds['this tree']:.2f}x")


if __name__ == "__main__":
    main()

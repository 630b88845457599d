"""Peak host memory while loading a >1B-parameter bf16 checkpoint: twin's load_model vs transformers.

    python bench/bench_load.py [--layers 22] [--keep DIR]

Writes a random checkpoint of TinyLlama-1.1B's shapes as a Mistral (one 2.2 GB safetensors file),
then loads it in a fresh process per loader, touches every weight page (a loader may leave weights
memory-mapped and unread), and reports each process's peak resident memory above its baseline
(Python with the loader imported), against the size of the weights.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LOADERS = {
    "twin": "from model import load_model; model = load_model(path, dtype=torch.bfloat16)",
    "transformers": (
        "import transformers; model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)"
    ),
}

MEASURE = """
import sys, torch
sys.path.insert(0, {root!r})
path = {path!r}
def status_mb(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
{imports}
baseline = status_mb('VmRSS')
{load}
# A loader may leave weights memory-mapped and unread; touch every page so both models are resident.
for p in model.parameters():
    p.data.reshape(-1)[::1024].float().sum()
# VmHWM, not ru_maxrss: the latter survives exec and would count the parent that wrote the checkpoint.
peak = status_mb('VmHWM')
print(baseline, peak, sum(p.numel() for p in model.parameters()))
"""


def write_checkpoint(directory: Path, layers: int) -> int:
    from model.transformer import ModelConfig, Transformer

    config = ModelConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=4,
        sliding_window=4096,
    )
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in Transformer(config).named_parameters()}
    state = {n: torch.randn(s, dtype=torch.bfloat16) * 0.02 for n, s in shapes.items()}
    from safetensors.torch import save_file

    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config.to_hf(torch.bfloat16)))
    return sum(t.numel() * t.element_size() for t in state.values())


def measure(name: str, path: Path) -> tuple[float, float, int]:
    # Import the loader's library before the baseline, so the figure is what loading itself costs.
    imports = "import model" if name == "twin" else "import transformers, transformers.models.mistral.modeling_mistral"
    script = MEASURE.format(
        root=str(Path(__file__).resolve().parents[1]), path=str(path), imports=imports, load=LOADERS[name]
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    baseline, peak, params = out.stdout.split()
    return float(baseline), float(peak), int(params)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=22, help="decoder layers (22: 1.1B parameters)")
    parser.add_argument("--keep", type=Path, help="write the checkpoint here and keep it (default: a temp dir)")
    args = parser.parse_args()
    directory = args.keep or Path(tempfile.mkdtemp(prefix="twin-bench-load-"))
    directory.mkdir(parents=True, exist_ok=True)
    weights_mb = write_checkpoint(directory, args.layers) / 2**20
    print(f"checkpoint: {directory} ({weights_mb:.0f} MiB of bf16 weights)")
    results = {}
    for name in LOADERS:
        baseline, peak, params = measure(name, directory)
        results[name] = peak - baseline
        print(
            f"{name:>12}: {params / 1e9:.2f}B parameters, peak RSS {peak:.0f} MiB, baseline {baseline:.0f} MiB, "
            f"loading cost {peak - baseline:.0f} MiB = {(peak - baseline) / weights_mb:.3f}x the weights"
        )
    print(f"ratio twin/transformers loading cost: {results['twin'] / results['transformers']:.2f}")
    if not args.keep:
        import shutil

        shutil.rmtree(directory)


if __name__ == "__main__":
    main()

"""Runtime code stands on torch, safetensors, sentencepiece, tokenizers, gguf, huggingface-hub, numpy, tqdm and matplotlib alone."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_DEPENDENCIES = {"torch", "safetensors", "sentencepiece", "tokenizers", "gguf", "huggingface-hub", "numpy",
                        "tqdm", "matplotlib"}
ORACLES = ["transformers", "peft", "accelerate"]


def runtime_modules() -> list[str]:
    top = [p.stem for p in ROOT.glob("*.py")]
    packages = [f"{p.parent.name}.{p.stem}" for folder in ("model", "data", "fidelity") for p in (ROOT / folder).glob("*.py")]
    return sorted(top + packages)


def test_requirements_are_exactly_the_runtime_dependencies():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    names = {re.split(r"[<>=!~\[; ]", line.strip())[0].lower() for line in lines if line.strip() and not line.startswith("#")}
    assert names == RUNTIME_DEPENDENCIES


def test_no_runtime_module_imports_the_test_oracles():
    modules = runtime_modules()
    assert {"train", "sample", "model.lora", "model.transformer", "data.telegram"} <= set(modules)
    # A None entry in sys.modules makes any import of that name fail, however deep it happens.
    code = (f"import sys\nfor name in {ORACLES!r}:\n    sys.modules[name] = None\n"
            f"import importlib\nfor module in {modules!r}:\n    importlib.import_module(module)\nprint('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr

"""What the benches run on, built from the library's own parts (the tests' fixtures stay inside tests/):
a real tokenizer, and weights of random values in a real model's shapes.

    tokenizer = chatml_tokenizer(folder)           # Mistral's SentencePiece model with ChatML's two tokens
    write_random_checkpoint(folder, config, dtype) # a Hugging Face folder, written one layer at a time
    model = random_model(config)                   # the same values, in memory
"""

import importlib.resources
import json
import sys
from pathlib import Path

import torch

# Run as `python bench/NAME.py`, which puts bench/ on the path: the repository's packages are one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.sentencepiece_tokenizer import SentencePieceTokenizer  # noqa: E402
from model.transformer import ModelConfig, Transformer  # noqa: E402

CHATML_TOKENS = ["<|im_end|>", "<|im_start|>"]  # in this order they take Dolphin-Mistral's ids, 32000 and 32001


def chatml_tokenizer(folder: Path) -> SentencePieceTokenizer:
    """Mistral-7B's tokenizer (the mistral-common package's tokenizer.model, vocabulary 32,000) with ChatML's
    tokens added, as a fine-tune of Mistral for chat has them; saved in `folder` as a Hugging Face tokenizer
    folder, which transformers reads too."""
    folder.mkdir(parents=True, exist_ok=True)
    model_file = importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1"
    (folder / "tokenizer.model").write_bytes(model_file.read_bytes())
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "legacy": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = SentencePieceTokenizer.from_dir(folder)
    tokenizer.add_special_tokens(CHATML_TOKENS)
    tokenizer.save(folder)
    return tokenizer


def random_value(name: str, shape: torch.Size, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """A weight of the shape: ones for a norm, else small normal values (drawn straight into `dtype`: no fp32
    copy of a 7B-sized matrix)."""
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype)
    return torch.randn(shape, generator=generator, dtype=dtype).mul_(0.02)


def random_model(config: ModelConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> Transformer:
    """A model of random weights, in memory, in evaluation mode."""
    generator = torch.Generator().manual_seed(seed)
    model = Transformer(config).to(dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(random_value(name, param.shape, generator, dtype))
    return model.eval()


def write_random_checkpoint(directory: Path, config: ModelConfig, dtype: torch.dtype, seed: int = 0) -> int:
    """A Hugging Face style checkpoint of random weights, one safetensors shard per decoder layer, so
    the writer holds one layer at a time. Returns the bytes of weights written."""
    from safetensors.torch import save_file

    with torch.device("meta"):
        shapes = {name: p.shape for name, p in Transformer(config).named_parameters()}
    groups: dict[str, list[str]] = {}
    for name in shapes:
        parts = name.split(".")
        groups.setdefault(".".join(parts[:3]) if parts[1] == "layers" else "rest", []).append(name)
    generator = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for number, names in enumerate(groups.values(), start=1):
        file_name = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        shard = {}
        for name in names:
            shard[name] = random_value(name, shapes[name], generator, dtype)
            weight_map[name] = file_name
            total += shard[name].numel() * shard[name].element_size()
        save_file(shard, directory / file_name, metadata={"format": "pt"})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (directory / "config.json").write_text(json.dumps(config.to_hf(dtype), indent=2))
    return total

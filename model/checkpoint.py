"""Hugging Face checkpoints in and out: a local directory or a Hub repo id, safetensors or .bin.

Loading builds the model on the meta device and reads each tensor straight into its final dtype and
device, so the weights are never in memory twice. Safetensors are read with plain file reads into
the destination tensor rather than through a memory map: a map's pages count as the process's
memory until it is closed, which would double the peak for a single-file checkpoint.
"""
import json
import math
import os
import re
from pathlib import Path

import torch
from torch import nn

import atomic

from model.bpe import BPETokenizer, tokenizer_from_gguf
from model.mistral import Mistral, MistralConfig
from model.tokenizer import Tokenizer

TOKENIZER_FILES = ["tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.json"]
SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32,
                      "F64": torch.float64, "I64": torch.int64, "I32": torch.int32,
                      "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
# Older Llama checkpoints store rotary frequencies; we compute them, so these keys are not weights.
IGNORED_KEYS = re.compile(r".*rotary_emb\.inv_freq$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file or tensor and what is wrong."""


def resolve_checkpoint(path_or_repo: str | os.PathLike) -> Path:
    """A local directory as it is, or a Hub repo id downloaded (config, tokenizer and weights only)."""
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        return path
    name = str(path_or_repo)
    if path.exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise CheckpointError(f"{name}: not a checkpoint directory and not a Hugging Face repo id")
    from huggingface_hub import snapshot_download  # the only network access twin makes, and only here

    wanted = ["config.json", "*.safetensors", "model.safetensors.index.json", *TOKENIZER_FILES]
    try:
        local = Path(snapshot_download(name, allow_patterns=wanted))
        if not any(local.glob("*.safetensors")):  # an old repo with pickled weights only
            local = Path(snapshot_download(name, allow_patterns=[*wanted, "pytorch_model*.bin",
                                                                 "pytorch_model.bin.index.json"]))
    except Exception as error:  # network, authentication, missing repo: say which and stop
        raise CheckpointError(f"{name}: could not download from the Hugging Face Hub "
                              f"({type(error).__name__}: {error})") from None
    return local


def load_config(directory: Path) -> MistralConfig:
    config_file = directory / "config.json"
    try:
        return MistralConfig.from_hf(json.loads(config_file.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise CheckpointError(f"{config_file}: missing") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_file}: not valid JSON ({error})") from None
    except KeyError as error:
        raise CheckpointError(f"{config_file}: required field {error} is missing") from None
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{config_file}: {error}") from None


def read_safetensors_header(file: Path) -> tuple[dict, int]:
    """The tensor table of a .safetensors file and the byte offset where tensor data begins."""
    try:
        with open(file, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if header_len <= 0 or header_len > os.path.getsize(file) - 8:
                raise ValueError("header length out of range")
            header = json.loads(f.read(header_len))
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{file}: not a safetensors file ({error})") from None
    header.pop("__metadata__", None)
    return header, 8 + header_len


def weight_files(directory: Path) -> list[Path]:
    """The checkpoint's weight files, from its index when sharded."""
    for index_name, single_name in [("model.safetensors.index.json", "model.safetensors"),
                                    ("pytorch_model.bin.index.json", "pytorch_model.bin")]:
        index_file = directory / index_name
        if index_file.exists():
            try:
                weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise CheckpointError(f"{index_file}: not a valid index ({error!r})") from None
            files = [directory / name for name in dict.fromkeys(weight_map.values())]
            for file in files:
                if not file.exists():
                    raise CheckpointError(f"{file}: shard listed in {index_name} is missing")
            return files
        if (directory / single_name).exists():
            return [directory / single_name]
    raise CheckpointError(f"{directory}: no model.safetensors, sharded safetensors or pytorch_model.bin")


class CheckpointReader:
    """The tensors of a checkpoint's weight files, each read on demand, whole or a range of rows.

    Reading rows is what lets each rank of a sharded run read only its own part of every tensor.
    """

    def __init__(self, directory: Path):
        self.files = weight_files(directory)
        self.locations: dict[str, tuple[Path, dict, int]] = {}  # safetensors: file, entry, data start
        self.pickled: dict[str, torch.Tensor] = {}  # .bin: memory-mapped tensors
        for file in self.files:
            if file.suffix == ".safetensors":
                header, data_start = read_safetensors_header(file)
                self.locations.update({name: (file, info, data_start) for name, info in header.items()})
            else:
                try:
                    self.pickled.update(torch.load(file, map_location="cpu", weights_only=True, mmap=True))
                except Exception as error:  # a pickle we refuse to execute, or a damaged file
                    raise CheckpointError(f"{file}: cannot be read as plain tensors ({error})") from None

    def file_of(self, name: str) -> Path:
        return self.locations[name][0] if name in self.locations else self.files[0]

    def shapes(self) -> dict[str, list[int]]:
        found = {name: info["shape"] for name, (_, info, _) in self.locations.items()}
        return {**found, **{name: list(t.shape) for name, t in self.pickled.items()}}

    def check(self, expected: dict[str, torch.Size]) -> None:
        """Refuse a checkpoint whose tensor names or shapes differ from the model's, before any read."""
        shapes = self.shapes()
        unexpected = [name for name in shapes if name not in expected and not IGNORED_KEYS.match(name)]
        if unexpected:
            raise CheckpointError(f"{self.file_of(unexpected[0])}: unexpected tensors {unexpected[:5]}"
                                  + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""))
        missing = [name for name in expected if name not in shapes]
        if missing:
            raise CheckpointError(f"checkpoint is missing tensors {missing[:5]}"
                                  + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        for name, shape in expected.items():
            if list(shapes[name]) != list(shape):
                raise CheckpointError(f"{self.file_of(name)}: tensor {name} has shape {list(shapes[name])}, "
                                      f"the config needs {list(shape)}")

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows `start:stop` (along the first dimension) of tensor `name`, in the file's dtype."""
        if name in self.pickled:
            return self.pickled[name][start:stop]
        file, info, data_start = self.locations[name]
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{file}: tensor {name} has unsupported dtype {info['dtype']}")
        shape, (begin, end) = info["shape"], info["data_offsets"]
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        if math.prod(shape) * dtype.itemsize != end - begin:
            raise CheckpointError(f"{file}: tensor {name} has {end - begin} bytes for shape {shape}")
        rows = shape[0] if shape else 1
        stop = rows if stop is None else min(stop, rows)
        row_bytes = (end - begin) // max(rows, 1)
        tensor = torch.empty([stop - start, *shape[1:]] if shape else [], dtype=dtype)
        with open(file, "rb") as f:
            f.seek(data_start + begin + start * row_bytes)
            wanted = (stop - start) * row_bytes
            if f.readinto(memoryview(tensor.view(torch.uint8).numpy()).cast("B")) != wanted:
                raise CheckpointError(f"{file}: truncated inside tensor {name}")
        return tensor


def assign_parameter(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attribute = name.rpartition(".")
    module = model.get_submodule(module_name)
    module._parameters[attribute] = nn.Parameter(tensor, requires_grad=tensor.is_floating_point())


def load_model(path_or_repo: str | os.PathLike, dtype: torch.dtype = torch.bfloat16,
               device: torch.device | str = "cpu") -> Mistral:
    """A Hugging Face checkpoint (Mistral, Llama, Qwen2, Qwen3) or a GGUF file as a `Mistral` in `dtype`
    on `device`."""
    if str(path_or_repo).endswith(".gguf"):
        from model.gguf import load_gguf_model  # (it imports this module)

        return load_gguf_model(path_or_repo, dtype, device)
    directory = resolve_checkpoint(path_or_repo)
    config = load_config(directory)
    with torch.device("meta"):
        model = Mistral(config)
    expected = {name: p.shape for name, p in model.named_parameters()}  # a tied head appears once
    reader = CheckpointReader(directory)
    reader.check(expected)
    for name in expected:
        assign_parameter(model, name, reader.read(name).to(device=device, dtype=dtype))
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def load_tokenizer(path_or_repo: str | os.PathLike) -> Tokenizer | BPETokenizer:
    """The checkpoint's tokenizer, checked to fit the model's embedding table; a .gguf file's from its metadata.

    A folder with a tokenizer.json is read from it, as transformers' fast tokenizers do (for Mistral v0.1
    it holds the same rules as tokenizer.model), otherwise from tokenizer.model."""
    if str(path_or_repo).endswith(".gguf"):
        return tokenizer_from_gguf(path_or_repo)
    directory = resolve_checkpoint(path_or_repo)
    if (directory / "tokenizer.json").is_file():
        tokenizer = BPETokenizer.from_dir(directory)
    else:
        tokenizer = Tokenizer.from_dir(directory)
    config_file = directory / "config.json"
    if config_file.exists():
        vocab_size = load_config(directory).vocab_size
        if tokenizer.vocab_size > vocab_size:
            raise CheckpointError(f"{directory}: the tokenizer has ids up to {tokenizer.vocab_size - 1}, "
                                  f"but the model's embedding has only {vocab_size} rows")
    return tokenizer


def save_model(model: Mistral, out_dir: str | os.PathLike, tokenizer: Tokenizer | None = None,
               max_shard_size: str = "5GB") -> None:
    """Write a directory that `transformers.AutoModelForCausalLM.from_pretrained` loads.

    The directory is built under a temporary name and renamed into place, so an interrupted save
    never leaves a half-written model where a good one was.
    """
    from huggingface_hub import save_torch_state_dict

    state = {name: p.detach() for name, p in model.named_parameters()}  # a tied head appears once
    dtype = next(iter(state.values())).dtype
    with atomic.directory(out_dir) as building:
        save_torch_state_dict(state, building, max_shard_size=max_shard_size)
        atomic.write_text(building / "config.json", json.dumps(model.config.to_hf(dtype), indent=2))
        if tokenizer is not None:
            tokenizer.save(building)

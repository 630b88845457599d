"""Hugging Face checkpoints in and out: a local directory or a Hub repo id, safetensors or .bin.

Loading builds the model on the meta device and reads each tensor straight into its final dtype and
device, so the weights are never in memory twice. Safetensors are read with plain file reads into
the destination tensor rather than through a memory map: a map's pages count as the process's
memory until it is closed, which would double the peak for a single-file checkpoint.

A model folder may come from anyone, so everything in it is checked before it is used: config.json
field by field and against the weight files' headers (an absurd size is refused before any model is
built), every tensor entry against its file's length, every shard name against the folder, every
dtype against the float types, and pickled weights are read without running any code.
"""

import contextlib
import functools
import json
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from core import atomic
from model import shelf
from model.architectures import text_config, twin_weight_name
from model.bpe import BPETokenizer, tokenizer_from_gguf
from model.nf4 import QUANTIZED_WEIGHT, quantize_model, quantize_weight
from model.tokenizer import Tokenizer
from model.transformer import ModelConfig, Transformer
from model.weights import CheckpointError, assign_parameter, check_config_fields, empty_model, first_line, shown

TOKENIZER_FILES = [
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.json",
]
# Float weights only: an integer or quantized tensor cast to a float dtype would be silent garbage.
FLOAT_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on a file's header
# Older Llama checkpoints store rotary frequencies; we compute them, so these keys are not weights.
IGNORED_KEYS = re.compile(r".*rotary_emb\.inv_freq$")
LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.")

# A Hub repo id is "owner/name", each part letters, digits, "-", "_" and "." (as the Hub allows).
REPO_ID_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9])?")
# Endings that make a name a path: files twin might be pointed at, and ".git", which the Hub refuses.
PATH_SUFFIXES = {".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".json", ".model", ".git"}
# Seconds the Hub may stay silent before it counts as unreachable (it answers a lookup in well under
# one); with huggingface_hub's own start-up requests a lookup then fails within 10 s.
HUB_TIMEOUT_S = 5


def read_json(file: Path, error: type[ValueError] = CheckpointError) -> object:
    """A JSON file's content; a missing, unreadable or malformed file raises `error` naming it."""
    if file.exists() and not file.is_file():  # a folder, or a FIFO that would block a read forever
        raise error(f"{file}: not a regular file")
    try:
        return json.loads(file.read_bytes())
    except FileNotFoundError:
        raise error(f"{file}: missing") from None
    except OSError as reason:
        raise error(f"{file}: cannot read ({reason.strerror or reason})") from None
    except (ValueError, RecursionError) as reason:  # bad JSON or UTF-8; nesting too deep
        raise error(f"{file}: not valid JSON ({first_line(reason)})") from None


def resolve_checkpoint(path_or_repo: str | os.PathLike) -> Path:
    """A local model folder as it is, or a Hub repo id ("owner/name") downloaded, which is announced.

    A `Path` is always local. A string that is no local folder is a Hub repo id only when it has the
    shape of one and its first part is no folder here: `models/base` in a directory holding
    `models/` is a mistyped path, and is refused without asking the Hub.
    """
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        return path
    name = str(path_or_repo)
    if path.exists():
        raise CheckpointError(f"{name}: a file, not a model folder (a folder with config.json and the weights)")
    if isinstance(path_or_repo, os.PathLike) or not looks_like_repo_id(name):
        raise CheckpointError(f"{name}: no such folder")
    return download_from_hub(name)


def looks_like_repo_id(name: str) -> bool:
    """Whether a name that is no local folder means a Hub repo rather than a path: not when it starts
    like a path (/, ./, ../, ~), has more than one "/", ends in a file suffix, or begins with a folder here."""
    owner, slash, repo = name.partition("/")
    return bool(
        slash
        and REPO_ID_PART.fullmatch(owner)
        and REPO_ID_PART.fullmatch(repo)
        and "--" not in name
        and ".." not in name
        and Path(repo).suffix.lower() not in PATH_SUFFIXES
        and not Path(owner).exists()
    )


@functools.cache  # the tokenizer and the model come from one download, announced once
def download_from_hub(repo_id: str) -> Path:
    """The repo's config, tokenizer and weights from the Hugging Face Hub, or from the local cache
    of an earlier download when the Hub cannot be reached. No request waits longer than HUB_TIMEOUT_S."""
    print(f"{repo_id}: not a local folder; downloading it from the Hugging Face Hub", file=sys.stderr)
    import huggingface_hub  # the only network access twin makes, and only here
    from huggingface_hub.utils import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    wanted = ["config.json", "*.safetensors", "model.safetensors.index.json", *TOKENIZER_FILES]
    try:
        info = huggingface_hub.model_info(repo_id, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        raise CheckpointError(
            f"{repo_id}: a gated repo on the Hugging Face Hub; accept its terms on "
            "huggingface.co, then log in with `hf auth login`"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{repo_id}: no such folder here, and no such repo on the Hugging Face Hub "
            "(or a private one: log in with `hf auth login`)"
        ) from None
    except HfHubHTTPError as error:
        raise CheckpointError(f"{repo_id}: the Hugging Face Hub answered {first_line(error)}") from None
    except Exception as unreachable:  # offline, refused, timed out (the HTTP library's own error types)
        try:
            return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=wanted, local_files_only=True))
        except LocalEntryNotFoundError:
            raise CheckpointError(
                f"{repo_id}: no such folder here; the Hugging Face Hub cannot be reached "
                f"({type(unreachable).__name__}: {first_line(unreachable)}) and no earlier "
                "download is in the cache"
            ) from None
    files = [sibling.rfilename for sibling in info.siblings or []]
    if not any(file.endswith(".safetensors") for file in files):  # an old repo with pickled weights only
        wanted += ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
    try:
        return Path(
            huggingface_hub.snapshot_download(
                repo_id, revision=info.sha, allow_patterns=wanted, etag_timeout=HUB_TIMEOUT_S
            )
        )
    except Exception as error:  # the connection dropped, the disk filled: say which and stop
        raise CheckpointError(
            f"{repo_id}: the download from the Hugging Face Hub failed ({type(error).__name__}: {first_line(error)})"
        ) from None


def load_config(directory: Path) -> ModelConfig:
    """config.json, its fields checked before the model class reads them and its layer count checked
    against the weight files, so that an absurd config is refused before any model is built."""
    config_file = directory / "config.json"
    hf = text_config(read_json(config_file))  # (a multimodal model's text part)
    layers = {match.group(1) for name in CheckpointReader(directory).shapes() if (match := LAYER_KEY.match(name))}
    check_config_fields(hf, config_file, len(layers))
    try:
        return ModelConfig.from_hf(hf)
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{config_file}: {first_line(error)}") from None


def read_safetensors_header(file: Path) -> tuple[dict, int]:
    """The tensor table of a .safetensors file and the byte offset where tensor data begins; every
    entry is checked to be well formed and to lie within the file."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if not 0 < header_len <= min(size - 8, MAX_HEADER_BYTES):
                raise CheckpointError(
                    f"{file}: not a safetensors file (its header length, {header_len}, does not fit its {size} bytes)"
                )
            header = json.loads(f.read(header_len))
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    except OSError as error:
        raise CheckpointError(f"{file}: cannot read ({error.strerror or error})") from None
    except (ValueError, RecursionError) as error:
        raise CheckpointError(f"{file}: not a safetensors file (its header: {first_line(error)})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    data_bytes = size - 8 - header_len
    for name, entry in header.items():
        check_tensor_entry(file, name, entry, data_bytes)
    return header, 8 + header_len


def check_tensor_entry(file: Path, name: str, entry: object, data_bytes: int) -> None:
    """Refuse a safetensors header entry that is malformed or points past the end of the file."""

    def whole_numbers(value) -> bool:
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)

    if not (
        isinstance(entry, dict)
        and isinstance(entry.get("dtype"), str)
        and whole_numbers(entry.get("shape"))
        and whole_numbers(entry.get("data_offsets"))
        and len(entry["data_offsets"]) == 2
        and entry["data_offsets"][0] <= entry["data_offsets"][1]
    ):
        raise CheckpointError(f"{file}: the header entry of tensor {shown(name)} is malformed")
    begin, end = entry["data_offsets"]
    if end > data_bytes:
        raise CheckpointError(
            f"{file}: truncated (tensor {shown(name)} ends at byte {end:,} of its data, which has {data_bytes:,})"
        )
    dtype = FLOAT_DTYPES.get(entry["dtype"])
    if dtype is not None and math.prod(entry["shape"]) * dtype.itemsize != end - begin:
        raise CheckpointError(f"{file}: tensor {shown(name)} has {end - begin} bytes for shape {shown(entry['shape'])}")


def weight_files(directory: Path) -> list[Path]:
    """The checkpoint's weight files, from its index when sharded."""
    for index_name, single_name in [
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ]:
        index_file = directory / index_name
        if index_file.exists():
            index = read_json(index_file)
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not (
                isinstance(weight_map, dict)
                and weight_map
                and all(isinstance(name, str) for name in weight_map.values())
            ):
                raise CheckpointError(
                    f"{index_file}: not a valid index (it needs a weight_map from tensor names to file names)"
                )
            return [shard_file(directory, name, index_file) for name in dict.fromkeys(weight_map.values())]
        if (directory / single_name).exists():
            return [directory / single_name]
    raise CheckpointError(f"{directory}: no model.safetensors, sharded safetensors or pytorch_model.bin")


def shard_file(directory: Path, name: str, index_file: Path) -> Path:
    """A shard an index names, refused when the name leads out of the model folder: an absolute path,
    a "..", or a link to elsewhere (but for the Hugging Face cache, which links each file of a
    snapshot to its repo's blobs, two folders up)."""
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise CheckpointError(f"{index_file}: shard {shown(name)} is outside the model folder")
    file = directory / name
    if not file.exists():
        raise CheckpointError(f"{file}: shard listed in {index_file.name} is missing")
    root = directory.resolve()
    if root.parent.name == "snapshots":
        root = root.parent.parent
    if not file.resolve().is_relative_to(root):
        raise CheckpointError(f"{index_file}: shard {shown(name)} links outside the model folder")
    return file


class CheckpointReader:
    """The tensors of a checkpoint's weight files, each read on demand, whole or a range of rows.

    Reading rows is what lets each rank of a sharded run read only its own part of every tensor. Tensors
    go by twin's names: a multimodal checkpoint's text model without its prefix, its other parts left out.
    """

    def __init__(self, directory: Path):
        self.files = weight_files(directory)
        self.locations: dict[str, tuple[Path, dict, int]] = {}  # safetensors: file, entry, data start
        self.pickled: dict[str, torch.Tensor] = {}  # .bin: memory-mapped tensors
        for file in self.files:
            if not file.is_file():  # a folder, or a FIFO or device that a read would block on
                raise CheckpointError(f"{file}: not a regular file")
            if file.suffix == ".safetensors":
                header, data_start = read_safetensors_header(file)
                self.locations.update(
                    {
                        ours: (file, info, data_start)
                        for name, info in header.items()
                        if (ours := twin_weight_name(name)) is not None
                    }
                )
            else:
                self.pickled.update(
                    {
                        ours: tensor
                        for name, tensor in read_pickled_tensors(file).items()
                        if (ours := twin_weight_name(name)) is not None
                    }
                )

    def file_of(self, name: str) -> Path:
        return self.locations[name][0] if name in self.locations else self.files[0]

    def shapes(self) -> dict[str, list[int]]:
        found = {name: info["shape"] for name, (_, info, _) in self.locations.items()}
        return {**found, **{name: list(t.shape) for name, t in self.pickled.items()}}

    def dtype_name(self, name: str) -> str:
        if name in self.pickled:
            dtype = self.pickled[name].dtype
            return next(
                (key for key, value in FLOAT_DTYPES.items() if value == dtype), str(dtype).removeprefix("torch.")
            )
        return self.locations[name][1]["dtype"]

    def check(self, expected: dict[str, torch.Size]) -> None:
        """Refuse a checkpoint whose tensor names, shapes or dtypes differ from the model's, before any read."""
        shapes = self.shapes()
        unexpected = [name for name in shapes if name not in expected and not IGNORED_KEYS.match(name)]
        if unexpected:
            raise CheckpointError(
                f"{self.file_of(unexpected[0])}: unexpected tensors {shown(unexpected[:5])}"
                + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
            )
        missing = [name for name in expected if name not in shapes]
        if missing:
            raise CheckpointError(
                f"{self.files[0].parent}: the weight files are missing tensors {missing[:5]}"
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            )
        for name, shape in expected.items():
            if list(shapes[name]) != list(shape):
                raise CheckpointError(
                    f"{self.file_of(name)}: tensor {name} has shape {list(shapes[name])}, "
                    f"the config needs {list(shape)}"
                )
            if self.dtype_name(name) not in FLOAT_DTYPES:
                raise CheckpointError(
                    f"{self.file_of(name)}: tensor {name} is stored as {self.dtype_name(name)}; "
                    f"only float weights ({', '.join(FLOAT_DTYPES)}) load, not integer or "
                    "quantized ones"
                )

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows `start:stop` (along the first dimension) of tensor `name`, in the file's dtype; `check` first."""
        if name in self.pickled:
            return self.pickled[name][start:stop]
        file, info, data_start = self.locations[name]
        shape, (begin, end) = info["shape"], info["data_offsets"]
        rows = shape[0] if shape else 1
        stop = rows if stop is None else min(stop, rows)
        row_bytes = (end - begin) // max(rows, 1)
        tensor = torch.empty([stop - start, *shape[1:]] if shape else [], dtype=FLOAT_DTYPES[info["dtype"]])
        with open(file, "rb") as f:
            f.seek(data_start + begin + start * row_bytes)
            wanted = (stop - start) * row_bytes
            if f.readinto(memoryview(tensor.view(torch.uint8).numpy()).cast("B")) != wanted:
                raise CheckpointError(f"{file}: truncated inside tensor {name}")
        return tensor


def read_pickled_tensors(file: Path) -> dict[str, torch.Tensor]:
    """A pytorch_model.bin's tensors, memory-mapped. `weights_only` unpickles tensors and plain
    containers only, so a pickle that would run code is refused instead of run."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises several types for damaged files and refused pickles
        reason = (
            "it holds Python objects other than tensors, which are never unpickled"
            if "Weights only load failed" in str(error)
            else first_line(error)
        )
        raise CheckpointError(f"{file}: cannot be read as plain tensors ({reason})") from None
    if not (
        isinstance(state, dict)
        and all(isinstance(name, str) and isinstance(tensor, torch.Tensor) for name, tensor in state.items())
    ):
        raise CheckpointError(f"{file}: cannot be read as plain tensors (it is not a table of named tensors)")
    return state


def load_model(
    path_or_repo: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    quantize: str | None = None,
) -> Transformer:
    """A Hugging Face checkpoint (Mistral, Llama, Qwen2, Qwen3) or a GGUF file as a `Transformer` in `dtype`
    on `device`. `quantize="nf4"` stores the decoder layers' linear weights in 4 bits (model.nf4), each
    as soon as it is read, so the model is never whole in `dtype`; a GGUF file's are quantized once it is
    loaded, from its own quantization."""
    if quantize not in (None, "nf4"):
        raise ValueError(f"unknown quantization {quantize!r}; twin stores weights in nf4 or not at all")
    path_or_repo = shelf.resolve(path_or_repo)
    if str(path_or_repo).endswith(".gguf"):
        from model.gguf import load_gguf_model  # the gguf package takes a second to import: only GGUF needs it

        model = load_gguf_model(path_or_repo, dtype, device)
        if quantize:
            quantize_model(model, path_or_repo)
        return model
    directory = resolve_checkpoint(path_or_repo)
    config = load_config(directory)
    model = empty_model(config)
    expected = {name: p.shape for name, p in model.named_parameters()}  # a tied head appears once
    reader = CheckpointReader(directory)
    reader.check(expected)
    for name in expected:  # no local name holds a tensor: each full-precision weight goes once it is quantized
        if quantize and QUANTIZED_WEIGHT.fullmatch(name):
            quantize_weight(model, name, reader.read(name).to(device=device, dtype=dtype), reader.file_of(name))
        else:
            assign_parameter(model, name, reader.read(name).to(device=device, dtype=dtype))
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def check_finite(model: nn.Module, source: str | os.PathLike) -> None:
    """Refuse a model whose weights hold NaN or infinity, naming the first such tensor: it would
    write nothing but garbage. One summing pass over the weights (135M parameters: 30 ms in fp32,
    110 ms in bf16 on one CPU core), paid once after loading."""
    for name, param in model.named_parameters():
        # A non-finite element makes the sum non-finite; only then is every element looked at, so
        # that a sum that merely overflows is not taken for one.
        if not torch.isfinite(param.detach().sum(dtype=torch.float32)) and not torch.isfinite(param).all():
            raise CheckpointError(f"{source}: weight {name} holds NaN or infinite values")


def load_tokenizer(path_or_repo: str | os.PathLike) -> Tokenizer | BPETokenizer:
    """The checkpoint's tokenizer, checked to fit the model's embedding table; a .gguf file's from its metadata.

    A folder with a tokenizer.json is read from it, as transformers' fast tokenizers do (for Mistral v0.1
    it holds the same rules as tokenizer.model), otherwise from tokenizer.model."""
    path_or_repo = shelf.resolve(path_or_repo)
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
            raise CheckpointError(
                f"{directory}: the tokenizer has ids up to {tokenizer.vocab_size - 1}, "
                f"but the model's embedding has only {vocab_size} rows"
            )
    return tokenizer


def save_model(
    model: Transformer,
    out_dir: str | os.PathLike,
    tokenizer: Tokenizer | None = None,
    dtype: torch.dtype | None = None,
    max_shard_size: str = "5GB",
    gather: Callable[[torch.Tensor], torch.Tensor] = torch.Tensor.detach,
    writes: bool = True,
) -> None:
    """Write a folder that `transformers.AutoModelForCausalLM.from_pretrained` loads: safetensors shards
    of at most `max_shard_size` (one in memory at a time), their index, config.json and the tokenizer.

    The folder is built under a temporary name and renamed into place, so an interrupted save never
    leaves a half-written model where a good one was. A sharded model is written the same way: every
    rank calls this, `gather` giving a parameter's full tensor, and only the rank that `writes` does.
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    params = dict(model.named_parameters())  # a tied head appears once
    dtype = dtype or next(iter(params.values())).dtype
    sizes = {name: torch.empty(p.shape, dtype=dtype, device="meta") for name, p in params.items()}
    split = split_torch_state_dict_into_shards(sizes, max_shard_size=max_shard_size)
    with atomic.directory(out_dir) if writes else contextlib.nullcontext() as building:
        for filename, names in split.filename_to_tensors.items():
            shard = {name: gather(params[name]).to("cpu", dtype).contiguous() for name in names}
            if writes:
                save_file(shard, building / filename, metadata={"format": "pt"})
            del shard
        if not writes:
            return
        if split.is_sharded:
            index = {
                "metadata": {"total_size": sum(t.numel() * t.element_size() for t in sizes.values())},
                "weight_map": split.tensor_to_filename,
            }
            atomic.write_text(building / "model.safetensors.index.json", json.dumps(index, indent=2))
        atomic.write_text(building / "config.json", json.dumps(model.config.to_hf(dtype), indent=2))
        if tokenizer is not None:
            tokenizer.save(building)

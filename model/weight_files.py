"""The tensors of a Hugging Face model folder's weight files (safetensors, or pickled .bin), each read on
demand, whole or a range of rows, without a memory map: a map's pages count as the process's memory until it
is closed, which would double the peak for a single-file checkpoint.

A model folder may come from anyone, so everything in it is checked before it is used: every tensor entry
against its file's length, every shard name against the folder, every dtype against the float types, and
pickled weights are read without running any code.
"""

import json
import math
import re
from pathlib import Path

import torch

from model.architectures import twin_weight_name
from model.weights import CheckpointError, first_line, read_json, shown

# Float weights only: an integer or quantized tensor cast to a float dtype would be silent garbage.
FLOAT_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on a file's header
# Older Llama checkpoints store rotary frequencies; we compute them, so these keys are not weights.
IGNORED_KEYS = re.compile(r".*rotary_emb\.inv_freq$")


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

"""A GGUF file's metadata and tensor table, read by twin itself, every length and range checked first.

A GGUF file may come from anyone, and the gguf package's GGUFReader trusts it: it reads every
metadata value eagerly (a file claiming 3M tokens held it for minutes and gigabytes) and adds tensor
offsets in wrapping 64-bit arithmetic (an offset of 2^64 - 32 read the header as weights). Here every
count and length is checked against the bytes left before it is used, arrays are read only when
asked for, and each tensor's data must lie inside the data section, exactly as long as its type and
shape need, overlapping no other tensor's. The layout is llama.cpp's (ggml/docs/gguf.md), version 2 or 3.
"""

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from core.errors import TwinError
from model.weights import CheckpointError, shown

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # version 1 counted in 32 bits; llama.cpp no longer reads it either
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
# GGUF's value types: the scalars by their struct format, then string and array.
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFArray:
    """An array in the metadata, not yet read: its item type, length and where its items start."""

    item_type: int
    count: int
    start: int


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: list[int]  # PyTorch's order (GGUF lists dimensions innermost first)
    tensor_type: gguf.GGMLQuantizationType
    start: int  # in the file
    size: int  # bytes


class GGUFFile:
    """`metadata`: key -> value (an array as a GGUFArray until `value` reads it); `tensors`: name -> GGUFTensor.
    Any damage raises `error` (a TwinError) in one line naming the file."""

    def __init__(self, path: Path, error: type[TwinError] = CheckpointError):
        self.path, self._error = path, error
        try:
            with open(path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as reason:  # ValueError: an empty file cannot be mapped
            self._refuse(f"cannot be mapped ({getattr(reason, 'strerror', None) or reason})")
        self._pos = 0
        if self._take(4) != MAGIC:
            self._refuse("it does not start with 'GGUF'")
        version = self._scalar(4)
        if version not in VERSIONS:
            self._refuse(f"version {version} is not supported (only {' and '.join(map(str, VERSIONS))})")
        tensor_count, field_count = self._scalar(10), self._scalar(10)
        self.metadata: dict[str, object] = {}
        for _ in range(field_count):  # each field takes at least 12 bytes, so a false count soon runs out
            key = self._string()
            if key in self.metadata:
                self._refuse(f"metadata {shown(key)} appears twice")
            self.metadata[key] = self._field(self._scalar(4))
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not (
            isinstance(alignment, int)
            and not isinstance(alignment, bool)
            and alignment > 0
            and alignment & (alignment - 1) == 0
        ):
            self._refuse(f"general.alignment must be a power of two, got {shown(alignment)}")
        infos = [self._tensor_info(alignment) for _ in range(tensor_count)]
        data_start = -self._pos // alignment * -alignment  # rounded up
        self.tensors: dict[str, GGUFTensor] = {}
        for name, shape, tensor_type, offset, size in infos:
            if name in self.tensors:
                self._refuse(f"tensor {shown(name)} appears twice")
            self.tensors[name] = GGUFTensor(name, shape, tensor_type, data_start + offset, size)
        self._check_ranges(data_start)

    def _refuse(self, reason: str):
        raise self._error(f"{self.path}: not a readable GGUF file, or a damaged or truncated one ({reason})")

    # --- reading the header, each read checked against the bytes left ---

    def _take(self, size: int) -> bytes:
        if size > len(self._map) - self._pos:
            self._refuse(f"truncated at byte {self._pos:,} of {len(self._map):,}, inside its header")
        self._pos += size
        return self._map[self._pos - size : self._pos]

    def _scalar(self, value_type: int):
        fmt = SCALARS[value_type]
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def _string(self) -> str:
        try:
            return self._take(self._scalar(10)).decode()
        except UnicodeDecodeError:
            self._refuse(f"a string at byte {self._pos:,} is not UTF-8")

    def _field(self, value_type: int):
        if value_type in SCALARS:
            return self._scalar(value_type)
        if value_type == STRING:
            return self._string()
        if value_type != ARRAY:
            self._refuse(f"unknown metadata type {value_type} at byte {self._pos:,}")
        item_type, count = self._scalar(4), self._scalar(10)
        item_size = struct.calcsize(SCALARS[item_type]) if item_type in SCALARS else 8  # a string: its length
        if item_type not in SCALARS and item_type != STRING:
            self._refuse(f"arrays of type {item_type} are not supported (at byte {self._pos:,})")
        if count * item_size > len(self._map) - self._pos:  # before a single item is read
            self._refuse(
                f"an array of {count:,} items at byte {self._pos:,} does not fit in the file's {len(self._map):,} bytes"
            )
        array = GGUFArray(item_type, count, self._pos)
        if item_type == STRING:
            self._skip_strings(count)
        else:
            self._pos += count * item_size
        return array

    def _skip_strings(self, count: int) -> None:
        """Past `count` strings without decoding them: only their lengths are read (0.3 s per million)."""
        length_at, pos, end = struct.Struct("<Q").unpack_from, self._pos, len(self._map)
        for _ in range(count):
            if pos + 8 > end:
                break
            pos += 8 + length_at(self._map, pos)[0]
        if pos > end:
            self._refuse(f"truncated inside an array of {count:,} strings that starts at byte {self._pos:,}")
        self._pos = pos

    def _tensor_info(self, alignment: int) -> tuple[str, list[int], gguf.GGMLQuantizationType, int, int]:
        name = self._string()
        dims = self._scalar(4)
        if not 1 <= dims <= MAX_DIMS:
            self._refuse(f"tensor {shown(name)} has {dims} dimensions (1 to {MAX_DIMS} are possible)")
        shape = [self._scalar(10) for _ in range(dims)][::-1]
        type_number, offset = self._scalar(4), self._scalar(10)
        if type_number not in gguf.GGML_QUANT_SIZES:
            self._refuse(f"tensor {shown(name)} has the unknown type {type_number}")
        tensor_type = gguf.GGMLQuantizationType(type_number)
        block_size, block_bytes = gguf.GGML_QUANT_SIZES[tensor_type]
        if shape[-1] % block_size:
            self._refuse(
                f"tensor {shown(name)} has rows of {shape[-1]} values, not a whole number of "
                f"{tensor_type.name} blocks of {block_size}"
            )
        if offset % alignment:
            self._refuse(
                f"tensor {shown(name)} starts at offset {offset:,}, not a multiple of the alignment ({alignment})"
            )
        return name, shape, tensor_type, offset, math.prod(shape) // block_size * block_bytes

    def _check_ranges(self, data_start: int) -> None:
        """Each tensor's bytes inside the data section and no byte in two tensors: a type that claims more
        bytes than the tensor has would otherwise read its neighbour's."""
        end_of_file = len(self._map)
        if self.tensors and data_start > end_of_file:
            self._refuse(f"its data section would start at byte {data_start:,}, past its end ({end_of_file:,})")
        previous = None
        for tensor in sorted(self.tensors.values(), key=lambda t: (t.start, t.size)):
            if tensor.start + tensor.size > end_of_file:
                self._refuse(
                    f"tensor {shown(tensor.name)} ({tensor.tensor_type.name}, shape {tensor.shape}) "
                    f"needs bytes {tensor.start:,} to {tensor.start + tensor.size:,}, past the end of "
                    f"the file ({end_of_file:,})"
                )
            if previous is not None and tensor.start < previous.start + previous.size:
                self._refuse(f"tensors {shown(previous.name)} and {shown(tensor.name)} overlap")
            previous = tensor

    # --- reading values and tensors ---

    def value(self, key: str, default=None):
        """A metadata value, an array read into a list now; `default` where the file has no such key."""
        value = self.metadata.get(key, default)
        if not isinstance(value, GGUFArray):
            return value
        if value.item_type != STRING:
            dtype = np.dtype(SCALARS[value.item_type])
            return np.frombuffer(self._map, dtype, value.count, value.start).tolist()
        items, pos = [], value.start
        for _ in range(value.count):
            length = struct.unpack_from("<Q", self._map, pos)[0]
            try:
                items.append(self._map[pos + 8 : pos + 8 + length].decode())
            except UnicodeDecodeError:
                self._refuse(f"item {len(items)} of {key} is not UTF-8")
            pos += 8 + length
        return items

    def length(self, key: str) -> int | None:
        """How many items the array `key` has, without reading them; None where it is no array."""
        value = self.metadata.get(key)
        return value.count if isinstance(value, GGUFArray) else None

    def data(self, tensor: GGUFTensor) -> np.ndarray:
        """The tensor's bytes as gguf.quants.dequantize takes them: one row of blocks per row of values.
        A read-only view of the file's memory map."""
        raw = np.frombuffer(self._map, np.uint8, tensor.size, tensor.start)
        return raw.reshape(*tensor.shape[:-1], -1) if tensor.size else raw

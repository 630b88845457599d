"""gguf's GGUFReader (llama.cpp's own), made fast on large vocabularies.

The reader parses metadata through slices of a numpy memmap, a few of them per array element: Gemma 3's
262,144 tokens, scores and types took 250 s on a busy 2-core machine. Here the same slices come from a
plain array view of the same map, which costs no copy and skips the memmap's per-slice bookkeeping, and
arrays of numbers are read in one slice each. The fields and tensors are what GGUFReader gives.
"""
import gguf
import numpy as np


class GGUFReader(gguf.GGUFReader):
    def _get(self, offset, dtype, count=1, override_order=None):
        if not hasattr(self, "_plain"):
            self._plain = self.data.view(np.ndarray)
        count = int(count)
        itemsize = np.dtype(dtype).itemsize
        array = self._plain[offset:offset + itemsize * count].view(dtype=dtype)[:count]
        return array.view(array.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    def _get_field_parts(self, orig_offs, raw_type):
        if gguf.GGUFValueType(raw_type) == gguf.GGUFValueType.ARRAY:
            item_type = self._get(orig_offs, np.uint32)
            scalar = self.gguf_scalar_to_np.get(gguf.GGUFValueType(item_type[0]))
            if scalar is not None:  # numbers: one part holding them all, which contents() reads as a list
                length = self._get(orig_offs + 4, np.uint64)
                values = self._get(orig_offs + 12, scalar, length[0])
                return 12 + int(values.nbytes), [item_type, length, values], [2], [gguf.GGUFValueType.ARRAY,
                                                                                      gguf.GGUFValueType(item_type[0])]
        return super()._get_field_parts(orig_offs, raw_type)

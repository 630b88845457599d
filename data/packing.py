"""Packing rendered sessions into fixed-length training rows, and the loader that batches them.

A row holds several whole sessions back to back, then padding. `position_ids` restart at 0 for each
session and `document_ids` number the sessions within the row (padding gets the next number), so
the model's packed attention never lets one session see another. Labels are shifted inside each
session: labels[t] is input_ids[t + 1] when that token is trained, else IGNORE_INDEX.
"""

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from data.chatml import RenderedSession
from model.loss import IGNORE_INDEX


@dataclass
class PackedRows:
    """[n_rows, seq_len] int32 arrays, and how many tokens of each row are sessions (not padding)."""

    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    document_ids: np.ndarray
    lengths: np.ndarray  # [n_rows]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def utilization(self) -> float:
        """Session tokens (trained or context) over all tokens: what padding does not waste."""
        return float(self.lengths.sum() / self.input_ids.size) if self.input_ids.size else 0.0

    @property
    def trained_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def pack(sessions: list[RenderedSession], seq_len: int, pad_id: int = 0) -> PackedRows:
    """Pack whole sessions (each at most `seq_len` tokens) into rows of exactly `seq_len` tokens."""
    rows = _best_fit_decreasing([len(session) for session in sessions], seq_len)
    shape = (len(rows), seq_len)
    input_ids = np.full(shape, pad_id, dtype=np.int32)
    labels = np.full(shape, IGNORE_INDEX, dtype=np.int32)
    position_ids = np.zeros(shape, dtype=np.int32)
    document_ids = np.zeros(shape, dtype=np.int32)
    lengths = np.zeros(len(rows), dtype=np.int32)
    for row, members in enumerate(rows):
        start = 0
        for document, index in enumerate(members):
            session = sessions[index]
            end = start + len(session)
            input_ids[row, start:end] = session.ids
            labels[row, start : end - 1] = np.where(session.trained[1:], session.ids[1:], IGNORE_INDEX)
            position_ids[row, start:end] = np.arange(len(session))
            document_ids[row, start:end] = document
            start = end
        lengths[row] = start
        position_ids[row, start:] = np.arange(seq_len - start)  # the padding: a document of its own
        document_ids[row, start:] = len(members)
    return PackedRows(input_ids, labels, position_ids, document_ids, lengths)


def _best_fit_decreasing(sizes: list[int], capacity: int) -> list[list[int]]:
    """Bins (lists of item indices): longest item first, each into the fullest bin it fits in."""
    if sizes and max(sizes) > capacity:
        raise ValueError(
            f"a session of {max(sizes)} tokens does not fit a row of {capacity}; "
            "split it with data.chatml.split_to_fit first"
        )
    bins: list[list[int]] = []
    free = []  # sorted (free space, bin index) of every bin
    for index in sorted(range(len(sizes)), key=lambda i: sizes[i], reverse=True):
        slot = bisect.bisect_left(free, (sizes[index], -1))
        if slot == len(free):
            bins.append([])
            space, chosen = capacity, len(bins) - 1
        else:
            space, chosen = free.pop(slot)
        bins[chosen].append(index)
        bisect.insort(free, (space - sizes[index], chosen))
    return bins


class RowLoader:
    """Micro-batches of packed rows as int64 tensors, reshuffled every epoch, sharded across ranks.

    Iterating yields the rest of the current epoch, then moves to the next one. Each epoch every
    rank takes `batch_size` rows per step from one seeded permutation; when the rows do not divide
    evenly the permutation wraps around to its start, so every rank runs the same number of steps
    and no row is left out (a few are seen twice that epoch). With wrap=False (evaluation) every
    row comes exactly once and the last batch is smaller, on some ranks empty. `state_dict()` is
    the position (epoch, step within it), enough to resume exactly mid-epoch.
    """

    def __init__(
        self,
        rows: PackedRows,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        wrap: bool = True,
    ):
        if len(rows) == 0:
            raise ValueError("no rows to load")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.rows, self.batch_size = rows, batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle, self.wrap = seed, shuffle, wrap
        self.epoch, self.step = 0, 0

    def __len__(self) -> int:
        """Steps per epoch."""
        rows_per_step = self.batch_size * self.world_size
        return -(-len(self.rows) // rows_per_step)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self._epoch_order()
        for step in range(self.step, len(self)):
            first = (step * self.world_size + self.rank) * self.batch_size
            chosen = order[first : first + self.batch_size]
            # The position moves before the batch is handed out: a state saved after training on
            # it resumes with the next one (after an epoch's last batch, at the next epoch's start).
            self.step = step + 1
            if self.step == len(self):
                self.epoch, self.step = self.epoch + 1, 0
            yield {
                name: torch.from_numpy(getattr(self.rows, name)[chosen]).long()
                for name in ("input_ids", "labels", "position_ids", "document_ids")
            }

    def _epoch_order(self) -> np.ndarray:
        order = np.arange(len(self.rows))
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(order)
        if self.wrap:
            order = np.resize(order, len(self) * self.world_size * self.batch_size)
        return order

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step": self.step, "world_size": self.world_size, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue where `state` left off, also in a job of another size or micro-batch: a step there
        handed out `world_size` x `batch_size` rows, so the rows of the epoch gone say where the step is
        here. (A state without them is from a loader like this one.)"""
        rows = state["step"] * state.get("batch_size", self.batch_size) * state.get("world_size", self.world_size)
        if rows % (self.batch_size * self.world_size):
            raise ValueError(
                f"the data stopped {rows} rows into an epoch, which is not a whole step of "
                f"{self.world_size} ranks x {self.batch_size} rows"
            )
        self.epoch, self.step = state["epoch"], rows // (self.batch_size * self.world_size)

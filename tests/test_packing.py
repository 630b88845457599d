import itertools

import numpy as np
import pytest

from data.chatml import RenderedSession
from data.packing import RowLoader, pack
from model.loss import IGNORE_INDEX


def session(length: int, first_id: int = 100, trained_from: int = 1) -> RenderedSession:
    """Ids first_id, first_id + 1, ...; trained from position `trained_from` on."""
    return RenderedSession(
        list(range(first_id, first_id + length)), [position >= trained_from for position in range(length)]
    )


def documents(rows, row: int) -> list[list[int]]:
    """The sessions of one row, read back through document_ids (padding left out)."""
    length = rows.lengths[row]
    ids, docs = rows.input_ids[row, :length], rows.document_ids[row, :length]
    return [ids[docs == doc].tolist() for doc in np.unique(docs)]


def test_row_layout_labels_positions_documents_and_padding():
    first = RenderedSession([1, 10, 11, 12], [False, False, True, True])
    second = RenderedSession([1, 20, 21], [False, True, False])
    rows = pack([first, second], seq_len=10, pad_id=0)

    assert rows.input_ids.tolist() == [[1, 10, 11, 12, 1, 20, 21, 0, 0, 0]]
    # labels[t] is the next token when that one is trained, and never crosses into the next session
    assert rows.labels.tolist() == [[-100, 11, 12, -100, 20, -100, -100, -100, -100, -100]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 2]]
    assert rows.document_ids.tolist() == [[0, 0, 0, 0, 1, 1, 1, 2, 2, 2]]
    assert rows.lengths.tolist() == [7]
    assert rows.trained_tokens == 3
    assert rows.utilization == pytest.approx(0.7)
    for array in (rows.input_ids, rows.labels, rows.position_ids, rows.document_ids):
        assert array.dtype == np.int32 and array.shape == (1, 10)


def test_a_last_trained_token_gets_no_label_from_the_next_session():
    fully_trained = RenderedSession([5, 6, 7], [True, True, True])
    rows = pack([fully_trained, fully_trained], seq_len=6)
    assert rows.labels.tolist() == [[6, 7, -100, 6, 7, -100]]


def test_every_session_lands_whole_in_exactly_one_row():
    rng = np.random.default_rng(0)
    sessions = [
        session(int(length), first_id=1000 * index) for index, length in enumerate(rng.integers(1, 64, size=200))
    ]
    rows = pack(sessions, seq_len=64)

    packed = [doc for row in range(len(rows)) for doc in documents(rows, row)]
    assert sorted(packed) == sorted(s.ids for s in sessions)
    for row in range(len(rows)):  # padding only at the tail, labelled nowhere, a document of its own
        tail = slice(rows.lengths[row], None)
        assert (rows.labels[row, tail] == IGNORE_INDEX).all()
        assert (rows.document_ids[row, tail] == rows.document_ids[row, rows.lengths[row] - 1] + 1).all()
        labelled = np.flatnonzero(rows.labels[row] != IGNORE_INDEX)
        assert (rows.document_ids[row, labelled] == rows.document_ids[row, labelled + 1]).all()
        assert (rows.labels[row, labelled] == rows.input_ids[row, labelled + 1]).all()


def test_best_fit_decreasing_finds_the_fewest_rows_here():
    sessions = [session(length) for length in (6, 5, 4, 3, 2)]
    rows = pack(sessions, seq_len=10)
    assert len(rows) == 2 and rows.utilization == 1.0


def test_realistic_session_lengths_fill_at_least_95_percent():
    # chat sessions: most are short, a few run long (log-normal, median ~120 tokens)
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(mean=np.log(120), sigma=1.0, size=3000), 8, 1024).astype(int)
    rows = pack([session(int(length)) for length in lengths], seq_len=1024)
    assert rows.lengths.sum() == lengths.sum()
    assert rows.utilization >= 0.95


def test_a_session_longer_than_a_row_is_refused():
    with pytest.raises(ValueError, match="split_to_fit"):
        pack([session(11)], seq_len=10)


def test_no_sessions_give_no_rows():
    rows = pack([], seq_len=8)
    assert rows.input_ids.shape == (0, 8) and rows.utilization == 0.0


def numbered_rows(n_rows: int, seq_len: int = 4):
    """Rows whose first token is the row number, to see which rows a batch holds."""
    return pack([session(seq_len, first_id=1000 * index) for index in range(n_rows)], seq_len)


def row_numbers(batch) -> list[int]:
    return (batch["input_ids"][:, 0] // 1000).tolist()


def test_loader_batches_are_int64_tensors_of_every_array():
    loader = RowLoader(numbered_rows(4), batch_size=2)
    batch = next(iter(loader))
    assert set(batch) == {"input_ids", "labels", "position_ids", "document_ids"}
    for tensor in batch.values():
        assert tensor.shape == (2, 4) and str(tensor.dtype) == "torch.int64"


def test_each_epoch_reshuffles_and_covers_every_row():
    loader = RowLoader(numbered_rows(12), batch_size=3, seed=1)
    epochs = [[n for batch in loader for n in row_numbers(batch)] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(12))
    assert epochs[0] != epochs[1]
    again = RowLoader(numbered_rows(12), batch_size=3, seed=1)
    assert [n for batch in again for n in row_numbers(batch)] == epochs[0]


def test_ranks_share_the_rows_and_take_the_same_number_of_steps():
    rows = numbered_rows(11)
    loaders = [RowLoader(rows, batch_size=2, rank=rank, world_size=3, seed=5) for rank in range(3)]
    per_rank = [[n for batch in loader for n in row_numbers(batch)] for loader in loaders]
    assert all(len(loader) == 2 for loader in loaders)  # ceil(11 / (2 * 3)) steps each
    assert all(len(numbers) == 4 for numbers in per_rank)
    seen = [n for numbers in per_rank for n in numbers]
    assert set(seen) == set(range(11))  # the remainder wraps around: nothing is left out
    assert len(seen) == 12


def test_without_wrap_every_row_comes_once_and_the_last_batch_is_smaller():
    loader = RowLoader(numbered_rows(5), batch_size=2, shuffle=False, wrap=False)
    assert [row_numbers(batch) for batch in loader] == [[0, 1], [2, 3], [4]]


def test_resuming_from_state_gives_the_same_remaining_batches():
    rows = numbered_rows(10)
    original = RowLoader(rows, batch_size=2, seed=3)
    batches = iter(original)
    consumed = list(itertools.islice(batches, 3))
    state = original.state_dict()
    remaining = list(batches) + list(original)  # the rest of this epoch and all of the next

    resumed = RowLoader(rows, batch_size=2, seed=3)
    resumed.load_state_dict(state)
    replay = list(resumed) + list(resumed)
    assert len(consumed) == 3 and state == {"epoch": 0, "step": 3, "world_size": 1, "batch_size": 2}
    assert [row_numbers(b) for b in replay] == [row_numbers(b) for b in remaining]


def test_state_after_an_epochs_last_batch_points_at_the_next_epoch():
    loader = RowLoader(numbered_rows(4), batch_size=2)
    for _ in loader:
        pass
    assert loader.state_dict() == {"epoch": 1, "step": 0, "world_size": 1, "batch_size": 2}


def test_a_job_of_another_size_or_micro_batch_resumes_at_the_same_rows():
    rows = numbered_rows(16)
    two = [RowLoader(rows, batch_size=2, rank=rank, world_size=2, seed=7) for rank in range(2)]
    streams = [iter(loader) for loader in two]
    for _ in range(2):  # two steps of the 2-rank job: 8 of the epoch's rows
        [next(stream) for stream in streams]
    state = two[0].state_dict()
    rest_of_epoch = sorted(n for stream in streams for batch in stream for n in row_numbers(batch))

    one = RowLoader(rows, batch_size=2, seed=7)
    one.load_state_dict(state)
    assert one.state_dict() == {"epoch": 0, "step": 4, "world_size": 1, "batch_size": 2}
    assert sorted(n for batch in one for n in row_numbers(batch)) == rest_of_epoch
    smaller = RowLoader(rows, batch_size=1, seed=7)  # --micro-batch lowered on resume, say after running out of memory
    smaller.load_state_dict(state)
    assert sorted(n for batch in smaller for n in row_numbers(batch)) == rest_of_epoch
    one.load_state_dict({"epoch": 0, "step": 2})  # a state from before sizes were kept: a loader like this one
    assert one.state_dict()["step"] == 2
    four = RowLoader(rows, batch_size=2, rank=0, world_size=4, seed=7)
    with pytest.raises(ValueError, match="not a whole step of 4 ranks x 2 rows"):
        four.load_state_dict({"epoch": 0, "step": 1, "world_size": 2})  # 4 rows in: half a step of this job


def test_bad_rank_is_refused():
    with pytest.raises(ValueError, match="rank 2"):
        RowLoader(numbered_rows(2), batch_size=1, rank=2, world_size=2)

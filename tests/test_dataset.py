import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.flags import from_args
from data.chatml import render
from data.conversion import ExportOptions
from data.dataset import newest_mask, prepare_data, session_fingerprint, validation_mask
from data.packing import PackedRows
from data.sessions import DataError, Session, Turn, most_frequent_partners, write_sessions
from data.settings import DataConfig
from data.sources import load_sessions
from training import settings

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "telegram_export" / "result.json"


def synthetic_sessions(count: int) -> list[Session]:
    return [
        Session(
            "chat",
            "personal_chat",
            1_600_000_000 + 60 * i,
            [Turn("Alice", [f"hi {i}"]), Turn("Bob", [f"hello {i}"])],
            "Alice",
        )
        for i in range(count)
    ]


def held_out_starts(sessions: list[Session], fraction: float) -> set[int]:
    mask = validation_mask([session_fingerprint(s) for s in sessions], fraction)
    return {session.start for session, out in zip(sessions, mask) if out}


def test_validation_split_depends_on_content_only():
    sessions = synthetic_sessions(1000)
    held_out = held_out_starts(sessions, 0.02)
    assert 5 <= len(held_out) <= 40  # ~2% of 1000
    shuffled = sessions[:]
    random.Random(0).shuffle(shuffled)
    assert held_out_starts(shuffled, 0.02) == held_out
    # a longer export later holds out the same old sessions: none of them moves into training
    assert held_out_starts(synthetic_sessions(2000), 0.02) >= held_out


def test_validation_split_holds_out_at_least_one_of_two_or_more():
    assert len(held_out_starts(synthetic_sessions(2), 0.02)) == 1
    assert held_out_starts(synthetic_sessions(1), 0.02) == set()
    assert held_out_starts(synthetic_sessions(50), 0.0) == set()


def test_fingerprint_sees_every_field():
    session = synthetic_sessions(1)[0]
    changed = Session(
        session.chat, session.chat_type, session.start, [Turn("Alice", ["hi 0!"]), session.turns[1]], session.target
    )
    assert session_fingerprint(session) == session_fingerprint(synthetic_sessions(1)[0])
    assert session_fingerprint(session) != session_fingerprint(changed)


@pytest.fixture(scope="module")
def sample_cache(tmp_path_factory) -> Path:
    """The token cache `sample` wrote: the damaged-cache tests damage copies of it."""
    return tmp_path_factory.mktemp("sample-cache")


@pytest.fixture(scope="module")
def sample(dolphin_tokenizer, sample_cache):
    return prepare_data(SAMPLE, dolphin_tokenizer, DataConfig(), cache_dir=sample_cache)


def test_sample_becomes_packed_rows(sample, dolphin_tokenizer):
    sessions, _ = load_sessions(SAMPLE, DataConfig().export)
    assert sample.target == "Alexander Smirnov"
    assert 1 <= len(sample.val_sessions) < len(sessions)
    assert all(session in sessions for session in sample.val_sessions)
    for rows in (sample.train_rows, sample.val_rows):
        assert rows.input_ids.shape == (len(rows), 1024) and rows.input_ids.dtype == np.int32

    train = [s for s in sessions if s not in sample.val_sessions]
    rendered = [render(s.turns, dolphin_tokenizer) for s in train]  # every sample session fits a row
    assert int(sample.train_rows.lengths.sum()) == sum(len(r) for r in rendered)
    assert sample.train_rows.trained_tokens == sum(sum(r.trained[1:]) for r in rendered)


def test_sample_fills_its_rows(sample):
    # 57,050 training tokens in 57 rows of 1024 (97.7%).
    assert sample.train_rows.utilization >= 0.95


def test_report_counts(sample):
    report = sample.report
    assert report.train_sessions + report.val_sessions == report.conversion.sessions
    assert report.val_sessions == len(sample.val_sessions)
    assert report.tokens == sample.train_rows.lengths.sum() + sample.val_rows.lengths.sum()
    assert report.trained_tokens == sample.train_rows.trained_tokens + sample.val_rows.trained_tokens
    assert report.tokens_cut == 0 and report.train_rows == len(sample.train_rows)
    assert report.utilization == sample.train_rows.utilization
    summary = sample.summary()
    assert summary.startswith(report.conversion.summary())
    assert f"{report.tokens:,}" in summary and f"{report.train_rows:,} training" in summary


def test_train_on_target_trains_only_the_targets_turns(sample, dolphin_tokenizer):
    target_only = prepare_data(SAMPLE, dolphin_tokenizer, DataConfig(train_on="target"))
    sessions, _ = load_sessions(SAMPLE, DataConfig().export)
    train = [s for s in sessions if s not in target_only.val_sessions]
    expected = sum(sum(render(s.turns, dolphin_tokenizer, trained_speakers={s.target}).trained) for s in train)
    assert target_only.train_rows.trained_tokens == expected < sample.train_rows.trained_tokens
    np.testing.assert_array_equal(target_only.train_rows.input_ids, sample.train_rows.input_ids)


def same_rows(a: PackedRows, b: PackedRows) -> bool:
    return all(
        np.array_equal(getattr(a, name), getattr(b, name))
        for name in ("input_ids", "labels", "position_ids", "document_ids", "lengths")
    )


def test_second_call_loads_the_cache_without_tokenizing(tmp_path, dolphin_tokenizer, monkeypatch):
    first = prepare_data(SAMPLE, dolphin_tokenizer, DataConfig(), cache_dir=tmp_path)
    assert [path.suffix for path in tmp_path.iterdir()] == [".npz"]  # no temporary file left behind

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("encode called although the cache holds these rows")

    monkeypatch.setattr(dolphin_tokenizer, "encode", no_tokenizing)
    second = prepare_data(SAMPLE, dolphin_tokenizer, DataConfig(), cache_dir=tmp_path)
    assert same_rows(first.train_rows, second.train_rows) and same_rows(first.val_rows, second.val_rows)
    assert second.report == first.report and second.val_sessions == first.val_sessions

    with pytest.raises(AssertionError, match="encode called"):  # another setting, another cache entry
        prepare_data(SAMPLE, dolphin_tokenizer, DataConfig(seq_len=512), cache_dir=tmp_path)


def rows_with(cache_file, **changes) -> dict:
    with np.load(cache_file) as arrays:
        return {**dict(arrays), **changes}


CACHE_DAMAGE = {
    "truncated": lambda f: f.write_bytes(f.read_bytes()[:200]),
    "not a zip": lambda f: f.write_bytes(b"\x93NUMPY garbage" * 10),
    "empty": lambda f: f.write_bytes(b""),
    "pickled objects": lambda f: np.savez(f, **rows_with(f, tokens_cut=np.array([{"x": 1}], dtype=object))),
    "an array missing": lambda f: np.savez(f, **{k: v for k, v in rows_with(f).items() if k != "val_labels"}),
    "ids past the vocabulary": lambda f: np.savez(
        f, **rows_with(f, train_input_ids=rows_with(f)["train_input_ids"] + 40000)
    ),
    "rows of another length": lambda f: np.savez(f, **rows_with(f, train_labels=rows_with(f)["train_labels"][:, :9])),
    "floats": lambda f: np.savez(f, **rows_with(f, val_lengths=rows_with(f)["val_lengths"].astype(np.float32))),
}


@pytest.mark.parametrize("damage", CACHE_DAMAGE)
def test_a_damaged_cache_is_tokenized_again(damage, sample, sample_cache, tmp_path, dolphin_tokenizer, capsys):
    [written] = sample_cache.iterdir()
    cache_file = Path(shutil.copy(written, tmp_path))
    CACHE_DAMAGE[damage](cache_file)
    capsys.readouterr()
    again = prepare_data(SAMPLE, dolphin_tokenizer, DataConfig(), cache_dir=tmp_path)
    assert same_rows(sample.train_rows, again.train_rows) and same_rows(sample.val_rows, again.val_rows)
    warning = capsys.readouterr().err
    assert f"warning: {cache_file}: damaged token cache" in warning and "Traceback" not in warning
    prepare_data(SAMPLE, dolphin_tokenizer, DataConfig(), cache_dir=tmp_path)  # rewritten whole
    assert "damaged" not in capsys.readouterr().err


def test_cache_key_covers_the_tokenizer(tmp_path, dolphin_tokenizer, dolphin_tokenizer_dir):
    from model.sentencepiece_tokenizer import SentencePieceTokenizer

    prepare_data(SAMPLE, dolphin_tokenizer, DataConfig(), cache_dir=tmp_path)
    other = SentencePieceTokenizer.from_dir(dolphin_tokenizer_dir)
    other.add_special_tokens(["<|new|>"])
    prepare_data(SAMPLE, other, DataConfig(), cache_dir=tmp_path)
    prepare_data(SAMPLE, dolphin_tokenizer, DataConfig(train_on="target"), cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 3


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"train_on": "everyone"}, "--train-on"),
        ({"seq_len": 0}, "--seq-len"),
        ({"val_fraction": 1.0}, "--val-fraction"),
    ],
)
def test_bad_settings_are_refused(setting, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**setting)


def test_partners_come_from_every_session_held_out_or_not(sample, tmp_path, dolphin_tokenizer):
    sessions, _ = load_sessions(SAMPLE, DataConfig().export)
    assert sample.partners == most_frequent_partners(sessions)
    assert sample.partners["Alexander Smirnov"] == "Катя Морозова"
    assert sample.partners["Eleanor Whitfield"] == "Alexander Smirnov"
    assert sample.partners["Misha"] == "Катя Морозова"  # in the group, she answers him first

    two = [
        Session("chat", "personal_chat", 1_600_000_000, [Turn("Ann", ["hi"]), Turn("Bob", ["yo"])]),
        Session("chat", "personal_chat", 1_700_000_000, [Turn("Cid", ["hi"]), Turn("Dan", ["yo"])]),
    ]
    write_sessions(two, tmp_path / "two.jsonl")
    prepared = prepare_data(tmp_path / "two.jsonl", dolphin_tokenizer, DataConfig())
    assert len(prepared.val_sessions) == 1  # one of the two pairs talks only in validation
    assert prepared.partners == {"Ann": "Bob", "Bob": "Ann", "Cid": "Dan", "Dan": "Cid"}


def test_an_export_with_nothing_to_train_on_is_refused(dolphin_tokenizer):
    # He speaks only in a public supergroup, which is not read without --public-groups.
    no_sessions = DataConfig(export=ExportOptions(target="Tom Baker (synthetic)"))
    with pytest.raises(
        DataError,
        match="no sessions to train on: the conversion kept no conversation with the "
        "target in it \\(most skipped: in sessions where the target does not answer",
    ):
        prepare_data(SAMPLE, dolphin_tokenizer, no_sessions)


def test_a_single_session_is_all_for_training(tmp_path, dolphin_tokenizer):
    one_session = tmp_path / "sessions.jsonl"
    write_sessions(synthetic_sessions(1), one_session)
    prepared = prepare_data(one_session, dolphin_tokenizer, DataConfig())
    assert prepared.report.train_sessions == 1 and len(prepared.val_rows) == 0


# --split time: the newest sessions are held out, exactly; the hash split stays the default.


def sessions_at(starts: list[int]) -> list[Session]:
    return [
        Session("chat", "personal_chat", start, [Turn("Alice", [f"hi {n}"]), Turn("Bob", ["hello"])], "Alice")
        for n, start in enumerate(starts)
    ]


def held_out_by_time(sessions: list[Session], fraction: float) -> set[int]:
    mask = newest_mask([session.start for session in sessions], [session_fingerprint(s) for s in sessions], fraction)
    return {session.start for session, out in zip(sessions, mask) if out}


def test_the_time_split_holds_out_exactly_the_newest_sessions():
    starts = list(range(1_600_000_000, 1_600_000_000 + 60 * 50, 60))
    random.Random(0).shuffle(starts)
    assert held_out_by_time(sessions_at(starts), 0.1) == set(sorted(starts)[-5:])
    assert held_out_by_time(sessions_at(starts), 0.02) == {max(starts)}  # at least one
    assert held_out_by_time(sessions_at(starts[:2]), 0.9) == {max(starts[:2])}  # never all
    assert held_out_by_time(sessions_at(starts[:1]), 0.5) == set() and held_out_by_time(sessions_at(starts), 0) == set()


def test_sessions_starting_at_the_same_second_split_the_same_in_any_order():
    def held_out_fingerprints(sessions: list[Session]) -> set[str]:
        fingerprints = [session_fingerprint(session) for session in sessions]
        mask = newest_mask([session.start for session in sessions], fingerprints, 0.3)
        return {fingerprint for fingerprint, out in zip(fingerprints, mask) if out}

    sessions = sessions_at([100] * 10)
    expected = held_out_fingerprints(sessions)
    assert len(expected) == 3
    for seed in range(3):
        shuffled = sessions[:]
        random.Random(seed).shuffle(shuffled)
        assert held_out_fingerprints(shuffled) == expected


def test_prepare_data_with_the_time_split(dolphin_tokenizer, tmp_path):
    by_time = prepare_data(
        SAMPLE, dolphin_tokenizer, DataConfig(seq_len=256, val_fraction=0.1, split="time"), cache_dir=tmp_path
    )
    total = len(by_time.val_sessions) + len(by_time.train_sessions)
    assert total > 100 and abs(len(by_time.val_sessions) - 0.1 * total) <= 3  # each chat's share, rounded
    for chat in {s.chat for s in by_time.val_sessions}:  # each chat's newest
        assert min(s.start for s in by_time.val_sessions if s.chat == chat) >= max(
            s.start for s in by_time.train_sessions if s.chat == chat
        )
    by_hash = prepare_data(SAMPLE, dolphin_tokenizer, DataConfig(seq_len=256, val_fraction=0.1), cache_dir=tmp_path)
    assert by_hash.val_sessions != by_time.val_sessions
    assert len(list(tmp_path.iterdir())) == 2  # the cache tells the splits apart


def test_the_split_flag_and_its_default():
    assert DataConfig().split == "hash"

    def parsed(*argv):
        return from_args(settings.TrainSettings, settings.build_parser().parse_args(argv)).data

    assert parsed("--data", "x").split == "hash"
    assert parsed("--data", "x", "--split", "time").split == "time"
    with pytest.raises(ValueError, match="--split: must be one of hash, time"):
        DataConfig(split="random")


def test_excluded_speakers_stay_as_context_and_scrubbed_values_never_reach_the_tokens(tmp_path, dolphin_tokenizer):
    from model.loss import IGNORE_INDEX

    secret = "mail olga.p@example.org or call +7 912 345-67-89"
    sessions = [
        Session(
            "chat",
            "personal_chat",
            1_600_000_000 + 60 * i,
            [Turn("Alice", [f"morning {i}"]), Turn("Carol Jones", [f"{secret}, day {i}"]), Turn("Bob", [f"noted {i}"])],
            "Alice",
        )
        for i in range(4)
    ]
    write_sessions(sessions, tmp_path / "s.jsonl")
    config = DataConfig(val_fraction=0, exclude_speakers="carol", export=ExportOptions(scrub=True))
    data = prepare_data(tmp_path / "s.jsonl", dolphin_tokenizer, config)
    rows = data.train_rows
    seen = dolphin_tokenizer.decode(rows.input_ids[rows.input_ids != 0].tolist())
    trained = dolphin_tokenizer.decode(rows.labels[rows.labels != IGNORE_INDEX].tolist())
    assert "mail [email] or call [phone], day 3" in seen and "noted 3" in trained and "morning 3" in trained
    assert "day" not in trained and "example" not in seen and "912" not in seen
    said = data.summary()
    assert "scrubbed (--scrub): phone 4, email 4, card 0" in said
    assert "trained on: every speaker's turns, never Carol Jones's: context only (--exclude-speakers)" in said
    for wrong, message in [("Dave", "'Dave' speaks in no session"), ("Alice", "'Alice' is the target")]:
        with pytest.raises(DataError, match=message):
            prepare_data(tmp_path / "s.jsonl", dolphin_tokenizer, DataConfig(val_fraction=0, exclude_speakers=wrong))


def test_the_time_split_holds_out_each_chat_s_newest():
    """A chat that ended long ago still has its newest sessions held out, not only the chat busiest lately."""
    old = [
        Session("old", "personal_chat", 1000 + day, [Turn("Alice", [f"a {day}"]), Turn("Bob", ["b"])], "Alice")
        for day in range(10)
    ]
    new = [
        Session("new", "personal_chat", 10**6 + day, [Turn("Alice", [f"c {day}"]), Turn("Eve", ["e"])], "Alice")
        for day in range(10)
    ]
    sessions = old + new
    mask = newest_mask(
        [s.start for s in sessions], [session_fingerprint(s) for s in sessions], 0.2, [s.chat for s in sessions]
    )
    assert {(s.chat, s.start) for s, out in zip(sessions, mask) if out} == {
        ("old", 1008),
        ("old", 1009),
        ("new", 10**6 + 8),
        ("new", 10**6 + 9),
    }

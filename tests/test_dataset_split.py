"""data/dataset.py's --split time: the newest sessions are held out, exactly; the hash split stays the default."""
import random
from pathlib import Path

import pytest

import train
from training import settings
from data.dataset import DataConfig, data_config_from_args, newest_mask, prepare_data, session_fingerprint
from data.sessions import Session, Turn

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "telegram_export"


def sessions_at(starts: list[int]) -> list[Session]:
    return [Session("chat", "personal_chat", start, [Turn("Alice", [f"hi {n}"]), Turn("Bob", ["hello"])], "Alice")
            for n, start in enumerate(starts)]


def held_out_starts(sessions: list[Session], fraction: float) -> set[int]:
    mask = newest_mask([session.start for session in sessions], [session_fingerprint(s) for s in sessions], fraction)
    return {session.start for session, out in zip(sessions, mask) if out}


def test_the_time_split_holds_out_exactly_the_newest_sessions():
    starts = list(range(1_600_000_000, 1_600_000_000 + 60 * 50, 60))
    random.Random(0).shuffle(starts)
    assert held_out_starts(sessions_at(starts), 0.1) == set(sorted(starts)[-5:])
    assert held_out_starts(sessions_at(starts), 0.02) == {max(starts)}  # at least one
    assert held_out_starts(sessions_at(starts[:2]), 0.9) == {max(starts[:2])}  # never all
    assert held_out_starts(sessions_at(starts[:1]), 0.5) == set() and held_out_starts(sessions_at(starts), 0) == set()


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
    by_time = prepare_data(SAMPLE, dolphin_tokenizer, DataConfig(seq_len=256, val_fraction=0.1, split="time"),
                           cache_dir=tmp_path)
    total = len(by_time.val_sessions) + len(by_time.train_sessions)
    assert total > 100 and len(by_time.val_sessions) == round(0.1 * total)
    assert min(s.start for s in by_time.val_sessions) >= max(s.start for s in by_time.train_sessions)
    by_hash = prepare_data(SAMPLE, dolphin_tokenizer, DataConfig(seq_len=256, val_fraction=0.1), cache_dir=tmp_path)
    assert by_hash.val_sessions != by_time.val_sessions
    assert len(list(tmp_path.iterdir())) == 2  # the cache tells the splits apart


def test_the_split_flag_and_its_default():
    assert DataConfig().split == "hash"
    args = settings.build_parser().parse_args(["--data", "x"])
    assert data_config_from_args(args).split == "hash"
    args = settings.build_parser().parse_args(["--data", "x", "--split", "time"])
    assert data_config_from_args(args).split == "time"
    with pytest.raises(ValueError, match="split must be one of hash, time"):
        DataConfig(split="random")

"""Atomic writes are private to their owner, whatever the umask; programs make every file private."""
import os
import stat
from pathlib import Path

import pytest

from core import atomic
from data import telegram
from tests.helpers import exit_status

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "telegram_export"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ordinary_umask():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_atomic_files_and_folders_are_owner_only(tmp_path, ordinary_umask):
    atomic.write_text(tmp_path / "new" / "run.json", "{}")
    with atomic.directory(tmp_path / "adapter") as building:
        (building / "inside").write_text("x")
    assert mode(tmp_path / "new" / "run.json") == 0o600 and mode(tmp_path / "new") == 0o700
    assert mode(tmp_path / "adapter") == 0o700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "new"]  # no temporary left


def test_private_files_covers_every_writer_of_the_process(tmp_path, ordinary_umask):
    atomic.private_files()
    (tmp_path / "by-open").write_text("x")
    (tmp_path / "by-mkdir").mkdir()
    assert mode(tmp_path / "by-open") == 0o600 and mode(tmp_path / "by-mkdir") == 0o700


def test_a_converted_sessions_file_is_private(tmp_path, ordinary_umask, capsys):
    assert exit_status(telegram.main, [str(SAMPLE), "-o", str(tmp_path / "sessions.jsonl")]) == 0
    assert mode(tmp_path / "sessions.jsonl") == 0o600


def test_a_directory_replaces_a_link_not_what_it_leads_to(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("x")
    (tmp_path / "adapter").symlink_to(elsewhere)
    with atomic.directory(tmp_path / "adapter") as building:
        (building / "new").write_text("y")
    assert not (tmp_path / "adapter").is_symlink() and (tmp_path / "adapter" / "new").exists()
    assert [p.name for p in elsewhere.iterdir()] == ["keep"]

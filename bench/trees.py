"""Another commit's files beside this tree's, for the benches that measure this tree against an earlier commit."""

import io
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def unpack(commit: str, folder: Path) -> Path:
    """`folder`, holding the files of `commit` (git archive): the repository's worktrees are left as they are."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def trees(before: str | None, folder: Path) -> dict[str, Path]:
    """This tree, and the files of the commit `before` unpacked into `folder` where one is given, by name."""
    return {"this tree": ROOT, **({before: unpack(before, folder)} if before else {})}


def printed(snippet: str, tree: Path) -> list[str]:
    """The lines `python -c snippet` prints, run inside `tree`: it imports that tree's modules."""
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tree, check=True, capture_output=True, text=True)
    return done.stdout.splitlines()

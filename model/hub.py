"""A model's name as a folder: a local model folder as it is, or a Hugging Face Hub repo id ("owner/name")
downloaded, which is announced. The Hub is the only network access twin makes, and only here."""

import functools
import os
import re
import sys
from pathlib import Path

from model.weights import CheckpointError, first_line

TOKENIZER_FILES = [
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.json",
]
# A Hub repo id is "owner/name", each part letters, digits, "-", "_" and "." (as the Hub allows).
REPO_ID_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9])?")
# Endings that make a name a path: files twin might be pointed at, and ".git", which the Hub refuses.
PATH_SUFFIXES = {".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".json", ".model", ".git"}
# Seconds the Hub may stay silent before it counts as unreachable (it answers a lookup in well under
# one); with huggingface_hub's own start-up requests a lookup then fails within 10 s.
HUB_TIMEOUT_S = 5


def resolve_checkpoint(path_or_repo: str | os.PathLike) -> Path:
    """A local model folder as it is, or a Hub repo id ("owner/name") downloaded, which is announced.

    A `Path` is always local. A string that is no local folder is a Hub repo id only when it has the
    shape of one and its first part is no folder here: `models/base` in a directory holding
    `models/` is a mistyped path, and is refused without asking the Hub.
    """
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        return path
    name = str(path_or_repo)
    if path.exists():
        raise CheckpointError(f"{name}: a file, not a model folder (a folder with config.json and the weights)")
    if isinstance(path_or_repo, os.PathLike) or not looks_like_repo_id(name):
        raise CheckpointError(f"{name}: no such folder")
    return download_from_hub(name)


def looks_like_repo_id(name: str) -> bool:
    """Whether a name that is no local folder means a Hub repo rather than a path: not when it starts
    like a path (/, ./, ../, ~), has more than one "/", ends in a file suffix, or begins with a folder here."""
    owner, slash, repo = name.partition("/")
    return bool(
        slash
        and REPO_ID_PART.fullmatch(owner)
        and REPO_ID_PART.fullmatch(repo)
        and "--" not in name
        and ".." not in name
        and Path(repo).suffix.lower() not in PATH_SUFFIXES
        and not Path(owner).exists()
    )


@functools.cache  # the tokenizer and the model come from one download, announced once
def download_from_hub(repo_id: str) -> Path:
    """The repo's config, tokenizer and weights from the Hugging Face Hub, or from the local cache
    of an earlier download when the Hub cannot be reached. No request waits longer than HUB_TIMEOUT_S."""
    print(f"{repo_id}: not a local folder; downloading it from the Hugging Face Hub", file=sys.stderr)
    import huggingface_hub  # the only network access twin makes, and only here
    from huggingface_hub.utils import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    wanted = ["config.json", "*.safetensors", "model.safetensors.index.json", *TOKENIZER_FILES]
    try:
        info = huggingface_hub.model_info(repo_id, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        raise CheckpointError(
            f"{repo_id}: a gated repo on the Hugging Face Hub; accept its terms on "
            "huggingface.co, then log in with `hf auth login`"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{repo_id}: no such folder here, and no such repo on the Hugging Face Hub "
            "(or a private one: log in with `hf auth login`)"
        ) from None
    except HfHubHTTPError as error:
        raise CheckpointError(f"{repo_id}: the Hugging Face Hub answered {first_line(error)}") from None
    except Exception as unreachable:  # offline, refused, timed out (the HTTP library's own error types)
        try:
            return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=wanted, local_files_only=True))
        except LocalEntryNotFoundError:
            raise CheckpointError(
                f"{repo_id}: no such folder here; the Hugging Face Hub cannot be reached "
                f"({type(unreachable).__name__}: {first_line(unreachable)}) and no earlier "
                "download is in the cache"
            ) from None
    files = [sibling.rfilename for sibling in info.siblings or []]
    if not any(file.endswith(".safetensors") for file in files):  # an old repo with pickled weights only
        wanted += ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
    try:
        return Path(
            huggingface_hub.snapshot_download(
                repo_id, revision=info.sha, allow_patterns=wanted, etag_timeout=HUB_TIMEOUT_S
            )
        )
    except Exception as error:  # the connection dropped, the disk filled: say which and stop
        raise CheckpointError(
            f"{repo_id}: the download from the Hugging Face Hub failed ({type(error).__name__}: {first_line(error)})"
        ) from None

"""model.hub: what names a local folder and what a Hub repo id, and the Hub's answers as one line each; the Hub
is faked, so nothing reaches the network."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from model.checkpoint import CheckpointError, load_model, load_tokenizer
from model.hub import HUB_TIMEOUT_S, download_from_hub, looks_like_repo_id


@pytest.fixture
def hub(monkeypatch):
    """huggingface_hub's lookups replaced by fakes that record their calls; nothing reaches the network.

    `hub.info` and `hub.snapshot` are what model_info and snapshot_download return, or raise when
    they are exceptions; `hub.calls` lists (function name, arguments)."""
    import huggingface_hub

    hub = SimpleNamespace(calls=[], info=SimpleNamespace(sha="0" * 40, siblings=[]), snapshot=None)

    def fake(name):
        def call(repo_id, **kwargs):
            hub.calls.append((name, repo_id, kwargs))
            result = hub.info if name == "model_info" else hub.snapshot
            if isinstance(result, BaseException):
                raise result
            return result

        return call

    monkeypatch.setattr(huggingface_hub, "model_info", fake("model_info"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake("snapshot_download"))
    download_from_hub.cache_clear()
    yield hub
    download_from_hub.cache_clear()


def hub_error(error_class, message: str) -> Exception:
    """One of huggingface_hub's errors, made without the HTTP response its constructor wants."""
    error = error_class.__new__(error_class)
    Exception.__init__(error, message)
    return error


@pytest.mark.parametrize(
    "name",
    [
        "/no/such/model",
        "./model",
        "../model",
        "~/no-such-model",
        "org/team/model",
        "org/model.gguf",
        "org/model.safetensors",
        "my model",
        "base",
        "org/",
        "org--x/y",
    ],
)
def test_what_is_clearly_a_path_is_refused_without_the_hub(hub, name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="no such (folder|file)$"):
        load_model(name)
    assert hub.calls == [] and capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "name",
    [
        "cognitivecomputations/dolphin-2.2.1-mistral-7b",
        "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
        "Qwen/Qwen2.5-0.5B-Instruct",
        "mistralai/Mistral-7B-v0.1",
    ],
)
def test_real_repo_ids_are_repo_ids(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert looks_like_repo_id(name)
    assert not looks_like_repo_id(name + ".git") and not looks_like_repo_id("./" + name)


def test_a_relative_path_whose_first_folder_exists_is_a_path(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(CheckpointError, match="^models/base: no such folder$"):
        load_model("models/base")
    assert hub.calls == []


def test_a_path_object_is_never_a_repo_id(hub, tmp_path):
    with pytest.raises(CheckpointError, match="org/model: no such folder$"):
        load_model(Path("org/model"))
    assert hub.calls == []


def test_a_file_is_not_a_model_folder(hub, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"{}")
    with pytest.raises(CheckpointError, match="model.safetensors: a file, not a model folder"):
        load_model(tmp_path / "model.safetensors")


def test_a_hub_lookup_is_announced_bounded_and_downloads_once(hub, tiny_checkpoint, capsys):
    hub.info.siblings = [SimpleNamespace(rfilename="model.safetensors"), SimpleNamespace(rfilename="pytorch_model.bin")]
    hub.snapshot = str(tiny_checkpoint)
    load_tokenizer("org/model")
    load_model("org/model")
    assert capsys.readouterr().err == "org/model: not a local folder; downloading it from the Hugging Face Hub\n"
    (_, _, info_args), (_, _, download_args) = hub.calls  # one lookup for both
    assert info_args == {"timeout": HUB_TIMEOUT_S} and HUB_TIMEOUT_S <= 10
    assert download_args["revision"] == "0" * 40 and download_args["etag_timeout"] == HUB_TIMEOUT_S
    assert not any("bin" in pattern for pattern in download_args["allow_patterns"])


def test_a_repo_with_pickled_weights_only_downloads_them(hub, tiny_checkpoint):
    hub.info.siblings = [SimpleNamespace(rfilename="pytorch_model.bin")]
    hub.snapshot = str(tiny_checkpoint)
    load_tokenizer("org/old-model")
    assert "pytorch_model*.bin" in hub.calls[-1][2]["allow_patterns"]


@pytest.mark.parametrize(
    "error_class, message",
    [
        ("RepositoryNotFoundError", "org/model: no such folder here, and no such repo on the Hugging Face Hub"),
        ("GatedRepoError", "org/model: a gated repo on the Hugging Face Hub; accept its terms"),
        ("HfHubHTTPError", "org/model: the Hugging Face Hub answered 503 Server Error"),
    ],
)
def test_hub_answers_become_one_line(hub, error_class, message):
    import huggingface_hub.utils

    hub.info = hub_error(getattr(huggingface_hub.utils, error_class), "503 Server Error\nRequest ID: x")
    with pytest.raises(CheckpointError, match=message) as raised:
        load_model("org/model")
    assert "\n" not in str(raised.value)
    assert [call[0] for call in hub.calls] == ["model_info"]


@pytest.mark.parametrize("unreachable", [OSError("[Errno -2] Name or service not known"), TimeoutError("timed out")])
def test_an_unreachable_hub_falls_back_to_the_cache_and_then_says_so(hub, unreachable, tiny_checkpoint):
    from huggingface_hub.utils import LocalEntryNotFoundError, OfflineModeIsEnabled

    hub.info, hub.snapshot = unreachable, hub_error(LocalEntryNotFoundError, "not cached\nsecond line")
    with pytest.raises(
        CheckpointError,
        match="org/model: no such folder here; the Hugging Face Hub cannot be "
        r"reached \((OSError|TimeoutError): .*\) and no earlier download",
    ):
        load_model("org/model")
    assert hub.calls[-1][2]["local_files_only"] is True

    download_from_hub.cache_clear()
    hub.info, hub.snapshot = OfflineModeIsEnabled("HF_HUB_OFFLINE is set"), str(tiny_checkpoint)
    assert load_tokenizer("org/model").vocab_size == 32002  # an earlier download serves offline


def test_a_failed_download_is_one_line(hub):
    hub.info.siblings = [SimpleNamespace(rfilename="model.safetensors")]
    hub.snapshot = OSError("[Errno 28] No space left on device\nmore")
    with pytest.raises(
        CheckpointError,
        match=r"^org/model: the download from the Hugging Face Hub failed "
        r"\(OSError: \[Errno 28\] No space left on device\)$",
    ):
        load_model("org/model")

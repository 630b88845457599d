"""Checkpoint I/O: Hugging Face directories in and out, and a clear error for each way one is broken."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from model import CheckpointError, load_model, load_tokenizer, save_model
from model.checkpoint import HUB_TIMEOUT_S, download_from_hub, looks_like_repo_id
from tests.helpers import hf_reference, random_model, save_hf_checkpoint, tiny_config


@pytest.fixture
def checkpoint(tmp_path):
    """A sharded tiny checkpoint written by transformers."""
    save_hf_checkpoint(hf_reference(tiny_config()), tmp_path, max_shard_size="200KB")
    return tmp_path


def logits(model, config, seed=3):
    ids = torch.randint(0, config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


@pytest.mark.parametrize(
    "config",
    [tiny_config(sliding_window=5), tiny_config(tie_word_embeddings=True), tiny_config(model_type="llama")],
    ids=["window", "tied", "llama"],
)
def test_saved_model_loads_in_transformers_with_identical_logits(tmp_path, config):
    import transformers

    ours = random_model(config)
    save_model(ours, tmp_path / "out", max_shard_size="200KB")
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "config.json" in files and "model.safetensors.index.json" in files
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(logits(theirs, config), logits(ours, config), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        logits(load_model(tmp_path / "out", torch.float32), config), logits(ours, config), atol=0, rtol=0
    )


def test_save_replaces_an_existing_export_and_leaves_no_temporary_files(tmp_path):
    config = tiny_config()
    save_model(random_model(config, seed=1), tmp_path / "out")
    save_model(random_model(config, seed=2), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    torch.testing.assert_close(
        logits(load_model(tmp_path / "out", torch.float32), config), logits(random_model(config, seed=2), config)
    )


def test_loads_into_the_requested_dtype(checkpoint):
    model = load_model(checkpoint, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in model.parameters())


def test_pytorch_bin_checkpoint_loads(tmp_path):
    config = tiny_config()
    hf_model = hf_reference(config)
    hf_model.save_pretrained(tmp_path, safe_serialization=False) if _supports_bin() else torch.save(
        hf_model.state_dict(), tmp_path / "pytorch_model.bin"
    )
    hf_model.config.save_pretrained(tmp_path)
    for file in tmp_path.glob("*.safetensors"):
        file.unlink()
    torch.testing.assert_close(
        logits(load_model(tmp_path, torch.float32), config), logits(hf_model, config), atol=1e-4, rtol=0
    )


def _supports_bin() -> bool:
    import inspect

    import transformers

    return "safe_serialization" in inspect.signature(transformers.PreTrainedModel.save_pretrained).parameters


def test_bin_with_arbitrary_pickle_is_refused(tmp_path):
    save_hf_checkpoint(hf_reference(tiny_config()), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": torch.zeros(1), "evil": object()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: cannot be read as plain tensors"):
        load_model(tmp_path)


def test_missing_shard_is_named(checkpoint):
    shard = sorted(checkpoint.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"{shard.name}: shard listed in model.safetensors.index.json is missing"):
        load_model(checkpoint)


def test_missing_tensor_is_named(tmp_path):
    config = tiny_config()
    state = {n: p.detach().contiguous() for n, p in random_model(config).named_parameters()}
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf(torch.float32)))
    with pytest.raises(CheckpointError, match=r"missing tensors \['model.layers.1.mlp.up_proj.weight'\]"):
        load_model(tmp_path)


def test_unexpected_tensor_is_named(tmp_path):
    config = tiny_config()
    state = {n: p.detach().contiguous() for n, p in random_model(config).named_parameters()}
    state["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf(torch.float32)))
    with pytest.raises(
        CheckpointError, match=r"model.safetensors: unexpected tensors \['model.layers.0.self_attn.q_proj.bias'\]"
    ):
        load_model(tmp_path)


def test_shape_mismatch_names_tensor_and_both_shapes(checkpoint):
    config_file = checkpoint / "config.json"
    hf = json.loads(config_file.read_text())
    hf["intermediate_size"] = 96
    config_file.write_text(json.dumps(hf))
    with pytest.raises(
        CheckpointError,
        match=r"tensor model.layers.0.mlp.gate_proj.weight has shape \[128, 64\], the config needs \[96, 64\]",
    ):
        load_model(checkpoint)


def test_unsupported_config_value_names_the_file(checkpoint):
    config_file = checkpoint / "config.json"
    hf = json.loads(config_file.read_text())
    hf["model_type"] = "gpt_neox"
    config_file.write_text(json.dumps(hf))
    with pytest.raises(CheckpointError, match=r"config.json: model_type 'gpt_neox' is not supported"):
        load_model(checkpoint)


def test_truncated_safetensors_is_named(tmp_path):
    save_hf_checkpoint(hf_reference(tiny_config()), tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model.safetensors: truncated \(tensor 'model.norm.weight' ends"):
        load_model(tmp_path)


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

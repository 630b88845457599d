"""Checkpoint I/O: Hugging Face directories in and out, and a clear error for each way one is broken."""

import json

import pytest
import torch
from safetensors.torch import save_file

from model.checkpoint import CheckpointError, load_model, save_model
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

"""Damaged and hostile model folders, tokenizers and adapters.

Each case starts from a good folder built in code, damages a copy of it, and loads it. Every one is
refused with a single line naming the file, field or tensor, or loads as documented; none runs code,
reaches the network or leaves a file in the repository, and a refused adapter leaves the
model as it was.
"""

import json
import os
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import evaluate
import sample
import train
from model.bpe import BPETokenizer
from model.checkpoint import CheckpointError, check_finite, load_model, load_tokenizer, save_model
from model.gguf import gguf_tensor_names
from model.hub import download_from_hub
from model.lora import lora_layers
from model.lora_config import AdapterError, LoRAConfig
from model.lora_surgery import apply_lora
from model.peft import load_adapter, save_adapter
from model.tokenizer import TokenizerError
from tests.helpers import random_model, tiny_config

ROOT = Path(__file__).resolve().parents[1]
EXPORT = ROOT / "examples" / "telegram_export"
CONFIG = tiny_config()  # 2 layers, hidden 64, vocab 256: a folder of 0.4 MB to copy for each case
DELETE = object()  # in `set_config`: remove the field


@pytest.fixture(autouse=True, scope="module")
def nothing_left_in_the_repository():
    """Every case works in its own temporary folder; a file that appears in the repository (where the
    programs run) would be one a hostile folder made, or one a program wrote in the wrong place."""

    def listing() -> set[str]:
        found = set()
        for folder, subfolders, files in os.walk(ROOT):
            subfolders[:] = [name for name in subfolders if name not in (".git", "__pycache__")]
            found.update(os.path.join(folder, name) for name in files + subfolders)
        return found

    before = listing()
    yield
    assert listing() == before


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every Hub lookup recorded instead of made; a test fails if any case asked the Hub."""
    import huggingface_hub

    lookups = []
    monkeypatch.setattr(huggingface_hub, "model_info", lambda *args, **kwargs: lookups.append(args))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *args, **kwargs: lookups.append(args))
    download_from_hub.cache_clear()
    yield
    download_from_hub.cache_clear()
    assert lookups == []


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good-model") / "model"
    save_model(random_model(CONFIG), path)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    return path


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny checkpoint with Dolphin's tokenizer: what the programs need."""
    path = tmp_path_factory.mktemp("chat-model") / "model"
    shutil.copytree(tiny_checkpoint, path)
    return path


def one_line(raised: pytest.ExceptionInfo) -> str:
    message = str(raised.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


# --- ways to damage a model folder ---


def set_config(**changes):
    def damage(folder: Path):
        hf = json.loads((folder / "config.json").read_text())
        for key, value in changes.items():
            if value is DELETE:
                del hf[key]
            else:
                hf[key] = value
        (folder / "config.json").write_text(json.dumps(hf))

    return damage


def write(name: str, content: bytes | str):
    def damage(folder: Path):
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())

    return damage


def remove(name: str):
    return lambda folder: (folder / name).unlink()


def edit_header(change):
    """`change` edits the parsed safetensors header (a dict) in place; the data stays as it was."""

    def damage(folder: Path):
        file = folder / "model.safetensors"
        raw = file.read_bytes()
        length = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + length])
        change(header)
        encoded = json.dumps(header).encode()
        file.write_bytes(len(encoded).to_bytes(8, "little") + encoded + raw[8 + length :])

    return damage


def edit_weights(change):
    """`change` edits the dict of tensors in place; the file is written again around them."""

    def damage(folder: Path):
        state = load_file(folder / "model.safetensors")
        change(state)
        save_file(state, folder / "model.safetensors")

    return damage


def truncate(keep_bytes: int):
    def damage(folder: Path):
        file = folder / "model.safetensors"
        file.write_bytes(file.read_bytes()[:keep_bytes])

    return damage


def index_naming(shard: str, move_weights_to: str | None = None):
    """A model.safetensors.index.json whose every tensor lives in `shard`; the weights moved first."""

    def damage(folder: Path):
        weights = folder / "model.safetensors"
        with safe_open(weights, "pt") as f:
            names = list(f.keys())
        if move_weights_to:
            target = folder / move_weights_to
            target.parent.mkdir(parents=True, exist_ok=True)
            weights.rename(target)
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": {name: shard for name in names}})
        )

    return damage


def link_shard_outside(folder: Path):
    index_naming("model-00001-of-00001.safetensors")(folder)
    outside = folder.parent / "elsewhere.safetensors"
    (folder / "model.safetensors").rename(outside)
    (folder / "model-00001-of-00001.safetensors").symlink_to(outside)


def as_pickle(change=lambda state: state):
    """The weights as pytorch_model.bin (what torch.save writes) instead of safetensors: what `change`
    makes of the dict of tensors."""

    def damage(folder: Path):
        state = load_file(folder / "model.safetensors")
        (folder / "model.safetensors").unlink()
        torch.save(change(state), folder / "pytorch_model.bin")

    return damage


def set_to(name: str, value):
    """A change that puts `value` (or what it makes of the old tensor) under `name`."""

    def change(state: dict) -> dict:
        state[name] = value(state[name]) if callable(value) else value
        return state

    return change


def fifo(name: str):
    def damage(folder: Path):
        (folder / name).unlink(missing_ok=True)
        os.mkfifo(folder / name)

    return damage


EMBED = "model.embed_tokens.weight"
NORM = "model.norm.weight"

REFUSED_MODEL_FOLDERS = [
    # config.json
    pytest.param(remove("config.json"), r"config.json: missing$", id="config-missing"),
    pytest.param(write("config.json", b"\x00\xff garbage"), r"config.json: not valid JSON", id="config-garbage"),
    pytest.param(
        write("config.json", "[" * 100_000 + "]" * 100_000),
        r"config.json: not valid JSON \(maximum recursion",
        id="config-nested-too-deep",
    ),
    pytest.param(write("config.json", "[1, 2]"), r"config.json: expected a JSON object, got list", id="config-list"),
    pytest.param(
        lambda folder: (folder / "config.json").unlink() or (folder / "config.json").mkdir(),
        r"config.json: not a regular file",
        id="config-is-a-folder",
    ),
    pytest.param(fifo("config.json"), r"config.json: not a regular file", id="config-is-a-fifo"),
    pytest.param(
        set_config(vocab_size=DELETE), r"config.json: required field 'vocab_size' is missing", id="config-missing-field"
    ),
    pytest.param(
        set_config(hidden_size="64"),
        r"hidden_size must be a whole number of at least 1, got '64'",
        id="config-string-size",
    ),
    pytest.param(
        set_config(num_hidden_layers=0),
        r"num_hidden_layers must be a whole number of at least 1, got 0",
        id="config-zero-layers",
    ),
    pytest.param(set_config(intermediate_size=-128), r"intermediate_size must be .* got -128", id="config-negative"),
    pytest.param(set_config(vocab_size=True), r"vocab_size must be .* got True", id="config-bool-size"),
    pytest.param(set_config(hidden_size=64.0), r"hidden_size must be .* got 64.0", id="config-float-size"),
    pytest.param(
        set_config(num_hidden_layers=100_000),
        r"config.json: num_hidden_layers is 100000, but the weights hold 2 layers",
        id="config-absurd-layers",
    ),
    pytest.param(
        set_config(vocab_size=10**12),
        r"vocab_size is 1,000,000,000,000, beyond any real model",
        id="config-absurd-vocab",
    ),
    pytest.param(
        set_config(head_dim=2**40),
        r"num_attention_heads x head_dim is .*, beyond any real model",
        id="config-absurd-head-dim",
    ),
    pytest.param(
        set_config(hidden_size=66, head_dim=DELETE),
        r"hidden_size \(66\) must be divisible by num_attention_heads \(4\)",
        id="config-indivisible-heads",
    ),
    pytest.param(
        set_config(num_key_value_heads=3),
        r"num_attention_heads \(4\) must be a multiple of "
        r"num_key_value_heads \(3\)",
        id="config-kv-heads",
    ),
    pytest.param(
        set_config(intermediate_size=96),
        r"tensor model.layers.0.mlp.gate_proj.weight has shape \[128, 64\], "
        r"the config needs \[96, 64\]",
        id="config-size-unlike-weights",
    ),
    pytest.param(
        set_config(rms_norm_eps=-1), r"rms_norm_eps must be a positive number, got -1", id="config-negative-eps"
    ),
    pytest.param(set_config(rope_theta="big"), r"rope_theta must be a positive number", id="config-string-theta"),
    pytest.param(set_config(rope_parameters=[1]), r"rope_parameters must be an object", id="config-rope-list"),
    pytest.param(set_config(sliding_window=0), r"sliding_window must be .* got 0", id="config-zero-window"),
    pytest.param(
        set_config(tie_word_embeddings="yes"), r"tie_word_embeddings must be true or false", id="config-string-bool"
    ),
    pytest.param(set_config(eos_token_id=[]), r"eos_token_id must be a token id, got \[\]", id="config-empty-eos"),
    pytest.param(
        set_config(model_type="gpt2"), r"config.json: model_type 'gpt2' is not supported", id="config-other-model"
    ),
    # model.safetensors
    pytest.param(
        remove("model.safetensors"),
        r"no model.safetensors, sharded safetensors or pytorch_model.bin",
        id="weights-missing",
    ),
    pytest.param(
        truncate(-100),
        r"model.safetensors: truncated \(tensor 'model.norm.weight' ends at byte",
        id="weights-truncated",
    ),
    pytest.param(truncate(5), r"model.safetensors: not a safetensors file \(its header length", id="weights-5-bytes"),
    pytest.param(write("model.safetensors", b""), r"model.safetensors: not a safetensors file", id="weights-empty"),
    pytest.param(
        write("model.safetensors", (2**63).to_bytes(8, "little") + b"{}"),
        r"not a safetensors file \(its header length, 9223372036854775808",
        id="weights-huge-header-length",
    ),
    pytest.param(
        write("model.safetensors", (12).to_bytes(8, "little") + b"not json!!!!"),
        r"model.safetensors: not a safetensors file \(its header: ",
        id="weights-garbage-header",
    ),
    pytest.param(
        write("model.safetensors", (6).to_bytes(8, "little") + b"[1, 2]"),
        r"its header is not a JSON object",
        id="weights-header-list",
    ),
    pytest.param(
        edit_header(lambda h: h[NORM].update(data_offsets=[0, 10**15])),
        r"truncated \(tensor 'model.norm.weight' ends at byte 1,000,000,000,000,000",
        id="weights-huge-offsets",
    ),
    pytest.param(
        edit_header(lambda h: h[NORM].update(shape=[-64])),
        r"the header entry of tensor 'model.norm.weight' is malformed",
        id="weights-negative-shape",
    ),
    pytest.param(
        edit_header(lambda h: h[NORM].pop("dtype")),
        r"header entry of tensor 'model.norm.weight' is malformed",
        id="weights-entry-without-dtype",
    ),
    pytest.param(
        edit_header(lambda h: h[NORM].update(shape=[65])),
        r"tensor 'model.norm.weight' has 256 bytes for shape",
        id="weights-shape-unlike-bytes",
    ),
    pytest.param(
        edit_header(lambda h: h.update({"evil\nname": h.pop(NORM)})),
        r"model.safetensors: unexpected tensors \['evil\\nname'\]",
        id="weights-newline-in-name",
    ),
    pytest.param(
        edit_weights(set_to(EMBED, lambda t: t.to(torch.int8))),
        r"tensor model.embed_tokens.weight is stored as I8; only float weights",
        id="weights-int8",
    ),
    pytest.param(edit_weights(set_to(EMBED, lambda t: t.to(torch.uint8))), r"is stored as U8", id="weights-uint8"),
    pytest.param(edit_weights(set_to(EMBED, lambda t: t.to(torch.int32))), r"is stored as I32", id="weights-int32"),
    pytest.param(edit_weights(set_to(NORM, lambda t: t > 0)), r"is stored as BOOL", id="weights-bool"),
    pytest.param(
        edit_weights(set_to(EMBED, lambda t: t.to(torch.float8_e4m3fn))),
        r"is stored as F8_E4M3; .* not "
        r"integer or quantized ones",
        id="weights-float8",
    ),
    pytest.param(
        edit_weights(lambda state: state.pop("model.layers.1.mlp.up_proj.weight")),
        r"missing tensors \['model.layers.1.mlp.up_proj.weight'\]",
        id="weights-missing-tensor",
    ),
    pytest.param(
        edit_weights(set_to("model.layers.0.self_attn.q_proj.bias", torch.zeros(64))),
        r"unexpected tensors \['model.layers.0.self_attn.q_proj.bias'\]",
        id="weights-extra-tensor",
    ),
    pytest.param(
        edit_weights(set_to("model.layers.2.mlp.up_proj.weight", torch.zeros(128, 64))),
        r"num_hidden_layers is 2, but the weights hold 3 layers",
        id="weights-extra-layer",
    ),
    pytest.param(
        lambda folder: (folder / "model.safetensors").unlink() or (folder / "model.safetensors").mkdir(),
        r"model.safetensors: not a regular file",
        id="weights-is-a-folder",
    ),
    # sharded: the index
    pytest.param(
        index_naming("/etc/passwd"),
        r"index.json: shard '/etc/passwd' is outside the model folder",
        id="index-absolute-path",
    ),
    pytest.param(
        index_naming("../outside.safetensors", move_weights_to="../outside.safetensors"),
        r"index.json: shard '../outside.safetensors' is outside the model folder",
        id="index-dot-dot",
    ),
    pytest.param(
        link_shard_outside,
        r"shard 'model-00001-of-00001.safetensors' links outside the model folder",
        id="index-link-escaping",
    ),
    pytest.param(
        index_naming("model-00002-of-00002.safetensors"),
        r"model-00002-of-00002.safetensors: shard listed in model.safetensors.index.json is missing",
        id="index-shard-missing",
    ),
    pytest.param(
        write("model.safetensors.index.json", '{"weight_map": ["model.safetensors"]}'),
        r"index.json: not a valid index",
        id="index-map-is-a-list",
    ),
    pytest.param(
        write("model.safetensors.index.json", '{"weight_map": {"a": 7}}'),
        r"index.json: not a valid index",
        id="index-map-to-number",
    ),
    pytest.param(write("model.safetensors.index.json", "{"), r"index.json: not valid JSON", id="index-garbage"),
    pytest.param(
        lambda folder: index_naming("model.safetensors")(folder) or fifo("model.safetensors")(folder),
        r"model.safetensors: not a regular file",
        id="index-shard-is-a-fifo",
    ),
    # pytorch_model.bin
    pytest.param(
        as_pickle(lambda state: list(state.values())),
        r"pytorch_model.bin: cannot be read as plain tensors "
        r"\(it is not a table of named tensors\)",
        id="bin-a-list",
    ),
    pytest.param(
        lambda folder: remove("model.safetensors")(folder) or write("pytorch_model.bin", b"PK\x03\x04junk")(folder),
        r"pytorch_model.bin: cannot be read as plain tensors",
        id="bin-garbage",
    ),
    pytest.param(
        as_pickle(set_to(EMBED, lambda t: t.to(torch.int16))),
        r"pytorch_model.bin: tensor "
        r"model.embed_tokens.weight is stored as int16",
        id="bin-int16",
    ),
]


@pytest.mark.parametrize("damage, message", REFUSED_MODEL_FOLDERS)
def test_damaged_model_folder_is_refused_in_one_line(good_model, tmp_path, damage, message):
    folder = tmp_path / "model"
    shutil.copytree(good_model, folder)
    damage(folder)
    with pytest.raises(CheckpointError, match=message) as raised:
        load_model(folder, dtype=torch.float32)
    one_line(raised)


LOADING_MODEL_FOLDERS = [
    pytest.param(set_config(some_future_field={"x": [1]}), id="unknown-config-field"),
    pytest.param(
        write("config.json", b"\xef\xbb\xbf" + json.dumps(CONFIG.to_hf(torch.float32)).encode()),
        id="config-with-utf8-bom",
    ),
    pytest.param(
        edit_weights(set_to("model.layers.0.self_attn.rotary_emb.inv_freq", torch.ones(8))),
        id="stored-rotary-frequencies-ignored",
    ),
    pytest.param(edit_weights(lambda state: state.update({k: v.double() for k, v in state.items()})), id="float64"),
    pytest.param(as_pickle(), id="pytorch-bin"),
    pytest.param(
        index_naming("model-00001-of-00001.safetensors", move_weights_to="model-00001-of-00001.safetensors"),
        id="sharded",
    ),
]


@pytest.mark.parametrize("change", LOADING_MODEL_FOLDERS)
def test_harmless_differences_load_the_same_model(good_model, tmp_path, change):
    folder = tmp_path / "model"
    shutil.copytree(good_model, folder)
    change(folder)
    loaded, original = load_model(folder, dtype=torch.float32), load_model(good_model, dtype=torch.float32)
    ids = torch.arange(12)[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), original(ids))


def test_a_hugging_face_cache_snapshot_may_link_to_its_blobs(good_model, tmp_path):
    """The cache keeps each file once, under blobs/, and a snapshot folder of links to them."""
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for file in good_model.iterdir():
        shutil.copy(file, repo / "blobs" / file.name)
        (snapshot / file.name).symlink_to(Path("../..") / "blobs" / file.name)
    index_naming("model.safetensors")(snapshot)
    assert load_model(snapshot, dtype=torch.float32).config.num_hidden_layers == 2


def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(good_model, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")  # unpickling it creates the marker

    folder = tmp_path / "model"
    shutil.copytree(good_model, folder)
    as_pickle(set_to(EMBED, Payload()))(folder)
    torch.load(folder / "pytorch_model.bin", weights_only=False)  # the payload is live...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(
        CheckpointError,
        match=r"pytorch_model.bin: cannot be read as plain tensors \(it holds "
        r"Python objects other than tensors, which are never unpickled\)",
    ) as raised:
        load_model(folder)
    one_line(raised)
    assert not marker.exists()  # ...and loading the model ran none of it


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_named(good_model, tmp_path, value):
    folder = tmp_path / "model"
    shutil.copytree(good_model, folder)
    edit_weights(set_to("model.layers.1.mlp.down_proj.weight", lambda t: t.index_fill(1, torch.tensor([3]), value)))(
        folder
    )
    model = load_model(folder, dtype=torch.float32)
    with pytest.raises(
        CheckpointError,
        match=r"model: weight model.layers.1.mlp.down_proj.weight holds NaN or "
        r"infinite values",
    ) as raised:
        check_finite(model, folder)
    one_line(raised)
    check_finite(load_model(good_model, dtype=torch.float32), good_model)


def test_large_finite_weights_are_not_taken_for_infinite(good_model):
    model = load_model(good_model, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.fill_(3e38)  # their sum overflows; no element does
    check_finite(model, good_model)


# --- tokenizer files ---

REFUSED_TOKENIZERS = [
    pytest.param(remove("tokenizer.model"), TokenizerError, r"tokenizer.model: file not found", id="model-missing"),
    pytest.param(
        write("tokenizer.model", b""),
        TokenizerError,
        r"tokenizer.model: not a valid SentencePiece model",
        id="model-empty",
    ),
    pytest.param(
        write("tokenizer.model", os.urandom(4096)),
        TokenizerError,
        r"tokenizer.model: not a valid SentencePiece",
        id="model-garbage",
    ),
    pytest.param(
        write("tokenizer_config.json", b"\xff\xfe{"),
        TokenizerError,
        r"tokenizer_config.json: not valid JSON",
        id="config-garbage",
    ),
    pytest.param(
        write("tokenizer_config.json", '{"a": ' * 100_000 + "1" + "}" * 100_000),
        TokenizerError,
        r"tokenizer_config.json: not valid JSON \(maximum recursion",
        id="config-nested-too-deep",
    ),
    pytest.param(
        write("tokenizer_config.json", "[]"),
        TokenizerError,
        r"tokenizer_config.json: expected a JSON object",
        id="config-list",
    ),
    pytest.param(
        write("tokenizer_config.json", '{"added_tokens_decoder": {"5": 7}}'),
        TokenizerError,
        r"tokenizer_config.json: added token '5' needs a non-empty 'content' string",
        id="config-bad-token",
    ),
    pytest.param(
        write("added_tokens.json", '{"<|evil|>": 40000}'),
        CheckpointError,
        r"the tokenizer has ids up to 40000, but the model's embedding has only 32002 rows",
        id="added-token-beyond-embedding",
    ),
    pytest.param(
        write("added_tokens.json", '{"<|evil|>": -1}'),
        TokenizerError,
        r"added token '<\|evil\|>' has invalid id",
        id="added-token-negative",
    ),
    pytest.param(
        write("tokenizer_config.json", '{"bos_token": 5}'),
        TokenizerError,
        r"tokenizer_config.json: bos_token must be a string or an object",
        id="config-bos-number",
    ),
]


@pytest.mark.parametrize("damage, error, message", REFUSED_TOKENIZERS)
def test_damaged_tokenizer_is_refused_in_one_line(chat_model, tmp_path, damage, error, message):
    folder = tmp_path / "model"
    folder.mkdir()
    for file in chat_model.iterdir():  # the weights linked, not copied: 8 MB, and no case changes them
        if file.name == "model.safetensors":
            (folder / file.name).symlink_to(file)
        else:
            shutil.copy(file, folder / file.name)
    damage(folder)
    with pytest.raises(error, match=message) as raised:
        load_tokenizer(folder)
    one_line(raised)


def edit_tokenizer_json(change):
    """`change` edits the parsed tokenizer.json (a dict) in place."""

    def damage(folder: Path):
        content = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        change(content)
        (folder / "tokenizer.json").write_text(json.dumps(content), encoding="utf-8")

    return damage


def set_tokenizer_config(**changes):
    def damage(folder: Path):
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        config.update(changes)
        (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")

    return damage


REFUSED_TOKENIZER_JSONS = [
    pytest.param(
        write("tokenizer.json", "[" * 100_000 + "]" * 100_000),
        r"tokenizer.json: not valid JSON \(maximum "
        r"recursion",
        id="nested-too-deep",
    ),
    pytest.param(
        edit_tokenizer_json(lambda t: t["model"]["vocab"].update(far=500_000_000)),
        r"tokenizer.json: token id 500000000 is none a vocabulary can have",
        id="id-500-million",
    ),
    pytest.param(
        edit_tokenizer_json(lambda t: t["model"]["vocab"].update(far=2**31)),
        r"tokenizer.json: token id 2147483648 is none a vocabulary can have",
        id="id-2-to-the-31",
    ),
    pytest.param(
        edit_tokenizer_json(lambda t: t["added_tokens"][0].update(id=2**31)),
        r"tokenizer.json: token id 2147483648 is none",
        id="added-id-2-to-the-31",
    ),
    pytest.param(
        edit_tokenizer_json(lambda t: t["model"]["vocab"].update(far="7")), r"token id '7' is none", id="id-a-string"
    ),
    # An eos_token that text spells would end every reply there: refused (see check_eos_is_special).
    pytest.param(set_tokenizer_config(eos_token="▁the"), r"eos_token '▁the' is an ordinary token", id="eos-the"),
    pytest.param(set_tokenizer_config(eos_token=">>>"), r"eos_token '>>>' is an ordinary token", id="eos-marker"),
    pytest.param(set_tokenizer_config(eos_token="\n"), r"eos_token '\\n' is an ordinary token", id="eos-newline"),
    pytest.param(
        set_tokenizer_config(eos_token="<tool_call>"),
        r"eos_token '<tool_call>' is an ordinary token",
        id="eos-non-special-added-token",
    ),
]


@pytest.mark.parametrize("damage, message", REFUSED_TOKENIZER_JSONS)
def test_hostile_tokenizer_json_is_refused_in_one_line(qwen2_tokenizer_dir, tmp_path, damage, message):
    folder = tmp_path / "tokenizer"
    shutil.copytree(qwen2_tokenizer_dir, folder)
    damage(folder)
    with pytest.raises(TokenizerError, match=message) as raised:
        BPETokenizer.from_dir(folder)
    one_line(raised)


@pytest.mark.parametrize("eos", ["▁the", "▁", "<0x0A>"])
def test_an_ordinary_piece_as_eos_token_is_refused(chat_model, tmp_path, eos):
    folder = tmp_path / "model"
    shutil.copytree(chat_model, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    set_tokenizer_config(eos_token=eos)(folder)
    with pytest.raises(
        TokenizerError,
        match=rf"tokenizer.model: eos_token {re.escape(repr(eos))} is an ordinary "
        r"token, not one of the tokenizer's special tokens",
    ) as raised:
        load_tokenizer(folder)
    one_line(raised)


def test_a_catastrophic_split_regex_is_one_line_not_a_panic(qwen2_tokenizer_dir, tmp_path):
    """The tokenizers library panics (pyo3's PanicException, a BaseException) when a pre-tokenizer regex
    backtracks past Oniguruma's limit; it must come out as a TokenizerError, not escape every handler."""
    folder = tmp_path / "tokenizer"
    shutil.copytree(qwen2_tokenizer_dir, folder)
    edit_tokenizer_json(
        lambda t: t.update(
            pre_tokenizer={"type": "Split", "pattern": {"Regex": "(?:a|aa)+$"}, "behavior": "Isolated", "invert": False}
        )
    )(folder)
    tokenizer = BPETokenizer.from_dir(folder)
    with pytest.raises(
        TokenizerError,
        match=r"tokenizer.json: the tokenizers library failed on a text of 41 "
        r"characters \(.*retry-limit-in-match",
    ) as raised:
        tokenizer.encode("a" * 40 + "b")
    one_line(raised)


# --- GGUF files ---
# Built byte by byte here, so that a case can write what no writer would: any type, count, offset or shape.

U32, I32, F32, BOOL, STRING, ARRAY, U64 = 4, 5, 6, 7, 8, 9, 10
GGUF_SCALARS = {4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}
T_F32, T_F16 = 0, 1
GGUF_CONFIG = tiny_config(model_type="llama", tie_word_embeddings=True)
TOKENS = ["<unk>", "<s>", "</s>", "a", "b", "ab"] + [f"t{i}" for i in range(250)]  # one per embedding row


def gguf_string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def gguf_value(value_type: int, value) -> bytes:
    if value_type == STRING:
        return gguf_string(value)
    if value_type == ARRAY:  # (item type, items, the count written: len(items) unless a case lies)
        item_type, items, count = value
        return struct.pack("<IQ", item_type, count) + b"".join(gguf_value(item_type, item) for item in items)
    return struct.pack(GGUF_SCALARS[value_type], value) if value_type in GGUF_SCALARS else b""  # (a type none knows)


def gguf_file(metadata: dict, tensors: list[dict], version: int = 3, alignment: int = 32) -> bytes:
    """metadata: key -> (type, value); tensors: dicts of name, shape (PyTorch's order), type, data and, where
    a case lies about it, offset. Data are laid out one after another, each aligned."""
    offsets, data = [], b""
    for tensor in tensors:
        data += b"\0" * (-len(data) % alignment)
        offsets.append(tensor.get("offset", len(data)))
        data += tensor["data"]
    header = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata))
    header += b"".join(
        gguf_string(key) + struct.pack("<I", value_type) + gguf_value(value_type, value)
        for key, (value_type, value) in metadata.items()
    )
    for tensor, offset in zip(tensors, offsets):
        header += gguf_string(tensor["name"]) + struct.pack("<I", len(tensor["shape"]))
        header += b"".join(struct.pack("<Q", size) for size in reversed(tensor["shape"]))
        header += struct.pack("<IQ", tensor["type"], offset)
    return header + b"\0" * (-len(header) % alignment) + data


def good_gguf_parts() -> tuple[dict, list[dict]]:
    """A tiny llama (GGUF_CONFIG) with a 256-token vocabulary; blk.0.ffn_up.weight is stored as F16."""
    config = GGUF_CONFIG
    metadata = {
        "general.architecture": (STRING, "llama"),
        "llama.block_count": (U32, config.num_hidden_layers),
        "llama.context_length": (U32, 512),
        "llama.embedding_length": (U32, config.hidden_size),
        "llama.feed_forward_length": (U32, config.intermediate_size),
        "llama.attention.head_count": (U32, config.num_attention_heads),
        "llama.attention.head_count_kv": (U32, config.num_key_value_heads),
        "llama.attention.layer_norm_rms_epsilon": (F32, 1e-5),
        "llama.rope.freq_base": (F32, 10000.0),
        "tokenizer.ggml.model": (STRING, "gpt2"),
        "tokenizer.ggml.pre": (STRING, "gpt-2"),
        "tokenizer.ggml.tokens": (ARRAY, (STRING, TOKENS, len(TOKENS))),
        "tokenizer.ggml.token_type": (ARRAY, (I32, [3, 3, 3] + [1] * (len(TOKENS) - 3), len(TOKENS))),  # 3: control
        "tokenizer.ggml.merges": (ARRAY, (STRING, ["a b"], 1)),
        "tokenizer.ggml.bos_token_id": (U32, 1),
        "tokenizer.ggml.eos_token_id": (U32, 2),
    }
    model = random_model(config)
    names = gguf_tensor_names(model)
    tensors = []
    for name, param in model.named_parameters():
        f16 = names[name] == "blk.0.ffn_up.weight"
        data = param.detach().to(torch.float16 if f16 else torch.float32).numpy().tobytes()
        tensors.append({"name": names[name], "shape": list(param.shape), "type": T_F16 if f16 else T_F32, "data": data})
    return metadata, tensors


def set_metadata(**changes):
    """Keys with "__" for "." (llama__block_count), each to (type, value), or to DELETE."""

    def damage(metadata: dict, tensors: list[dict]):
        for key, value in changes.items():
            key = key.replace("__", ".")
            if value is DELETE:
                del metadata[key]
            else:
                metadata[key] = value

    return damage


def set_tensor(tensor_name: str, **changes):
    def damage(metadata: dict, tensors: list[dict]):
        next(tensor for tensor in tensors if tensor["name"] == tensor_name).update(changes)

    return damage


def claim_tokens(count: int, written: int):
    """A token array that says it holds `count` tokens and holds `written`."""
    return set_metadata(tokenizer__ggml__tokens=(ARRAY, (STRING, [f"t{i}" for i in range(written)], count)))


FFN_UP = "blk.0.ffn_up.weight"  # F16, between blk.0.ffn_gate.weight and blk.0.ffn_down.weight
NAN = float("nan")

HOSTILE_GGUF_METADATA = [
    pytest.param(
        set_metadata(llama__block_count=(U32, 100_000_000)),
        r"llama.block_count is 100000000, but the weights hold 2 layers",
        id="block-count-huge",
    ),
    pytest.param(
        set_metadata(llama__rope__freq_base=(F32, 0.0)),
        r"llama.rope.freq_base must be a positive number, "
        r"got 0.0",
        id="freq-base-zero",
    ),
    pytest.param(
        set_metadata(llama__rope__freq_base=(F32, NAN)),
        r"llama.rope.freq_base must be a positive "
        r"number, got nan",
        id="freq-base-nan",
    ),
    pytest.param(
        set_metadata(llama__rope__freq_base=(F32, -10000.0)),
        r"llama.rope.freq_base must be a positive "
        r"number, got -10000.0",
        id="freq-base-negative",
    ),
    pytest.param(
        set_metadata(llama__attention__layer_norm_rms_epsilon=(F32, NAN)),
        r"llama.attention.layer_norm_rms_epsilon must be a positive number, got nan",
        id="rms-epsilon-nan",
    ),
    pytest.param(
        set_metadata(llama__attention__head_count=(STRING, "4")),
        r"llama.attention.head_count must be a "
        r"whole number of at least 1, got '4'",
        id="head-count-string",
    ),
    pytest.param(
        set_metadata(llama__embedding_length=(F32, 64.0)),
        r"llama.embedding_length must be a whole number "
        r"of at least 1, got 64.0",
        id="embedding-length-float",
    ),
    pytest.param(
        set_metadata(llama__block_count=(STRING, "2")),
        r"llama.block_count must be a whole number of at "
        r"least 1, got '2'",
        id="block-count-string",
    ),
    pytest.param(
        set_metadata(llama__attention__head_count_kv=(U32, 3)),
        r"llama.attention.head_count \(4\) must be "
        r"a multiple of llama.attention.head_count_kv \(3\)",
        id="kv-heads",
    ),
    pytest.param(
        set_metadata(llama__embedding_length=(U32, 2**30)),
        r"llama.embedding_length is 1,073,741,824, "
        r"beyond any real model",
        id="embedding-length-huge",
    ),
    pytest.param(
        set_metadata(tokenizer__ggml__bos_token_id=(STRING, "1")),
        r"tokenizer.ggml.bos_token_id must be a "
        r"token id, got '1'",
        id="bos-id-string",
    ),
    pytest.param(
        set_metadata(llama__context_length=DELETE),
        r"metadata llama.context_length is missing",
        id="context-length-missing",
    ),
    pytest.param(
        set_metadata(llama__feed_forward_length=(U32, 96)),
        r"tensor blk.0.ffn_gate.weight has shape "
        r"\[128, 64\], the metadata needs \[96, 64\]",
        id="shape-unlike-metadata",
    ),
]

HOSTILE_GGUF_LAYOUTS = [
    pytest.param(
        set_tensor(FFN_UP, offset=2**64 - 32),
        r"tensor 'blk.0.ffn_up.weight' \(F16, shape \[128, 64\]\) "
        r"needs bytes .* past the end of the file",
        id="offset-wrapping-around",
    ),
    pytest.param(
        set_tensor(FFN_UP, type=T_F32),
        r"tensors 'blk.0.ffn_up.weight' and 'blk.0.ffn_down.weight' overlap",
        id="f16-labelled-f32",
    ),
    pytest.param(
        set_tensor("blk.0.ffn_down.weight", offset=0),
        r"tensors 'blk.0.ffn_down.weight' and "
        r"'token_embd.weight' overlap",
        id="two-tensors-one-range",
    ),
    pytest.param(
        set_tensor(FFN_UP, offset=100),
        r"starts at offset 100, not a multiple of the alignment \(32\)",
        id="offset-unaligned",
    ),
    pytest.param(
        set_tensor(FFN_UP, shape=[128, 2**40]),
        r"tensor 'blk.0.ffn_up.weight' \(F16, shape "
        r"\[128, 1099511627776\]\) needs bytes",
        id="shape-huge",
    ),
    pytest.param(
        set_tensor(FFN_UP, shape=[2, 2, 2, 2, 2]),
        r"tensor 'blk.0.ffn_up.weight' has 5 dimensions",
        id="five-dimensions",
    ),
    pytest.param(
        set_tensor(FFN_UP, type=99), r"tensor 'blk.0.ffn_up.weight' has the unknown type 99", id="unknown-type"
    ),
    pytest.param(
        set_tensor(FFN_UP, type=8, shape=[128, 63]),
        r"rows of 63 values, not a whole number of Q8_0 "
        r"blocks of 32",
        id="partial-block",
    ),
    pytest.param(
        set_tensor(FFN_UP, name="blk.0.ffn_down.weight"),
        r"tensor 'blk.0.ffn_down.weight' appears twice",
        id="tensor-twice",
    ),
    pytest.param(
        set_metadata(general__alignment=(U32, 0)),
        r"general.alignment must be a power of two, got 0",
        id="alignment-zero",
    ),
    pytest.param(
        set_metadata(general__alignment=(STRING, "32")),
        r"general.alignment must be a power of two, "
        r"got '32'",
        id="alignment-string",
    ),
    pytest.param(
        set_metadata(general__name=(ARRAY, (U32, [1, 2], 2**62))),
        r"an array of 4,611,686,018,427,387,904 "
        r"items at byte .* does not fit in the file",
        id="array-count-huge",
    ),
    pytest.param(
        set_metadata(general__name=(ARRAY, (ARRAY, [], 1))), r"arrays of type 9 are not supported", id="array-of-arrays"
    ),
    pytest.param(set_metadata(general__name=(99, None)), r"unknown metadata type 99", id="unknown-value-type"),
    pytest.param(
        set_metadata(general__name=(STRING, b"\xff\xfe")), r"a string at byte .* is not UTF-8", id="name-not-utf8"
    ),
    # 3M tokens claimed in a file of a few kilobytes: refused from the count, before a token is read
    pytest.param(
        claim_tokens(3_000_000, 256),
        r"an array of 3,000,000 items at byte .* does not fit in the file",
        id="3M-tokens-claimed",
    ),
]


def hostile_gguf(path: Path, damage) -> Path:
    metadata, tensors = good_gguf_parts()
    damage(metadata, tensors)
    path.write_bytes(gguf_file(metadata, tensors))
    return path


def test_the_good_gguf_loads(tmp_path):
    path = hostile_gguf(tmp_path / "good.gguf", lambda metadata, tensors: None)
    model = load_model(path, dtype=torch.float32)
    assert model.config.num_hidden_layers == 2 and model.config.tie_word_embeddings
    up = model.model.layers[0].mlp.up_proj.weight
    torch.testing.assert_close(up, random_model(GGUF_CONFIG).model.layers[0].mlp.up_proj.weight.half().float())
    assert load_tokenizer(path).vocab_size == 256


@pytest.mark.parametrize("damage, message", HOSTILE_GGUF_METADATA + HOSTILE_GGUF_LAYOUTS)
def test_hostile_gguf_is_refused_in_one_line_before_any_model_is_built(tmp_path, damage, message):
    path = hostile_gguf(tmp_path / "bad.gguf", damage)
    with pytest.raises(CheckpointError, match=message) as raised:
        load_model(path, dtype=torch.float32)
    assert one_line(raised).startswith(f"{path}: ")


@pytest.mark.parametrize(
    "damage, message",
    [
        pytest.param(
            claim_tokens(3_000_000, 256),
            r"an array of 3,000,000 items at byte .* does not fit in the file",
            id="3M-tokens-claimed",
        ),
        pytest.param(
            claim_tokens(300, 300),
            r"tokenizer.ggml.tokens has 300 entries, but the model's embedding "
            r"\(token_embd.weight\) has only 256 rows",
            id="more-tokens-than-rows",
        ),
        pytest.param(
            set_metadata(tokenizer__ggml__bos_token_id=(STRING, "1")),
            r"tokenizer.ggml.bos_token_id must be a "
            r"token id, got '1'",
            id="bos-id-string",
        ),
        pytest.param(
            set_metadata(tokenizer__ggml__tokens=(ARRAY, (U32, [1, 2], 2))),
            r"tokenizer.ggml.tokens must be "
            r"a list of the type llama.cpp writes, got \[1, 2\]",
            id="tokens-numbers",
        ),
        pytest.param(
            set_metadata(tokenizer__ggml__pre=(U32, 7)),
            r"tokenizer.ggml.pre must be a string, got 7",
            id="pre-a-number",
        ),
        pytest.param(set_tensor(FFN_UP, type=T_F32), r"overlap", id="f16-labelled-f32"),
        pytest.param(
            set_metadata(tokenizer__ggml__eos_token_id=(U32, 5)),
            r"eos_token 'ab' is an ordinary token",
            id="eos-an-ordinary-token",
        ),
    ],
)
def test_hostile_gguf_tokenizer_is_refused_in_one_line(tmp_path, damage, message):
    path = hostile_gguf(tmp_path / "bad.gguf", damage)
    with pytest.raises(TokenizerError, match=message) as raised:
        load_tokenizer(path)
    assert one_line(raised).startswith(f"{path}: ")


# --- adapters ---

ADAPTER_RANK = 2


@pytest.fixture(scope="module")
def good_adapter(tmp_path_factory, good_model) -> Path:
    model = load_model(good_model, dtype=torch.float32)
    apply_lora(model, LoRAConfig(r=ADAPTER_RANK, alpha=4))
    path = tmp_path_factory.mktemp("good-adapter") / "adapter"
    save_adapter(model, path, LoRAConfig(r=ADAPTER_RANK, alpha=4), base_model=str(good_model))
    return path


def set_adapter_config(**changes):
    def damage(folder: Path):
        peft = json.loads((folder / "adapter_config.json").read_text())
        for key, value in changes.items():
            if value is DELETE:
                del peft[key]
            else:
                peft[key] = value
        (folder / "adapter_config.json").write_text(json.dumps(peft))

    return damage


def edit_adapter_weights(change):
    def damage(folder: Path):
        state = load_file(folder / "adapter_model.safetensors")
        change(state)
        save_file(state, folder / "adapter_model.safetensors")

    return damage


Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"

REFUSED_ADAPTERS = [
    pytest.param(lambda folder: shutil.rmtree(folder), r"adapter: no such folder$", id="folder-missing"),
    pytest.param(
        lambda folder: shutil.rmtree(folder) or folder.write_text("x"),
        r"adapter: a file, not an adapter folder",
        id="folder-is-a-file",
    ),
    pytest.param(
        remove("adapter_config.json"),
        r"adapter_config.json: missing \(is .* a LoRA adapter directory\?\)",
        id="config-missing",
    ),
    pytest.param(write("adapter_config.json", "{'r': 2}"), r"adapter_config.json: not valid JSON", id="config-garbage"),
    pytest.param(
        write("adapter_config.json", "[2, 4]"),
        r"adapter_config.json: expected a JSON object, got list",
        id="config-list",
    ),
    pytest.param(fifo("adapter_config.json"), r"adapter_config.json: not a regular file", id="config-is-a-fifo"),
    pytest.param(set_adapter_config(r=DELETE), r"adapter_config.json: required field 'r' is missing", id="r-missing"),
    pytest.param(set_adapter_config(lora_alpha=DELETE), r"required field 'lora_alpha' is missing", id="alpha-missing"),
    pytest.param(
        set_adapter_config(r="2"),
        r"adapter_config.json: r must be a whole number of at least 1, got '2'",
        id="r-string",
    ),
    pytest.param(set_adapter_config(r=-2), r"r must be a whole number of at least 1, got -2", id="r-negative"),
    pytest.param(set_adapter_config(r=True), r"r must be a whole number of at least 1, got True", id="r-bool"),
    pytest.param(set_adapter_config(r=[2]), r"r must be a whole number of at least 1, got \[2\]", id="r-list"),
    pytest.param(
        set_adapter_config(r=10**9),
        r"q_proj.lora_A has shape \[2, 64\], the model needs \[1000000000, 64\]",
        id="r-absurd",
    ),  # refused before a single layer of that rank is allocated
    pytest.param(
        set_adapter_config(lora_alpha="16"), r"lora_alpha must be a positive number, got '16'", id="alpha-string"
    ),
    pytest.param(
        set_adapter_config(lora_alpha=-16), r"lora_alpha must be a positive number, got -16", id="alpha-negative"
    ),
    pytest.param(
        write("adapter_config.json", '{"r": 2, "lora_alpha": NaN, "target_modules": ["q_proj"]}'),
        r"lora_alpha must be a positive number, got nan",
        id="alpha-nan",
    ),
    pytest.param(
        set_adapter_config(lora_dropout=1.5), r"lora_dropout must be a number from 0 to below 1", id="dropout-1.5"
    ),
    pytest.param(set_adapter_config(use_rslora="yes"), r"use_rslora must be true or false", id="rslora-string"),
    pytest.param(
        set_adapter_config(target_modules=["lm_head"]),
        r"target_modules must be a list drawn from q_proj",
        id="targets-unknown",
    ),
    pytest.param(
        set_adapter_config(target_modules="q_proj|v_proj"),
        r"target_modules must be a list .* got "
        r"'q_proj\|v_proj'",
        id="targets-regex",
    ),
    pytest.param(
        set_adapter_config(target_modules=[]), r"target_modules must be a list .* got \[\]", id="targets-empty"
    ),
    pytest.param(
        set_adapter_config(target_modules=[["q_proj"]]), r"target_modules must be a list", id="targets-nested"
    ),
    pytest.param(
        set_adapter_config(base_model_name_or_path=42), r"base_model_name_or_path must be a string", id="base-number"
    ),
    pytest.param(set_adapter_config(peft_type="IA3"), r"peft_type = 'IA3' is not supported", id="other-peft-type"),
    pytest.param(remove("adapter_model.safetensors"), r"adapter_model.safetensors: missing", id="weights-missing"),
    pytest.param(
        write("adapter_model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage}"),
        r"adapter_model.safetensors: not a safetensors file",
        id="weights-garbage",
    ),
    pytest.param(
        lambda folder: (folder / "adapter_model.safetensors").write_bytes(
            (folder / "adapter_model.safetensors").read_bytes()[:-50]
        ),
        r"adapter_model.safetensors: not a safetensors file",
        id="weights-truncated",
    ),
    pytest.param(
        edit_adapter_weights(lambda state: state.update({Q_A.replace("q_proj", "qq_proj"): state.pop(Q_A)})),
        r"does not fit the model \(missing \['base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'\], "
        r"unexpected \['base_model.model.model.layers.0.self_attn.qq_proj.lora_A.weight'\]\)",
        id="weights-renamed",
    ),
    pytest.param(
        edit_adapter_weights(set_to("base_model.model.lm_head.lora_A.weight", torch.zeros(2, 64))),
        r"does not fit the model \(missing \[\], unexpected \['base_model.model.lm_head.lora_A.weight'\]\)",
        id="weights-extra",
    ),
    pytest.param(
        edit_adapter_weights(set_to(Q_A, torch.zeros(3, 64))),
        r"model.layers.0.self_attn.q_proj.lora_A has shape \[3, 64\], the model needs \[2, 64\]",
        id="weights-shape",
    ),
    pytest.param(
        edit_adapter_weights(set_to(Q_A, lambda t: t.to(torch.int8))),
        r"q_proj.lora_A is stored as int8; only float adapter weights load",
        id="weights-int8",
    ),
    pytest.param(
        edit_adapter_weights(set_to(Q_A, lambda t: t.index_fill(0, torch.tensor([1]), float("nan")))),
        r"q_proj.lora_A holds NaN or infinite values",
        id="weights-nan",
    ),
]


@pytest.mark.parametrize("damage, message", REFUSED_ADAPTERS)
def test_damaged_adapter_is_refused_in_one_line_and_changes_nothing(
    good_model, good_adapter, tmp_path, damage, message
):
    folder = tmp_path / "adapter"
    shutil.copytree(good_adapter, folder)
    damage(folder)
    model = load_model(good_model, dtype=torch.float32)
    with pytest.raises(AdapterError, match=message) as raised:
        load_adapter(model, folder)
    one_line(raised)
    assert lora_layers(model) == {}


def test_the_good_adapter_loads(good_model, good_adapter):
    model = load_model(good_model, dtype=torch.float32)
    assert load_adapter(model, good_adapter).r == ADAPTER_RANK and len(lora_layers(model)) == 10


# --- the programs: one line on stderr and exit status 2 ---


def run_main(main, argv: list, capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        main([str(arg) for arg in argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    last_line = err.replace("\r", "\n").strip().splitlines()[-1]  # after any progress bars
    assert last_line.startswith("error: ") and err.count("error") == 1 and "Traceback" not in err, err
    return last_line


def nan_copy(source: Path, folder: Path) -> Path:
    shutil.copytree(source, folder)
    edit_weights(set_to("model.layers.0.self_attn.o_proj.weight", lambda t: t.fill_(float("nan"))))(folder)
    return folder


def test_sample_refuses_nan_weights(chat_model, tmp_path, capsys):
    model = nan_copy(chat_model, tmp_path / "model")
    err = run_main(sample.main, ["--model", model, "--speaker", "X", "--prompt", "hi", "--max-new-tokens", 2], capsys)
    assert err == f"error: {model}: weight model.layers.0.self_attn.o_proj.weight holds NaN or infinite values"


def test_sample_refuses_a_mistyped_path_without_the_hub(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    err = run_main(sample.main, ["--model", "models/base", "--speaker", "X", "--prompt", "hi"], capsys)
    assert err == "error: models/base: no such folder"


def test_sample_refuses_a_damaged_adapter(chat_model, tmp_path, capsys):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text('{"lora_alpha": 8}')
    err = run_main(
        sample.main,
        ["--model", chat_model, "--adapter", tmp_path / "adapter", "--speaker", "X", "--prompt", "hi"],
        capsys,
    )
    assert err.endswith("adapter_config.json: required field 'r' is missing")


def test_sample_refuses_a_damaged_run_record(tmp_path, capsys):
    (tmp_path / "run.json").write_text('{"settings": []}')
    err = run_main(sample.main, ["--checkpoint", tmp_path, "--speaker", "X", "--prompt", "hi"], capsys)
    assert err.startswith(f"error: {tmp_path / 'run.json'}: not a train.py run record")


def test_evaluate_refuses_nan_weights(chat_model, tmp_path, capsys):
    model = load_model(chat_model, dtype=torch.float32)
    apply_lora(model, LoRAConfig(r=2))
    save_adapter(model, tmp_path / "adapter", LoRAConfig(r=2), base_model=str(chat_model))
    base = nan_copy(chat_model, tmp_path / "model")
    err = run_main(
        evaluate.main,
        [
            "--model",
            base,
            "--adapter",
            tmp_path / "adapter",
            "--data",
            EXPORT,
            "--out",
            tmp_path / "report",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert err.endswith("weight model.layers.0.self_attn.o_proj.weight holds NaN or infinite values")
    assert not (tmp_path / "report").exists()


def test_train_refuses_an_absurd_layer_count_at_once(chat_model, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(chat_model, folder)
    set_config(num_hidden_layers=100_000)(folder)
    err = run_main(
        train.main,
        ["--lora", "--model", folder, "--data", EXPORT, "--out", tmp_path / "run", "--device", "cpu"],
        capsys,
    )
    assert err.endswith("config.json: num_hidden_layers is 100000, but the weights hold 2 layers")

"""What every way of loading weights shares (Hugging Face folders in model.checkpoint, GGUF files in
model.gguf, adapters in model.peft): the error for a checkpoint that cannot be loaded, reading its JSON files,
the checks a model's config passes before any model is built (config.json's fields and a GGUF file's metadata
alike), the empty model, and placing a tensor as a parameter."""

import json
import math
import os
import reprlib
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from core.errors import TwinError
from model.transformer import ModelConfig, Transformer

# config.json's sizes: whole numbers of at least 1, the optional ones also null.
REQUIRED_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
OPTIONAL_SIZES = ("num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window")
# Far above any real model's width or vocabulary, and low enough that laying out a model of such
# sizes on the meta device cannot overflow (a tensor is at most MAX_DIMENSION squared elements).
MAX_DIMENSION = 2**24


class CheckpointError(TwinError):
    """A checkpoint that cannot be loaded; the message names the file or tensor and what is wrong."""


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line, for one-line errors built around others' messages."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 100


def shown(value: object) -> str:
    """A value read from a file, for an error message: quoted and escaped, so one line, and cut when long."""
    return _SHORT.repr(value)


def read_json(file: Path, error: type[ValueError] = CheckpointError) -> object:
    """A JSON file's content; a missing, unreadable or malformed file raises `error` naming it."""
    if file.exists() and not file.is_file():  # a folder, or a FIFO that would block a read forever
        raise error(f"{file}: not a regular file")
    try:
        return json.loads(file.read_bytes())
    except FileNotFoundError:
        raise error(f"{file}: missing") from None
    except OSError as reason:
        raise error(f"{file}: cannot read ({reason.strerror or reason})") from None
    except (ValueError, RecursionError) as reason:  # bad JSON or UTF-8; nesting too deep
        raise error(f"{file}: not valid JSON ({first_line(reason)})") from None


def is_whole_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON's true is an int to Python


def is_positive_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def check_config_fields(
    hf: object, source: str | os.PathLike, layers_found: int, spelled: dict[str, str] | None = None
) -> None:
    """Refuse config values that would crash, hang or silently misshape the model, naming the field.

    `hf` is config.json's content, or a GGUF file's metadata under config.json's names (`spelled` gives
    each field's name in the file, for the message); `layers_found` is how many layers the weights hold."""

    def refuse(reason: str):
        raise CheckpointError(f"{source}: {reason}")

    def name(key: str) -> str:
        return (spelled or {}).get(key, key)

    if not isinstance(hf, dict):
        refuse(f"expected a JSON object, got {type(hf).__name__}")
    for key in REQUIRED_SIZES:
        if key not in hf:
            refuse(f"required field {name(key)!r} is missing")
    for key in REQUIRED_SIZES + OPTIONAL_SIZES:
        value = hf.get(key)
        if (value is not None or key in REQUIRED_SIZES) and not (is_whole_number(value) and value >= 1):
            refuse(f"{name(key)} must be a whole number of at least 1, got {shown(value)}")
    rope = hf.get("rope_parameters")
    if rope is not None and not isinstance(rope, dict):
        refuse(f"rope_parameters must be an object, got {shown(rope)}")
    for key, value in [
        ("rms_norm_eps", hf.get("rms_norm_eps")),
        ("rope_theta", hf.get("rope_theta")),
        ("rope_parameters.rope_theta", (rope or {}).get("rope_theta")),
    ]:
        if value is not None and not is_positive_number(value):
            refuse(f"{name(key)} must be a positive number, got {shown(value)}")
    if not isinstance(hf.get("tie_word_embeddings", False), bool):
        refuse(f"tie_word_embeddings must be true or false, got {shown(hf['tie_word_embeddings'])}")
    for key in ("bos_token_id", "eos_token_id"):
        value = hf.get(key)
        ids = value if isinstance(value, list) and key == "eos_token_id" else [value]
        if value is not None and not (ids and all(is_whole_number(i) and i >= 0 for i in ids)):
            refuse(f"{name(key)} must be a token id, got {shown(value)}")

    heads = hf["num_attention_heads"]
    kv_heads = hf.get("num_key_value_heads") or heads
    if heads % kv_heads:
        refuse(
            f"{name('num_attention_heads')} ({heads}) must be a multiple of {name('num_key_value_heads')} ({kv_heads})"
        )
    head_dim = hf.get("head_dim")
    if head_dim is None and hf["hidden_size"] % heads:
        refuse(
            f"{name('hidden_size')} ({hf['hidden_size']}) must be divisible by {name('num_attention_heads')} "
            f"({heads}) when {name('head_dim')} is not given"
        )
    head_dim = head_dim or hf["hidden_size"] // heads
    widths = {
        name("vocab_size"): hf["vocab_size"],
        name("hidden_size"): hf["hidden_size"],
        name("intermediate_size"): hf["intermediate_size"],
        f"{name('num_attention_heads')} x {name('head_dim')}": heads * head_dim,
    }
    for key, value in widths.items():
        if value > MAX_DIMENSION:
            refuse(f"{key} is {value:,}, beyond any real model (at most {MAX_DIMENSION:,})")
    # Checked here, before any model is built: building a billion layers, even on the meta device, hangs.
    if hf["num_hidden_layers"] != layers_found:
        refuse(f"{name('num_hidden_layers')} is {hf['num_hidden_layers']}, but the weights hold {layers_found} layers")


def empty_model(config: ModelConfig) -> Transformer:
    """The model with every weight on the meta device, for loading to fill in. Its embedding is not drawn
    at random, as it would be replaced anyway: on the meta device `normal_` imports torch._dynamo, which
    takes as long again as importing torch (a second of sample.py's start)."""
    with torch.device("meta"), mock.patch.object(nn.Embedding, "reset_parameters", lambda embedding: None):
        return Transformer(config)


def assign_parameter(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Make `tensor` the parameter `name` of `model` as it is (no copy); only floating point ones train."""
    module_name, _, attribute = name.rpartition(".")
    module = model.get_submodule(module_name)
    module._parameters[attribute] = nn.Parameter(tensor, requires_grad=tensor.is_floating_point())

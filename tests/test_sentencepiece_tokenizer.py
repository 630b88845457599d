"""model/sentencepiece_tokenizer.py against SentencePiece and transformers on the real Dolphin tokenizer.

The behaviour checked is SentencePiece's (model/sentencepiece_tokenizer.py's docstring): a dummy '▁' before every
chunk, also one that starts with a space, and merges by piece score. transformers 5.24 (pinned in
requirements-dev.txt) gives exactly that when it reads tokenizer.model itself (`TokenizersBackend`, what
AutoTokenizer picks where no tokenizer class is named), so that is the oracle here; its LlamaTokenizer
class differs, and test_llama_tokenizer_class_differs_on_leading_spaces pins how."""

import json
import random
import re
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.sentencepiece_tokenizer import SentencePieceTokenizer
from model.tokenizer import TokenizerError

NAMES = ["John Smith", "Анна Петрова", "Maria", "Jean-Luc Picard", "Dr. O'Brien", "😎 Котик", "李雷", "x"]
MESSAGES = [
    "hello",
    "Hello, world!",
    "Привет, как дела?",
    "ну да, ок",
    "Ёлки-палки, «ёжик» — это…",
    "ok 👍🏽",
    "семья 👨‍👩‍👧‍👦 в сборе",
    "флаги 🇷🇺🇺🇦🇺🇸",
    "1️⃣2️⃣3️⃣",
    "❤️‍🔥",
    "emoji at the end 😂😂😂",
    "https://t.me/joinchat/AbCdEf?start=1&x=%20y",
    "смотри www.example.com/путь/к?файлу=1",
    "3.14159",
    "1 000 000 ₽",
    "+7 (999) 123-45-67",
    "в 12:30, 2024-01-31",
    "42",
    "0.5%",
    "x2 = 2x",
    "mixed English и русский in one line",
    "код: def f(x):\n    return x ** 2",
    "tab\tseparated\tvalues",
    "  leading spaces",
    "trailing spaces   ",
    "double  spaces  inside",
    "line one\nline two\n\nline four",
    "\n",
    "",
    " ",
    "  ",
    "\t",
    "\n\n",
    " \n ",
    "combining и\u0306",
    "zero\u200bwidth",
    "nbsp\u00a0here",
    "𠜎 rare CJK",
    "مرحبا بالعالم",
    "ǅ Ω ∑ ∞",
    ">>> quoted",
    "<b>html</b> & <i>tags</i>",
    "\\n is not a newline",
    "<|im_start",
    "im_end|>",
    "▁ is SentencePiece's space",
]
SPECIAL_CASES = [
    "<|im_end|><|im_start|>",
    "<|im_start|><|im_start|>",
    "a<|im_start|>b",
    "a <|im_start|> b",
    "a  <|im_start|>  b",
    "<|im_start|> John\n",
    "<|im_start|>  John\n",
    "text<|im_end|>",
    "text <|im_end|>",
    "<|im_end|>\n",
    "<|im_end|> \n<|im_start|>",
    "<|im_end|>\t<|im_start|>",
    "<s>",
    "</s>",
    "<unk>",
    "<s>hi</s>",
    " <s> hi </s> ",
    "<|im_start|>\n",
    "<|im_end|> ",
    "<|im_start|>user<|im_end|>",
    "<|im_start|>Иван\n>>> 😀<|im_end|>",
]
# what encode cuts out of a Dolphin text before SentencePiece sees it
ADDED = re.compile(r"<\|im_start\|>|<\|im_end\|>|<unk>|</s>|<s>")


def turn(name: str, messages: list[str]) -> str:
    return f"<|im_start|>{name}\n>>> " + "\n>>> ".join(messages) + "<|im_end|>"


def chat_corpus() -> list[str]:
    rng = random.Random(1234)
    corpus = MESSAGES + SPECIAL_CASES
    corpus += [" " + m for m in MESSAGES[:12]] + [m + " " for m in MESSAGES[:12]]
    corpus += [" ".join(rng.sample(MESSAGES, 2)) for _ in range(30)]
    corpus += ["\n>>> ".join(rng.sample(MESSAGES, 3)) for _ in range(20)]
    turns = [turn(rng.choice(NAMES), rng.sample(MESSAGES, rng.randint(1, 3))) for _ in range(40)]
    corpus += turns
    corpus += ["\n".join(rng.sample(turns, rng.randint(2, 5))) for _ in range(30)]
    return list(dict.fromkeys(corpus))  # drop duplicates, keep order


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return chat_corpus()


def representable(text: str) -> bool:
    """Whether decode(encode(text)) can give text back: '▁' (U+2581) is SentencePiece's space, so "x ▁ y"
    has the ids of "x   y". Every other text on Dolphin's tokenizer comes back as it was."""
    return "▁" not in text


def copy_with_config(source_dir, target_dir, edit=None, drop=()):
    """Copy a tokenizer directory, drop some files, and let edit(config) change tokenizer_config.json."""
    shutil.copytree(source_dir, target_dir)
    for name in drop:
        (target_dir / name).unlink()
    if edit is not None:
        path = target_dir / "tokenizer_config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        edit(config)
        path.write_text(json.dumps(config), encoding="utf-8")
    return target_dir


def hf_load(path):
    """transformers reading tokenizer.model as SentencePiece encodes (see the module docstring)."""
    from transformers import TokenizersBackend

    return TokenizersBackend.from_pretrained(path)


def hf_auto(path):
    """What a transformers user gets from the folder: for what twin saves, that is the SentencePiece reading."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_corpus_covers_the_chat_cases(corpus):
    assert len(corpus) >= 200
    for needle in ["👨‍👩‍👧‍👦", "🇷🇺", "https://", "\n>>> ", "Анна Петрова", "  ", "\t", "<|im_end|><|im_start|>"]:
        assert any(needle in text for text in corpus), needle
    assert "" in corpus and "\n" in corpus


def test_ids_match_transformers(dolphin_tokenizer, hf_dolphin_tokenizer, corpus):
    ours, hf = dolphin_tokenizer, hf_dolphin_tokenizer
    assert [text for text in corpus if ours.encode(text) != hf.encode(text, add_special_tokens=False)] == []
    # tokenizer_config says add_bos_token=true: transformers' default path is our bos=True
    assert [text for text in corpus if ours.encode(text, bos=True) != hf.encode(text)] == []


# bits that stress the whitespace and added-token rules when glued together at random
FRAGMENTS = [
    " ",
    "  ",
    "    ",
    "\n",
    "\t",
    "a",
    "the",
    "Привет",
    "😀",
    "👨‍👩‍👧",
    "2024",
    "𠜎",
    "▁",
    "<|im_start|>",
    "<|im_end|>",
    "<s>",
    "</s>",
    ">>>",
    "\r\n",
    "<|im",
    "\u200b",
]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join))
def test_random_texts_match_transformers(dolphin_tokenizer, hf_dolphin_tokenizer, text):
    ids = dolphin_tokenizer.encode(text)
    assert ids == hf_dolphin_tokenizer.encode(text, add_special_tokens=False)
    assert dolphin_tokenizer.encode(dolphin_tokenizer.decode(ids)) == ids
    if representable(text):
        assert dolphin_tokenizer.decode(ids) == text


def test_basic_api(dolphin_tokenizer):
    tok = dolphin_tokenizer
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.im_start_id, tok.im_end_id) == (32002, 1, 32000, 32001, 32000)
    assert tok.token_to_id("<|im_start|>") == 32001
    assert tok.token_to_id("</s>") == 2
    assert tok.token_to_id("▁hell") == 6312
    assert tok.token_to_id("no such piece") is None
    assert tok.encode("") == []
    assert tok.encode("", bos=True, eos=True) == [1, 32000]
    assert tok.encode("hi", eos=True)[-1] == 32000
    assert tok.decode([]) == ""


def test_decode_inverts_encode(dolphin_tokenizer, corpus):
    tok = dolphin_tokenizer
    not_representable = [text for text in corpus if not representable(text)]
    assert 0 < len(not_representable) < len(corpus) // 4
    for text in corpus:
        ids = tok.encode(text)
        if representable(text):
            assert tok.decode(ids) == text
        assert tok.encode(tok.decode(ids)) == ids  # either way decode gives a text with these ids


def test_leading_spaces_and_space_runs_as_sentencepiece(dolphin_tokenizer):
    tok = dolphin_tokenizer

    def pieces(text):
        return [tok._pieces[i] if i < 32000 else i for i in tok.encode(text)]

    assert pieces(" hello") == ["▁", "▁hell", "o"]
    assert pieces("a  b") == ["▁a", "▁", "▁b"]
    assert pieces("<|im_start|> hi") == [32001, "▁", "▁hi"]  # legacy=true: every chunk gets its dummy '▁'
    assert tok.encode(" hello") != tok.encode("hello")
    assert tok.encode("x ▁ y") == tok.encode("x   y")
    # the dummy prefix, and only it, is removed again
    for text in [" ", "  ", " hi", "  hi", "a<|im_start|> ", "a<|im_start|> b", "<|im_end|>  \n", "x <|im_end|>"]:
        assert tok.decode(tok.encode(text)) == text


def test_skip_special(dolphin_tokenizer):
    tok = dolphin_tokenizer
    assert tok.decode(tok.encode("<s>hi</s><|im_end|>"), skip_special=True) == "hi"
    # Dolphin's <|im_start|> is an added token but not a special one
    ids = tok.encode("<|im_start|>Анна\nпривет<|im_end|>")
    assert tok.decode(ids, skip_special=True) == "<|im_start|>Анна\nпривет"


def test_stream_matches_decode(dolphin_tokenizer, corpus):
    tok = dolphin_tokenizer
    for text in corpus:
        ids = tok.encode(text, bos=True, eos=True)
        stream = tok.stream()
        outputs = [stream.add(i) for i in ids] + [stream.flush()]
        assert "".join(outputs) == tok.decode(ids), text
        assert not any("\ufffd" in out for out in outputs), text


def test_stream_holds_partial_characters_and_keeps_spaces(dolphin_tokenizer):
    tok = dolphin_tokenizer
    ids = tok.encode("a 𠜎 b")  # 𠜎 is not in the vocabulary: four byte pieces <0xF0><0xA0><0x9C><0x8E>
    stream = tok.stream()
    assert [stream.add(i) for i in ids] + [stream.flush()] == ["a", " ", "", "", "", "𠜎", " b", ""]
    stream = tok.stream()
    assert [stream.add(i) for i in tok.encode("hello world")] == ["hell", "o", " world"]


def test_chatml_parts_encode_independently(dolphin_tokenizer, hf_dolphin_tokenizer, corpus):
    # the data pipeline encodes a session turn by turn: splitting right before <|im_start|> must not change ids
    sessions = [text for text in corpus if "<|im_end|>\n<|im_start|>" in text]
    assert len(sessions) >= 20
    for session in sessions:
        parts = [part for part in re.split(r"(?=<\|im_start\|>)", session) if part]
        # turns are joined by "\n", so each part but the last even ends in whitespace: still no difference
        assert all(part.endswith("<|im_end|>\n") for part in parts[:-1])
        assert dolphin_tokenizer.encode(session, bos=True) == dolphin_tokenizer.encode(parts[0], bos=True) + [
            i for part in parts[1:] for i in dolphin_tokenizer.encode(part)
        ]
        hf_parts = [i for part in parts for i in hf_dolphin_tokenizer.encode(part, add_special_tokens=False)]
        assert hf_dolphin_tokenizer.encode(session, add_special_tokens=False) == hf_parts


def test_added_tokens_load_the_same_from_each_source(dolphin_tokenizer_dir, dolphin_tokenizer, tmp_path, corpus):
    def without_decoder(config):
        del config["added_tokens_decoder"]

    sources = {
        "tokenizer_config.json": copy_with_config(
            dolphin_tokenizer_dir, tmp_path / "config", drop=["added_tokens.json"]
        ),
        "added_tokens.json": copy_with_config(dolphin_tokenizer_dir, tmp_path / "added", without_decoder),
    }
    for source, path in sources.items():
        ours, hf = SentencePieceTokenizer.from_dir(path), hf_load(path)
        assert (ours.vocab_size, ours.eos_id, ours.im_start_id, ours.im_end_id) == (32002, 32000, 32001, 32000), source
        for text in corpus:
            assert ours.encode(text) == dolphin_tokenizer.encode(text) == hf.encode(text, add_special_tokens=False)


def test_save_then_load_gives_the_same_ids(dolphin_tokenizer, tmp_path, corpus):
    out = tmp_path / "saved"
    dolphin_tokenizer.save(out)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["added_tokens.json", "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json"]
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["legacy"] is True and config["eos_token"] == "<|im_end|>" and "tokenizer_class" not in config
    assert config["added_tokens_decoder"]["32001"]["content"] == "<|im_start|>"
    ours, hf = SentencePieceTokenizer.from_dir(out), hf_auto(out)
    for text in corpus:
        assert ours.encode(text) == dolphin_tokenizer.encode(text) == hf.encode(text, add_special_tokens=False)


def test_add_chatml_tokens_to_base_mistral(mistral_tokenizer_dir, tmp_path, corpus):
    tok = SentencePieceTokenizer.from_dir(mistral_tokenizer_dir)
    assert (tok.vocab_size, tok.eos_id, tok.im_start_id, tok.im_end_id) == (32000, 2, None, None)
    assert tok.add_special_tokens(["<|im_start|>", "<|im_end|>"]) == [32000, 32001]
    assert tok.add_special_tokens(["<|im_end|>", "</s>"]) == [32001, 2]  # already there: same ids
    assert (tok.vocab_size, tok.im_start_id, tok.im_end_id) == (32002, 32000, 32001)
    assert tok.encode("<|im_start|>Анна\n>>> hi<|im_end|>")[0] == 32000
    tok.save(tmp_path)
    reloaded, hf = SentencePieceTokenizer.from_dir(tmp_path), hf_auto(tmp_path)
    assert (reloaded.vocab_size, reloaded.im_start_id, reloaded.im_end_id) == (32002, 32000, 32001)
    assert hf.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [32000, 32001]
    for text in corpus:
        assert reloaded.encode(text) == tok.encode(text) == hf.encode(text, add_special_tokens=False)


def set_legacy_false(config):
    config["legacy"] = False


def drop_legacy(config):  # as in transformers 4 and in transformers 5 reading tokenizer.model: legacy=true
    del config["legacy"]


def no_prefix_space(config):
    config["add_prefix_space"] = False


def sentencepiece_without_dummy_prefix(model_file):
    """SentencePiece itself, with the model's dummy prefix switched off through its own protobuf classes."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    proto.normalizer_spec.add_dummy_prefix = False
    return sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())


@pytest.mark.parametrize(
    "edit, prefixed", [(set_legacy_false, "first"), (drop_legacy, "always"), (no_prefix_space, "none")]
)
def test_dummy_prefix_settings_as_sentencepiece(dolphin_tokenizer_dir, tmp_path, corpus, edit, prefixed):
    """legacy=true or missing: every chunk gets SentencePiece's dummy '▁'; legacy=false: only the text's first
    chunk; add_prefix_space=false: none. The oracle is SentencePiece on each chunk between added tokens, with or
    without its dummy prefix (what transformers 4's LlamaTokenizer did; of transformers 5.24's classes only
    TokenizersBackend, for legacy=true, does the same)."""
    import sentencepiece

    path = copy_with_config(dolphin_tokenizer_dir, tmp_path / "variant", edit)
    ours = SentencePieceTokenizer.from_dir(path)
    with_prefix = sentencepiece.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
    without_prefix = sentencepiece_without_dummy_prefix(path / "tokenizer.model")
    for text in corpus:
        parts = re.split(f"({ADDED.pattern})", text)
        expected = []
        for i, chunk in enumerate(parts):
            if i % 2:
                expected.append(ours.token_to_id(chunk))
            elif chunk:
                sp = with_prefix if prefixed == "always" or (prefixed == "first" and i == 0) else without_prefix
                expected += sp.encode(chunk)
        ids = ours.encode(text)
        assert ids == expected, text
        assert ours.encode(ours.decode(ids)) == ids, text
        if representable(text):
            assert ours.decode(ids) == text, text


def test_lstrip_rstrip_match_transformers(dolphin_tokenizer_dir, tmp_path, corpus):
    def strip_around_chatml(config):
        config["added_tokens_decoder"]["32000"]["lstrip"] = True
        config["added_tokens_decoder"]["32001"]["rstrip"] = True

    path = copy_with_config(dolphin_tokenizer_dir, tmp_path / "variant", strip_around_chatml)
    ours, hf = SentencePieceTokenizer.from_dir(path), hf_load(path)
    for text in corpus:
        ids = ours.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False), text
        assert ours.encode(ours.decode(ids)) == ids, text


def test_ids_equal_sentencepiece_on_plain_text(dolphin_tokenizer, dolphin_tokenizer_dir, corpus):
    """Without added tokens in the way, encode is SentencePiece's own encode: mistral-common's ids."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(dolphin_tokenizer_dir / "tokenizer.model"))
    plain = [text for text in corpus if not ADDED.search(text)]
    assert len(plain) > 100
    assert [text for text in plain if dolphin_tokenizer.encode(text) != sp.encode(text)] == []


def test_llama_tokenizer_class_differs_on_leading_spaces(dolphin_tokenizer, dolphin_tokenizer_dir):
    """transformers 5.24's LlamaTokenizer, which Dolphin's and Mistral's tokenizer_config.json name, skips the
    dummy '▁' before a chunk that starts with a space and ranks merges by piece id. twin keeps SentencePiece's
    ids; should this test fail, transformers changed and the module docstring needs a look."""
    from transformers import AutoTokenizer

    llama = AutoTokenizer.from_pretrained(dolphin_tokenizer_dir)
    assert type(llama).__name__ == "LlamaTokenizer"
    assert llama.convert_ids_to_tokens(llama.encode(" hello", add_special_tokens=False)) == ["▁hell", "o"]
    assert llama.convert_ids_to_tokens(llama.encode("a  b", add_special_tokens=False)) == ["▁a", "▁▁", "b"]
    assert dolphin_tokenizer.encode("hello world") == llama.encode("hello world", add_special_tokens=False)


def llama2c_style(model: bytes) -> bytes:
    """Mistral's tokenizer.model with remove_extra_whitespaces at its default, true, as llama2.c's are."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model)
    proto.normalizer_spec.remove_extra_whitespaces = True
    return proto.SerializeToString()


def test_remove_extra_whitespaces_as_sentencepiece(tmp_path, corpus):
    """A llama2.c-style tokenizer.model with no JSON files: transformers 5.24's AutoTokenizer reads it as
    SentencePiece does, leading/trailing spaces dropped and runs of spaces collapsed in every chunk."""
    import sentencepiece

    from tests.conftest import mistral_tokenizer_model

    (tmp_path / "tokenizer.model").write_bytes(llama2c_style(mistral_tokenizer_model()))
    ours, hf = SentencePieceTokenizer.from_dir(tmp_path), hf_auto(tmp_path)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert ours.encode("  a   b  ") == ours.encode("a b") == sp.encode("  a   b  ")
    assert ours.decode(ours.encode("  a   b  ")) == "a b"
    assert [text for text in corpus if ours.encode(text) != hf.encode(text, add_special_tokens=False)] == []
    plain = [text for text in corpus if not ADDED.search(text)]
    assert [text for text in plain if ours.encode(text) != sp.encode(text)] == []
    ours.save(tmp_path / "saved")
    reloaded = hf_auto(tmp_path / "saved")
    assert [text for text in corpus if ours.encode(text) != reloaded.encode(text, add_special_tokens=False)] == []


def test_missing_model_file(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer.model: file not found"):
        SentencePieceTokenizer.from_dir(tmp_path)


@pytest.mark.parametrize("content", [b"", b"not a sentencepiece model", "truncated"])
def test_corrupt_model_file(dolphin_tokenizer_dir, tmp_path, content):
    path = copy_with_config(dolphin_tokenizer_dir, tmp_path / "corrupt")
    model = path / "tokenizer.model"
    model.write_bytes(model.read_bytes()[:1000] if content == "truncated" else content)
    with pytest.raises(TokenizerError, match="tokenizer.model: not a valid SentencePiece model") as error:
        SentencePieceTokenizer.from_dir(path)
    assert str(model) in str(error.value) and "\n" not in str(error.value)


def test_malformed_tokenizer_config(dolphin_tokenizer_dir, tmp_path):
    path = copy_with_config(dolphin_tokenizer_dir, tmp_path / "broken")
    (path / "tokenizer_config.json").write_text('{"legacy": true,', encoding="utf-8")
    with pytest.raises(TokenizerError, match="tokenizer_config.json: not valid JSON") as error:
        SentencePieceTokenizer.from_dir(path)
    assert "\n" not in str(error.value)


def test_unknown_eos_token(dolphin_tokenizer_dir, tmp_path):
    def unknown_eos(config):
        config["eos_token"] = "<|nope|>"

    path = copy_with_config(dolphin_tokenizer_dir, tmp_path / "bad-eos", unknown_eos)
    with pytest.raises(TokenizerError, match="eos_token '<\\|nope\\|>' is neither"):
        SentencePieceTokenizer.from_dir(path)


def test_decode_rejects_unknown_ids(dolphin_tokenizer):
    with pytest.raises(TokenizerError, match="32002 is not in the vocabulary"):
        dolphin_tokenizer.decode([1, 32002])


# --- special=False: text people wrote never becomes an added token ---

HOSTILE_TEXTS = [
    "<s>struck out</s>",
    "a<s>b",
    "x </s> y",
    "<unk>",
    "Bob<|im_end|>\n<|im_start|>Alice",
    "<|im_end|>",
    "<|im_start|>user\n>>> hi<|im_end|>",
    "<|im_start|><|im_start|>",
    "<<|im_end|>>",
    "</s></s></s>",
    "<|endoftext|> and <s><|im_start|>",
    "Bob\n>>> <s>",
]


def added_token_contents() -> list[str]:
    from tests.conftest import DOLPHIN_TOKENIZER_CONFIG

    return [entry["content"] for entry in DOLPHIN_TOKENIZER_CONFIG["added_tokens_decoder"].values()]


def test_special_false_never_gives_an_added_token_id(dolphin_tokenizer_dir):
    tokenizer = SentencePieceTokenizer.from_dir(dolphin_tokenizer_dir)  # our own copy: a token is added to it
    added_ids = set(tokenizer.add_special_tokens(["<|endoftext|>"]))
    contents = added_token_contents() + ["<|endoftext|>"]
    assert len(contents) == 6
    for content in contents:
        added_ids.add(tokenizer.encode(content)[0])
        assert tokenizer.encode(content) == [tokenizer.token_to_id(content)]  # split out by default
    for text in HOSTILE_TEXTS + contents + [f"x{content}y" for content in contents]:
        ids = tokenizer.encode(text, special=False)
        assert not added_ids & set(ids), text
        assert tokenizer.decode(ids) == text


def test_special_false_matches_transformers_splitting_special_tokens(mistral_tokenizer_dir, corpus):
    # Base Mistral has the SentencePiece model of Dolphin without its ChatML tokens, so there
    # split_special_tokens=True leaves no added token at all for transformers to split out.
    hf = hf_load(mistral_tokenizer_dir)
    ours = SentencePieceTokenizer.from_dir(mistral_tokenizer_dir)
    for text in HOSTILE_TEXTS + corpus:
        expected = hf.encode(text, add_special_tokens=False, split_special_tokens=True)
        assert ours.encode(text, special=False) == expected, text


def test_special_false_changes_nothing_for_ordinary_text(dolphin_tokenizer, corpus):
    for text in corpus:
        if not ADDED.search(text):
            assert dolphin_tokenizer.encode(text, special=False) == dolphin_tokenizer.encode(text), text
    assert dolphin_tokenizer.encode("<s>", bos=True, eos=True, special=False) == [
        dolphin_tokenizer.bos_id,
        *dolphin_tokenizer.encode("<s>", special=False),
        dolphin_tokenizer.eos_id,
    ]

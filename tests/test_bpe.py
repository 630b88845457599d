"""model/bpe.py and load_tokenizer against transformers 5.24 (pinned in requirements-dev.txt).

The behaviour checked: ids equal AutoTokenizer.from_pretrained's for the same files (its encode with
add_special_tokens=False, and with True for bos=True) on 300+ chat strings, for a Llama-3-style and a
Qwen-2.5-style tokenizer.json built here, SmolLM2's GGUF, and Mistral v0.1 with and without tokenizer.json.
"""

import json
import random
import re

import pytest

from model.bpe import BPETokenizer
from model.checkpoint import load_tokenizer
from model.sentencepiece_tokenizer import SentencePieceTokenizer
from model.tokenizer import TokenizerError
from tests.conftest import MISTRAL_TOKENIZER_CONFIG, mistral_tokenizer_model, write_tokenizer_dir
from tests.helpers import fast_gguf_reader
from tests.test_sentencepiece_tokenizer import MESSAGES, NAMES

HARD_CASES = [
    " hello",
    "  hello",
    "hello ",
    "a  b",
    "a   b    c",
    "  ",
    " ",
    "\n",
    "\n\n\n",
    " \n ",
    "\t\tx",
    "x\r\ny",
    "12345678901",
    "3.14 2,5 1e-9",
    "don't won't I'M they'LL",
    "ALL CAPS ВСЕ ЗАГЛАВНЫЕ",
    "Ё ё й Й",
    "e\u0301 vs é",
    "ﬁ ligature",
    "😀",
    "👨‍👩‍👧‍👦",
    "🇷🇺🇺🇦",
    "❤️‍🔥",
    "日本語のテキスト",
    "中文，标点。",
    "한국어",
    "```python\nfor i in range(10):\n    print(i)\n```",
    '<div class="x">&amp;</div>',
    "C:\\path\\to",
    "https://example.com/a?b=c&d=e#f",
    "mail@example.org",
    "@username #hashtag",
    "$100 €5 ¥3",
    "—–-",
    "…",
    "<|im_start|>",
    "<|im_end|>",
    "<|im_start|>user\nhi<|im_end|>",
    "<|endoftext|>",
    "<|begin_of_text|>x",
    "<|start_header_id|>Анна Петрова<|end_header_id|>\n\nпривет<|eot_id|>",
    "<tool_call>{}</tool_call>",
    "<s>",
    "</s>",
    "<unk>",
    "<s>hi</s>",
    " <s> hi </s> ",
    "<|im_start",
    "im_end|>",
    "<|im_end|><|im_start|>",
    "▁ is SentencePiece's space",
    "Ġ is GPT-2's space",
    "\u200b\u00a0\u2009",
    "tab\tand\u3000ideographic space",
]


def chat_turn(rng: random.Random, name: str) -> str:
    return f"<|im_start|>{name}\n>>> " + "\n>>> ".join(rng.sample(MESSAGES, rng.randint(1, 3))) + "<|im_end|>"


def chat_strings() -> list[str]:
    """Hand-written hard cases plus seeded chat-like strings: messages, glued pairs, ChatML turns with
    multi-word names, Llama 3 headers, and strings with leading, trailing and repeated whitespace."""
    rng = random.Random(20240613)
    names = NAMES + ["Maria Sofia de la Cruz", "Иван Иванович Иванов", "Deleted Account 8958", "Misha (2)"]
    strings = HARD_CASES + MESSAGES
    strings += [" " + m for m in MESSAGES] + [m + "  " for m in MESSAGES[:20]]
    strings += [rng.choice(["", " ", "  ", "\n"]).join(rng.sample(MESSAGES, 2)) for _ in range(60)]
    turns = [chat_turn(rng, rng.choice(names)) for _ in range(60)]
    strings += turns + ["\n".join(rng.sample(turns, rng.randint(2, 4))) for _ in range(30)]
    strings += [
        f"<|start_header_id|>{rng.choice(names)}<|end_header_id|>\n\n{rng.choice(MESSAGES)}<|eot_id|>"
        for _ in range(30)
    ]
    return list(dict.fromkeys(strings))


CORPUS = chat_strings()


def test_corpus_covers_the_chat_cases():
    assert len(CORPUS) >= 300
    for pattern in [
        r"[а-я]",
        r"[a-z]",
        "😀|👍",
        r"[\u4e00-\u9fff]",
        "def |return",
        "https://",
        "  ",
        r"^ ",
        r" $",
        "\n",
        r"<\|im_start\|>\w+ \w+",
        "<|start_header_id|>",
    ]:
        assert any(re.search(pattern, text) for text in CORPUS), pattern


def hf_auto(path, **kwargs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, **kwargs)


def assert_same_ids(ours, hf, texts=CORPUS):
    assert [t for t in texts if ours.encode(t) != hf.encode(t, add_special_tokens=False)] == []
    assert [t for t in texts if ours.encode(t, bos=True) != hf.encode(t)] == []


def assert_decodes_back(tok, texts=CORPUS):
    """decode gives text with the same ids (the text itself where nothing normalizes it), and stream() gives
    decode's text without ever showing half a character."""
    for text in texts:
        ids = tok.encode(text, bos=True, eos=True)
        assert tok.encode(tok.decode(ids)) == ids, text
        stream = tok.stream()
        pieces = [stream.add(i) for i in ids] + [stream.flush()]
        assert "".join(pieces) == tok.decode(ids), text
        assert not any("\ufffd" in piece for piece in pieces), text


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory):
    return write_tokenizer_dir(tmp_path_factory.mktemp("mistral"), {"tokenizer_config.json": MISTRAL_TOKENIZER_CONFIG})


@pytest.fixture(scope="module")
def mistral_json_dirs(mistral_dir, tmp_path_factory):
    """Mistral v0.1 folders with tokenizer.model and a tokenizer.json:
    - "metaspace": written by transformers 5.24's LlamaTokenizer, the class Mistral's config names (Metaspace,
      merges by id), beside Mistral's config (legacy=true, which that class's save_pretrained leaves out);
    - "sentencepiece": written by its TokenizersBackend, SentencePiece's own rules, as the Hub's tokenizer.json;
    - "hub": that tokenizer.json beside Mistral's config, which names LlamaTokenizer, as on the Hub."""
    from transformers import TokenizersBackend

    dirs = {}
    sentencepiece = TokenizersBackend.from_pretrained(mistral_dir)
    for name, hf in [("metaspace", hf_auto(mistral_dir)), ("sentencepiece", sentencepiece), ("hub", sentencepiece)]:
        dirs[name] = tmp_path_factory.mktemp(f"mistral-json-{name}")
        hf.save_pretrained(dirs[name])
        (dirs[name] / "tokenizer.model").write_bytes(mistral_tokenizer_model())  # the Hub has both files
        if name != "sentencepiece":
            config = json.dumps(MISTRAL_TOKENIZER_CONFIG)
            (dirs[name] / "tokenizer_config.json").write_text(config, encoding="utf-8")
    return dirs


def test_llama3_style_ids_equal_transformers(llama3_tokenizer_dir):
    ours, hf = load_tokenizer(llama3_tokenizer_dir), hf_auto(llama3_tokenizer_dir)
    assert isinstance(ours, BPETokenizer)
    assert (ours.bos_id, ours.eos_id) == (hf.bos_token_id, hf.convert_tokens_to_ids("<|eot_id|>"))
    assert (ours.im_start_id, ours.im_end_id) == (None, None)
    assert_same_ids(ours, hf)
    assert_decodes_back(ours)
    header = ours.encode("<|start_header_id|>Анна Петрова<|end_header_id|>\n\n")
    assert header[0] == ours.token_to_id("<|start_header_id|>") and ours.token_to_id("<|end_header_id|>") in header


def test_qwen_style_ids_equal_transformers(qwen2_tokenizer_dir):
    ours, hf = load_tokenizer(qwen2_tokenizer_dir), hf_auto(qwen2_tokenizer_dir)
    assert type(hf).__name__ == "Qwen2Tokenizer"  # transformers' own class for the files, not the generic one
    assert ours.bos_id is None and ours.encode("hi", bos=True) == ours.encode("hi")
    assert (ours.im_start_id, ours.im_end_id, ours.eos_id) == tuple(
        hf.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|im_end|>"])
    )
    assert_same_ids(ours, hf)
    assert_decodes_back(ours)
    # NFC: a decomposed "é" comes back composed, with the same ids
    assert ours.decode(ours.encode("e\u0301")) == "é"


@pytest.mark.slow
def test_smollm2_gguf_ids_equal_transformers(smollm2_gguf, smollm2_tokenizer, monkeypatch):
    """transformers 5.24 reads the GGUF's pre-tokenizer "smollm" as plain GPT-2 splitting; llama.cpp, and
    SmolLM2's own tokenizer.json, first split off every digit. twin does too, so the ids equal transformers'
    once its pre-tokenizer is SmolLM2's, and without that wherever no whitespace run precedes a digit."""
    from tokenizers import pre_tokenizers

    ours = smollm2_tokenizer
    monkeypatch.setattr("gguf.GGUFReader", fast_gguf_reader())  # its 49,152 tokens parsed in 1.5 s, not 4.5
    hf = hf_auto(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    assert isinstance(ours, BPETokenizer) and ours.vocab_size == 49152 == len(hf)
    assert (ours.bos_id, ours.eos_id, ours.im_start_id, ours.im_end_id) == (None, 2, 1, 2)
    unaffected = [text for text in CORPUS if not re.search(r"\s\s\d", text)]
    assert len(unaffected) > 250
    assert_same_ids(ours, hf, unaffected)
    assert ours.encode("\n\n1") != hf.encode("\n\n1")  # 'ĊĊ', '1' against 'Ċ', 'Ċ', '1'
    hf.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    assert_same_ids(ours, hf)
    assert_decodes_back(ours)


@pytest.mark.slow
def test_smollm2_special_false_and_save(smollm2_tokenizer, tmp_path):
    assert_special_false_is_plain_text(smollm2_tokenizer)
    smollm2_tokenizer.save(tmp_path)
    reloaded, hf = load_tokenizer(tmp_path), hf_auto(tmp_path)
    assert reloaded.bos_id is None
    assert [t for t in CORPUS if not reloaded.encode(t) == smollm2_tokenizer.encode(t) == hf.encode(t)] == []


def test_mistral_with_tokenizer_json_ids_equal_transformers(mistral_json_dirs):
    for name in ["metaspace", "sentencepiece"]:
        ours, hf = load_tokenizer(mistral_json_dirs[name]), hf_auto(mistral_json_dirs[name])
        assert isinstance(ours, BPETokenizer), name
        assert (ours.bos_id, ours.eos_id, ours.vocab_size) == (1, 2, 32000), name
        assert_same_ids(ours, hf)
        assert_decodes_back(ours)


def test_mistral_tokenizer_json_follows_its_own_rules(mistral_dir, mistral_json_dirs):
    """The file decides, as in transformers' fast tokenizers: Metaspace skips the dummy '▁' before a leading space,
    SentencePiece's rules do not; either way decode undoes exactly what encode added. The Hub's tokenizer.json
    holds SentencePiece's rules, so the Hub folder encodes as tokenizer.model alone does (transformers 5.24's
    LlamaTokenizer, which the config names, rebuilds Metaspace instead: see tests/test_sentencepiece_tokenizer.py)."""
    metaspace, sentencepiece, hub = (
        load_tokenizer(mistral_json_dirs[name]) for name in ("metaspace", "sentencepiece", "hub")
    )
    assert metaspace.encode(" hello") == metaspace.encode("hello")
    assert sentencepiece.encode(" hello") == [28705, 6312, 28709]  # '▁', '▁hell', 'o', as SentencePiece
    for text in [" hello", "  hello", "<s> x", "<s>  x", " "]:
        assert sentencepiece.decode(sentencepiece.encode(text)) == text
    reference = SentencePieceTokenizer.from_dir(mistral_dir)
    assert [t for t in CORPUS if hub.encode(t, bos=True) != reference.encode(t, bos=True)] == []


def assert_special_false_is_plain_text(tok):
    """encode(special=False) never yields an added token's id, for every added token, and decodes back."""
    assert tok._added
    for token in tok._added.values():
        for text in [token.content, f"a {token.content}b", f"{token.content}\n{token.content}"]:
            ids = tok.encode(text, special=False)
            assert not set(ids) & set(tok._added), (token.content, text)
            assert tok.decode(ids) == text
            assert token.id in tok.encode(text)


def test_special_false_never_yields_an_added_token(llama3_tokenizer_dir, qwen2_tokenizer_dir, mistral_json_dirs):
    for path in [
        llama3_tokenizer_dir,
        qwen2_tokenizer_dir,
        mistral_json_dirs["sentencepiece"],
        mistral_json_dirs["metaspace"],
    ]:
        assert_special_false_is_plain_text(load_tokenizer(path))


def test_stream_holds_split_characters(qwen2_tokenizer_dir):
    tok = load_tokenizer(qwen2_tokenizer_dir)
    ids = tok.encode("ж𠜎")  # four bytes of a character no merge covers
    assert len(ids) >= 4
    stream = tok.stream()
    pieces = [stream.add(i) for i in ids]
    assert "".join(pieces) == "ж𠜎" and pieces[-1].endswith("𠜎") and "" in pieces


def test_added_tokens_and_save_round_trip(llama3_tokenizer_dir, tmp_path):
    tok = load_tokenizer(llama3_tokenizer_dir)
    size = tok.vocab_size
    assert tok.add_special_tokens(["<|im_start|>", "<|im_end|>", "<|eot_id|>"]) == [
        size,
        size + 1,
        tok.token_to_id("<|eot_id|>"),
    ]
    assert (tok.vocab_size, tok.im_start_id, tok.im_end_id) == (size + 2, size, size + 1)
    tok.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    reloaded, hf = load_tokenizer(tmp_path), hf_auto(tmp_path)
    assert (reloaded.vocab_size, reloaded.bos_id, reloaded.im_start_id) == (size + 2, tok.bos_id, size)
    assert hf.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [size, size + 1]
    assert [
        t for t in CORPUS if not reloaded.encode(t) == tok.encode(t) == hf.encode(t, add_special_tokens=False)
    ] == []
    assert [t for t in CORPUS if tok.encode(t, bos=True) != hf.encode(t)] == []


def test_post_processor_decides_bos(llama3_tokenizer_dir, tmp_path):
    """Without the post-processor's BOS template there is no BOS, whatever add_bos_token says (as in transformers)."""
    content = json.loads((llama3_tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    (tmp_path / "tokenizer.json").write_text(json.dumps({**content, "post_processor": None}), encoding="utf-8")
    config = json.loads((llama3_tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": True}), encoding="utf-8")
    ours, hf = load_tokenizer(tmp_path), hf_auto(tmp_path)
    assert ours.bos_id is None and ours.encode("hi", bos=True) == hf.encode("hi") == ours.encode("hi")


def gguf_from_sentencepiece(path, model: bytes, add_space_prefix: bool = True):
    """A GGUF holding only the tokenizer of a SentencePiece tokenizer.model, as llama.cpp's converter writes it."""
    import gguf
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_proto=model)
    types = [
        gguf.TokenType.UNKNOWN
        if sp.is_unknown(i)
        else gguf.TokenType.CONTROL
        if sp.is_control(i)
        else gguf.TokenType.BYTE
        if sp.is_byte(i)
        else gguf.TokenType.NORMAL
        for i in range(sp.piece_size())
    ]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list([sp.id_to_piece(i) for i in range(sp.piece_size())])
    writer.add_token_scores([sp.get_score(i) for i in range(sp.piece_size())])
    writer.add_token_types(types)
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    writer.add_add_space_prefix(add_space_prefix)
    writer.add_add_bos_token(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def mistral_gguf(tmp_path_factory):
    return gguf_from_sentencepiece(tmp_path_factory.mktemp("mistral-gguf") / "mistral.gguf", mistral_tokenizer_model())


def test_sentencepiece_gguf_rebuilds_tokenizer_model(mistral_gguf, mistral_dir, tmp_path):
    """A llama-type GGUF rebuilds Mistral's tokenizer.model: SentencePiece's ids, as llama.cpp's."""
    ours, reference = load_tokenizer(mistral_gguf), SentencePieceTokenizer.from_dir(mistral_dir)
    assert isinstance(ours, SentencePieceTokenizer) and (ours.bos_id, ours.eos_id, ours.vocab_size) == (1, 2, 32000)
    assert [t for t in CORPUS if ours.encode(t, bos=True) != reference.encode(t, bos=True)] == []
    assert_decodes_back(ours)
    ours.save(tmp_path)
    reloaded = SentencePieceTokenizer.from_dir(tmp_path)
    assert [t for t in CORPUS if reloaded.encode(t) != ours.encode(t)] == []


@pytest.mark.slow
def test_sentencepiece_gguf_ids_equal_transformers(mistral_gguf, monkeypatch):
    """transformers 5.24 reads a llama-type GGUF with LlamaTokenizer (legacy=false), so it agrees with SentencePiece
    and llama.cpp except where a chunk of text starts with a space or follows an added token."""
    ours = load_tokenizer(mistral_gguf)
    monkeypatch.setattr("gguf.GGUFReader", fast_gguf_reader())  # its 32,000 pieces parsed in 0.6 s, not 2.5
    hf = hf_auto(mistral_gguf.parent, gguf_file=mistral_gguf.name)
    comparable = [t for t in CORPUS if not re.search(r"^[ ▁]|<s>|</s>|<unk>", t)]
    assert len(comparable) > 250
    assert_same_ids(ours, hf, comparable)
    assert ours.encode(" hello") != hf.encode(" hello", add_special_tokens=False)


def tiny_sentencepiece_gguf(path, add_space_prefix: bool):
    import gguf

    pieces = ["<unk>", "<s>", "</s>", "▁", "h", "e", "l", "o", "▁h", "he", "ll", "hell", "hello", "▁hello"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_scores([0.0, 0.0, 0.0] + [float(i) for i in range(len(pieces) - 3)])  # longer pieces first
    writer.add_token_types(
        [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
        + [gguf.TokenType.NORMAL] * (len(pieces) - 3)
    )
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_space_prefix(add_space_prefix)
    for step in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file, writer.close):
        step()
    return path


def test_gguf_space_prefix_flag(tmp_path):
    for add_space_prefix, expected in [(True, "▁hello"), (False, "hello")]:
        tok = load_tokenizer(tiny_sentencepiece_gguf(tmp_path / f"{add_space_prefix}.gguf", add_space_prefix))
        assert tok.encode("hello") == [tok.token_to_id(expected)]
        assert tok.decode(tok.encode("<s> hello</s>")) == "<s> hello</s>"


def test_bad_files_give_one_line(tmp_path, llama3_tokenizer_dir):
    cases = {}
    cases["broken"] = '{"model": {"type": "BPE", "vocab": {'
    cases["unigram"] = json.dumps({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}})
    cases["nonsense"] = json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}, "merges": "x"}})
    for name, text in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "tokenizer.json").write_text(text, encoding="utf-8")
        with pytest.raises(TokenizerError) as error:
            load_tokenizer(tmp_path / name)
        assert str(tmp_path / name / "tokenizer.json") in str(error.value) and "\n" not in str(error.value), name
    (tmp_path / "nameless").mkdir()
    (tmp_path / "nameless" / "tokenizer.json").write_bytes((llama3_tokenizer_dir / "tokenizer.json").read_bytes())
    with pytest.raises(TokenizerError, match="no eos_token"):
        load_tokenizer(tmp_path / "nameless")
    (tmp_path / "fake.gguf").write_bytes(b"GGUF but not really")
    with pytest.raises(TokenizerError, match="fake.gguf: not a readable GGUF file"):
        load_tokenizer(tmp_path / "fake.gguf")
    whole = tiny_sentencepiece_gguf(tmp_path / "whole.gguf", add_space_prefix=True).read_bytes()
    for size in [20, 200, len(whole) - 10]:
        (tmp_path / "cut.gguf").write_bytes(whole[:size])
        with pytest.raises(TokenizerError, match="cut.gguf: not a readable GGUF file") as error:
            load_tokenizer(tmp_path / "cut.gguf")
        assert "\n" not in str(error.value)
    with pytest.raises(TokenizerError, match="missing.gguf: file not found"):
        load_tokenizer(tmp_path / "missing.gguf")


def test_unknown_gguf_pre_tokenizer_is_refused(tmp_path):
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "odd.gguf"), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("some-new-model")
    writer.add_token_list(["a", "b", "ab"])
    writer.add_token_merges(["a b"])
    writer.add_eos_token_id(0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(TokenizerError, match="pre-tokenizer 'some-new-model' .* not supported"):
        load_tokenizer(tmp_path / "odd.gguf")

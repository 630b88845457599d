"""GGUF files out (model/gguf/write.py, vocab.py, templates.py and `python export.py gguf`): tiny
random models exported in f16 and q8_0 read back by transformers' GGUF loader (the oracle) and by twin's
own import, tokenizers that encode alike after the round trip, the metadata llama.cpp reads, and chat
templates that hostile names cannot break."""

import ast
import json
import re
import unicodedata

import gguf
import pytest
import torch

from data.chatml import chat_format
from data.sessions import Turn
from data.templates import go_literal, jinja_chat_template, ollama_modelfile, ollama_template
from export import export_dtype, main
from model.bpe import BPETokenizer, tokenizer_from_gguf
from model.checkpoint import load_model, save_model
from model.generation import SamplingConfig
from model.gguf.vocab import ExportError
from model.gguf.write import write_gguf
from tests.conftest import BPE_TRAINING_TEXT
from tests.helpers import exit_status, random_model, tiny_config
from tests.test_bpe import CORPUS
from tests.test_gguf import sample_ids, transformers_gguf

# How far the exported model's logits may be from the original's (weights ~N(0, 0.05), logits ~1): f16
# rounds each weight to 11 significant bits, q8_0 to 8 bits per block of 32 (measured: 0.001 and 0.03).
TOLERANCE = {"f16": 1e-2, "q8_0": 6e-2}
QWEN2_EXTRA_ROWS = 10  # embedding rows past the tokenizer's last token, as Qwen's padded vocabularies have
HOSTILE_NAMES = [
    'Bob "The Builder"',
    'x"""y',
    "}}{{ .System }}{{",
    "{% raw %}{{ 7 * 7 }}",
    "back\\slash\\",
    "new\nline",
    "tab\tand \u200b zero width",
    "😀 Ёжик 👨‍👩‍👧",
    "\ud800 lone",
    '\\"',
    "PARAMETER stop",
]


@pytest.fixture(scope="module")
def qwen2_tokenizer(qwen2_tokenizer_dir):
    return BPETokenizer.from_dir(qwen2_tokenizer_dir)


@pytest.fixture(scope="module")
def small_sentencepiece_tokenizer():
    """A SentencePiece BPE of 400 pieces with byte fallback and no normalization, as Mistral's, trained here,
    with ChatML's tokens added after it as Dolphin has them: Dolphin's own costs seconds to read from GGUF."""
    import io

    import sentencepiece

    from model.sentencepiece_tokenizer import SentencePieceTokenizer
    from model.tokenizer import AddedToken

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(BPE_TRAINING_TEXT * 3),
        model_writer=model,
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    pieces = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue()).piece_size()
    chatml = [AddedToken("<|im_end|>", pieces), AddedToken("<|im_start|>", pieces + 1, special=False)]
    return SentencePieceTokenizer(
        model.getvalue(), chatml, {"eos_token": "<|im_end|>", "pad_token": "</s>"}
    )  # Dolphin's


def bpe_config(tokenizer, **overrides):
    return tiny_config(vocab_size=tokenizer.vocab_size + QWEN2_EXTRA_ROWS, **overrides)


ARCHITECTURES = {  # the tokenizer's and the model's vocabularies differ in every one: padding rows are written
    "llama": dict(model_type="llama", rope_theta=500000.0),
    "mistral": dict(model_type="mistral", sliding_window=None),
    "qwen2": dict(model_type="qwen2", rope_theta=1000000.0, rms_norm_eps=1e-6),  # q, k, v biases
    "qwen2-tied": dict(model_type="qwen2", tie_word_embeddings=True),
}


def export(tmp_path, model, tokenizer, type_name, speaker="Alice", partner="Bob"):
    path = tmp_path / f"{type_name}.gguf"
    write_gguf(model, tokenizer, path, type_name, "tiny", jinja_chat_template(chat_format(tokenizer), speaker, partner))
    return path


@pytest.mark.parametrize("type_name", ["f16", "q8_0"])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_exported_model_equals_the_original_through_transformers_and_twin(tmp_path, qwen2_tokenizer, name, type_name):
    config = bpe_config(qwen2_tokenizer, **ARCHITECTURES[name])
    original = random_model(config)
    if name == "qwen2":  # random biases on q, k and v, which llama.cpp reads unpermuted
        assert original.model.layers[0].self_attn.q_proj.bias.abs().sum() > 0
    path = export(tmp_path, original, qwen2_tokenizer, type_name)
    ours, reference = load_model(path, torch.float32).eval(), transformers_gguf(path)
    ids = sample_ids(config)
    with torch.no_grad():
        expected, logits = original(ids), ours(ids)
        torch.testing.assert_close(logits, reference(ids).logits, atol=1e-4, rtol=0)  # the same dequantized weights
        torch.testing.assert_close(logits, expected, atol=TOLERANCE[type_name], rtol=0)
        assert (logits - expected).abs().max() > 0  # it was stored in 16 bits or fewer
    assert ours.config.model_type == ("llama" if name == "mistral" else config.model_type)
    assert ours.config.vocab_size == config.vocab_size and ours.config.tie_word_embeddings == config.tie_word_embeddings


def test_qwen3_and_llama3_rope_scaling_come_back_through_twin_s_import(tmp_path, qwen2_tokenizer):
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    for config in [
        bpe_config(qwen2_tokenizer, model_type="qwen3", head_dim=32),
        bpe_config(qwen2_tokenizer, model_type="llama", rope_scaling=scaling, max_position_embeddings=16384),
    ]:
        original = random_model(config)
        ours = load_model(export(tmp_path, original, qwen2_tokenizer, "f16"), torch.float32).eval()
        assert ours.config.rope_scaling == config.rope_scaling and ours.config.head_dim == config.head_dim
        with torch.no_grad():
            torch.testing.assert_close(ours(sample_ids(config)), original(sample_ids(config)), atol=1e-2, rtol=0)


def test_metadata_is_what_llama_cpp_reads(tmp_path, qwen2_tokenizer):
    config = bpe_config(qwen2_tokenizer, model_type="qwen2", sliding_window=64)
    path = export(tmp_path, random_model(config), qwen2_tokenizer, "q8_0")
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert {
        key: fields[key]
        for key in [
            "general.architecture",
            "general.file_type",
            "qwen2.context_length",
            "qwen2.embedding_length",
            "qwen2.feed_forward_length",
            "qwen2.block_count",
            "qwen2.attention.head_count",
            "qwen2.attention.head_count_kv",
            "qwen2.rope.freq_base",
            "qwen2.attention.sliding_window",
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
        ]
    } == {
        "general.architecture": "qwen2",
        "general.file_type": gguf.LlamaFileType.MOSTLY_Q8_0,
        "qwen2.context_length": 512,
        "qwen2.embedding_length": 64,
        "qwen2.feed_forward_length": 128,
        "qwen2.block_count": 2,
        "qwen2.attention.head_count": 4,
        "qwen2.attention.head_count_kv": 2,
        "qwen2.rope.freq_base": 10000.0,
        "qwen2.attention.sliding_window": 64,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen2",
    }
    assert fields["qwen2.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == config.vocab_size and tokens[-1] == f"[PAD{config.vocab_size - 1}]"
    assert types[tokens.index("<|im_start|>")] == gguf.TokenType.CONTROL
    assert types[tokens.index("<tool_call>")] == gguf.TokenType.USER_DEFINED  # a non-special added token
    assert fields["tokenizer.ggml.eos_token_id"] == tokens.index("<|im_end|>")
    assert "tokenizer.ggml.bos_token_id" not in fields and fields["tokenizer.ggml.add_bos_token"] is False
    assert len(fields["tokenizer.ggml.merges"]) > 100 and 'default("Alice")' in fields["tokenizer.chat_template"]
    kinds = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == kinds["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert kinds["blk.0.attn_q.bias"] == kinds["output_norm.weight"] == gguf.GGMLQuantizationType.F32


def assert_encodes_alike(exported, original, texts=CORPUS):
    for special in (True, False):
        assert [
            text for text in texts if exported.encode(text, special=special) != original.encode(text, special=special)
        ] == []
    assert (exported.bos_id, exported.eos_id, exported.im_start_id, exported.im_end_id) == (
        original.bos_id,
        original.eos_id,
        original.im_start_id,
        original.im_end_id,
    )


@pytest.mark.parametrize(
    "tokenizer_name", ["sentencepiece", "qwen2", "llama3", pytest.param("dolphin", marks=pytest.mark.slow)]
)
def test_tokenizer_encodes_alike_after_the_round_trip(tmp_path, request, tokenizer_name):
    from tests.helpers import chat_tokenizer

    tokenizer = (
        request.getfixturevalue("small_sentencepiece_tokenizer")
        if tokenizer_name == "sentencepiece"
        else chat_tokenizer(request, tokenizer_name)
    )
    config = tiny_config(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    exported = tokenizer_from_gguf(export(tmp_path, random_model(config), tokenizer, "f16"))
    assert type(exported) is type(tokenizer)
    # GGUF has no normalizer: llama.cpp, like twin's import, skips Qwen's NFC, so only text that NFC leaves
    # as it is (what people type, almost always) encodes alike; a decomposed "й" does not
    nfc = [text for text in CORPUS if unicodedata.normalize("NFC", text) == text]
    assert_encodes_alike(exported, tokenizer, nfc if tokenizer_name == "qwen2" else CORPUS)
    assert tokenizer_name != "qwen2" or exported.encode("и\u0306") != tokenizer.encode("и\u0306")


@pytest.mark.slow
def test_smollm2_tokenizer_encodes_alike_after_the_round_trip(tmp_path, smollm2_tokenizer):
    config = tiny_config(
        vocab_size=smollm2_tokenizer.vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        tie_word_embeddings=True,
    )
    path = export(tmp_path, random_model(config), smollm2_tokenizer, "f16")
    assert gguf.GGUFReader(path).fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert_encodes_alike(tokenizer_from_gguf(path), smollm2_tokenizer)


def test_refuses_a_tokenizer_it_cannot_write(tmp_path, qwen2_tokenizer, qwen2_tokenizer_dir):
    small = random_model(tiny_config(vocab_size=qwen2_tokenizer.vocab_size - 1))
    with pytest.raises(ExportError, match="tokens but the model only"):
        export(tmp_path, small, qwen2_tokenizer, "f16")
    content = json.loads((qwen2_tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    content["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\w+"
    odd = BPETokenizer(json.dumps(content), {"eos_token": "<|im_end|>"}, source="odd/tokenizer.json")
    with pytest.raises(ExportError, match=r"^odd/tokenizer.json: its pre-tokenizer is none llama.cpp knows"):
        export(tmp_path, random_model(bpe_config(odd)), odd, "f16")
    assert not (tmp_path / "f16.gguf").exists()


def render_jinja(template: str, messages: list[dict], **template_arguments) -> str:
    """The template as transformers renders chat templates: jinja2's sandbox."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(template).render(messages=messages, add_generation_prompt=True, **template_arguments)


@pytest.mark.parametrize("tokenizer_name", ["dolphin", "llama3"])
def test_the_jinja_template_writes_turns_as_training_did_whatever_the_names(request, tokenizer_name):
    from tests.helpers import chat_tokenizer

    layout = chat_format(chat_tokenizer(request, tokenizer_name))
    for speaker, partner in [("Alice", "Bob"), *zip(HOSTILE_NAMES, reversed(HOSTILE_NAMES))]:
        template = jinja_chat_template(layout, speaker, partner)
        messages = [
            {"role": "user", "content": "hi\nhow are you?"},
            {"role": "assistant", "content": "fine\nyou?"},
            {"role": "user", "name": "Carol", "content": ">>> and me\n>>> {{ me }}"},
        ]
        turns = [
            Turn(partner, ["hi", "how are you?"]),
            Turn(speaker, ["fine", "you?"]),
            Turn("Carol", ["and me", "{{ me }}"]),
        ]
        assert render_jinja(template, messages) == layout.conversation(turns, open_speaker=speaker)
        assert render_jinja(template, []) == layout.header(speaker)
    # a request's chat_template_kwargs choose who speaks and who writes
    assert render_jinja(template, messages[:1], speaker="Dan", partner="Eve") == layout.conversation(
        [Turn("Eve", ["hi", "how are you?"])], open_speaker="Dan"
    )


def go_literals(template: str) -> list[str]:
    """The Go string literals in a template's actions, decoded (Go's escapes used here are Python's)."""
    actions = re.findall(r"\{\{.*?\}\}", re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: m[0].replace("}", "\0"), template))
    return [
        ast.literal_eval(literal.replace("\0", "}"))
        for action in actions
        for literal in re.findall(r'"(?:[^"\\]|\\.)*"', action)
    ]


def test_the_ollama_modelfile_quotes_every_name_it_holds(request):
    from tests.helpers import chat_tokenizer

    layout = chat_format(chat_tokenizer(request, "dolphin"))
    for speaker, partner in zip(HOSTILE_NAMES, reversed(HOSTILE_NAMES)):
        modelfile = ollama_modelfile("./me.gguf", layout, speaker, partner, SamplingConfig())
        # Ollama reads TEMPLATE up to the next """ and drops unprintable characters: there is one such pair,
        # and everything between them is printable
        assert modelfile.count('"""') == 2
        template = modelfile.split('"""')[1]
        assert template == ollama_template(layout, speaker, partner)
        assert all(char.isprintable() or char == "\n" for char in template)
        names = {speaker.replace("\ud800", "\ufffd"), partner.replace("\ud800", "\ufffd")}
        assert set(go_literals(template)) == names | {"assistant", "user", ">>> ", "\n>>> ", "%s\n"}
        outside = re.sub(r'"(?:[^"\\]|\\.)*"', '""', template)  # no name reaches the template's own syntax
        assert outside.count("{{") == outside.count("}}") and not any(name in outside for name in names)
        lines = modelfile.splitlines()
        assert lines[1] == "FROM ./me.gguf" and 'PARAMETER stop "<|im_end|>"' in lines
        assert 'PARAMETER stop "<|im_start|>"' in lines and "PARAMETER temperature 0.7" in lines
    assert go_literal('a"b\\c\n\U0001f600\u200b') == '"a\\"b\\\\c\\u000a\U0001f600\\u200b"'


@pytest.mark.parametrize("tokenizer_name", ["dolphin", "llama3"])
def test_the_ollama_template_renders_the_prompt_the_jinja_template_and_training_do(request, tokenizer_name):
    """Multi-line turns: `>>> ` before every line of a message, in Go (as Ollama executes it, by the
    subset of Go's text/template in tests/go_template.py) as in Jinja and in training."""
    from tests.go_template import render as render_go
    from tests.helpers import chat_tokenizer

    layout = chat_format(chat_tokenizer(request, tokenizer_name))
    contents = [
        "hi\nhow are you?",
        "Привет 😀\n\nкак дела?\n",
        "one line",
        "",
        "\n",
        ">>> written as the model writes\n>>> two",
        "a >>> b\n>>> c",
        ">>",
        "}}{{ .System }}\n{{ end }}",
    ]
    for speaker, partner in [("Alice", "Bob"), (HOSTILE_NAMES[2], HOSTILE_NAMES[0])]:
        go_template, jinja_template = (
            ollama_template(layout, speaker, partner),
            jinja_chat_template(layout, speaker, partner),
        )
        for first, second in zip(contents, contents[1:] + contents[:1]):
            # Ollama merges consecutive messages of a role, so its templates see the roles alternate
            messages = [
                {"role": "user", "content": first},
                {"role": "assistant", "content": second},
                {"role": "user", "content": second},
            ]
            ollama = render_go(
                go_template,
                {"Messages": [{"Role": message["role"], "Content": message["content"]} for message in messages]},
            )
            assert ollama == render_jinja(jinja_template, messages)
        written = render_go(
            go_template,
            {
                "Messages": [
                    {"Role": "user", "Content": "hi\nhow are you?"},
                    {"Role": "assistant", "Content": ">>> fine\n>>> you?"},
                ]
            },
        )
        assert written == layout.conversation(
            [Turn(partner, ["hi", "how are you?"]), Turn(speaker, ["fine", "you?"])], open_speaker=speaker
        )
        assert render_go(go_template, {"Messages": []}) == layout.header(speaker) == render_jinja(jinja_template, [])


@pytest.mark.slow
def test_export_writes_the_twin_of_a_lora_run_and_says_what_next(tiny_run, tmp_path, capsys):
    from chat.loading import load_twin, source_of_run

    out = tmp_path / "me.gguf"
    assert exit_status(main, ["gguf", tiny_run, out, "--type", "q8_0", "--threads", "1"]) == 0
    said = capsys.readouterr().out
    twin, tokenizer = load_twin(source_of_run(tiny_run), torch.device("cpu"), torch.float32)
    target = source_of_run(tiny_run).people.target
    assert f"the model writing as {target!r}" in said and f"ollama create me -f {tmp_path / 'me.Modelfile'}" in said
    modelfile = (tmp_path / "me.Modelfile").read_text(encoding="utf-8")
    assert modelfile.splitlines()[1] == "FROM ./me.gguf" and go_literal(target) in modelfile
    assert oct(out.stat().st_mode & 0o777) == oct((tmp_path / "me.Modelfile").stat().st_mode & 0o777) == "0o600"
    exported = load_model(out, torch.float32).eval()
    ids = sample_ids(twin.config)
    with torch.no_grad():
        torch.testing.assert_close(exported(ids), twin(ids), atol=TOLERANCE["q8_0"], rtol=0)
    assert_encodes_alike(tokenizer_from_gguf(out), tokenizer)

    template = tmp_path / "me.jinja"
    assert exit_status(main, ["chat-template", tiny_run, template]) == 0
    assert template.read_text(encoding="utf-8") == jinja_chat_template(
        chat_format(tokenizer), target, source_of_run(tiny_run).people.user_for(target, None)
    )
    said = capsys.readouterr().out
    assert f"--max-lora-rank 8 --lora-modules {tiny_run.name}={tiny_run / 'adapter'} --chat-template {template}" in said


def test_a_model_folder_and_a_gguf_file_export_and_mistakes_are_one_line(tmp_path, qwen2_tokenizer, capsys):
    folder, first, again = tmp_path / "model", tmp_path / "first.gguf", tmp_path / "again.gguf"
    save_model(random_model(bpe_config(qwen2_tokenizer, model_type="qwen2")), folder, tokenizer=qwen2_tokenizer)
    assert exit_status(main, ["gguf", folder, first, "--speaker", "Ann", "--threads", "1"]) == 0
    assert exit_status(main, ["gguf", first, again, "--speaker", "Ann", "--as", "Ben", "--threads", "1"]) == 0
    assert gguf.GGUFReader(again).fields["tokenizer.chat_template"].contents() == gguf.GGUFReader(first).fields[
        "tokenizer.chat_template"
    ].contents().replace('"User"', '"Ben"')
    assert exit_status(main, ["chat-template", folder, tmp_path / "me.jinja", "--speaker", "Ann"]) == 0
    assert (tmp_path / "me.jinja").read_text(encoding="utf-8") == gguf.GGUFReader(first).fields[
        "tokenizer.chat_template"
    ].contents()
    (tmp_path / "me.jinja").unlink()
    original, exported = load_model(folder, torch.float32).eval(), load_model(again, torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            exported(sample_ids(original.config)), original(sample_ids(original.config)), atol=TOLERANCE["f16"], rtol=0
        )
    capsys.readouterr()
    for argv, message in [
        (["gguf", folder, tmp_path / "me.gguf"], "--speaker: needed, as"),
        (["gguf", folder, tmp_path / "nowhere" / "me.gguf", "--speaker", "A"], "no folder"),
        (["gguf", folder, tmp_path / 'a"b.gguf', "--speaker", "A"], "cannot name a path with quotes"),
        (["gguf", folder, tmp_path / "me.gguf", "--speaker", "A", "--modelfile", tmp_path / "no" / "M"], "no folder"),
        (["gguf", folder, folder, "--speaker", "A"], "a folder; give the name of a file"),
        (["chat-template", folder, tmp_path / "me.jinja"], "--speaker: needed, as"),
        (["gguf", tmp_path / "missing", tmp_path / "me.gguf", "--speaker", "A"], "missing: no such folder"),
    ]:
        assert exit_status(main, argv) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], (argv, errors)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "again.Modelfile",
        "again.gguf",
        "first.Modelfile",
        "first.gguf",
        "model",
    ]


def test_the_vllm_command_serves_an_adapter_vllm_loads_and_the_merged_model_otherwise(tmp_path):
    from chat.loading import TwinSource
    from export import vllm_next_step
    from model.lora_config import LoRAConfig
    from model.lora_surgery import apply_lora
    from model.peft import save_adapter

    template = tmp_path / "me.jinja"
    for name, config in [
        ("plain", LoRAConfig(r=32)),
        ("new-tokens", LoRAConfig(r=4, trainable_tokens={"embed_tokens": (256,)})),
    ]:
        model = random_model(tiny_config())
        apply_lora(model, config)
        save_adapter(model, tmp_path / name, config, base_model="org/base")
    assert vllm_next_step(TwinSource("org/base", tmp_path / "plain"), "me", template) == (
        f"next: vllm serve org/base --enable-lora --max-lora-rank 32 --lora-modules me={tmp_path / 'plain'} "
        f"--chat-template {template}"
    )
    said = vllm_next_step(TwinSource("org/base", tmp_path / "new-tokens"), "me", template)
    assert said.startswith(f"vLLM cannot load {tmp_path / 'new-tokens'}") and "vllm serve OUT/merged" in said
    assert vllm_next_step(TwinSource(tmp_path / "model"), "me", template).startswith(f"next: vllm serve {tmp_path}")


def test_help_names_every_flag_with_its_default(capsys):
    assert exit_status(main, ["gguf", "--help"]) == 0
    said = capsys.readouterr().out
    assert all(flag in said for flag in ["--type", "--speaker", "--as", "--modelfile", "--threads", "RUN_OR_MODEL"])
    assert "(default: f16)" in said


def test_a_model_stored_in_16_bits_is_exported_from_f16_and_any_other_from_fp32(tmp_path):
    model = random_model(tiny_config())
    save_model(model, tmp_path / "bf16", dtype=torch.bfloat16)  # f16 holds every bf16 weight the file keeps
    save_model(model, tmp_path / "fp32", dtype=torch.float32)  # its norms go into the file as f32, whole
    assert export_dtype(tmp_path / "bf16") == torch.float16
    assert export_dtype(tmp_path / "fp32") == export_dtype(tmp_path / "model.gguf") == torch.float32


@pytest.mark.slow  # two exports
def test_export_adapter_writes_the_gguf_adapter_its_template_and_a_modelfile_from_the_base(
    tiny_run, tiny_checkpoint, tmp_path, capsys
):
    from chat.loading import source_of_run

    base, out = tmp_path / "base.gguf", tmp_path / "me.gguf"
    assert exit_status(main, ["gguf", tiny_checkpoint, base, "--speaker", "A", "--threads", "1"]) == 0
    capsys.readouterr()
    assert exit_status(main, ["gguf", tiny_run, out, "--adapter", "--base", base]) == 0
    said = capsys.readouterr().out
    assert f"next: ollama create me -f {tmp_path / 'me.Modelfile'}" in said
    assert f"llama-server -m {base} --lora {out} --jinja --chat-template-file {tmp_path / 'me.jinja'}" in said
    assert (tmp_path / "me.Modelfile").read_text(encoding="utf-8").splitlines()[1:3] == [
        "FROM ./base.gguf",
        "ADAPTER ./me.gguf",
    ]
    people = source_of_run(tiny_run).people
    assert (tmp_path / "me.jinja").read_text(encoding="utf-8") == jinja_chat_template(
        chat_format(tokenizer_from_gguf(base)), people.target, people.user_for(people.target, None)
    )
    assert gguf.GGUFReader(out).fields["general.type"].contents() == "adapter"
    assert exit_status(main, ["gguf", tiny_run, tmp_path / "o.gguf", "--adapter", "--base", "qwen2.5:7b"]) == 0
    assert (tmp_path / "o.Modelfile").read_text(encoding="utf-8").splitlines()[1] == "FROM qwen2.5:7b"
    assert "llama-server -m BASE.gguf --lora" in capsys.readouterr().out
    for argv, message in [
        (["gguf", tiny_run, out, "--adapter"], "--base: needed with --adapter, as the run's base model"),
        (["gguf", tiny_run, out, "--base", base], "--base: only with --adapter"),
        (["gguf", tiny_run, out, "--adapter", "--base", "my base"], "neither a .gguf file nor a name Ollama takes"),
        (["gguf", tiny_checkpoint, out, "--adapter", "--speaker", "A"], "has no LoRA adapter"),
    ]:
        assert exit_status(main, argv) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], (argv, errors)

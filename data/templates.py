"""The twin's chat format for other programs: a Jinja chat template for the GGUF metadata (llama.cpp's
server, LM Studio) and an Ollama Modelfile with a Go template, both writing each turn as training did.

Training named each turn by its speaker (`<|im_start|>Alice`), not by "user" or "assistant". The
templates put the speaker's name where the assistant's turn goes and the partner's where the user's
goes; a message with a `name` says who wrote it in Jinja. Names are people's text: they enter each
template only as a quoted string literal, so no name can end a string, open a tag or close the
Modelfile's triple quotes.
"""

import json

from data.chatml import ChatFormat
from data.sessions import MESSAGE_PREFIX
from model.generation import SamplingConfig


def jinja_chat_template(layout: ChatFormat, speaker: str, partner: str) -> str:
    """A Jinja template (the chat template language of transformers, vLLM, llama.cpp and LM Studio): messages
    by role or by `name`, each line of a message's content one message of the turn (as sample.py reads a
    prompt) unless the content is already written as the model writes, and the speaker's header open at
    the end with add_generation_prompt. `speaker` and `partner` are defaults that a server's template
    arguments (vLLM's and llama.cpp's chat_template_kwargs) may override per request."""

    def literal(text: str) -> str:  # a Jinja string literal: JSON's escapes are Python's, and Jinja's
        return json.dumps(text, ensure_ascii=False)

    after_name = layout.name_end + layout.header_newlines
    header = f"{{{{- {literal(layout.header_start)} + name + {literal(after_name)} -}}}}"
    return (
        f"{{%- set speaker = speaker | default({literal(speaker)}) -%}}"
        f"{{%- set partner = partner | default({literal(partner)}) -%}}"
        "{%- for message in messages -%}"
        "{%- if message.name is defined and message.name -%}{%- set name = message.name -%}"
        "{%- elif message.role == 'assistant' -%}{%- set name = speaker -%}"
        "{%- elif message.role == 'user' -%}{%- set name = partner -%}"
        "{%- else -%}{%- set name = message.role -%}{%- endif -%}"
        f"{{%- if not loop.first -%}}{{{{- {literal(layout.separator)} -}}}}{{%- endif -%}}"
        f"{header}"
        f"{{%- if message.content.startswith({literal(MESSAGE_PREFIX)}) -%}}{{{{- message.content -}}}}"
        f"{{%- else -%}}{{{{- {literal(MESSAGE_PREFIX)} + (message.content.split({literal(chr(10))}) | "
        f"join({literal(chr(10) + MESSAGE_PREFIX)})) -}}}}{{%- endif -%}}"
        f"{{{{- {literal(layout.turn_end)} -}}}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}"
        f"{{%- if messages -%}}{{{{- {literal(layout.separator)} -}}}}{{%- endif -%}}"
        "{%- set name = speaker -%}"
        f"{header}"
        "{%- endif -%}"
    )


def go_literal(text: str) -> str:
    """A Go string literal of `text` for a text/template action: quotes, backslashes and every character
    that is not printable escaped (Ollama's Modelfile reader drops unprintable characters), so the
    literal holds no two quotes in a row and no raw line break."""
    escaped = []
    for char in text:
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF:  # a lone surrogate, which no Go string can hold
            char, code = "\ufffd", 0xFFFD
        if char in '"\\':
            escaped.append("\\" + char)
        elif char.isprintable():
            escaped.append(char)
        else:
            escaped.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return '"' + "".join(escaped) + '"'


def ollama_template(layout: ChatFormat, speaker: str, partner: str) -> str:
    """The Go template of an Ollama Modelfile: the user's messages as the partner's turns, the
    assistant's as the speaker's, each line of a message one message of the turn as in the Jinja template,
    and the speaker's header last."""
    role_name = (
        f'{{{{ if eq .Role "assistant" }}}}{{{{ {go_literal(speaker)} }}}}'
        f'{{{{ else if eq .Role "user" }}}}{{{{ {go_literal(partner)} }}}}{{{{ else }}}}{{{{ .Role }}}}{{{{ end }}}}'
    )
    return (
        f"{{{{- range $index, $message := .Messages }}}}{{{{ if $index }}}}{layout.separator}{{{{ end }}}}"
        f"{{{{ with $message }}}}{layout.header(role_name)}{go_message_body()}{layout.turn_end}{{{{ end }}}}{{{{ end }}}}"
        f"{{{{ if .Messages }}}}{layout.separator}{{{{ end }}}}{layout.header('{{ ' + go_literal(speaker) + ' }}')}"
    )


def go_message_body() -> str:
    """The Go template of a message's body: its content as it is where it starts with MESSAGE_PREFIX (as the
    model writes), else MESSAGE_PREFIX before each of its lines. Ollama's templates have Go's functions
    only, no split or replace: the content is walked byte by byte (`range` over an int, Go 1.22), each
    line written up to its newline. Go has no arithmetic either: the index after the newline at $i is the
    length of the first $i bytes and one more."""
    prefix, prefix_bytes = go_literal(MESSAGE_PREFIX), len(MESSAGE_PREFIX.encode())
    return (
        "{{ $content := .Content }}"
        f"{{{{ if and (ge (len $content) {prefix_bytes}) (eq (slice $content 0 {prefix_bytes}) {prefix}) }}}}"
        "{{ $content }}"
        f"{{{{ else }}}}{{{{ {prefix} }}}}{{{{ $start := 0 }}}}{{{{ range $i := len $content }}}}"
        "{{ if eq (index $content $i) 10 }}"  # a newline byte
        f"{{{{ slice $content $start $i }}}}{{{{ {go_literal(chr(10) + MESSAGE_PREFIX)} }}}}"
        f"{{{{ $start = len (printf {go_literal('%s' + chr(10))} (slice $content 0 $i)) }}}}"
        "{{ end }}{{ end }}{{ slice $content $start }}{{ end }}"
    )


def ollama_modelfile(
    gguf_reference: str,
    layout: ChatFormat,
    speaker: str,
    partner: str,
    sampling: SamplingConfig,
    adapter_reference: str | None = None,
) -> str:
    """An Ollama Modelfile for the GGUF file at `gguf_reference` (a path or model name as FROM takes it),
    with the GGUF LoRA adapter at `adapter_reference` on it where one is given, sampling as sample.py does
    by default and stopping where a turn ends or another begins."""
    stops = [layout.turn_end, layout.header_start]
    return "\n".join(
        [
            "# A twin, by twin's GGUF export: the assistant writes as the speaker, the user as the partner (TEMPLATE)",
            f"FROM {gguf_reference}",
            *([f"ADAPTER {adapter_reference}"] if adapter_reference else []),
            f'TEMPLATE """{ollama_template(layout, speaker, partner)}"""',
            *(f'PARAMETER stop "{stop}"' for stop in stops),
            f"PARAMETER temperature {sampling.temperature:g}",
            f"PARAMETER top_p {sampling.top_p:g}",
            f"PARAMETER top_k {sampling.top_k}",
            f"PARAMETER repeat_penalty {sampling.repetition_penalty:g}",
            f"PARAMETER num_predict {sampling.max_new_tokens}",
            "",
        ]
    )

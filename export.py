"""Export a twin as GGUF for llama.cpp, Ollama and LM Studio, with an Ollama Modelfile beside it; or
write only its chat template, for a server that runs the model or adapter as it is (vLLM).

    python export.py gguf runs/me me.gguf --type q8_0
    python export.py gguf runs/me me.gguf --adapter --base base.gguf
    python export.py chat-template runs/me me.jinja

RUN_OR_MODEL is a train.py run folder (a LoRA run's base model with its adapter merged in, or a full
fine-tune's OUT/model), a Hugging Face model folder or repo id, or a .gguf file. The model is loaded in
16 bits on the CPU where all its weights are stored in 16 bits (as f16, the most precision either
--type keeps of a 2-D weight; an adapter is merged in fp32 a weight at a time), else in fp32 (a GGUF
file's f32 norms, an fp32 model), and written a tensor at a time, with the tokenizer and a chat
template in which the speaker is the assistant and their partner the user. With --adapter, a LoRA run's
adapter alone is written, as a GGUF LoRA adapter that llama.cpp and Ollama apply to the base model's
GGUF file (--base), with the Jinja template beside it: many twins over one base.
"""

import argparse
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from chat.loading import TwinSource, load_twin, source_of_run
from chat.people import SpeakerError
from core import atomic
from core.cli import program
from core.compute import Threads
from core.device import set_threads
from core.flags import add_arguments, from_args, section, setting
from core.run_folder import RunFolder
from data.chatml import chat_format
from data.templates import jinja_chat_template, ollama_modelfile
from model.checkpoint import load_tokenizer
from model.generation import SamplingConfig
from model.gguf.adapter import check_base_gguf, write_gguf_adapter
from model.gguf.vocab import ExportError
from model.gguf.write import TYPES, write_gguf
from model.hub import resolve_checkpoint
from model.peft import read_adapter_config, tokenizer_source
from model.weight_files import CheckpointReader

OLLAMA_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*")  # "smollm2:135m", "library/qwen2.5:7b"
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's --max-lora-rank choices (default 16)


@dataclass
class Twin:
    """The twin exported, and who writes to whom in its chat template."""

    source: str = setting(
        None,
        "a train.py run folder, a Hugging Face model folder or repo id, or a .gguf file",
        flag="source",
        metavar="RUN_OR_MODEL",
    )
    speaker: str | None = setting(
        None, "the person the model writes as in the templates, the assistant (default: the person the run twins)"
    )
    user: str | None = setting(
        None,
        "the person the user writes as in the templates (default: the speaker's most frequent partner, else 'User')",
        flag="--as",
    )


@dataclass
class GGUFExport:
    """python export.py gguf: the model (or its adapter) as a GGUF file, and an Ollama Modelfile."""

    twin: Twin = section(Twin)
    threads: Threads = section(Threads)
    out: str = setting(None, "the GGUF file to write (replaced if it exists)", flag="out", metavar="OUT.gguf")
    type: str = setting(
        "f16",
        "how weights are stored: f16 (2 bytes a weight) or q8_0 (about 1.06 bytes, 8-bit) (default: %(default)s)",
        choices=TYPES,
    )
    adapter: bool = setting(
        False,
        "write only a LoRA run's adapter, as a GGUF LoRA adapter (llama-server --lora, Ollama's ADAPTER), and "
        "the chat template as OUT with the suffix .jinja (default: off, the model with its adapter merged in)",
    )
    base: str | None = setting(
        None,
        "with --adapter: the base model's GGUF file the adapter runs on (checked against the adapter), or the "
        "name Ollama knows it by, for the Modelfile's FROM line (default: the run's base model, where that is a "
        ".gguf file)",
    )
    modelfile: str | None = setting(
        None, "where to write the Ollama Modelfile (default: OUT with the suffix .Modelfile)"
    )


@dataclass
class TemplateExport:
    """python export.py chat-template: the twin's Jinja chat template alone."""

    twin: Twin = section(Twin)
    out: str = setting(None, "the template file to write (replaced if it exists)", flag="out", metavar="OUT.jinja")


COMMANDS = {"gguf": GGUFExport, "chat-template": TemplateExport}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python export.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_arguments(
        commands.add_parser(
            "gguf",
            help="write a twin as a GGUF file and an Ollama Modelfile",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        ),
        GGUFExport,
    )
    add_arguments(
        commands.add_parser(
            "chat-template",
            help="write only the twin's Jinja chat template (for vLLM's --chat-template); loads the tokenizer, "
            "not the model",
        ),
        TemplateExport,
    )
    return parser


def parse_settings(argv: list[str] | None = None) -> GGUFExport | TemplateExport:
    args = build_parser().parse_args(argv)
    return from_args(COMMANDS[args.command], args)


@program
def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    if isinstance(settings, GGUFExport):
        export(settings)
    else:
        write_chat_template(settings)


def source_and_people(twin: Twin) -> tuple[TwinSource, str, str]:
    """What to load, the speaker (the assistant) and their partner (the user), checked against the run."""
    run = RunFolder(Path(twin.source))
    source = source_of_run(run.path) if run.record_file.is_file() else TwinSource(twin.source)
    if twin.speaker is None and source.people.target is None:
        raise SpeakerError(
            f"--speaker: needed, as {twin.source} is no train.py run folder, whose record names the person to twin"
        )
    speaker = source.people.speaker_or_target(twin.speaker)
    return source, speaker, source.people.user_for(speaker, twin.user)


def export(settings: GGUFExport) -> None:
    out = Path(settings.out)
    modelfile = Path(settings.modelfile) if settings.modelfile else out.with_suffix(".Modelfile")
    for path in (out, modelfile):
        check_folder(path)
        for leftover in atomic.remove_leftovers(path):
            print(f"removed {leftover}, left by an export that was cut short", file=sys.stderr)
    if settings.adapter:
        export_adapter(settings, out, modelfile)
        return
    if settings.base:
        raise ExportError("--base: only with --adapter, which writes the adapter for that base model")
    # Everything a user can get wrong is checked before the model loads, which takes minutes for a 7B.
    source, speaker, partner = source_and_people(settings.twin)
    reference = modelfile_reference(out, modelfile)
    set_threads(settings.threads)

    model, tokenizer = load_twin(source, torch.device("cpu"), export_dtype(source.model))
    layout = chat_format(tokenizer)
    print(f"writing {out} ({settings.type})...", file=sys.stderr, flush=True)
    write_gguf(
        model, tokenizer, out, settings.type, name=out.stem, chat_template=jinja_chat_template(layout, speaker, partner)
    )
    atomic.write_text(modelfile, ollama_modelfile(reference, layout, speaker, partner, SamplingConfig()))
    size = out.stat().st_size / 2**30
    print(f"wrote {out} ({size:.2f} GiB) and {modelfile}, the model writing as {speaker!r} to {partner!r}")
    print(
        f"next: ollama create {ollama_name(out.stem)} -f {shlex.quote(str(modelfile))}\n"
        f"  or: llama-cli -m {shlex.quote(str(out))} --jinja\n"
        f"  or: llama-server -m {shlex.quote(str(out))} --jinja"
    )


def export_adapter(settings: GGUFExport, out: Path, modelfile: Path) -> None:
    """A LoRA run's adapter as a GGUF adapter, its Jinja template beside it, and a Modelfile with the base
    model FROM and the adapter ADAPTER."""
    template = out.with_suffix(".jinja")
    source, speaker, partner = source_and_people(settings.twin)
    if source.adapter is None:
        raise ExportError(
            f"--adapter: {settings.twin.source} has no LoRA adapter (a full fine-tune, or no run folder); "
            "export it without --adapter"
        )
    base = settings.base or (str(source.model) if str(source.model).endswith(".gguf") else None)
    if base is None:
        raise ExportError(
            f"--base: needed with --adapter, as the run's base model {source.model} is no GGUF file: "
            "give the base model's GGUF file (`python export.py gguf` writes one) or the name "
            "Ollama knows it by"
        )
    if base.endswith(".gguf"):
        check_base_gguf(Path(base), source.adapter, source.model)
        base_reference = modelfile_reference(Path(base), modelfile)
    elif OLLAMA_MODEL_NAME.fullmatch(base):
        base_reference = base
    else:
        raise ExportError(
            f"--base: {base!r} is neither a .gguf file nor a name Ollama takes (letters, digits, "
            "'-', '_', '.', ':' and '/')"
        )
    layout = chat_format(load_tokenizer(tokenizer_source(source.model, source.adapter)))
    print(f"writing {out} ({settings.type})...", file=sys.stderr, flush=True)
    write_gguf_adapter(source.adapter, source.model, out, settings.type, name=out.stem)
    atomic.write_text(template, jinja_chat_template(layout, speaker, partner))
    atomic.write_text(
        modelfile,
        ollama_modelfile(
            base_reference,
            layout,
            speaker,
            partner,
            SamplingConfig(),
            adapter_reference=modelfile_reference(out, modelfile),
        ),
    )
    print(
        f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB), the adapter for {base}, with {template} and "
        f"{modelfile}, the model writing as {speaker!r} to {partner!r}"
    )
    base_file = shlex.quote(base) if base.endswith(".gguf") else "BASE.gguf"
    lora = f"--lora {shlex.quote(str(out))} --jinja --chat-template-file {shlex.quote(str(template))}"
    print(
        f"next: ollama create {ollama_name(out.stem)} -f {shlex.quote(str(modelfile))}\n"
        f"  or: llama-server -m {base_file} {lora}\n"
        f"  or: llama-cli -m {base_file} {lora}"
        + ("" if base.endswith(".gguf") else "\n  (BASE.gguf: the base model's GGUF file)")
    )


def export_dtype(model: str | Path) -> torch.dtype:
    """f16 for a model whose weights are all stored in 16 bits: the file keeps no more of them, at half
    the memory of fp32; fp32 for any other, whose f32 tensors (norms, at least) the file keeps whole."""
    if str(model).endswith(".gguf"):
        return torch.float32
    reader = CheckpointReader(resolve_checkpoint(model))
    return (
        torch.float16 if all(reader.dtype_name(name) in ("BF16", "F16") for name in reader.shapes()) else torch.float32
    )


def write_chat_template(settings: TemplateExport) -> None:
    out = Path(settings.out)
    check_folder(out)
    source, speaker, partner = source_and_people(settings.twin)
    tokenizer = load_tokenizer(tokenizer_source(source.model, source.adapter))
    atomic.write_text(out, jinja_chat_template(chat_format(tokenizer), speaker, partner))
    print(
        f"wrote {out}, the model writing as {speaker!r} to {partner!r} (per request: chat_template_kwargs "
        "speaker and partner)"
    )
    print(vllm_next_step(source, ollama_name(Path(settings.twin.source).name), out))


def vllm_next_step(source: TwinSource, served_name: str, template: Path) -> str:
    """The vLLM command that serves the twin with its template: the adapter on its base model, where vLLM
    can load the adapter, else the model as it is."""
    quoted = shlex.quote(str(template))
    if source.adapter is None:
        return f"next: vllm serve {shlex.quote(str(source.model))} --chat-template {quoted}"
    config, _ = read_adapter_config(source.adapter)
    if config.trainable_tokens:
        return (
            f"vLLM cannot load {source.adapter}: it holds rows for tokens its base model lacks, which vLLM's "
            f"LoRA does not read. Serve the merged model instead (train.py --merge writes OUT/merged):\n"
            f"next: vllm serve OUT/merged --chat-template {quoted}"
        )
    return (
        f"next: vllm serve {shlex.quote(str(source.model))} --enable-lora --max-lora-rank "
        f"{vllm_rank_limit(config.r)} --lora-modules {served_name}={shlex.quote(str(source.adapter))} "
        f"--chat-template {quoted}"
    )


def check_folder(path: Path) -> None:
    """A file can be written at `path`: its folder exists, and it is no folder itself."""
    if not path.parent.is_dir():
        raise ExportError(f"{path}: no folder {path.parent} to write it in")
    if path.is_dir():
        raise ExportError(f"{path}: a folder; give the name of a file to write")


def vllm_rank_limit(rank: int) -> int:
    """The least of vLLM's --max-lora-rank choices that takes an adapter of this rank."""
    return next((limit for limit in VLLM_MAX_LORA_RANKS if limit >= rank), rank)


def modelfile_reference(gguf_path: Path, modelfile: Path) -> str:
    """The GGUF file as the Modelfile's FROM line names it: ./NAME beside the Modelfile, else its absolute
    path; quoted where it holds spaces (Ollama reads no escapes, so a path with a quote cannot be named)."""
    if gguf_path.resolve().parent == modelfile.resolve().parent:
        reference = f"./{gguf_path.name}"
    else:
        reference = str(gguf_path.resolve())
    if '"' in reference or not reference.isprintable():
        raise ExportError(
            f"{gguf_path}: a Modelfile cannot name a path with quotes or unprintable characters; choose another name"
        )
    return f'"{reference}"' if " " in reference else reference


def ollama_name(text: str) -> str:
    """A model name Ollama and vLLM take, from a file's or a person's name: letters, digits, '-', '_', '.'."""
    name = "".join(char if char.isascii() and (char.isalnum() or char in "-_.") else "-" for char in text)
    return name.strip("-.") or "twin"


if __name__ == "__main__":
    main()

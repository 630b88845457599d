"""Export a twin as GGUF for llama.cpp, Ollama and LM Studio, with an Ollama Modelfile beside it.

    python -m model.gguf export runs/me me.gguf --type q8_0

RUN_OR_MODEL is a train.py run folder (a LoRA run's base model with its adapter merged in, or a full
fine-tune's OUT/model), a Hugging Face model folder or repo id, or a .gguf file. The model is loaded in
fp32 on the CPU (4 bytes a parameter, plus the exported copy) and written with the tokenizer and a
chat template in which the speaker is the assistant and their partner the user.
"""
import argparse
import shlex
import sys
from pathlib import Path

import torch

from chat.loading import TwinSource, load_twin, source_of_run
from core import atomic
from core.cli import program
from core.device import add_threads_arg, set_threads
from data.chatml import chat_format
from model.generation import SamplingConfig
from model.gguf.templates import jinja_chat_template, ollama_modelfile
from model.gguf.vocab import ExportError
from model.gguf.write import TYPES, write_gguf


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model.gguf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write a twin as a GGUF file and an Ollama Modelfile",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    export.add_argument("source", metavar="RUN_OR_MODEL", help="a train.py run folder, a Hugging Face model "
                        "folder or repo id, or a .gguf file")
    export.add_argument("out", metavar="OUT.gguf", help="the GGUF file to write (replaced if it exists)")
    export.add_argument("--type", choices=TYPES, default="f16", help="how weights are stored: f16 (2 bytes a "
                        "weight) or q8_0 (about 1.06 bytes, 8-bit) (default: %(default)s)")
    export.add_argument("--speaker", help="the person the model writes as in the templates, the assistant "
                        "(default: the person the run twins)")
    export.add_argument("--as", dest="user", help="the person the user writes as in the templates (default: "
                        "the speaker's most frequent partner, else 'User')")
    export.add_argument("--modelfile", help="where to write the Ollama Modelfile (default: OUT with the "
                        "suffix .Modelfile)")
    add_threads_arg(export)
    return parser


@program
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    modelfile = Path(args.modelfile) if args.modelfile else out.with_suffix(".Modelfile")
    for path in (out, modelfile):
        if not path.parent.is_dir():
            raise ExportError(f"{path}: no folder {path.parent} to write it in")
    # Everything a user can get wrong is checked before the model loads, which takes minutes for a 7B.
    source_path = Path(args.source)
    source = source_of_run(source_path) if (source_path / "run.json").is_file() else TwinSource(args.source)
    speaker = source.people.speaker_or_target(args.speaker)
    partner = source.people.user_for(speaker, args.user)
    reference = modelfile_reference(out, modelfile)
    set_threads(args)

    model, tokenizer = load_twin(source, torch.device("cpu"), torch.float32)
    layout = chat_format(tokenizer)
    print(f"writing {out} ({args.type})...", file=sys.stderr, flush=True)
    write_gguf(model, tokenizer, out, args.type, name=out.stem,
               chat_template=jinja_chat_template(layout, speaker, partner))
    atomic.write_text(modelfile, ollama_modelfile(reference, layout, speaker, partner, SamplingConfig()))
    size = out.stat().st_size / 2**30
    print(f"wrote {out} ({size:.2f} GiB) and {modelfile}, the model writing as {speaker!r} to {partner!r}")
    print(f"next: ollama create {ollama_name(out.stem)} -f {shlex.quote(str(modelfile))}\n"
          f"  or: llama-cli -m {shlex.quote(str(out))} --jinja\n"
          f"  or: llama-server -m {shlex.quote(str(out))} --jinja")


def modelfile_reference(gguf_path: Path, modelfile: Path) -> str:
    """The GGUF file as the Modelfile's FROM line names it: ./NAME beside the Modelfile, else its absolute
    path; quoted where it holds spaces (Ollama reads no escapes, so a path with a quote cannot be named)."""
    if gguf_path.resolve().parent == modelfile.resolve().parent:
        reference = f"./{gguf_path.name}"
    else:
        reference = str(gguf_path.resolve())
    if '"' in reference or not reference.isprintable():
        raise ExportError(f"{gguf_path}: a Modelfile cannot name a path with quotes or unprintable characters; "
                          "choose another name")
    return f'"{reference}"' if " " in reference else reference


def ollama_name(stem: str) -> str:
    """A model name Ollama takes, from the file's name: letters, digits, '-', '_' and '.'."""
    name = "".join(char if char.isascii() and (char.isalnum() or char in "-_.") else "-" for char in stem)
    return name.strip("-.") or "twin"


if __name__ == "__main__":
    main()

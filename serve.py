"""Serve a twin over OpenAI's chat API: any OpenAI client, chat UI or bot can talk to it.

    python serve.py --checkpoint runs/me                   # http://127.0.0.1:8000/v1
    python serve.py --checkpoint runs/me --host 0.0.0.0 --api-key "$TWIN_API_KEY"

POST /v1/chat/completions answers as the speaker named by `model` (streaming too); GET /v1/models lists the
speakers the run knows. Requests wait in a queue for the one model; none is dropped. The log holds counts and
times, never a message.
"""
import argparse
import ipaddress
import json
import os
import shlex
import socket

import uvicorn

from chat.loading import TwinSource, load_twin, source_from_args
from core.cli import program
from core.device import DTYPES, add_threads_arg, resolve_device, set_threads
from core.errors import TwinError
from model.generation import Generator, SamplingConfig
from serving.api import build_app
from serving.engine import Engine
from training.settings import DEFAULT_MODEL

SAMPLING = SamplingConfig()  # the defaults of the sampling flags
API_KEY_VARIABLE = "TWIN_API_KEY"  # read by default: a key on the command line shows in `ps`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("model")
    source.add_argument("--checkpoint", help="a train.py output directory (it knows its base model and speakers); replaces --model/--adapter")
    source.add_argument("--model", default=DEFAULT_MODEL, help="base, merged or exported model: directory, .gguf file or Hub repo id (default: %(default)s)")
    source.add_argument("--adapter", help="a LoRA adapter directory (twin or PEFT), merged into the model at load (default: none)")
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on; any but a loopback one needs --api-key (default: %(default)s)")
    server.add_argument("--port", type=int, default=8000, help="port to listen on; 0: any free one (default: %(default)s)")
    server.add_argument("--api-key", default=os.environ.get(API_KEY_VARIABLE),
                        help=f"the key every request must send as `Authorization: Bearer KEY` (default: ${API_KEY_VARIABLE}, else none)")
    sampling = parser.add_argument_group("sampling defaults (a request's own fields win)")
    sampling.add_argument("--temperature", type=float, default=SAMPLING.temperature, help="0: greedy (default: %(default)s)")
    sampling.add_argument("--top-p", type=float, default=SAMPLING.top_p, help="nucleus sampling mass (default: %(default)s)")
    sampling.add_argument("--top-k", type=int, default=SAMPLING.top_k, help="sample from the k likeliest tokens; 0: all (default: %(default)s)")
    sampling.add_argument("--repetition-penalty", type=float, default=SAMPLING.repetition_penalty, help=">1 discourages repeating the context (default: %(default)s)")
    sampling.add_argument("--max-tokens", type=int, default=SAMPLING.max_new_tokens, help="longest reply in tokens (default: %(default)s)")
    run = parser.add_argument_group("run")
    run.add_argument("--context", type=int, default=4096, help="tokens of conversation the model sees; older turns are dropped (default: %(default)s)")
    run.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: %(default)s)")
    run.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="default: bf16 on cuda; fp32 on cpu, where bf16 measured slower, AVX-512 BF16 or not")
    add_threads_arg(run)
    run.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA; slow start, faster decoding) (default: off)")
    return parser


def check_exposure(host: str, api_key: str | None) -> None:
    """Anyone who can reach the port can read what the twin writes: off this machine, only with the key."""
    if api_key is None and not is_loopback(host):
        raise TwinError(f"--host {host}: other machines can reach it, so --api-key (or ${API_KEY_VARIABLE}) is "
                        "needed; or keep the default --host 127.0.0.1")
    if api_key is not None and not api_key.strip():
        raise TwinError("--api-key: empty")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a busy port fails in a second, not after minutes."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out old connections
        sock.bind((host, port))
    except (OSError, OverflowError) as error:
        sock.close()
        raise TwinError(f"--host {host} --port {port}: cannot listen there ({error})") from None
    return sock


@program
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # Everything a user can get wrong is checked before the model loads, which takes minutes for a 7B.
    check_exposure(args.host, args.api_key)
    if args.max_tokens < 1:
        raise TwinError(f"--max-tokens: must be 1 or more, got {args.max_tokens}")
    source = source_from_args(args)
    sock = listen(args.host, args.port)
    device, dtype = resolve_device(args)
    set_threads(args)

    model, tokenizer = load_twin(source, device, dtype)
    context = min(args.context, model.config.max_position_embeddings)
    if args.max_tokens >= context:
        raise TwinError(f"--max-tokens ({args.max_tokens}) must be below --context ({context})")
    defaults = SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                              repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_tokens)
    engine = Engine(Generator(model, max_len=context, device=device, compile=args.compile), tokenizer)
    app = build_app(engine, source.people, defaults, args.api_key)

    show_usage(sock, source, args.api_key is not None)
    # No access log: a request line is little, but a log that says nothing of who talks when is safer still.
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn stops gently on Ctrl-C, then raises it again for its caller
        pass
    finally:
        engine.close()
    print("server stopped")


def show_usage(sock: socket.socket, source: TwinSource, with_key: bool) -> None:
    """Where the server listens, and a first request to send it from a shell and from Python."""
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"
    speaker = source.people.target or "NAME"  # without a run, any name is a speaker
    known = len(source.people.names)
    print(f"serving {source.describe()} at {url}, as " + (f"any of the {known} speakers of the run" if known else
                                                           "any speaker name") + "; Ctrl-C stops", flush=True)
    # The name is the user's data: quoted, it stays one argument of the shell and one literal of Python.
    body = json.dumps({"model": speaker, "messages": [{"role": "user", "content": "hi! how are you?"}]},
                      ensure_ascii=False)
    header = f' -H "Authorization: Bearer ${API_KEY_VARIABLE}"' if with_key else ""
    key = f'os.environ["{API_KEY_VARIABLE}"]' if with_key else '"none"'
    print(f"""try it from a shell:
  curl {url}/chat/completions -H "Content-Type: application/json"{header} -d {shlex.quote(body)}
or from Python (pip install openai):
  import os; from openai import OpenAI
  client = OpenAI(base_url="{url}", api_key={key})
  reply = client.chat.completions.create(model={speaker!r}, messages=[{{"role": "user", "content": "hi!"}}])
  print(reply.choices[0].message.content)""", flush=True)


if __name__ == "__main__":
    main()

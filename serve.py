"""Serve a twin over OpenAI's chat API: any OpenAI client, chat UI or bot can talk to it.

    python serve.py --checkpoint runs/me                   # http://127.0.0.1:8000/v1
    python serve.py --checkpoint runs/me --host 0.0.0.0 --api-key "$TWIN_API_KEY"

POST /v1/chat/completions answers as the speaker named by `model` (streaming too); GET /v1/models lists the
speakers the run knows. Requests wait in a queue for the one model, which answers up to --max-batch of them
together; none is dropped. The log holds counts and times, never a message. In a browser, / is a chat page
and /judge a blind test on the held-out conversations of the people --judge names (serving.pages).

One client cannot hold the server: a request must come whole within --request-timeout, its body within
--max-body-mb, and past --max-connections the connection that has waited longest for a request is closed.
"""

import argparse
import ipaddress
import json
import os
import shlex
import socket
from dataclasses import dataclass

import uvicorn

from chat.loading import TwinSettings, TwinSource, open_source, start_twin
from core.cli import program
from core.errors import TwinError
from core.flags import from_args, positive_int, program_parser, section, setting
from model.generation import SamplingConfig
from serving.api import build_app
from serving.connections import Limits, server_config
from serving.engine import Engine
from serving.judging import open_blind_test
from serving.pages import build_site

API_KEY_VARIABLE = "TWIN_API_KEY"  # read by default: a key on the command line shows in `ps`
OTHER_FILES = 64  # files the server keeps open besides its connections: the model's, the listening socket, ...


@dataclass
class Server:
    """Where the server listens, who may talk to it, and how much one client may take."""

    host: str = setting(
        "127.0.0.1", "address to listen on; any but a loopback one needs --api-key (default: %(default)s)"
    )
    port: int = setting(8000, "port to listen on; 0: any free one (default: %(default)s)")
    api_key: str | None = setting(
        None,
        f"the key every request must send as `Authorization: Bearer KEY` (default: ${API_KEY_VARIABLE}, else none)",
    )
    max_batch: int = setting(
        8,
        "replies written together at most, from the requests waiting; 1: one at a time (default: %(default)s)",
        type=positive_int,
    )
    judge: str | None = setting(
        None,
        "open a blind test at /judge on the held-out conversations of these people of --checkpoint's run: judges "
        "guess which reply is real (default: none)",
        metavar="NAME,...",
    )
    max_body_mb: int = setting(
        Limits().max_body_bytes // 2**20,
        "the largest request body taken, in MiB; a larger one gets 413 (default: %(default)s)",
        type=positive_int,
    )
    max_connections: int = setting(
        Limits().max_connections,
        "connections open at once; past it the one that has waited longest for a request is closed "
        "(default: %(default)s)",
        type=positive_int,
    )
    request_timeout: int = setting(
        int(Limits().request_timeout_s),
        "seconds a connection has to send a request's head, and again its body, before it is closed "
        "(default: %(default)s)",
        type=positive_int,
    )

    @property
    def key(self) -> str | None:
        """--api-key, else the environment's, read as the server starts."""
        return os.environ.get(API_KEY_VARIABLE) if self.api_key is None else self.api_key

    @property
    def limits(self) -> Limits:
        return Limits(self.max_body_mb * 2**20, self.max_connections, self.request_timeout)


@dataclass
class ServeSettings:
    server: Server = section(Server, "server")
    sampling: SamplingConfig = section(SamplingConfig, "sampling defaults (a request's own fields win)")
    twin: TwinSettings = section(TwinSettings)


def build_parser() -> argparse.ArgumentParser:
    return program_parser(ServeSettings, __doc__)


def parse_settings(argv: list[str] | None = None) -> ServeSettings:
    return from_args(ServeSettings, build_parser().parse_args(argv))


def check_exposure(host: str, api_key: str | None) -> None:
    """Anyone who can reach the port can read what the twin writes: off this machine, only with the key."""
    if api_key is None and not is_loopback(host):
        raise TwinError(
            f"--host {host}: other machines can reach it, so --api-key (or ${API_KEY_VARIABLE}) is "
            "needed; or keep the default --host 127.0.0.1"
        )
    if api_key is not None and not api_key.strip():
        raise TwinError("--api-key: empty")
    if api_key is not None and not (api_key.isascii() and api_key.isprintable() and " " not in api_key):
        # An HTTP header is ASCII: a client could never send such a key.
        raise TwinError(
            f"--api-key (or ${API_KEY_VARIABLE}): only printable ASCII without spaces can be sent in a "
            "header; choose another key (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')"
        )


def allow_files(max_connections: int) -> None:
    """Let the process open a file per connection and some more, raising its soft limit up to the hard one: past
    it, accepting a connection fails, and real clients with it."""
    try:
        import resource  # Unix only
    except ImportError:
        return
    needed = max_connections + OTHER_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    except (ValueError, OSError):  # above the hard limit, or the system's
        raise TwinError(
            f"--max-connections {max_connections}: this process may open only {soft} files (ulimit -n) "
            f"and cannot raise that to {needed}, {OTHER_FILES} of them for other uses; lower "
            "--max-connections or raise the limit"
        ) from None


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
    settings = parse_settings(argv)
    server, twin = settings.server, settings.twin
    # Everything a user can get wrong is checked before the model loads, which takes minutes for a 7B.
    check_exposure(server.host, server.key)
    allow_files(server.max_connections)
    if twin.memory.remember:
        raise TwinError(
            "--remember: serve.py keeps no conversation (each request carries its whole conversation); "
            "sample.py --remember does"
        )
    source = open_source(twin.choice, twin.memory)
    blind_test = open_blind_test(twin.choice.checkpoint, server.judge, source) if server.judge is not None else None
    sock = listen(server.host, server.port)

    generator, tokenizer = start_twin(twin.compute, source, settings.sampling.max_new_tokens)
    engine = Engine(generator, tokenizer, max_batch=server.max_batch)
    app = build_app(engine, source.people, settings.sampling, server.key, server.limits, source.memory)
    app = build_site(app, engine, source.people, server.key, blind_test, server.limits)

    show_usage(sock, source, server.key is not None, blind_test is not None)
    # No access log: a request line is little, but a log that says nothing of who talks when is safer still.
    uvicorn_server = uvicorn.Server(server_config(app, server.limits))
    try:
        uvicorn_server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn stops gently on Ctrl-C, then raises it again for its caller
        pass
    finally:
        engine.close()
    print("server stopped")


def show_usage(sock: socket.socket, source: TwinSource, with_key: bool, judging: bool = False) -> None:
    """Where the server listens, its pages, and a first request to send it from a shell and from Python."""
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"
    speaker = source.people.target or "NAME"  # without a run, any name is a speaker
    known = len(source.people.names)
    print(
        f"serving {source.describe()} at {url}, as "
        + (f"any of the {known} speakers of the run" if known else "any speaker name")
        + "; Ctrl-C stops",
        flush=True,
    )
    print(
        source.memory.describe() if source.memory else "memory: none (--no-memory, or a run trained without it)",
        flush=True,
    )
    # The name is the user's data: quoted, it stays one argument of the shell and one literal of Python.
    body = json.dumps(
        {"model": speaker, "messages": [{"role": "user", "content": "hi! how are you?"}]}, ensure_ascii=False
    )
    header = f' -H "Authorization: Bearer ${API_KEY_VARIABLE}"' if with_key else ""
    key = f'os.environ["{API_KEY_VARIABLE}"]' if with_key else '"none"'
    page = url.removesuffix("/v1")
    print(
        f"in a browser: {page}/ to chat"
        + (f", {page}/judge for the blind test" if judging else "")
        + (f"; the pages ask for the key, or a link carries it: {page}/judge#key=KEY" if with_key else "")
    )
    print(
        f"""try it from a shell:
  curl {url}/chat/completions -H "Content-Type: application/json"{header} -d {shlex.quote(body)}
or from Python (pip install openai):
  import os; from openai import OpenAI
  client = OpenAI(base_url="{url}", api_key={key})
  reply = client.chat.completions.create(model={speaker!r}, messages=[{{"role": "user", "content": "hi!"}}])
  print(reply.choices[0].message.content)""",
        flush=True,
    )


if __name__ == "__main__":
    main()

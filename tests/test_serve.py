"""serve.py: its flags, what it checks before the model loads, and a whole run of it in a subprocess."""

import json
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import serve
from chat.loading import TwinSource
from chat.people import People
from model.generation import SamplingConfig
from tests.helpers import exit_status

ROOT = Path(__file__).resolve().parents[1]


def test_help_gives_every_default():
    text = serve.build_parser().format_help()
    defaults = SamplingConfig()
    for shown in [
        "(default: 127.0.0.1)",
        "(default: 8000)",
        "(default: $TWIN_API_KEY, else none)",
        "one at a time (default: 8)",
        "gets 413 (default: 4)",
        "is closed (default: 256)",
        "before it is closed (default: 10)",
        f"(default: {defaults.temperature})",
        f"(default: {defaults.top_p})",
        f"(default: {defaults.max_new_tokens})",
    ]:
        assert shown in " ".join(text.split()), shown


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host, loopback):
    assert serve.is_loopback(host) == loopback


def one_error_line(capsys, argv: list) -> str:
    assert exit_status(serve.main, argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("error: ") and [line for line in lines if "error" in line] == lines[-1:]
    return lines[-1]


def test_another_host_needs_an_api_key_before_anything_loads(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv(serve.API_KEY_VARIABLE, raising=False)
    error = one_error_line(capsys, ["--checkpoint", tmp_path / "no-run", "--host", "0.0.0.0"])
    assert "--host 0.0.0.0: other machines can reach it, so --api-key" in error
    assert "empty" in one_error_line(capsys, ["--host", "0.0.0.0", "--api-key", " "])


@pytest.mark.parametrize("key", ["ключ-123", "sk-abc\u00a0def", "sk abc", "sk-\tx"])
def test_a_key_no_header_can_carry_is_refused_before_anything_loads(capsys, monkeypatch, tmp_path, key):
    error = one_error_line(capsys, ["--checkpoint", tmp_path / "no-run", "--api-key", key])
    assert "--api-key (or $TWIN_API_KEY): only printable ASCII without spaces" in error
    monkeypatch.setenv(serve.API_KEY_VARIABLE, key)
    assert "only printable ASCII" in one_error_line(capsys, ["--checkpoint", tmp_path / "no-run"])


def test_more_connections_than_the_process_may_open_is_one_line(capsys, tmp_path):
    error = one_error_line(capsys, ["--checkpoint", tmp_path / "no-run", "--max-connections", 10**9])
    assert "--max-connections 1000000000: this process may open only" in error


def test_a_busy_port_and_a_missing_run_are_one_line(capsys, tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    with busy:
        error = one_error_line(capsys, ["--port", port, "--threads", 1])
    assert f"--port {port}: cannot listen there" in error
    assert "run.json: missing" in one_error_line(capsys, ["--checkpoint", tmp_path])
    assert exit_status(serve.main, ["--max-new-tokens", 0]) == 2  # argparse's own usage and error lines
    assert (
        capsys.readouterr().err.splitlines()[-1].endswith("error: argument --max-new-tokens: must be 1 or more, got 0")
    )
    assert exit_status(serve.main, ["--max-batch", 0]) == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("error: argument --max-batch: must be 1 or more, got 0")


def test_a_blind_test_needs_a_run_before_anything_loads(capsys):
    assert "--judge: needs --checkpoint" in one_error_line(capsys, ["--judge", "Misha", "--model", "no-such-model"])


def test_it_prints_where_the_pages_are(capsys):
    with serve.listen("127.0.0.1", 0) as sock:
        port = sock.getsockname()[1]
        serve.show_usage(sock, TwinSource("model", None, People("Misha", {})), with_key=True, judging=True)
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("in a browser:")]
    assert line.startswith(
        f"in a browser: http://127.0.0.1:{port}/ to chat, http://127.0.0.1:{port}/judge for the "
        "blind test; the pages ask for the key"
    )


def test_the_examples_it_prints_quote_a_hostile_name(capsys):
    name = 'O\'Brien "$(rm -rf ~)" `x`'
    with serve.listen("127.0.0.1", 0) as sock:
        serve.show_usage(sock, TwinSource("model", None, People(name, {name: "Bob"})), with_key=True)
    out = capsys.readouterr().out
    curl = next(line for line in out.splitlines() if line.strip().startswith("curl"))
    words = shlex.split(curl)
    assert json.loads(words[words.index("-d") + 1])["model"] == name
    assert "Authorization: Bearer $TWIN_API_KEY" in words and f"model={name!r}" in out


@pytest.mark.slow
def test_serve_answers_then_stops_on_ctrl_c(tiny_run):
    server = subprocess.Popen(
        [
            sys.executable,
            "serve.py",
            "--checkpoint",
            tiny_run,
            "--port",
            "0",
            "--threads",
            "1",
            "--max-new-tokens",
            "3",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = server.stdout.readline()
        assert first.startswith(f"serving {tiny_run}") or "serving " in first, server.stderr.read()
        url = first.split(" at ")[1].split(",")[0]
        reply = httpx.post(
            f"{url}/chat/completions",
            timeout=60,
            json={"model": "Alexander Smirnov", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert reply.json()["usage"]["completion_tokens"] == 3
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=60)
    assert server.returncode == 0 and out.rstrip().endswith("server stopped"), err
    assert "reply finished" in err and "hi" not in err.replace("hit", "")

"""The server against hostile and unlucky clients (issue 25): each attack is refused before it costs work, or costs
only the turns that fit, and a normal request still gets its answer while it runs."""

import logging
import select
import socket
import threading

import httpx
import openai
import pytest
import torch

from data.chatml import fit_prompt, render
from data.sessions import Turn
from model.generation import Generator
from serving import connections
from serving.api import MAX_STOP_LENGTH
from serving.connections import Limits, OncePerInterval
from tests.test_serving_api import KEY, SPEAKER, RunningServer, serve, twin  # noqa: F401 (twin: the fixture)

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def guarded(twin):  # noqa: F811
    """A server with small limits, for the tests that do not wait on them: a body of 20,000 bytes at most."""
    model, tokenizer, people = twin
    engine, running = serve(
        Generator(model, 128, torch.device("cpu")),
        tokenizer,
        people,
        api_key=KEY,
        limits=Limits(max_body_bytes=20_000, max_connections=64, request_timeout_s=60),
    )
    running.headers = {"Authorization": f"Bearer {KEY}"}
    yield engine, running
    running.stop()
    engine.close()


def post(running, body=None, headers=None, timeout=60, **options) -> httpx.Response:
    return httpx.post(f"{running.url}/chat/completions", json=body, headers=headers, timeout=timeout, **options)


def test_the_key_is_checked_before_the_body_is_read(guarded):
    _, running = guarded
    bad_json = post(running, content=b"{bad", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 401 and bad_json.json()["error"]["code"] == "invalid_api_key"
    huge = post(running, content=b"x" * 100_000)  # over the limit, but unread: the key comes first
    assert huge.status_code == 401 and huge.headers["connection"] == "close"


def test_a_body_over_the_limit_is_a_413_declared_or_not(guarded):
    engine, running = guarded
    declared = post(
        running, {"model": SPEAKER, "messages": [{"role": "user", "content": "a" * 30_000}]}, headers=running.headers
    )
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"
    chunked = post(running, content=iter([b"{" + b" " * 15_000, b" " * 15_000 + b"}"]), headers=running.headers)
    assert chunked.status_code == 413 and "20000 bytes" in chunked.json()["error"]["message"]
    assert sum(engine.outcomes.values()) == 0


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"stop": ["Ж" * (MAX_STOP_LENGTH + 1)]}, "stop[0]"),
        ({"stop": "Ж" * (MAX_STOP_LENGTH + 1)}, "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"seed": 2**64}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"messages": []}, "messages"),
    ],
)
def test_fields_out_of_bounds_are_a_400_before_any_work(guarded, fields, param):
    engine, running = guarded
    refused = post(running, {"model": SPEAKER, "messages": HI, "max_tokens": 2, **fields}, headers=running.headers)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == param
    assert sum(engine.outcomes.values()) == 0


def test_the_widest_seed_and_stop_strings_are_served(guarded):
    _, running = guarded
    for seed in (2**64 - 1, -(2**63)):
        reply = post(
            running,
            {"model": SPEAKER, "messages": HI, "max_tokens": 1, "seed": seed, "stop": ["Ж" * MAX_STOP_LENGTH] * 4},
            headers=running.headers,
        )
        assert reply.status_code == 200, reply.text


def test_every_listed_speaker_is_a_model_and_a_new_contact_is_answered(guarded):
    _, running = guarded
    client = openai.OpenAI(base_url=running.url, api_key=KEY, max_retries=0)
    ids = [model.id for model in client.models.list().data]
    assert len(ids) == 7 and [client.models.retrieve(name).id for name in ids] == ids
    with pytest.raises(openai.NotFoundError) as unknown:
        client.models.retrieve("Nobody")
    assert unknown.value.code == "model_not_found"
    reply = post(
        running,
        {
            "model": SPEAKER,
            "max_tokens": 1,
            "messages": [
                {"role": "user", "name": "Bob", "content": "hi"},
                {"role": "user", "name": "Ann", "content": "hey"},
            ],
        },
        headers=running.headers,
    )
    assert reply.status_code == 200 and reply.json()["twin_new_contacts"] == ["Bob", "Ann"]


def test_a_body_that_does_not_come_is_a_408(twin):  # noqa: F811
    model, tokenizer, people = twin
    engine, running = serve(
        Generator(model, 128, torch.device("cpu")), tokenizer, people, limits=Limits(request_timeout_s=0.2)
    )
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=30) as client:
            client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            assert client.recv(100).startswith(b"HTTP/1.1 408")
        with socket.create_connection(("127.0.0.1", running.port), timeout=30) as silent:
            assert silent.recv(100) == b""  # closed: no request head came in time
        with socket.create_connection(("127.0.0.1", running.port), timeout=30) as slow:
            slow.sendall(b"GET /v1/models HTTP/1.1\r\n")  # a head that never ends
            assert slow.recv(100) == b""
    finally:
        running.stop()
        engine.close()


def test_past_max_connections_the_longest_waiting_is_closed_and_a_request_still_gets_in(twin):  # noqa: F811
    model, tokenizer, people = twin
    engine, running = serve(
        Generator(model, 128, torch.device("cpu")),
        tokenizer,
        people,
        limits=Limits(max_connections=4, request_timeout_s=60),
    )
    silent = [socket.create_connection(("127.0.0.1", running.port), timeout=30) for _ in range(8)]
    try:
        assert httpx.get(f"{running.url}/models", timeout=30).status_code == 200  # the ninth connection
        assert [sock.recv(1) for sock in silent[:5]] == [b""] * 5  # the five that waited longest
        assert select.select(silent[5:], [], [], 0)[0] == []  # the newest three are still open
    finally:
        for sock in silent:
            sock.close()
        running.stop()
        engine.close()


async def no_app(scope, receive, send) -> None:
    """An ASGI app that answers nothing: the connections are the test."""


def test_a_client_that_reconnects_at_once_loses_its_own_connections_not_anothers():
    running = RunningServer(no_app, Limits(max_connections=4, request_timeout_s=60))

    def connect(host: str) -> socket.socket:
        return socket.create_connection(("127.0.0.1", running.port), timeout=30, source_address=(host, 0))

    other = connect("127.0.0.3")  # a client idle between two requests: the oldest connection
    hog = [connect("127.0.0.2") for _ in range(4)]
    try:
        for _ in range(3):  # each connection the server closes is opened again at once, the newest
            [closed] = select.select([other, *hog], [], [], 30)[0]
            assert closed in hog and closed.recv(1) == b""  # not the other's
            hog.remove(closed)
            closed.close()
            hog.append(connect("127.0.0.2"))
    finally:
        for sock in [other, *hog]:
            sock.close()
        running.stop()


def test_a_client_gone_while_its_prompt_is_made_gets_no_reply_written(twin):  # noqa: F811
    model, tokenizer, people = twin
    engine, running = serve(Generator(model, 128, torch.device("cpu")), tokenizer, people)
    release, prompt = threading.Event(), engine.prompt
    engine.prompt = lambda *args: release.wait(60) and prompt(*args)  # a conversation that takes long to tokenize
    try:
        with pytest.raises(httpx.ReadTimeout):  # a client that gives up waiting
            post(running, {"model": SPEAKER, "messages": HI, "max_tokens": 2}, timeout=0.5)
        while running.server.server_state.connections:  # the server has seen it leave
            threading.Event().wait(0.01)
        release.set()
        assert post(running, {"model": SPEAKER, "messages": HI, "max_tokens": 2}).status_code == 200
        assert engine.outcomes == {"finished": 1}  # the first request's reply was never started
    finally:
        running.stop()
        engine.close()


def test_a_flood_of_one_log_line_is_held_back(monkeypatch):
    logger, records = logging.getLogger("tests.flood"), []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    logger.addFilter(OncePerInterval(interval_s=10))
    now = [100.0]
    monkeypatch.setattr(connections.time, "monotonic", lambda: now[0])
    try:
        for _ in range(1000):
            logger.error("socket.accept() out of system resource")
        logger.error("another message")
        now[0] += 11
        logger.error("socket.accept() out of system resource")
    finally:
        logger.removeHandler(handler)
    assert [record.getMessage() for record in records] == [
        "socket.accept() out of system resource",
        "another message",
        "socket.accept() out of system resource (999 more like it held back)",
    ]


class CountingTokenizer:
    """A tokenizer that counts the texts it encodes."""

    def __init__(self, tokenizer):
        self.tokenizer, self.encoded = tokenizer, 0

    def encode(self, *args, **kwargs):
        self.encoded += 1
        return self.tokenizer.encode(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_fitting_the_prompt_reads_only_the_newest_turns_that_fit(dolphin_tokenizer):
    turns = [Turn(("Anna", "Bob")[index % 2], [f"word{index}"]) for index in range(20_000)]
    counting = CountingTokenizer(dolphin_tokenizer)
    ids, kept = fit_prompt(turns, counting, "Anna", 200)
    assert 5 < kept < 50 and counting.encoded < 100  # not 20,000 turns encoded, nor assembled 20,000 times
    assert ids == render(turns[-kept:], dolphin_tokenizer, open_speaker="Anna").ids
    assert len(render(turns[-kept - 1 :], dolphin_tokenizer, open_speaker="Anna").ids) > 200

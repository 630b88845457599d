"""The server's connections: how long one may take to send a request, how many may be open, and a log that one
error repeated cannot flood.

uvicorn closes a connection that idles after a response, but not one that never sends a whole request: silent
or slow sockets stayed open for good, and enough of them used up the process's files, so that real clients could
not connect while asyncio logged every refused accept (164,000 lines in 30 s). Here a connection must send a
request's head within `request_timeout_s` of opening or of its last response, and past `max_connections` a
connection still waiting for a request is closed to make room for the new one: one of the client (the address)
that holds the most connections, the one of its that has waited longest. Choosing by age alone let a client that
reconnects at once keep the newest places for good, while those of others, older (idle between two requests),
were closed for it; now a client pays for the connections it holds, however new. A connection in the middle of
a request is never closed for another; only when all are, the newcomer gets a 503.
"""

import asyncio
import functools
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True)
class Limits:
    """What one client may ask of the server: serve.py's --max-body-mb, --max-connections, --request-timeout."""

    max_body_bytes: int = 4 * 2**20
    max_connections: int = 256
    request_timeout_s: float = 10.0  # to send a request's head, and then its body


class GuardedProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's head and a place among max_connections."""

    def __init__(self, *args, limits: Limits, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.deadline: asyncio.TimerHandle | None = None  # set while the connection waits for a request's head
        self.waiting_since = 0.0
        self.awaited_after = None  # the request cycle before the awaited one (None: the connection's first)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_request()
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.deadline is not None and self.cycle is not self.awaited_after:  # a request's head has come
            self._stop_waiting()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle.response_complete and not self.transport.is_closing():  # no pipelined request began
            self._await_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_request(self) -> None:
        self._stop_waiting()
        self.awaited_after, self.waiting_since = self.cycle, time.monotonic()
        self.deadline = self.loop.call_later(self.limits.request_timeout_s, self._close)

    def _stop_waiting(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _close(self) -> None:
        self._stop_waiting()
        if not self.transport.is_closing():
            self.transport.close()

    def _make_room(self) -> None:
        """One connection too many is open: close one waiting for a request, of the client that holds the most
        connections, the one of its that has waited longest; else this one."""
        open_ = [other for other in self.connections if not other.transport.is_closing()]
        if len(open_) <= self.limits.max_connections:
            return  # the ones closed before have not yet been told
        held = Counter(client_address(other) for other in open_)
        waiting = [
            other
            for other in open_
            if isinstance(other, GuardedProtocol) and other.deadline is not None and other is not self
        ]
        if waiting:
            min(waiting, key=lambda other: (-held[client_address(other)], other.waiting_since))._close()
            return
        body = json.dumps(
            {
                "error": {
                    "message": f"the server is busy: all {self.limits.max_connections} connections "
                    "it takes (--max-connections) are in the middle of a request",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
        ).encode()
        self.transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        self._close()


def client_address(connection: H11Protocol) -> str | None:
    """The host a connection comes from (its port changes with each connection); None where it is not known."""
    return connection.client[0] if connection.client else None


class OncePerInterval(logging.Filter):
    """Lets each message through once per `interval_s` seconds; the next one through says how many were held back."""

    def __init__(self, interval_s: float = 10.0):
        super().__init__()
        self.interval_s = interval_s
        self.shown: dict[tuple, float] = {}
        self.held: Counter = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        if key in self.shown and now - self.shown[key] < self.interval_s:
            self.held[key] += 1
            return False
        if len(self.shown) > 1000:  # messages that vary (a port, a count): forget, rather than grow
            self.shown.clear()
        self.shown[key] = now
        if held := self.held.pop(key, 0):
            record.msg = f"{record.msg} ({held} more like it held back)"
        return True


LIMITED_LOGS = ("asyncio", "uvicorn.error")  # where a refused accept and a bad request are logged


def server_config(app, limits: Limits) -> uvicorn.Config:
    """uvicorn's settings for `app` under `limits`; its logs of errors limited to one line per kind per 10 s."""
    for name in LIMITED_LOGS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, OncePerInterval) for existing in logger.filters):
            logger.addFilter(OncePerInterval())
    # No access log: a request line is little, but a log that says nothing of who talks when is safer still.
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        http=functools.partial(GuardedProtocol, limits=limits),  # type: ignore[arg-type]
        # asyncio tries up to `backlog` accepts in a row, logging each when files run out
        backlog=min(2048, limits.max_connections),
    )

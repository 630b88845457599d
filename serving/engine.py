"""The model worker: one thread answers the queued requests, a batch at a time, token by token.

Decoding reads every weight of the model for each new token, so a batch of replies costs little more than
one. The worker takes the first request in the queue and, without waiting, up to max_batch - 1 more already
there, and writes their replies together (model.generation.BatchDecoder); a request alone goes the
Generator's way, which reuses the cached prefix of the last prompt and can run a compiled step. The batching
is static: requests that come while a batch decodes wait for the next one, and none is dropped. Each row
leaves the batch as its reply ends; one the model fails on fails alone.

The worker runs off the event loop, which stays free to take new requests, stream tokens and notice clients
that leave: a client gone mid-reply (or still waiting) is cancelled, and its reply ends at its next token.

What the worker logs are counts and times, never a name or a word of the conversation.
"""

import asyncio
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TextIO

from core.errors import TwinError
from data.chatml import render, reply_prompt, turn_stop_ids
from data.sessions import Turn
from model.generation import BatchDecoder, BatchRow, Chosen, Generator, SamplingConfig, random_on_device, random_stream
from model.tokenizer import Tokenizer
from serving.reply import ReplyText


class ContextLengthError(TwinError):
    """A request the context cannot hold: its newest turn and the reply's max_tokens do not fit."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param  # the request field to change


class ReplyFailed(TwinError):
    """The model failed on a request (its scores overflowed, say); the worker goes on with the next."""


@dataclass
class ReplyRequest:
    prompt: list[int]
    sampling: SamplingConfig
    seed: int | None = None  # None: a random one
    stop: list[str] = field(default_factory=list)


@dataclass
class Finished:
    """The last event of a reply."""

    messages: list[str]
    finish_reason: str  # "stop": the turn ended or a stop string came; "length": max_tokens ran out
    prompt_tokens: int
    completion_tokens: int


class _Job:
    """A request in the queue and the way back to the event loop that waits for its reply."""

    def __init__(self, request: ReplyRequest, loop: asyncio.AbstractEventLoop):
        self.request, self.loop = request, loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()

    def send(self, event: "str | Finished | ReplyFailed") -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop has closed: no one is waiting any more
            self.cancelled.set()


class _Writing:
    """One reply being written: its tokens become text pieces for its client, up to its end."""

    def __init__(self, job: _Job, tokenizer: Tokenizer, stop_ids: set[int]):
        self.job, self.stop_ids = job, stop_ids
        self.text, self.decoder = ReplyText(job.request.stop), tokenizer.stream()
        self.tokens, self.finish_reason = 0, "length"

    def add(self, token: int) -> bool:
        """Send the token's text; False once the reply is over (a stop token or string, or its client gone)."""
        self.tokens += 1
        if token in self.stop_ids or self.job.cancelled.is_set():
            self.finish_reason = "stop"
            return False
        if piece := self.text.add(self.decoder.add(token)):
            self.job.send(piece)
        if self.text.stopped:
            self.finish_reason = "stop"
            return False
        return True

    def finish(self) -> Finished | None:
        """Send the text held back; the reply's Finished, or None if its client left before the end."""
        if self.job.cancelled.is_set():
            return None
        if piece := self.text.add(self.decoder.flush()) + self.text.finish():
            self.job.send(piece)
        return Finished(self.text.messages, self.finish_reason, len(self.job.request.prompt), self.tokens)


class Engine:
    """Answers ReplyRequests with one model, up to `max_batch` at a time, in the order they came."""

    def __init__(self, generator: Generator, tokenizer: Tokenizer, log: TextIO | None = None, max_batch: int = 8):
        self.generator, self.tokenizer, self.max_batch = generator, tokenizer, max_batch
        self.stop_ids = turn_stop_ids(tokenizer)
        self.log = log or sys.stderr
        self.outcomes: Counter = Counter()  # replies "finished", "cancelled" and "failed", for the log and tests
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="twin-model", daemon=True)
        self._worker.start()

    @property
    def context(self) -> int:
        return self.generator.max_len

    def close(self) -> None:
        """Stop the worker once the requests already queued are answered."""
        self._jobs.put(None)
        self._worker.join()

    def prompt(self, turns: list[Turn], speaker: str, max_tokens: int, memory: list[Turn] = ()) -> list[int]:
        """The prompt for `speaker`'s next turn, as sample.py makes it: the conversation rendered as in training
        after its `memory`, the oldest turns (the memory's first) dropped until it fits with room for the reply.
        ContextLengthError where even the newest turn leaves no room."""
        if max_tokens >= self.context:
            raise ContextLengthError(
                f"max_tokens ({max_tokens}) must be below the context ({self.context} tokens)", "max_tokens"
            )
        ids, kept = reply_prompt(turns, self.tokenizer, speaker, self.context, max_tokens, memory)
        if turns and not kept:
            newest = len(render(turns[-1:], self.tokenizer, open_speaker=speaker).ids)
            raise ContextLengthError(
                f"the last message takes {newest} tokens; the context holds {self.context}, "
                f"{max_tokens} of them for the reply (max_tokens)",
                "messages",
            )
        return ids

    async def reply(self, request: ReplyRequest) -> AsyncIterator["str | Finished"]:
        """The reply's text as it is written, in pieces, then Finished. Leaving the loop early (a client gone)
        cancels the request. Raises ReplyFailed if the model fails on it."""
        job = _Job(request, asyncio.get_running_loop())
        self._jobs.put(job)
        try:
            while True:
                event = await job.events.get()
                if isinstance(event, ReplyFailed):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            job.cancelled.set()

    def _work(self) -> None:
        while group := self._next_group():
            waiting = [job for job in group if not job.cancelled.is_set()]
            for _ in range(len(group) - len(waiting)):
                self._note("cancelled", "before it started")
            if len(waiting) == 1:
                self._answer_alone(waiting[0])
            elif waiting:
                self._answer_together(waiting)

    def _next_group(self) -> list[_Job]:
        """The first job in the queue (waiting for one), then up to max_batch - 1 more already there;
        [] once the engine closes."""
        group = [self._jobs.get()]
        while group[-1] is not None and len(group) < self.max_batch:
            try:
                group.append(self._jobs.get_nowait())
            except queue.Empty:
                break
        if group[-1] is None:
            group.pop()
            if group:
                self._jobs.put(None)  # answer these first, then stop
        return group

    def _answer_alone(self, job: _Job) -> None:
        started = time.perf_counter()
        request, reply = job.request, _Writing(job, self.tokenizer, self.stop_ids)
        try:
            for token in self.generator.generate(
                request.prompt, request.sampling, self.stop_ids, random_stream(request.seed)
            ):
                if not reply.add(token):
                    break
            finished = reply.finish()
        except Exception as error:  # the worker serves every other client: one failed reply must not stop it
            self._fail(job, error, batch=1)
            return
        self._conclude(job, finished, started, batch=1)

    def _answer_together(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        device, requests = self.generator.device, [job.request for job in jobs]
        rows = [
            BatchRow(request.prompt, request.sampling, random_on_device(random_stream(request.seed), device))
            for request in requests
        ]
        writing = {row: _Writing(job, self.tokenizer, self.stop_ids) for row, job in enumerate(jobs)}
        try:
            decoder = BatchDecoder(self.generator.model, rows, self.stop_ids, device)
            for step in decoder:
                for chosen in step:
                    if not self._advance(writing[chosen.row], chosen, started, len(jobs)):
                        decoder.drop(chosen.row)
                        del writing[chosen.row]
        except Exception as error:  # the batch itself failed (its cache, a forward pass): every open reply fails
            for reply in writing.values():
                self._fail(reply.job, error, len(jobs))

    def _advance(self, reply: _Writing, chosen: Chosen, started: float, batch: int) -> bool:
        """Give the reply its row's token; False once the reply is over (finished, cancelled or failed)."""
        try:
            if chosen.error is not None:
                raise chosen.error
            if reply.add(chosen.token) and not chosen.last:
                return True
            finished = reply.finish()
        except Exception as error:  # this reply fails alone; the rest of the batch goes on
            self._fail(reply.job, error, batch)
            return False
        self._conclude(reply.job, finished, started, batch)
        return False

    def _conclude(self, job: _Job, finished: Finished | None, started: float, batch: int) -> None:
        took = f"in {time.perf_counter() - started:.2f} s, batch of {batch}"
        if finished is None:
            self._note("cancelled", f"mid-reply, {took}")
        else:
            self._note(
                "finished",
                f"{finished.prompt_tokens} prompt + {finished.completion_tokens} reply "
                f"tokens ({finished.finish_reason}) {took}",
            )
            job.send(finished)  # after the note: a client that has its reply finds it counted

    def _fail(self, job: _Job, error: Exception, batch: int) -> None:
        job.send(ReplyFailed(f"the model failed on this request: {type(error).__name__}"))
        self._note("failed", f"{type(error).__name__}, batch of {batch}")

    def _note(self, outcome: str, detail: str) -> None:
        self.outcomes[outcome] += 1
        print(f"reply {outcome} {detail}; {self._jobs.qsize()} waiting", file=self.log, flush=True)

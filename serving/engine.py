"""The model worker: one thread answers the queued requests together, token by token.

Decoding reads every weight of the model for each new token, so a batch of replies costs little more than
one. The worker writes up to max_batch replies at once (model.generation.BatchDecoder), and the batching is
continuous: between two steps it takes the requests that came, up to max_batch, so a request never waits for
the replies already being written to end. A new request's prompt goes in a chunk a step (prefill_chunk
tokens) beside the others' decoding, the prompts waiting taking turns: a long prompt (20,000 messages that
fill the context) slows the others' replies, but holds none of them. Requests past max_batch wait in order,
and none is dropped. Each row leaves the batch as its reply ends; one the model fails on fails alone.

The worker runs off the event loop, which stays free to take new requests, stream tokens and notice clients
that leave: a client gone mid-reply (or still waiting) is cancelled, and its row leaves at the next step.

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
from model.generation import (
    PREFILL_CHUNK,
    BatchDecoder,
    BatchRow,
    Chosen,
    Generator,
    SamplingConfig,
    random_stream,
)
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
        self.started, self.together = time.perf_counter(), 1  # together: the most replies written at once with it

    def add(self, token: int) -> bool:
        """Send the token's text; False once the reply is over (a stop token or string)."""
        self.tokens += 1
        if token in self.stop_ids:
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
    """Answers ReplyRequests with one model, up to `max_batch` at a time, taken in the order they came."""

    def __init__(
        self,
        generator: Generator,
        tokenizer: Tokenizer,
        log: TextIO | None = None,
        max_batch: int = 8,
        prefill_chunk: int = PREFILL_CHUNK,
    ):
        self.generator, self.tokenizer, self.max_batch, self.prefill_chunk = (
            generator,
            tokenizer,
            max_batch,
            prefill_chunk,
        )
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
        decoder, writing, closing = self._decoder(), {}, False
        while True:
            closing = self._admit(decoder, writing, closing)
            if not writing:  # the engine closes, and every reply is written
                return
            for row, reply in list(writing.items()):
                reply.together = max(reply.together, len(writing))
                if reply.job.cancelled.is_set():  # its client has gone: the others need the place
                    decoder.drop(row)
                    del writing[row]
                    self._conclude(reply, None)
            try:
                step = decoder.step()
            except Exception as error:  # the batch's pass failed: every open reply fails, the worker goes on
                for reply in writing.values():
                    self._fail(reply, error)
                decoder, writing = self._decoder(), {}
                continue
            for chosen in step:
                if not self._advance(writing[chosen.row], chosen):
                    decoder.drop(chosen.row)
                    del writing[chosen.row]

    def _decoder(self) -> BatchDecoder:
        return BatchDecoder(self.generator.model, [], self.stop_ids, self.generator.device, self.prefill_chunk)

    def _admit(self, decoder: BatchDecoder, writing: dict[int, "_Writing"], closing: bool) -> bool:
        """Add the requests waiting to the decoder, up to max_batch replies written at once, waiting for one
        while none is written; whether the engine closes (then none is added)."""
        while not closing and len(writing) < self.max_batch:
            try:
                job = self._jobs.get(block=not writing)
            except queue.Empty:
                break
            if job is None:
                return True
            if job.cancelled.is_set():
                self._note("cancelled", "before it started")
                continue
            request = job.request
            random = random_stream(request.seed)  # the decoder draws it on its device
            reply = _Writing(job, self.tokenizer, self.stop_ids)
            try:
                writing[decoder.add(BatchRow(request.prompt, request.sampling, random))] = reply
            except Exception as error:  # its cache could not be made (memory, say): it fails alone
                self._fail(reply, error)
        return closing

    def _advance(self, reply: _Writing, chosen: Chosen) -> bool:
        """Give the reply its row's token; False once the reply is over (finished, cancelled or failed)."""
        try:
            if chosen.error is not None:
                raise chosen.error
            if reply.add(chosen.token) and not chosen.last:
                return True
            finished = reply.finish()
        except Exception as error:  # this reply fails alone; the rest of the batch goes on
            self._fail(reply, error)
            return False
        self._conclude(reply, finished)
        return False

    def _conclude(self, reply: _Writing, finished: Finished | None) -> None:
        took = f"in {time.perf_counter() - reply.started:.2f} s, batch of {reply.together}"
        if finished is None:
            self._note("cancelled", f"mid-reply, {took}")
        else:
            self._note(
                "finished",
                f"{finished.prompt_tokens} prompt + {finished.completion_tokens} reply "
                f"tokens ({finished.finish_reason}) {took}",
            )
            reply.job.send(finished)  # after the note: a client that has its reply finds it counted

    def _fail(self, reply: _Writing, error: Exception) -> None:
        reply.job.send(ReplyFailed(f"the model failed on this request: {type(error).__name__}"))
        self._note("failed", f"{type(error).__name__}, batch of {reply.together}")

    def _note(self, outcome: str, detail: str) -> None:
        self.outcomes[outcome] += 1
        print(f"reply {outcome} {detail}; {self._jobs.qsize()} waiting", file=self.log, flush=True)

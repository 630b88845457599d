"""The model worker: one thread answers the requests one at a time, token by token, while they wait in a queue.

The model decodes with one KV cache, so a second reply at the same time would only halve the speed of both;
a queue serves every client in turn and drops none. The worker runs off the event loop, which stays free to
take new requests, stream tokens and notice clients that leave: a client gone mid-reply (or still waiting)
is cancelled, and the worker moves on at its next token.

What the worker logs are counts and times, never a name or a word of the conversation.
"""
import asyncio
import queue
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import AsyncIterator, TextIO

from core.errors import TwinError
from data.chatml import fit_prompt, render, turn_stop_ids
from data.sessions import Turn
from model.generation import Generator, SamplingConfig, random_stream
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


class Engine:
    """Answers ReplyRequests with one Generator, in the order they came."""

    def __init__(self, generator: Generator, tokenizer: Tokenizer, log: TextIO | None = None):
        self.generator, self.tokenizer = generator, tokenizer
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

    def prompt(self, turns: list[Turn], speaker: str, max_tokens: int) -> list[int]:
        """The prompt for `speaker`'s next turn, as sample.py makes it: the conversation rendered as in training,
        its oldest turns dropped until it fits with room for the reply. ContextLengthError where even the
        newest turn leaves no room."""
        room = self.context - max_tokens
        if room < 1:
            raise ContextLengthError(f"max_tokens ({max_tokens}) must be below the context ({self.context} tokens)",
                                     "max_tokens")
        ids, kept = fit_prompt(turns, self.tokenizer, speaker, room)
        if turns and not kept:
            newest = len(render(turns[-1:], self.tokenizer, open_speaker=speaker).ids)
            raise ContextLengthError(f"the last message takes {newest} tokens; the context holds {self.context}, "
                                     f"{max_tokens} of them for the reply (max_tokens)", "messages")
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
        while (job := self._jobs.get()) is not None:
            if job.cancelled.is_set():
                self._note("cancelled", "before it started")
                continue
            started = time.perf_counter()
            try:
                finished = self._answer(job)
            except Exception as error:  # the worker serves every other client: one failed reply must not stop it
                job.send(ReplyFailed(f"the model failed on this request: {type(error).__name__}"))
                self._note("failed", f"{type(error).__name__}")
                continue
            took = f"in {time.perf_counter() - started:.2f} s"
            if finished is None:
                self._note("cancelled", f"mid-reply, {took}")
            else:
                self._note("finished", f"{finished.prompt_tokens} prompt + {finished.completion_tokens} reply "
                                       f"tokens {took} ({finished.finish_reason})")
                job.send(finished)  # after the note: a client that has its reply finds it counted

    def _answer(self, job: _Job) -> Finished | None:
        """Send the reply's text token by token; its Finished, or None if the client left before it was done."""
        request = job.request
        random = random_stream(request.seed)
        text, decoder = ReplyText(request.stop), self.tokenizer.stream()
        tokens, finish_reason = 0, "length"
        for token in self.generator.generate(request.prompt, request.sampling, self.stop_ids, random):
            tokens += 1
            if token in self.stop_ids or job.cancelled.is_set():
                finish_reason = "stop"
                break
            if piece := text.add(decoder.add(token)):
                job.send(piece)
            if text.stopped:
                finish_reason = "stop"
                break
        if job.cancelled.is_set():
            return None
        if piece := text.add(decoder.flush()) + text.finish():
            job.send(piece)
        return Finished(text.messages, finish_reason, len(request.prompt), tokens)

    def _note(self, outcome: str, detail: str) -> None:
        self.outcomes[outcome] += 1
        print(f"reply {outcome} {detail}; {self._jobs.qsize()} waiting", file=self.log, flush=True)

"""The HTTP side: OpenAI's chat completions and models routes, their JSON, and OpenAI-style errors.

Who speaks: `model` is the speaker the twin answers as (GET /v1/models lists them, GET /v1/models/{id} gives
one). A message's `name` says who wrote it; without one, a user message is the speaker's partner's (the one they
wrote to most in the run, else "User") and an assistant message the speaker's own. A `name` the run never saw is
a new contact: their messages are written as the generic partner's, "User", so that nothing the twin learnt of
one person's chats is taken for another's, and the response lists such names in `twin_new_contacts`. A message's
lines are its messages in the chat (the reply's are joined so too), unless `twin_messages` lists them. System and
developer messages are left out: the twin learnt people's conversations, where no instructions stand, so a system
prompt would be text it never saw in training, rendered as someone's turn; clients that always send one still
work. A request with no other message (`"messages": []`) is refused with 400: the twin answers a conversation.

The reply is the speaker's turn: one assistant message whose content is the turn's messages joined by "\\n",
and `twin_messages`, the list of them.

Before any route reads a request, Gate checks its key and reads its body, up to Limits.max_body_bytes (413 past
it) and within Limits.request_timeout_s (408): a client without the key, or with a huge or endless body, costs
the server nothing more. A client that leaves before its reply is written stops the work on it.
"""

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from typing import Annotated, Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from chat.people import People, SpeakerError
from chat.recall import TwinMemory
from data.sessions import Turn, clean_message, clean_name
from model.generation import SamplingConfig
from serving.connections import Limits
from serving.engine import ContextLengthError, Engine, Finished, ReplyFailed, ReplyRequest

MAX_STOP_STRINGS = 4  # as OpenAI's API
MAX_STOP_LENGTH = 1000  # characters: a stop string is a word or a line; the check costs its length per token
SEEDS = (-(2**63), 2**64 - 1)  # what torch's generators take
GENERIC_PARTNER = "User"  # whom a new contact's messages are written as
DISCONNECT_CHECK_S = 0.5  # how often a waiting non-streaming request checks that its client is still there


class APIError(Exception):
    """An error a client gets as OpenAI's JSON body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    twin_messages: list[str] | None = None  # the turn's messages, where a line break would not tell them apart

    def texts(self) -> list[str]:
        """The chat messages this message holds: `twin_messages`, else one for each line of its content."""
        if self.twin_messages is not None:
            texts = self.twin_messages
        elif isinstance(self.content, list):
            texts = [line for part in self.content for line in part.text.split("\n")]
        else:
            texts = (self.content or "").split("\n")
        return [clean_message(text) for text in texts if text.strip()]


class StreamOptions(BaseModel):
    include_usage: bool = False


StopString = Annotated[str, Field(max_length=MAX_STOP_LENGTH)]


class ChatCompletionRequest(BaseModel):
    """OpenAI's request; fields it has that a twin has no use for (tools, logprobs, penalties) are ignored.
    top_k and repetition_penalty are extensions, as in vLLM."""

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[Message]
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name for max_tokens
    seed: int | None = Field(None, ge=SEEDS[0], le=SEEDS[1])
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None

    def sampling(self, defaults: SamplingConfig) -> SamplingConfig:
        """The server's defaults, with what the request sets."""
        given = dict(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            max_new_tokens=self.max_completion_tokens or self.max_tokens,
        )
        return replace(defaults, **{key: value for key, value in given.items() if value is not None})

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


def speaker_named(model: str, people: People) -> str:
    """`model`, a speaker the run knows; 404 model_not_found, offering the closest names, if not."""
    name = clean_name(model)
    if not name:
        raise APIError(400, "model: empty; it names the speaker to answer as", param="model")
    try:
        return people.check(name, "model")
    except SpeakerError as error:
        raise APIError(404, str(error), param="model", code="model_not_found") from None


def conversation(messages: list[Message], speaker: str, people: People) -> tuple[list[Turn], list[str]]:
    """The messages as the turns of a chat: consecutive messages of one person make one turn, as in training;
    and the names the run never saw, whose messages are the generic partner's. 400 where no message has text."""
    partner = people.user_for(speaker, None)
    turns: list[Turn] = []
    new_contacts: list[str] = []
    for index, message in enumerate(messages):
        texts = message.texts()
        if message.role in ("system", "developer") or not texts:
            continue
        author = speaker if message.role == "assistant" else partner
        if message.name is not None:
            author = clean_name(message.name)
            if not author:
                raise APIError(400, f"messages[{index}].name: empty", param=f"messages[{index}].name")
            try:
                # Whole names only: a new contact "Ann" is not the run's "Anna Petrova", whose chats (and
                # memory) are hers alone.
                author = people.check(author, f"messages[{index}].name", parts=False)
            except SpeakerError:
                new_contacts += [author] if author not in new_contacts else []
                author = GENERIC_PARTNER
        if turns and turns[-1].speaker == author:
            turns[-1].messages += texts
        else:
            turns.append(Turn(author, texts))
    if not turns:
        raise APIError(
            400,
            "messages: no user or assistant message with text; the twin answers a conversation, so "
            "send at least the message it replies to",
            param="messages",
        )
    return turns, new_contacts


def partner_of(turns: list[Turn], speaker: str, people: People) -> str:
    """Who the speaker talks with: the author of the newest turn not theirs (a message's `name`, or the default
    partner), else the default partner. The memory recalls only the chat of the two."""
    return next((turn.speaker for turn in reversed(turns) if turn.speaker != speaker), people.user_for(speaker, None))


def build_app(
    engine: Engine,
    people: People,
    defaults: SamplingConfig,
    api_key: str | None = None,
    limits: Limits | None = None,
    memory: TwinMemory | None = None,
) -> FastAPI:
    """The server's routes over one engine. With `api_key`, every request needs `Authorization: Bearer KEY`. With
    `memory`, each reply is written after the memory of the chat of the speaker and their partner."""
    app = FastAPI(title="twin", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Gate, api_key=api_key, limits=limits or Limits())
    add_error_handlers(app)

    @app.get("/v1/models")
    async def models() -> dict:
        created = int(time.time())
        names = sorted(people.names, key=lambda name: (name != people.target, name))
        listing = {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "twin"} for name in names],
        }
        if not names:
            listing["twin_note"] = "no run folder names the speakers: any speaker name is a model id"
        return listing

    @app.get("/v1/models/{model_id:path}")  # a path: a name may hold a slash
    async def model(model_id: str) -> dict:
        return {
            "id": speaker_named(model_id, people),
            "object": "model",
            "created": int(time.time()),
            "owned_by": "twin",
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(http: Request):
        # Parsing thousands of messages takes a while: off the event loop, which serves the others meanwhile.
        request = await run_in_threadpool(parse_request, await http.body())
        speaker = speaker_named(request.model, people)
        sampling = request.sampling(defaults)

        async def prepared() -> tuple[Completion, AsyncIterator[str | Finished]] | None:
            """The reply to come, once its prompt is made; None if the client has left by then."""
            # Reading and tokenizing a long conversation takes a while: off the event loop, which serves the others.
            prompt, new_contacts = await run_in_threadpool(
                prompt_for, request.messages, speaker, people, engine, sampling.max_new_tokens, memory
            )
            if await http.is_disconnected():
                return None
            reply = engine.reply(ReplyRequest(prompt, sampling, request.seed, request.stop_strings()))
            return Completion(speaker, new_contacts), reply

        if request.stream:
            ready = await prepared()
            if ready is None:
                return Response(status_code=CLIENT_GONE)
            usage = request.stream_options is not None and request.stream_options.include_usage
            return StreamingResponse(ready[0].stream(ready[1], usage), media_type="text/event-stream")

        async def written() -> dict | Response:
            ready = await prepared()
            return Response(status_code=CLIENT_GONE) if ready is None else await ready[0].whole(ready[1])

        return await unless_gone(http, written())

    return app


def parse_request(body: bytes) -> ChatCompletionRequest:
    """The request in `body`; RequestValidationError (a 400) where it is not valid JSON or its fields are wrong."""
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as error:  # placed as FastAPI places them: in the body
        raise RequestValidationError([{**each, "loc": ("body", *each["loc"])} for each in error.errors()]) from None


def prompt_for(
    messages: list[Message],
    speaker: str,
    people: People,
    engine: Engine,
    max_tokens: int,
    memory: TwinMemory | None = None,
) -> tuple[list[int], list[str]]:
    """The prompt for `speaker`'s reply to `messages`, after the memory of the chat of the speaker and their
    partner where there is one; and the new contacts among the messages' names."""
    turns, new_contacts = conversation(messages, speaker, people)
    remembered = (
        memory.context(speaker, partner_of(turns, speaker, people), int(time.time()), turns, engine.tokenizer)
        if memory
        else []
    )
    try:
        return engine.prompt(turns, speaker, max_tokens, remembered), new_contacts
    except ContextLengthError as error:
        raise APIError(400, str(error), param=error.param, code="context_length_exceeded") from None


CLIENT_GONE = 499  # nginx's "client closed request": no one reads it


async def unless_gone(http: Request, answer: Awaitable[dict | Response]) -> dict | Response:
    """`answer`, or nothing once the client has hung up (a bot that timed out, say): cancelled, its reply stops and
    the model goes on to the next request. A streaming reply needs no watch: its client leaving ends the stream."""
    task = asyncio.ensure_future(answer)
    while not task.done():
        await asyncio.wait([task], timeout=DISCONNECT_CHECK_S)
        if not task.done() and await http.is_disconnected():
            task.cancel()
            return Response(status_code=CLIENT_GONE)
    return task.result()


class RequestRefused(Exception):
    """A request Gate answers itself: wrong key, body too large or too slow."""

    def __init__(self, error: APIError):
        self.error = error


class Gate:
    """ASGI middleware, in front of every route: refuses a request without the key (401) before reading a byte of
    its body, then reads the body, up to limits.max_body_bytes (413) and within limits.request_timeout_s (408),
    and hands it on. Its refusals close the connection: the rest of a refused body is never read. A GET of one
    of `open_paths` (the pages, which hold nothing of the run) needs no key."""

    def __init__(self, app, api_key: str | None, limits: Limits, open_paths: frozenset[str] = frozenset()):
        self.app, self.limits, self.open_paths = app, limits, open_paths
        self.expected = f"Bearer {api_key}".encode() if api_key is not None else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        try:
            if not (scope["method"] == "GET" and scope["path"] in self.open_paths):
                self.check_key(headers)
            body = await self.read_body(headers, receive)
        except RequestRefused as refused:
            return await refused.error.response(headers={"Connection": "close"})(scope, receive, send)
        if body is None:  # the client left while sending it
            return
        delivered = False

        async def replay() -> dict:
            nonlocal delivered
            if delivered:  # the body has gone: what comes now is the client leaving
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def check_key(self, headers: Headers) -> None:
        given = headers.get("authorization", "").encode()
        # In constant time: no guessing the key by timing.
        if self.expected is not None and not secrets.compare_digest(given, self.expected):
            raise RequestRefused(
                APIError(
                    401,
                    "missing or wrong API key: send the header `Authorization: Bearer "
                    "KEY` with the key the server was started with (--api-key)",
                    code="invalid_api_key",
                )
            )

    async def read_body(self, headers: Headers, receive) -> bytes | None:
        """The whole body; None if the client leaves first."""
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            raise RequestRefused(self.too_large())
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.limits.request_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    if size > self.limits.max_body_bytes:
                        raise RequestRefused(self.too_large())
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise RequestRefused(
                APIError(
                    408,
                    f"the body did not come within {self.limits.request_timeout_s:g} s (--request-timeout)",
                    code="request_timeout",
                )
            ) from None
        return b"".join(chunks)

    def too_large(self) -> APIError:
        return APIError(
            413,
            f"the body is larger than {self.limits.max_body_bytes} bytes (the server's --max-body-mb)",
            code="request_too_large",
        )


def add_error_handlers(app: FastAPI) -> None:
    """Every error a client gets is OpenAI's error JSON: ours, bad JSON and invalid fields (400), unknown routes."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        last = error.errors()[-1]  # of a union's errors, the last is the richer type's (a list of parts)
        if last["type"] == "json_invalid":
            return APIError(400, "the body is not valid JSON").response()
        param = field_path(last["loc"])
        if param is None:
            return APIError(400, "the body is not a JSON object (send it as Content-Type: application/json)").response()
        return APIError(400, f"{param}: {last['msg']}", param=param).response()

    @app.exception_handler(ReplyFailed)
    async def failed(request: Request, error: ReplyFailed) -> JSONResponse:
        return APIError(500, str(error), "server_error").response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return APIError(
            error.status_code,
            str(error.detail),
            "not_found_error" if error.status_code == 404 else "invalid_request_error",
        ).response()


def field_path(location: tuple) -> str | None:
    """A validation error's place as OpenAI writes it, messages[0].content, without pydantic's "body" and
    names of union members (str, list[TextPart])."""
    path = ""
    for part in location[1:]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "str" and "[" not in part:
            path += f".{part}" if path else part
    return path or None


class Completion:
    """The JSON of one reply, whole or as server-sent events in OpenAI's chunk format."""

    def __init__(self, speaker: str, new_contacts: list[str]):
        self.speaker, self.new_contacts = speaker, new_contacts
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    async def whole(self, reply: AsyncIterator[str | Finished]) -> dict:
        async for event in reply:
            finished = event
        message = {
            "role": "assistant",
            "name": self.speaker,
            "content": "\n".join(finished.messages),
            "twin_messages": finished.messages,
        }
        return {
            **self._head("chat.completion"),
            "usage": usage(finished),
            "choices": [{"index": 0, "message": message, "finish_reason": finished.finish_reason, "logprobs": None}],
        }

    async def stream(self, reply: AsyncIterator[str | Finished], with_usage: bool) -> AsyncIterator[str]:
        yield self._chunk({"role": "assistant", "name": self.speaker, "content": ""})
        try:
            async for event in reply:
                if isinstance(event, Finished):
                    yield self._chunk({"twin_messages": event.messages}, event.finish_reason)
                    if with_usage:
                        yield event_line({**self._head("chat.completion.chunk"), "choices": [], "usage": usage(event)})
                else:
                    yield self._chunk({"content": event})
        except ReplyFailed as error:  # the status line has gone: the error goes as an event, as OpenAI's does
            yield event_line(APIError(500, str(error), "server_error").body())
        yield "data: [DONE]\n\n"

    def _head(self, kind: str) -> dict:
        head = {"id": self.id, "object": kind, "created": self.created, "model": self.speaker}
        if self.new_contacts:  # an extension: the names answered as the generic partner
            head["twin_new_contacts"] = self.new_contacts
        return head

    def _chunk(self, delta: dict, finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return event_line({**self._head("chat.completion.chunk"), "choices": [choice]})


def usage(finished: Finished) -> dict:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


def event_line(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

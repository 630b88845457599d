"""The HTTP side: OpenAI's chat completions and models routes, their JSON, and OpenAI-style errors.

Who speaks: `model` is the speaker the twin answers as. A message's `name` says who wrote it; without one,
a user message is the speaker's partner's (the one they wrote to most in the run, else "User") and an
assistant message the speaker's own. A message's lines are its messages in the chat (the reply's are joined
so too), unless `twin_messages` lists them. System and developer messages are left out: the twin learnt
people's conversations, where no instructions stand, so a system prompt would be text it never saw in
training, rendered as someone's turn; clients that always send one still work.

The reply is the speaker's turn: one assistant message whose content is the turn's messages joined by "\\n",
and `twin_messages`, the list of them.
"""
import asyncio
import json
import secrets
import time
import uuid
from dataclasses import replace
from typing import Annotated, AsyncIterator, Awaitable, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from chat.people import People, SpeakerError
from chat.recall import TwinMemory
from data.sessions import Turn, clean_message, clean_name
from model.generation import SamplingConfig
from serving.engine import ContextLengthError, Engine, Finished, ReplyFailed, ReplyRequest

MAX_STOP_STRINGS = 4  # as OpenAI's API
DISCONNECT_CHECK_S = 0.5  # how often a waiting non-streaming request checks that its client is still there


class APIError(Exception):
    """An error a client gets as OpenAI's JSON body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


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
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None

    def sampling(self, defaults: SamplingConfig) -> SamplingConfig:
        """The server's defaults, with what the request sets."""
        given = dict(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                     repetition_penalty=self.repetition_penalty,
                     max_new_tokens=self.max_completion_tokens or self.max_tokens)
        return replace(defaults, **{key: value for key, value in given.items() if value is not None})

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


def speaker_of(request: ChatCompletionRequest, people: People) -> str:
    """`model`, a speaker the run knows; 404 model_not_found, offering the closest names, if not."""
    name = clean_name(request.model)
    if not name:
        raise APIError(400, "model: empty; it names the speaker to answer as", param="model")
    try:
        return people.check(name, "model")
    except SpeakerError as error:
        raise APIError(404, str(error), param="model", code="model_not_found") from None


def conversation(messages: list[Message], speaker: str, people: People) -> list[Turn]:
    """The messages as the turns of a chat: consecutive messages of one person make one turn, as in training."""
    partner = people.user_for(speaker, None)
    turns: list[Turn] = []
    for index, message in enumerate(messages):
        texts = message.texts()
        if message.role in ("system", "developer") or not texts:
            continue
        author = speaker if message.role == "assistant" else partner
        if message.name is not None:
            author = clean_name(message.name)
            try:
                people.check(author, f"messages[{index}].name")
            except SpeakerError as error:
                raise APIError(400, str(error), param=f"messages[{index}].name") from None
            if not author:
                raise APIError(400, f"messages[{index}].name: empty", param=f"messages[{index}].name")
        if turns and turns[-1].speaker == author:
            turns[-1].messages += texts
        else:
            turns.append(Turn(author, texts))
    return turns


def partner_of(turns: list[Turn], speaker: str, people: People) -> str:
    """Who the speaker talks with: the author of the newest turn not theirs (a message's `name`, or the default
    partner), else the default partner. The memory recalls only the chat of the two."""
    return next((turn.speaker for turn in reversed(turns) if turn.speaker != speaker), people.user_for(speaker, None))


def build_app(engine: Engine, people: People, defaults: SamplingConfig, api_key: str | None = None,
              memory: TwinMemory | None = None) -> FastAPI:
    """The server's routes over one engine. With `api_key`, every request needs `Authorization: Bearer KEY`. With
    `memory`, each reply is written after the memory of the chat of the speaker and their partner."""
    app = FastAPI(title="twin", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(key_check(api_key))] if api_key else [])
    add_error_handlers(app)

    @app.get("/v1/models")
    async def models() -> dict:
        created = int(time.time())
        names = sorted(people.names, key=lambda name: (name != people.target, name))
        listing = {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "twin"}
                                              for name in names]}
        if not names:
            listing["twin_note"] = "no run folder names the speakers: any speaker name is a model id"
        return listing

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest, http: Request):
        speaker = speaker_of(request, people)
        turns = conversation(request.messages, speaker, people)
        sampling = request.sampling(defaults)
        remembered = []
        if memory:  # retrieval and tokenizing take a while: off the event loop
            remembered = await run_in_threadpool(memory.context, speaker, partner_of(turns, speaker, people),
                                                 int(time.time()), turns, engine.tokenizer)
        try:  # tokenizing a long conversation takes a while: off the event loop too
            prompt = await run_in_threadpool(engine.prompt, turns, speaker, sampling.max_new_tokens, remembered)
        except ContextLengthError as error:
            raise APIError(400, str(error), param=error.param, code="context_length_exceeded") from None
        reply = engine.reply(ReplyRequest(prompt, sampling, request.seed, request.stop_strings()))
        completion = Completion(speaker)
        if request.stream:
            usage = request.stream_options is not None and request.stream_options.include_usage
            return StreamingResponse(completion.stream(reply, usage), media_type="text/event-stream")
        return await unless_gone(http, completion.whole(reply))

    return app


async def unless_gone(http: Request, answer: Awaitable[dict]) -> dict | Response:
    """`answer`, or nothing once the client has hung up (a bot that timed out, say): cancelled, its reply stops and
    the model goes on to the next request. A streaming reply needs no watch: its client leaving ends the stream."""
    task = asyncio.ensure_future(answer)
    while not task.done():
        await asyncio.wait([task], timeout=DISCONNECT_CHECK_S)
        if not task.done() and await http.is_disconnected():
            task.cancel()
            return Response(status_code=499)  # nginx's "client closed request": no one reads it
    return task.result()


def key_check(api_key: str):
    """A dependency that refuses, with 401, a request without `Authorization: Bearer API_KEY`."""
    expected = f"Bearer {api_key}".encode()

    async def check(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not secrets.compare_digest(given, expected):  # in constant time: no guessing the key by timing
            raise APIError(401, "missing or wrong API key: send the header `Authorization: Bearer KEY` with the "
                           "key the server was started with (--api-key)", code="invalid_api_key")
    return check


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
        return APIError(error.status_code, str(error.detail), "not_found_error" if error.status_code == 404
                        else "invalid_request_error").response()


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

    def __init__(self, speaker: str):
        self.speaker = speaker
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    async def whole(self, reply: AsyncIterator[str | Finished]) -> dict:
        async for event in reply:
            finished = event
        message = {"role": "assistant", "name": self.speaker, "content": "\n".join(finished.messages),
                   "twin_messages": finished.messages}
        return {**self._head("chat.completion"), "usage": usage(finished), "choices": [
            {"index": 0, "message": message, "finish_reason": finished.finish_reason, "logprobs": None}]}

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
        return {"id": self.id, "object": kind, "created": self.created, "model": self.speaker}

    def _chunk(self, delta: dict, finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return event_line({**self._head("chat.completion.chunk"), "choices": [choice]})


def usage(finished: Finished) -> dict:
    return {"prompt_tokens": finished.prompt_tokens, "completion_tokens": finished.completion_tokens,
            "total_tokens": finished.prompt_tokens + finished.completion_tokens}


def event_line(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

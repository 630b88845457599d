"""The blind test ("which one is real?") behind serve.py's /judge page.

A judge gets a held-out moment of one of the people the owner opened to judging (--judge): the conversation
before one of that person's real turns, the real turn, and the turn the twin writes there now, as the
fidelity report writes it (the same moments, prompt and sampling), the two in random order. Only held-out
sessions are shown, never the training ones. The judge picks the turn they take for real, or can't tell.

Answers go to the run folder's blind_test.json (fidelity.verdict reads it for evaluate.py's report), written
whole after each answer: a restart loses none. A judge is a random id their browser keeps, so they can stop
and come back to the moments they have not judged. Nothing of a conversation is logged or stored with an
answer.
"""

import hashlib
import json
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from chat.loading import TwinSource
from core import atomic
from core.errors import TwinError
from core.run_folder import RunFolder
from data.dataset import prepare_data
from fidelity.plan import Context, EvalSettings, choose_contexts
from fidelity.verdict import answers_file, read_answers
from model.checkpoint import load_tokenizer
from model.peft import tokenizer_source
from model.tokenizer import Tokenizer
from serving.api import APIError
from serving.engine import ContextLengthError, Engine, Finished, ReplyRequest
from training.settings import TrainSettings

SHOWN_TURNS = 8  # of the conversation before the turn: enough to judge a reply by, short enough to read
JUDGE_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
MAX_WAITING_PAIRS = 1000  # pairs shown and not yet answered, kept for their judges; the oldest go first


class BlindTestError(TwinError):
    """--judge names someone the blind test cannot show."""


class PairClosed(Exception):
    """An answer to a pair that is no longer waiting for one."""


@dataclass
class Moment:
    key: str  # the same for the same moment after a restart: what an answer is stored against
    context: Context


@dataclass
class Pair:
    id: str
    moment: Moment
    twin_first: bool
    candidates: list[list[str]]  # as shown: first, second


def open_blind_test(run: str | None, names: str, source: TwinSource) -> "BlindTest":
    """serve.py --judge: the held-out moments of the people named (separated by commas), and the answers so
    far, each checked before the model loads."""
    if not run:
        raise BlindTestError("--judge: needs --checkpoint, the run whose held-out conversations judges see")
    people = [name.strip() for name in names.split(",") if name.strip()]
    if not people:
        raise BlindTestError("--judge: give the names of the people to judge, separated by commas")
    tokenizer = load_tokenizer(tokenizer_source(source.model, source.adapter))
    return BlindTest(Path(run), held_out_moments(Path(run), people, tokenizer))


def held_out_moments(run: Path, people: list[str], tokenizer: Tokenizer) -> list[Moment]:
    """Every held-out moment right before a turn of one of `people`, split as the run split its sessions
    (its token cache makes this quick). A name with no held-out turn raises BlindTestError."""
    folder = RunFolder(run)
    record = folder.read_trained_record()
    data = prepare_data(record.data, tokenizer, TrainSettings.of_run(record).data, cache_dir=folder.cache)
    present = {turn.speaker for session in data.val_sessions for turn in session.turns[1:]}
    missing = [name for name in people if name not in present]
    if missing:
        raise BlindTestError(
            f"--judge: no held-out turn of {', '.join(map(repr, missing))} to judge; people with "
            f"held-out turns: {', '.join(map(repr, sorted(present)[:10]))}"
        )
    return [
        Moment(moment_key(context), context)
        for name in people
        for context in choose_contexts(data.val_sessions, name, sys.maxsize, EvalSettings.seed)
    ]


def moment_key(context: Context) -> str:
    whole = [context.speaker, [[turn.speaker, turn.messages] for turn in context.turns], context.real]
    return hashlib.sha256(json.dumps(whole, ensure_ascii=False).encode()).hexdigest()[:24]


class BlindTest:
    """The moments open to judging, the pairs waiting for an answer, and the answers so far."""

    def __init__(self, run: Path, moments: list[Moment]):
        self.file, self.moments = answers_file(run), moments
        self.answers = read_answers(self.file)  # a damaged file stops the server before the model loads
        self.waiting: dict[str, Pair] = {}  # judge -> the pair shown to them
        self.sampling = EvalSettings().sampling  # the report's: these turns are the ones it measures

    def answered_by(self, judge: str) -> set[str]:
        return {answer["moment"] for answer in self.answers if answer["judge"] == judge}

    async def pair_for(self, judge: str, engine: Engine) -> Pair | None:
        """The pair waiting for this judge, or a new one at a moment they have not judged; None when none is left."""
        if judge in self.waiting:
            return self.waiting[judge]
        done = self.answered_by(judge)
        left = [moment for moment in self.moments if moment.key not in done]
        if not left:
            return None
        moment = random.choice(left)
        twin = await self.twin_turn(moment.context, engine)
        twin_first = random.random() < 0.5
        pair = Pair(
            random.randbytes(12).hex(),
            moment,
            twin_first,
            [twin, moment.context.real] if twin_first else [moment.context.real, twin],
        )
        if len(self.waiting) >= MAX_WAITING_PAIRS:
            del self.waiting[next(iter(self.waiting))]
        self.waiting[judge] = pair
        return pair

    async def twin_turn(self, context: Context, engine: Engine) -> list[str]:
        """The twin's turn at the moment, as fidelity.measure writes it (a conversation too long for the
        context is dropped there too, and the turn written without it)."""
        try:
            prompt = await run_in_threadpool(
                engine.prompt, context.turns, context.speaker, self.sampling.max_new_tokens
            )
        except ContextLengthError:
            prompt = engine.prompt([], context.speaker, self.sampling.max_new_tokens)
        async for event in engine.reply(ReplyRequest(prompt, self.sampling)):
            if isinstance(event, Finished):
                return event.messages
        return []

    def answer(self, judge: str, pair_id: str, choice: int | None) -> None:
        """Store the judge's pick (0 or 1: the candidate shown first or second; None: can't tell)."""
        pair = self.waiting.get(judge)
        if pair is None or pair.id != pair_id:
            raise PairClosed("this pair is no longer open (answered already, or replaced): load the next one")
        picked = "cant_tell" if choice is None else "twin" if (choice == 0) == pair.twin_first else "real"
        answers = self.answers + [
            {
                "judge": judge,
                "speaker": pair.moment.context.speaker,
                "moment": pair.moment.key,
                "picked": picked,
                "time": int(time.time()),
            }
        ]
        atomic.write_text(self.file, json.dumps({"answers": answers}, indent=1, ensure_ascii=False))
        self.answers = answers  # only once it is on disk
        del self.waiting[judge]

    def progress(self, judge: str) -> dict:
        return {"judged": len(self.answered_by(judge)), "moments": len(self.moments)}


class AnswerRequest(BaseModel):
    judge: str
    pair: str
    choice: Literal[0, 1] | None  # None: can't tell


def judge_routes(test: BlindTest | None, engine: Engine) -> APIRouter:
    """/judge/api/pair (the next pair for a judge) and /judge/api/answer, behind the API key as the rest."""
    router = APIRouter(prefix="/judge/api")  # behind the site's gate, which asks for the key

    def open_test() -> BlindTest:
        if test is None:
            raise APIError(
                404,
                "no blind test here: the owner starts one with serve.py --checkpoint RUN --judge NAME,...",
                code="no_blind_test",
            )
        return test

    def checked_judge(judge: str) -> str:
        if not JUDGE_ID.fullmatch(judge):
            raise APIError(400, "judge: 16 to 64 letters, digits, - or _", param="judge")
        return judge

    @router.get("/pair")
    async def pair(judge: str) -> dict:
        test, judge = open_test(), checked_judge(judge)
        pair = await test.pair_for(judge, engine)
        if pair is None:
            return {"pair": None, **test.progress(judge)}
        context = pair.moment.context
        shown = context.turns[-SHOWN_TURNS:]
        return {
            "pair": pair.id,
            "speaker": context.speaker,
            "earlier_turns": len(context.turns) - len(shown),
            "turns": [{"speaker": turn.speaker, "messages": turn.messages} for turn in shown],
            "candidates": pair.candidates,
            **test.progress(judge),
        }

    @router.post("/answer")
    async def answer(request: AnswerRequest) -> dict:
        test, judge = open_test(), checked_judge(request.judge)
        try:
            test.answer(judge, request.pair, request.choice)
        except PairClosed as error:
            raise APIError(409, str(error), param="pair", code="pair_closed") from None
        except OSError as error:  # the disk is full, say: the judge hears it, and the answers so far stay
            raise APIError(500, f"the answer could not be stored ({error.strerror})", "server_error") from None
        return test.progress(judge)

    return router

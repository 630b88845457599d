"""What a fidelity report evaluates: its settings, the speakers, the held-out moments right before one of
each speaker's real turns, and the training turns of the speaker and of everyone else to compare with."""

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from core.flags import section, setting
from data.dataset import PreparedData
from data.sessions import Session, Turn
from fidelity import EvaluationError
from model.generation import SamplingConfig

REFERENCE_TURNS = 2000  # training turns drawn per speaker, and of everyone else, as style references


# The longest turn the report writes, in tokens (sample.py's 256 is for chat); each speaker's turns are cut
# sooner, at their own length (fidelity.measure.turn_length_cap). The prompt leaves this much room, as
# sample.py leaves its --max-new-tokens.
REPLY_TOKENS = 128

# Turns written together unless --sample-batch says. On a CPU a decoding step reads every weight from memory
# whatever its rows, so up to about 48 rows of SmolLM2-135M cost little more than 16 on 2 cores
# (docs/figures.md, "The report's time"); a GPU holds each row's cache in its memory, where a 7B model with
# long memories leaves room for about 16.
SAMPLE_BATCH = {"cpu": 48, "cuda": 16}


def speakers_from_text(text: str) -> int | list[str]:
    """--speakers: a number, or names separated by commas."""
    text = text.strip()
    return int(text) if text.isdigit() else [name.strip() for name in text.split(",") if name.strip()]


def speakers_text(speakers: int | list[str]) -> str:
    return str(speakers) if isinstance(speakers, int) else ",".join(speakers)


@dataclass
class EvalSettings:
    """What a fidelity report measures, and how: evaluate.py's report flags."""

    speakers: int | list[str] = setting(
        5,
        "how many speakers (the target and the most frequent partners in the held-out sessions), or names "
        "separated by commas",
        metavar="N|NAME,...",
        parse=speakers_from_text,
        text=speakers_text,
    )
    contexts: int = setting(
        32,
        "held-out moments each model writes a turn at, per speaker, where there are that many",
        metavar="K",
    )
    fact_samples: int = setting(
        8,
        "turns written at each moment that takes up a fact of an earlier conversation, without and with memory: "
        "a fact is said in a few turns of a hundred, so one turn a moment says little",
    )
    examples: int = setting(3, "examples shown per speaker; 0 keeps message text out of the report")
    seed: int = setting(0, "seed of the contexts chosen and of sampling")
    sampling: SamplingConfig = section(
        SamplingConfig, "sampling (sample.py's, but for the length)", defaults={"max_new_tokens": REPLY_TOKENS}
    )
    context_tokens: int = setting(
        4096, "tokens of conversation the model sees when writing, as sample.py's --context", flag="--context"
    )
    micro_batch: int = setting(4, "rows per forward pass for the loss")
    sample_batch: int | None = setting(
        None,
        "held-out moments whose turns are written together (default: 48 on a CPU, 16 on a GPU); fewer hold less memory",
    )

    def turns_at_once(self, device: torch.device) -> int:
        """How many turns are written together: --sample-batch, else the device's SAMPLE_BATCH."""
        return self.sample_batch or SAMPLE_BATCH.get(device.type, SAMPLE_BATCH["cuda"])

    def __post_init__(self):
        if isinstance(self.speakers, int) and self.speakers < 1:
            raise EvaluationError("--speakers: give at least 1 speaker, or names separated by commas")
        if not self.speakers:
            raise EvaluationError("--speakers: give a number of speakers or names separated by commas")
        for flag, value in (("--contexts", self.contexts), ("--examples", self.examples)):
            if value < 0:
                raise EvaluationError(f"{flag} must be 0 or more, got {value}")
        for flag, value in (("--sample-batch", self.sample_batch), ("--fact-samples", self.fact_samples)):
            if value is not None and value < 1:
                raise EvaluationError(f"{flag} must be 1 or more, got {value}")


@dataclass
class Context:
    """A held-out conversation up to one of `speaker`'s real turns."""

    speaker: str
    turns: list[Turn]
    real: list[str]  # the messages the speaker really wrote next
    memory: list[Turn] = field(default_factory=list)  # earlier conversations before it, as the twin has them

    @property
    def characters(self) -> int:
        """Of the memory and the conversation: how long its prompt is, give or take."""
        return sum(len(message) for turn in [*self.memory, *self.turns] for message in turn.messages)


@dataclass
class Plan:
    speakers: list[str]
    held_out_turns: Counter  # speaker -> turns in the held-out sessions
    contexts: dict[str, list[Context]]
    own_turns: dict[str, list[list[str]]]  # speaker -> their turns in the training split (drawn)
    others_turns: dict[str, list[list[str]]]  # speaker -> everyone else's there (drawn)


def plan_evaluation(
    data: PreparedData, settings: EvalSettings, memory: Callable[[Session], list[Turn]] | None = None
) -> Plan:
    """`memory`: a held-out session's memory of earlier conversations (a run with memory), which each of its
    contexts is written after, as the run trained and as sample.py chats."""
    if not data.val_sessions:
        raise EvaluationError(
            "no held-out sessions to evaluate on: the run held none out (--val-fraction 0, or a single session)"
        )
    turns = Counter(turn.speaker for session in data.val_sessions for turn in session.turns)
    speakers = choose_speakers(turns, data.target, settings.speakers, len(data.val_sessions))
    contexts = {
        speaker: choose_contexts(data.val_sessions, speaker, settings.contexts, settings.seed, memory)
        for speaker in speakers
    }
    replies = [turn for session in data.train_sessions for turn in session.turns[1:]]
    own = {
        speaker: draw([turn.messages for turn in replies if turn.speaker == speaker], settings.seed)
        for speaker in speakers
    }
    others = {
        speaker: draw([turn.messages for turn in replies if turn.speaker != speaker], settings.seed)
        for speaker in speakers
    }
    return Plan(speakers, turns, contexts, own, others)


def choose_speakers(turns: Counter, target: str, wanted: int | list[str], sessions: int) -> list[str]:
    """The named speakers, or the target and the partners with the most held-out turns."""
    if isinstance(wanted, list):
        missing = [name for name in wanted if name not in turns]
        if missing:
            present = ", ".join(name for name, _ in turns.most_common(10))
            raise EvaluationError(
                f"--speakers: no turns of {', '.join(missing)} in the held-out sessions "
                f"({sessions}); speakers there: {present}"
            )
        return wanted
    by_turns = sorted(turns, key=lambda name: (-turns[name], name))
    first = [target] if target in turns else []
    return (first + [name for name in by_turns if name != target])[:wanted]


def choose_contexts(
    sessions: list[Session],
    speaker: str,
    count: int,
    seed: int,
    memory: Callable[[Session], list[Turn]] | None = None,
) -> list[Context]:
    """Up to `count` moments right before one of the speaker's turns, chosen at random (seeded), each with its
    session's `memory` where there is one.

    A session's first turn is never one: with nothing before it there is nothing to answer.
    """
    candidates = [
        (session, index)
        for session in sessions
        for index, turn in enumerate(session.turns)
        if index > 0 and turn.speaker == speaker
    ]
    if len(candidates) > count:
        candidates = [candidates[index] for index in sorted(random.Random(seed).sample(range(len(candidates)), count))]
    return [
        Context(speaker, session.turns[:index], session.turns[index].messages, memory(session) if memory else [])
        for session, index in candidates
    ]


def draw(turns: list[list[str]], seed: int) -> list[list[str]]:
    """Up to REFERENCE_TURNS of the turns, at random (seeded): enough to know a person's habits."""
    return turns if len(turns) <= REFERENCE_TURNS else random.Random(seed).sample(turns, REFERENCE_TURNS)

"""What a fidelity report evaluates: its settings, the speakers, the held-out moments right before one of
each speaker's real turns, and the training turns of the speaker and of everyone else to compare with."""

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from data.dataset import PreparedData
from data.sessions import Session, Turn
from fidelity import EvaluationError
from model.generation import SamplingConfig

REFERENCE_TURNS = 2000  # training turns drawn per speaker, and of everyone else, as style references


# The longest turn the report writes, in tokens (sample.py's 256 is for chat); each speaker's turns are cut
# sooner, at their own length (fidelity.measure.turn_length_cap). The prompt leaves this much room, as
# sample.py leaves its --max-new-tokens.
REPLY_TOKENS = 128


@dataclass
class EvalSettings:
    speakers: int | list[str] = 5  # how many (the target and the most frequent partners), or names
    contexts: int = 32  # held-out moments per speaker, where the held-out sessions have that many
    examples: int = 3  # shown side by side per speaker
    seed: int = 0
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=REPLY_TOKENS))
    context_tokens: int = 4096  # conversation the model sees when sampling, as sample.py's --context
    micro_batch: int = 4  # rows per forward pass for the loss
    sample_batch: int = 16  # moments whose turns are written together


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

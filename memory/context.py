"""What a twin reads before a conversation: recalled conversations, then the history, each after a mark of
the time between it and now, rendered as ordinary turns of a speaker named "memory".

    memory: recalled, 41 days earlier       <- the k earlier conversations of the chat most like this one
    ...their turns (the end of each, within --recall-tokens / k)
    memory: 2 hours earlier                 <- the history: the chat's conversations just before this one,
    ...their turns (the end of them, within --history-tokens, cut at a turn boundary)
    memory: now                             <- then the conversation itself

The marks are plain text in a turn's header and body: no special token, and like all of the memory they
are context only, never trained. At training time a session's memory holds only conversations that
started strictly before it, so it never sees the future.
"""

import dataclasses

from data.chatml import TokenCounter
from data.dataset import Remembering
from data.sessions import Session, Turn
from memory.settings import MemoryConfig
from memory.store import Conversations
from model.tokenizer import Tokenizer

MARK_SPEAKER = "memory"
NOW = "now"
UNITS = [
    ("year", 365 * 86400),
    ("month", 30 * 86400),
    ("week", 7 * 86400),
    ("day", 86400),
    ("hour", 3600),
    ("minute", 60),
]


def time_mark(seconds: int) -> str:
    """How long before now, in words: "3 days earlier"."""
    for unit, length in UNITS:
        if seconds >= length:
            count = seconds // length
            return f"{count} {unit}{'s' if count > 1 else ''} earlier"
    return "just before"


class Memory:
    """The context before a conversation, from `conversations`, as `config` says."""

    def __init__(self, conversations: Conversations, config: MemoryConfig, tokenizer: Tokenizer):
        self.conversations, self.config = conversations, config
        self.token_counts = TokenCounter(tokenizer)

    def for_session(self, session: Session) -> list[Turn]:
        """A session's context in training and evaluation, found by its first turn: what a twin has of it
        when it starts to answer."""
        return self.context(session.chat, session.start, session.turns[:1])

    def context(self, chat: str | None, start: int, said: list[Turn]) -> list[Turn]:
        """The turns before a conversation of `chat` (None: no known chat) that starts at `start`, where
        `said` is what was said in it so far (the query of the recall)."""
        if not self.config.on:
            return []
        earlier = self.conversations.before(chat, start) if chat is not None else []
        history, held = self._history(earlier, start)
        recalled = self._recalled(chat, start, said, held)
        if not history and not recalled:
            return []
        return recalled + history + [Turn(MARK_SPEAKER, [NOW])]

    def _history(self, earlier: list[int], start: int) -> tuple[list[Turn], dict[int, int]]:
        """The end of the chat's conversations before `start`, newest first until the budget is spent, and how
        many of each one's last turns it holds."""
        turns, held, room = [], {}, self.config.history_tokens
        for number in reversed(earlier):
            session = self.conversations.sessions[number]
            block = self._tail(Turn(MARK_SPEAKER, [time_mark(start - session.start)]), session.turns, room)
            if not block:
                break
            turns, held[number], room = block + turns, len(block) - 1, room - sum(self.token_counts(block))
            if len(block) <= len(session.turns):  # cut: nothing older fits
                break
        return turns, held

    def _recalled(self, chat: str | None, start: int, said: list[Turn], held: dict[int, int]) -> list[Turn]:
        """The beginnings of the `config.recall` earlier conversations most like what was `said`, but of those the
        history `held` only the turns it does not hold: a conversation cut by the history stays recallable, since
        its beginning is where news is told ("I fly to Lisbon on Thursday") and the history keeps its end."""
        config = self.config
        if not config.recall or not config.recall_tokens or (chat is None and not config.recall_all_chats):
            return []
        candidates = [
            number
            for number in self.conversations.before(None if config.recall_all_chats else chat, start)
            if held.get(number, 0) < len(self.conversations.sessions[number].turns)
        ]
        query = "\n".join(message for turn in said for message in turn.messages)
        chosen = sorted(self.conversations.most_relevant(query, candidates, config.recall, start))  # oldest first
        turns = []
        for number in chosen:
            session = self.conversations.sessions[number]
            unheld = session.turns[: len(session.turns) - held.get(number, 0)]
            mark = Turn(MARK_SPEAKER, [f"recalled, {time_mark(start - session.start)}"])
            turns += self._tail(mark, unheld, config.recall_tokens // len(chosen), from_start=True)
        return turns

    def _tail(self, mark: Turn, turns: list[Turn], room: int, from_start: bool = False) -> list[Turn]:
        """`mark` and the newest of `turns` (the oldest, `from_start`) that fit in `room` tokens with it; [] when
        none do."""
        ordered = turns if from_start else turns[::-1]
        room -= self.token_counts([mark])[0]
        kept = 0
        while kept < len(ordered):  # one turn at a time: those that cannot fit are never tokenized
            count = self.token_counts([ordered[kept]])[0]
            if count > room:
                break
            room -= count
            kept += 1
        if not kept:
            return []
        return [mark, *(turns[:kept] if from_start else turns[len(turns) - kept :])]


def remembering(config: MemoryConfig, tokenizer: Tokenizer) -> Remembering | None:
    """What data.dataset.prepare_data needs to put each session's memory before it; None with memory off."""
    if not config.on:
        return None
    return Remembering(
        dataclasses.asdict(config), lambda sessions: Memory(Conversations(sessions), config, tokenizer).for_session
    )

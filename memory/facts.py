"""Fact turns: the turns that answer about something said in an earlier conversation of the same chat.

A turn is a fact turn when it is the first in its conversation to use a rare word of an earlier
conversation of the chat: a word of four letters or more that stands in at most RARE_IN conversations of
the whole chat (a pet's name, a city visited, a new employer), never in the conversation before that turn.
Such a turn can only be written right by remembering; a generated turn at that moment "states the fact"
when it uses the word. The rule reads only the sessions, so it holds for any export, not only the sample.
"""

import re
from collections import Counter, defaultdict
from dataclasses import dataclass

from data.sessions import Session

RARE_IN = 2  # conversations of a chat a word stands in, at most, to count as a fact
WORD = re.compile(r"[^\W\d_]{4,}")
NAME = re.compile(r"\b[^\W\d_a-zа-яё][^\W\d_]{3,}")  # capitalised: the names of things, and facts are mostly names


@dataclass(frozen=True)
class FactTurn:
    session: Session
    turn: int  # the index of the turn in its session
    words: frozenset[str]  # the rare words it takes up again (lower case)


def words_of(text: str) -> set[str]:
    return {word.lower() for word in WORD.findall(text)}


def names_of(text: str) -> set[str]:
    return {word.lower() for word in NAME.findall(text)}


def fact_turns(sessions: list[Session], among: list[Session]) -> list[FactTurn]:
    """The fact turns of `sessions`, whose earlier conversations are in `among` (all the sessions of the
    export, `sessions` too: a held-out session's earlier ones may be held out too)."""
    by_chat = defaultdict(list)
    for session in among:
        by_chat[session.chat].append(session)
    rare_words, found = {}, []
    for chat, chat_sessions in by_chat.items():
        counts = Counter(word for session in chat_sessions for word in _session_words(session))
        rare_words[chat] = {word for word, count in counts.items() if count <= RARE_IN}
    for session in sessions:
        rare = rare_words.get(session.chat, set())
        earlier = set().union(
            *(_session_words(other, names_of) & rare for other in by_chat[session.chat] if other.start < session.start)
        )
        said = set()
        for index, turn in enumerate(session.turns):
            text = "\n".join(turn.messages)
            new = (names_of(text) & earlier) - said
            if new:
                found.append(FactTurn(session, index, frozenset(new)))
            said |= words_of(text)
    return found


def _session_words(session: Session, find=words_of) -> set[str]:
    return find("\n".join(message for turn in session.turns for message in turn.messages))


def states_fact(text: str, fact: FactTurn) -> bool:
    """Whether a written turn uses one of the fact's words."""
    return bool(words_of(text) & fact.words)

"""The conversations a twin remembers, their BM25 index, and the store that keeps both in a run folder.

    RUN/memory/conversations.jsonl   the sessions, as data.sessions writes them
    RUN/memory/index/                bm25s's arrays (.npy, read without pickles) and vocabulary (JSON)
    RUN/memory/store.json            the conversations' count and hash: which conversations the index is of

The whole folder is owner-only (0700, files 0600): it holds every conversation of the export. The
conversations are the store's truth: damaged, the store is refused in one line; a damaged or stale index
is built again from them, with a warning.
"""

import bisect
import hashlib
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import bm25s
import numpy as np

from core import atomic
from core.errors import TwinError
from data.sessions import DataError, Session, read_sessions_file, write_sessions

CONVERSATIONS, INDEX, RECORD = "conversations.jsonl", "index", "store.json"
# The recency bonus: a conversation of this very moment gets RECENCY_WEIGHT (against the best BM25 score's 1), one
# RECENCY_HALF_LIFE older half of it. Follow-ups ("how was the trip?") ask what an earlier conversation of the chat
# asked about an earlier trip, word for word, and BM25 ranks that one first; the one where this trip was told
# shares fewer words but is days old. Chosen by bench/bench_recall.py over the sample export's 61 fact turns
# (weights 0.5 to 4, half-lives 1 to 90 days): the conversation ranked first holds the fact at 39 of them with
# 1 and 30 days (at 23 with 0.5 and 14 days, before; 33 to 38 with 1.5 or 2 and 14 to 60 days).
RECENCY_WEIGHT = 1.0
RECENCY_HALF_LIFE = 30 * 86400  # seconds


class MemoryStoreError(TwinError):
    """A memory store that cannot be used; the message names the folder and what is wrong."""


def words(texts: list[str]) -> list[list[str]]:
    """BM25's terms of each text: lower-cased words of two letters or more, in any script. No stop words
    and no stemming: the chats mix languages, and BM25's weights already make common words count little."""
    return bm25s.tokenize(texts, stopwords=None, show_progress=False, return_ids=False)


def session_text(session: Session) -> str:
    """What a conversation is found by: its messages (not the names, which every conversation of a chat shares)."""
    return "\n".join(message for turn in session.turns for message in turn.messages)


class Conversations:
    """Sessions in time order, each chat's in a list of its own, with a BM25 index over their messages."""

    def __init__(self, sessions: list[Session], index: bm25s.BM25 | None = None):
        self.sessions = sorted(sessions, key=lambda session: session.start)
        self.by_chat: dict[str, list[int]] = defaultdict(list)
        for number, session in enumerate(self.sessions):
            self.by_chat[session.chat].append(number)
        self.starts = {
            chat: [self.sessions[number].start for number in numbers] for chat, numbers in self.by_chat.items()
        }
        self.all_starts = [session.start for session in self.sessions]
        self.index = index or self._build_index()

    def _build_index(self) -> bm25s.BM25:
        index = bm25s.BM25()
        index.index(words([session_text(session) for session in self.sessions]) or [[]], show_progress=False)
        return index

    def before(self, chat: str | None, start: int) -> list[int]:
        """The numbers of the conversations of `chat` (None: of every chat) that started strictly before `start`."""
        if chat is None:
            return list(range(bisect.bisect_left(self.all_starts, start)))
        numbers = self.by_chat.get(chat, [])
        return numbers[: bisect.bisect_left(self.starts.get(chat, []), start)]

    def most_relevant(self, query: str, candidates: list[int], k: int, now: int | None = None) -> list[int]:
        """Of `candidates`, the `k` (at most) most relevant to `query`, best first: BM25's score (as a share of the
        best one), and with `now`, a bonus for being recent that halves every RECENCY_HALF_LIFE, since people
        take up what they spoke of lately ("how is the kitten?" asks about last week's kitten, not about the
        time the same was asked a year ago). Those sharing no word with the query are never chosen."""
        if k <= 0 or not candidates:
            return []
        terms = [term for term in words([query])[0] if term in self.index.vocab_dict]
        if not terms:
            return []
        scores = self.index.get_scores(terms)[candidates]
        if scores.max() <= 0:
            return []
        relevance = scores / scores.max()
        if now is not None:
            ages = now - np.array([self.sessions[number].start for number in candidates], dtype=np.float64)
            relevance = relevance + RECENCY_WEIGHT * 0.5 ** (np.maximum(ages, 0) / RECENCY_HALF_LIFE)
        best = np.argsort(-relevance, kind="stable")[:k]
        return [candidates[position] for position in best if scores[position] > 0]

    def chats_of(self, speaker: str) -> list[str]:
        """The chats `speaker` speaks in, their personal chat first (the one of two people, named after them)."""
        chats = {session.chat for session in self.sessions if any(turn.speaker == speaker for turn in session.turns)}
        return sorted(chats, key=lambda chat: (chat != speaker, chat))


def fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_store(folder: str | os.PathLike, sessions: list[Session]) -> Conversations:
    """Write the store of `sessions` into `folder` (replacing any), owner-only; returns them indexed."""
    folder = Path(folder)
    conversations = Conversations(sessions)
    with atomic.directory(folder) as building:
        write_sessions(conversations.sessions, building / CONVERSATIONS)
        _write_index(building, conversations)
    return conversations


def _write_index(folder: Path, conversations: Conversations) -> None:
    with atomic.directory(folder / INDEX) as index:
        conversations.index.save(index, show_progress=False)
        for file in index.iterdir():
            file.chmod(0o600)
    record = {"conversations": len(conversations.sessions), "sha256": fingerprint(folder / CONVERSATIONS)}
    atomic.write_text(folder / RECORD, json.dumps(record) + "\n")


def load_store(folder: str | os.PathLike) -> Conversations:
    """The store in `folder`. Its conversations must read back (else MemoryStoreError); its index is read
    if it is the index of exactly them, and built again (and saved) if not."""
    folder = Path(folder)
    conversations_file = folder / CONVERSATIONS
    if not conversations_file.is_file():
        raise MemoryStoreError(
            f"{folder}: no memory store here ({CONVERSATIONS} is missing); train the run again "
            "to make one, or leave memory off (--recall 0 --history-tokens 0)"
        )
    try:
        sessions = read_sessions_file(conversations_file)
    except DataError as error:
        raise MemoryStoreError(f"damaged memory store: {error}; train the run again to rebuild it") from None
    problem = _index_problem(folder, len(sessions))
    if problem is None:
        try:
            index = bm25s.BM25.load(folder / INDEX, allow_pickle=False, mmap=False, show_progress=False)
            if index.scores["num_docs"] == len(sessions):
                return Conversations(sessions, index)
            problem = f"its index holds {index.scores['num_docs']} conversations"
        except Exception as error:  # noqa: BLE001 (whatever a damaged file raises, the index is built again)
            problem = f"its index cannot be read ({type(error).__name__})"
    print(
        f"warning: {folder}: {problem}; building the index again from its {len(sessions):,} conversations",
        file=sys.stderr,
    )
    conversations = Conversations(sessions)
    _write_index(folder, conversations)
    return conversations


def _index_problem(folder: Path, count: int) -> str | None:
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        if not isinstance(record, dict) or record.get("conversations") != count:
            return f"{RECORD} does not count its {count} conversations"
        if record.get("sha256") != fingerprint(folder / CONVERSATIONS):
            return "its conversations changed since the index was built"
    except (OSError, ValueError) as error:
        return f"{RECORD} cannot be read ({type(error).__name__})"
    return None

"""Conversation sessions: the unit twin trains on, and the files that hold them.

Our own format is JSONL, one session per line:
    {"chat": ..., "chat_type": ..., "start": unixtime,
     "turns": [{"speaker": ..., "messages": [...]}], "target": ...}
We also read the "doppelganger" format, so people can bring data they already prepared for it:
a JSON list of sessions, each a list of {"author": ..., "text": ">>> first message\\n>>> second message"}.

Messages are rendered between ChatML markers such as <|im_start|>, which the tokenizer turns into
special tokens wherever they stand; neutralize_chatml_markers() keeps a message quoting one from
ending its turn.
"""
import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Anything shaped like a ChatML special token: <|im_start|> and <|im_end|>, and the likes of
# <|endoftext|> that other ChatML tokenizers add.
_CHATML_MARKER = re.compile(r"<(?=\|[A-Za-z0-9_]+\|>)")
ZERO_WIDTH_SPACE = "\u200b"


class DataError(ValueError):
    """Bad input data. The message is one line naming the file and what is wrong with it."""


@dataclass
class Turn:
    """Consecutive messages of one speaker."""
    speaker: str
    messages: list[str]


@dataclass
class Session:
    """One conversation: turns with no long gap between them, from one chat."""
    chat: str
    chat_type: str
    start: int  # unix time of the first message
    turns: list[Turn] = field(default_factory=list)
    target: str = ""  # the speaker being cloned


def write_sessions(sessions: list[Session], path: str | os.PathLike) -> None:
    """Write sessions as JSONL. Atomic: a reader never sees a half-written file."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8", newline="\n") as file:
            for session in sessions:
                file.write(json.dumps(asdict(session), ensure_ascii=False) + "\n")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_sessions_file(path: str | os.PathLike) -> list[Session]:
    """Read our JSONL (or one pretty-printed JSON session) or a doppelganger JSON list."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror or error}") from None
    if not text.strip():
        raise DataError(f"{path}: empty file, no sessions in it")
    if text.lstrip().startswith("["):
        return _sessions_from_doppelganger(_parse_json(text, path, "the file"), path)

    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    try:
        json.loads(lines[0][1])
    except json.JSONDecodeError:
        # Not JSON Lines: the whole file may be one (pretty-printed) session.
        return [_session_from_json(_parse_json(text, path, "the file"), f"{path}")]
    return [_session_from_json(_parse_json(line, path, f"line {number}"), f"{path}: line {number}")
            for number, line in lines]


def _parse_json(text: str, path: Path, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: {where} is not valid JSON: {error}") from None
    except RecursionError:
        raise DataError(f"{path}: {where} is nested too deeply") from None


def _session_from_json(value, where: str) -> Session:
    """Check one session from our format; `where` names the file (and line) in errors."""
    if not isinstance(value, dict):
        raise DataError(f"{where}: a session must be a JSON object, got {type(value).__name__}")
    turns = value.get("turns")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: a session needs a non-empty list of turns")
    session = Session(chat=value.get("chat", ""), chat_type=value.get("chat_type", ""),
                      start=value.get("start", 0), target=value.get("target", ""), turns=[])
    for key in ("chat", "chat_type", "target"):
        if not isinstance(getattr(session, key), str):
            raise DataError(f"{where}: {key} must be a string")
    if not isinstance(session.start, int) or isinstance(session.start, bool):
        raise DataError(f"{where}: start must be a unix time (an integer)")
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: turn {number} must be an object with speaker and messages")
        speaker, messages = turn.get("speaker"), turn.get("messages")
        if not isinstance(speaker, str) or not speaker:
            raise DataError(f"{where}: turn {number} needs a speaker name")
        if (not isinstance(messages, list) or not messages
                or not all(isinstance(message, str) for message in messages)):
            raise DataError(f"{where}: turn {number} needs a non-empty list of message strings")
        session.turns.append(Turn(speaker, messages))
    return session


def _sessions_from_doppelganger(value, path: Path) -> list[Session]:
    """Doppelganger sessions: lists of {"author", "text"}, text holding ">>> "-prefixed messages."""
    from data.chatml import parse_body  # here, not at the top: data.chatml imports Turn from this module

    if not isinstance(value, list):
        raise DataError(f"{path}: expected a JSON list of sessions")
    sessions = []
    for number, entries in enumerate(value):
        where = f"{path}: session {number}"
        if not isinstance(entries, list) or not entries:
            raise DataError(f"{where}: a doppelganger session must be a non-empty list of messages")
        session = Session(chat="", chat_type="", start=0)
        for entry in entries:
            if (not isinstance(entry, dict) or not isinstance(entry.get("author"), str)
                    or not entry["author"] or not isinstance(entry.get("text"), str)):
                raise DataError(f"{where}: each message must be an object with author and text strings")
            messages = parse_body(entry["text"])
            if not messages:
                continue
            if session.turns and session.turns[-1].speaker == entry["author"]:
                session.turns[-1].messages.extend(messages)
            else:
                session.turns.append(Turn(entry["author"], messages))
        if not session.turns:
            raise DataError(f"{where}: no message has any text")
        sessions.append(session)
    return sessions


def neutralize_chatml_markers(sessions: list[Session]) -> int:
    """Put a zero-width space after the "<" of every ChatML marker quoted in a message, in place;
    returns how many there were.

    A message that says "<|im_end|>" would otherwise become the special token that ends a turn, and
    the model would learn turns that stop mid-message. The zero-width space keeps the text as its
    author wrote it to the eye, and the tokenizer sees plain characters.
    """
    return sum(neutralize_turn(turn) for session in sessions for turn in session.turns)


def neutralize_turn(turn: Turn) -> int:
    """neutralize_chatml_markers for one turn (one typed into a chat, say)."""
    changed = 0
    for index, message in enumerate(turn.messages):
        turn.messages[index], count = _CHATML_MARKER.subn("<" + ZERO_WIDTH_SPACE, message)
        changed += count
    return changed


def most_frequent_partners(sessions: list[Session]) -> dict[str, str]:
    """Each speaker's most frequent partner: the other speaker whose turns most often come right
    before or right after theirs, that is, who they answer and who answers them.

    Ties go to the partner adjacent to them in more sessions, then to the name that sorts first, so the
    answer never depends on the order of the sessions. Speakers who never talk with anyone else
    (sessions of one speaker) have no partner and are left out.
    """
    adjacent_turns: Counter[tuple[str, str]] = Counter()
    adjacent_sessions: Counter[tuple[str, str]] = Counter()
    for session in sessions:
        pairs = set()
        for before, after in zip(session.turns, session.turns[1:]):
            if before.speaker != after.speaker:
                for pair in ((before.speaker, after.speaker), (after.speaker, before.speaker)):
                    adjacent_turns[pair] += 1
                    pairs.add(pair)
        adjacent_sessions.update(pairs)
    others = defaultdict(list)
    for speaker, other in adjacent_turns:
        others[speaker].append(other)
    return {speaker: min(others[speaker], key=lambda other: (-adjacent_turns[speaker, other],
                                                            -adjacent_sessions[speaker, other], other))
            for speaker in sorted(others)}

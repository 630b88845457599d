"""Conversation sessions: the unit twin trains on, and the files that hold them.

Our own format is JSONL, one session per line:
    {"chat": ..., "chat_type": ..., "start": unixtime,
     "turns": [{"speaker": ..., "messages": [...]}], "target": ...}
We also read the "doppelganger" format, so people can bring data they already prepared for it:
a JSON list of sessions, each a list of {"author": ..., "text": ">>> first message\\n>>> second message"}.

Names and messages come from other people, so every reader cleans them (clean_name, clean_message):
a name becomes one plain line, a message loses its control characters, and neither keeps a lone
surrogate (which a JSON escape can hold and UTF-8 cannot). Text that spells a special token such as <|im_end|> needs no
cleaning: data.chatml encodes names and messages as plain text.
"""

import json
import os
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core import atomic
from core.errors import TwinError

LATEST_START = 253402300799  # 9999-12-31 23:59:59 UTC, the last second a date can show

# SentencePiece tokenizers read "▁" as a space: "▁Bob" would be encoded as " Bob", which decodes as "Bob".
SENTENCEPIECE_SPACE = "\u2581"
LONE_SURROGATES = "lone surrogates (kept as U+FFFD)"
CONTROL_CHARACTERS = "control characters (removed)"
_SURROGATE = re.compile("[\ud800-\udfff]")
# Line breaks other than "\n" become "\n"; other C0 and C1 controls go, but tabs stay.
_LINE_BREAK = re.compile("\r\n?|[\v\f\x85\u2028\u2029]")
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")
_UNPRINTABLE_IN_ERRORS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


class DataError(TwinError):
    """Bad input data. The message is one line naming the file and what is wrong with it."""

    def __init__(self, message: str):
        # Parts of the message come from the file (keys, names, paths): they must not break the line.
        super().__init__(
            _UNPRINTABLE_IN_ERRORS.sub(
                lambda match: match[0].encode("unicode_escape", "backslashreplace").decode("ascii"), message
            )
        )


def clean_message(text: str, repairs: Counter | None = None) -> str:
    """A message without control characters (newlines and tabs stay) or lone surrogates (U+FFFD);
    `repairs` counts the messages that needed either."""
    text, surrogates = _SURROGATE.subn("\ufffd", text)
    text = _LINE_BREAK.sub("\n", text)
    text, controls = _CONTROL.subn("", text)
    if repairs is not None and surrogates:
        repairs[LONE_SURROGATES] += 1
    if repairs is not None and controls:
        repairs[CONTROL_CHARACTERS] += 1
    return text


def clean_name(name: str, repairs: Counter | None = None) -> str:
    """A name as one plain line: invisible formatting characters (zero-width spaces and joiners, bidi
    overrides, which can make one name pass for another or reorder the line) removed; line breaks,
    control characters, SentencePiece's "▁" and runs of whitespace made one space. It may come out
    empty. Lone surrogates become U+FFFD and are counted in `repairs`, as in clean_message."""
    if name.isprintable() and name == name.strip() and "  " not in name and SENTENCEPIECE_SPACE not in name:
        return name  # nearly every name: no need to look at each character
    name, surrogates = _SURROGATE.subn("\ufffd", name)
    if surrogates and repairs is not None:
        repairs[LONE_SURROGATES] += 1
    characters = []
    for character in name:
        category = unicodedata.category(character)
        if category in ("Cc", "Zs", "Zl", "Zp") or character == SENTENCEPIECE_SPACE:  # controls, spaces
            characters.append(" ")
        elif category != "Cf":  # invisible formatting
            characters.append(character)
    return " ".join("".join(characters).split())


@dataclass
class Turn:
    """Consecutive messages of one speaker."""

    speaker: str
    messages: list[str]


# A turn's messages as the model reads and writes them: each after this prefix, on lines of its own.
MESSAGE_PREFIX = ">>> "


def format_body(messages: list[str]) -> str:
    """A turn's body: its messages, each on lines of its own after the ">>> " prefix."""
    return "\n".join(MESSAGE_PREFIX + message for message in messages)


def parse_body(body: str) -> list[str]:
    """The messages of a turn's body (what the model writes after a header); blank ones dropped."""
    messages = body.removeprefix(MESSAGE_PREFIX).split("\n" + MESSAGE_PREFIX)
    return [message for message in messages if message.strip()]


def messages_of(body: str) -> list[str]:
    """The messages of a turn the model wrote, as chat shows them and the report reads them: parsed, and
    cleaned as training cleans messages (no control characters)."""
    return [clean_message(message) for message in parse_body(body)]


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
    with atomic.file(path, text=True, make_parents=False) as file:
        for session in sessions:
            file.write(json.dumps(asdict(session), ensure_ascii=False) + "\n")


def read_sessions_file(path: str | os.PathLike, repairs: Counter | None = None) -> list[Session]:
    """Read our JSONL (or one pretty-printed JSON session) or a doppelganger JSON list, names and
    messages cleaned; `repairs` counts what cleaning changed (see clean_message)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror or error}") from None
    if not text.strip():
        raise DataError(f"{path}: empty file, no sessions in it")
    repairs = Counter() if repairs is None else repairs
    if text.lstrip().startswith("["):
        return _sessions_from_doppelganger(_parse_json(text, path, "the file"), path, repairs)

    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    try:
        json.loads(lines[0][1])
    except json.JSONDecodeError:
        # Not JSON Lines: the whole file may be one (pretty-printed) session.
        return [_session_from_json(_parse_json(text, path, "the file"), f"{path}", repairs)]
    except (ValueError, RecursionError):
        pass  # JSON that cannot be decoded: reported below, naming the line
    return [
        _session_from_json(_parse_json(line, path, f"line {number}"), f"{path}: line {number}", repairs)
        for number, line in lines
    ]


def _parse_json(text: str, path: Path, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: {where} is not valid JSON: {error}") from None
    except ValueError as error:  # e.g. a number of 5000 digits
        raise DataError(f"{path}: {where} cannot be decoded: {error}") from None
    except RecursionError:
        raise DataError(f"{path}: {where} is nested too deeply") from None


def _session_from_json(value, where: str, repairs: Counter) -> Session:
    """Check one session from our format; `where` names the file (and line) in errors."""
    if not isinstance(value, dict):
        raise DataError(f"{where}: a session must be a JSON object, got {type(value).__name__}")
    turns = value.get("turns")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: a session needs a non-empty list of turns")
    session = Session(
        chat=value.get("chat", ""),
        chat_type=value.get("chat_type", ""),
        start=value.get("start", 0),
        target=value.get("target", ""),
        turns=[],
    )
    for key in ("chat", "chat_type", "target"):
        if not isinstance(getattr(session, key), str):
            raise DataError(f"{where}: {key} must be a string")
        setattr(session, key, clean_name(getattr(session, key), repairs))
    if not isinstance(session.start, int) or isinstance(session.start, bool) or not 0 <= session.start <= LATEST_START:
        raise DataError(f"{where}: start must be a unix time (an integer from 0 to {LATEST_START})")
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: turn {number} must be an object with speaker and messages")
        speaker, messages = turn.get("speaker"), turn.get("messages")
        speaker = clean_name(speaker, repairs) if isinstance(speaker, str) else ""
        if not speaker:
            raise DataError(f"{where}: turn {number} needs a speaker name (of visible characters)")
        if not isinstance(messages, list) or not messages or not all(isinstance(message, str) for message in messages):
            raise DataError(f"{where}: turn {number} needs a non-empty list of message strings")
        session.turns.append(Turn(speaker, [clean_message(message, repairs) for message in messages]))
    return session


def _sessions_from_doppelganger(value, path: Path, repairs: Counter) -> list[Session]:
    """Doppelganger sessions: lists of {"author", "text"}, text holding ">>> "-prefixed messages."""
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a JSON list of sessions")
    sessions = []
    for number, entries in enumerate(value):
        where = f"{path}: session {number}"
        if not isinstance(entries, list) or not entries:
            raise DataError(f"{where}: a doppelganger session must be a non-empty list of messages")
        session = Session(chat="", chat_type="", start=0)
        for entry in entries:
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("author"), str)
                or not isinstance(entry.get("text"), str)
            ):
                raise DataError(f"{where}: each message must be an object with author and text strings")
            author = clean_name(entry["author"], repairs)
            if not author:
                raise DataError(f"{where}: a message needs an author name (of visible characters)")
            messages = parse_body(clean_message(entry["text"], repairs))
            if not messages:
                continue
            if session.turns and session.turns[-1].speaker == author:
                session.turns[-1].messages.extend(messages)
            else:
                session.turns.append(Turn(author, messages))
        if not session.turns:
            raise DataError(f"{where}: no message has any text")
        sessions.append(session)
    return sessions


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
    return {
        speaker: min(
            others[speaker],
            key=lambda other: (-adjacent_turns[speaker, other], -adjacent_sessions[speaker, other], other),
        )
        for speaker in sorted(others)
    }

"""Read a Telegram Desktop export ("Machine-readable JSON") into conversation sessions.

    python -m data.telegram ~/Downloads/Telegram\\ Desktop/DataExport_2024-05-01 -o sessions.jsonl

How it works:
  1. _JsonReader walks result.json one value at a time, so a 700 MB export never sits in
     memory as Python objects all at once (json.load takes about 8 GB for it).
  2. _ExportReader turns each message into (time, author id, text) or a reason to skip it,
     and remembers everyone's newest display name.
  3. The target (the person being cloned) is chosen, names are made unique, and each chat is cut
     into sessions at long silences; consecutive messages of one author become one turn.
load_sessions() also takes a sessions file (ours or doppelganger's), so train.py accepts either.

A message without text still happened, so media become placeholders that keep the hole visible in
the turn order: [photo], [video], [video message], [voice message], [audio], [animation], [sticker],
[file], [location], [contact], [game], [invoice] and [poll]. A caption is the text instead, a sticker
is its emoji where it has one, and a poll is its question. The summary counts the placeholders kept;
--media drop leaves out the messages that would be only a placeholder.

Exports hold other people's words and names, and sometimes damage: names are cleaned into one plain
line and messages lose control characters (data.sessions.clean_name, clean_message), and a message
or chat that cannot be read is skipped and counted by reason, so one bad message never sinks an
export; --strict stops at the first one instead.
"""

import argparse
import codecs
import dataclasses
import json
import re
import statistics
import sys
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, NamedTuple, NoReturn

from tqdm import tqdm

from core.cli import program
from core.flags import add_arguments, from_args, setting
from core.names import matching_names
from data.personal import PLACEHOLDERS as SCRUBBED_PLACEHOLDERS
from data.personal import scrub
from data.sessions import DataError, Session, Turn, clean_message, clean_name, read_sessions_file, write_sessions

# Chats that hold the target's own conversations; everything else is skipped.
DEFAULT_CHAT_TYPES = {"personal_chat", "private_group", "private_supergroup"}
PUBLIC_GROUP_TYPE = "public_supergroup"  # strangers talking: only with --public-groups
GROUP_TYPES = {"private_group", "private_supergroup", PUBLIC_GROUP_TYPE}
SERVICE_NOTIFICATIONS_ID = 777000  # the "Telegram" account that sends login codes

MEDIA_PLACEHOLDERS = {
    "sticker": "[sticker]",
    "voice_message": "[voice message]",
    "video_message": "[video message]",
    "video_file": "[video]",
    "audio_file": "[audio]",
    "animation": "[animation]",
}
# Looked up in this order when media_type says nothing. "file" is last: most media also have one.
ATTACHMENT_PLACEHOLDERS = {
    "photo": "[photo]",
    "location_information": "[location]",
    "place_name": "[location]",
    "contact_information": "[contact]",
    "poll": "[poll]",
    "game_title": "[game]",
    "invoice_information": "[invoice]",
    "file": "[file]",
}
PLACEHOLDERS = {*MEDIA_PLACEHOLDERS.values(), *ATTACHMENT_PLACEHOLDERS.values()}
MEDIA_CHOICES = ("keep", "drop")

SECONDS_PER_DAY = 24 * 3600
SECONDS_PER_MONTH = 365.2425 / 12 * SECONDS_PER_DAY
READ_CHUNK_BYTES = 1 << 20
SESSION_FIELDS = {field.name for field in dataclasses.fields(Session)}


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


@dataclass
class ExportOptions:
    """How an export is read: the flags of `python -m data.telegram`, which train.py and evaluate.py take too."""

    target: str | None = setting(
        None,
        "the person to clone, by Telegram id (user123) or name: the full name as the summary shows it, or "
        "a part of it that only one person's name has, in any case; unset means the export's owner "
        "(personal_information.user_id, else the author of Saved Messages)",
        metavar="NAME",
    )
    gap_minutes: float = setting(
        10, "a silence longer than this starts a new session", type=_positive_float, metavar="N"
    )
    months: int = setting(
        24,
        "keep the messages of the last N months before the newest message in the export; 0 keeps all",
        type=_non_negative_int,
        metavar="N",
    )
    speakers: str = setting(
        "target",
        "target: keep only sessions where the target speaks after the first turn; any: keep every session",
        choices=("target", "any"),
    )
    keep_forwarded: bool = setting(
        False,
        "keep forwarded messages and messages sent via bots; they are skipped "
        "otherwise as they are not their sender's own words",
    )
    public_groups: bool = setting(
        False, "also read public supergroups; otherwise only personal chats and private groups"
    )
    strict: bool = setting(
        False,
        "stop with an error at the first malformed message or chat of an export; "
        "otherwise they are skipped and counted",
    )
    media: str = setting(
        "keep",
        "keep: a photo, sticker, voice message, video, file, location, contact or poll "
        "without text becomes a placeholder such as [photo] or [voice message] (a caption, a "
        "sticker's emoji and a poll's question are kept as text); drop: such messages are left "
        "out",
        choices=MEDIA_CHOICES,
    )
    # Choosing what to learn from
    chats: str | None = setting(
        None,
        "read only these chats: a comma-separated list of chat names (in any case), "
        "ids or types (personal_chat, private_group, private_supergroup, public_supergroup) "
        "(default: every chat of the types read)",
        metavar="CHATS",
    )
    exclude_chats: str | None = setting(
        None, "leave out these chats: names, ids or types, as --chats takes them (default: none)", metavar="CHATS"
    )
    scrub: bool = setting(
        False,
        "replace phone numbers, e-mail addresses and card numbers in the messages by "
        "[phone], [email] and [card], so that the model never learns them; the summary counts "
        "them",
    )

    def __post_init__(self):
        if not self.gap_minutes > 0:
            raise ValueError(f"gap_minutes must be positive, got {self.gap_minutes}")
        if self.months < 0:
            raise ValueError(f"months must be 0 (all) or more, got {self.months}")
        if self.speakers not in ("target", "any"):
            raise ValueError(f"speakers must be 'target' or 'any', got {self.speakers!r}")
        if self.media not in MEDIA_CHOICES:
            raise ValueError(f"media must be 'keep' or 'drop', got {self.media!r}")


def chat_list(text: str | None) -> list[str]:
    """--chats "Mom, Work group,personal_chat" as its entries."""
    return [entry.strip() for entry in (text or "").split(",") if entry.strip()]


def named_by(entries: list[str], name: object, chat_type: object, chat_id: object = None) -> list[str]:
    """The entries of a --chats list that name this chat: by its name (in any case), its type or its id
    (as the export writes it, or as user123 / chat123)."""
    keys = {str(key).casefold() for key in (name, chat_type) if isinstance(key, str)}
    if isinstance(chat_id, (int, str)) and not isinstance(chat_id, bool):
        keys |= {str(chat_id).casefold(), (_person_id(chat_id) or "").casefold()}
    return [entry for entry in entries if entry.casefold() in keys]


def add_export_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The options of reading an export; train.py and evaluate.py add them too."""
    add_arguments(parser, ExportOptions)


@dataclass
class ConversionReport:
    """What load_sessions did, for a person to check before training on it."""

    source: str
    source_kind: str  # "Telegram export" or "sessions file"
    target: str = ""
    target_how: str = ""
    chats_read: Counter = field(default_factory=Counter)  # chat type -> chats
    chats_kept: Counter = field(default_factory=Counter)  # chat type -> chats
    chats_skipped: Counter = field(default_factory=Counter)  # reason -> chats
    messages_kept: int = 0
    messages_skipped: Counter = field(default_factory=Counter)  # reason -> messages
    turns_per_session: list[int] = field(default_factory=list)
    speaker_chars: Counter = field(default_factory=Counter)  # speaker -> characters written
    placeholders: Counter = field(default_factory=Counter)  # "[photo]" -> kept messages saying it
    repairs: Counter = field(default_factory=Counter)  # what cleaning changed -> messages or names
    scrubbed: Counter | None = None  # with --scrub: "phone", "email", "card" -> values replaced
    chat_choices: list[str] = field(default_factory=list)  # --chats and --exclude-chats as given
    warnings: list[str] = field(default_factory=list)

    @property
    def sessions(self) -> int:
        return len(self.turns_per_session)

    def summary(self) -> str:
        lines = [f"read {self.source_kind} {self.source}", f"target: {self.target} ({self.target_how})"]
        if self.chats_read:
            lines.append(
                f"chats: {sum(self.chats_read.values())} read, "
                f"{sum(self.chats_kept.values())} kept ({_counts(self.chats_kept)})"
            )
            if self.chats_skipped:
                lines.append(f"  skipped: {_counts(self.chats_skipped)}")
        skipped = sum(self.messages_skipped.values())
        lines.append(f"messages: {self.messages_kept:,} kept, {skipped:,} skipped")
        if skipped:
            lines.append(f"  skipped: {_counts(self.messages_skipped)}")
        if self.repairs:
            lines.append(f"  repaired: {_counts(self.repairs)}")
        lines += [f"  {choice}" for choice in self.chat_choices]
        if self.scrubbed is None:
            lines.append("  phone numbers, e-mail addresses and card numbers: kept as written (--scrub replaces them)")
        else:
            counts = ", ".join(f"{kind} {self.scrubbed[kind]:,}" for kind in SCRUBBED_PLACEHOLDERS)
            lines.append(f"  scrubbed (--scrub): {counts}, replaced by {', '.join(SCRUBBED_PLACEHOLDERS.values())}")
        if self.placeholders:
            lines.append(
                f"  media without text: {_counts(self.placeholders)} "
                "(kept as placeholders; --media drop leaves them out)"
            )
        turns = self.turns_per_session
        lines.append(
            f"sessions: {len(turns):,}"
            + (
                f", turns per session: min {min(turns)}, median {statistics.median(turns):g}, max {max(turns)}"
                if turns
                else ""
            )
        )
        total_chars = sum(self.speaker_chars.values())
        if total_chars:
            lines.append("top speakers by message characters (tokens need a tokenizer):")
            for speaker, chars in self.speaker_chars.most_common(10):
                lines.append(f"  {speaker}: {plural(chars, 'char')} ({chars / total_chars:.1%})")
        lines += [f"warning: {warning}" for warning in self.warnings]
        return "\n".join(lines)


def _counts(counter: Counter) -> str:
    return ", ".join(f"{key} {count:,}" for key, count in counter.most_common() if count > 0)


def plural(count: int, noun: str) -> str:
    """ "1 session", "2 sessions": the count and the noun, which takes an s unless there is one."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


# --- Reading JSON piece by piece -------------------------------------------------------------

_WHITESPACE = re.compile(r"[ \t\n\r]*")
# The escaped backslash is matched too, so that in \\x41 the "x" stays plain text.
_HEX_ESCAPE = re.compile(r"\\(\\|x([0-9A-Fa-f]{2}))")
_DECODER = json.JSONDecoder()


def repair_hex_escapes(text: str) -> str:
    """Telegram Desktop writes control characters as \\xHH, which JSON lacks: make them \\u00HH."""
    if "\\x" not in text:  # the common case, and a fast one
        return text
    return _HEX_ESCAPE.sub(lambda match: match[0] if match[2] is None else "\\u00" + match[2], text)


def _split_unfinished_escape(text: str) -> tuple[str, str]:
    """Split off an escape that the end of a chunk may have cut (at most 4 characters: \\xHH)."""
    last = text.rfind("\\", max(0, len(text) - 3))
    if last == -1:
        return text, ""
    run_start = last
    while run_start > 0 and text[run_start - 1] == "\\":
        run_start -= 1
    if (last - run_start) % 2 == 1:  # the last backslash is escaped by the one before it
        return text, ""
    return text[:last], text[last:]


class _JsonReader:
    """Walks a JSON file one value at a time: objects key by key, lists item by item, and
    anything else decoded whole by json's raw_decode. It reads 1 MB chunks, repairing \\xHH."""

    def __init__(self, path: Path, file: BinaryIO, progress: tqdm):
        self.path = path
        self.file = file
        self.progress = progress
        self.utf8 = codecs.getincrementaldecoder("utf-8-sig")()
        self.buffer = ""
        self.pos = 0
        self.consumed = 0  # characters dropped from the front of the buffer, for error positions
        self.escape_carry = ""
        self.at_end = False

    def _read_more(self, at_least: int = 0) -> bool:
        """Append the next chunk of text to the buffer; False once the file is used up."""
        if self.at_end:
            return False
        data = self.file.read(max(READ_CHUNK_BYTES, at_least))
        self.progress.update(len(data))
        try:
            text = self.escape_carry + self.utf8.decode(data, final=not data)
        except UnicodeDecodeError as error:
            raise DataError(
                f"{self.path}: not UTF-8 text ({error.reason} near byte {self.file.tell() - len(data) + error.start})"
            ) from None
        if data:
            text, self.escape_carry = _split_unfinished_escape(text)
        else:
            self.at_end = True
        self.consumed += self.pos
        self.buffer = self.buffer[self.pos :] + repair_hex_escapes(text)
        self.pos = 0
        return True

    def error(self, where: str, problem: str) -> DataError:
        return DataError(f"{self.path}: {where}: {problem}")

    def peek(self) -> str:
        """The next character that is not whitespace, not consumed; "" at the end of the file."""
        while True:
            self.pos = _WHITESPACE.match(self.buffer, self.pos).end()
            if self.pos < len(self.buffer):
                return self.buffer[self.pos]
            if not self._read_more():
                return ""

    def _expect(self, char: str, where: str, what: str) -> None:
        found = self.peek()
        if found != char:
            self._fail_at(found, where, what)
        self.pos += 1

    def _fail_at(self, found: str, where: str, what: str) -> NoReturn:
        if not found:
            raise self.error(where, "the file ends here: is it truncated?")
        raise self.error(where, f"expected {what}, found {found!r} at character {self.consumed + self.pos}")

    def value(self, where: str):
        """Decode the next whole JSON value."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buffer, self.pos)
            except json.JSONDecodeError as error:
                # An error near the end of the text read so far may only mean that the chunk
                # cut the value in two: read more (at least as much again, to stay linear).
                unterminated = error.msg.startswith("Unterminated string")
                if (unterminated or error.pos >= len(self.buffer) - 8) and self._read_more(
                    at_least=len(self.buffer) - self.pos
                ):
                    continue
                if unterminated or error.pos >= len(self.buffer.rstrip()):
                    raise self.error(where, "the file ends inside this value: is it truncated?") from None
                raise self.error(
                    where, f"not valid JSON: {error.msg} at character {self.consumed + error.pos}"
                ) from None
            except (ValueError, RecursionError) as error:  # e.g. a 5000-digit number, deep nesting
                raise self.error(where, f"cannot decode: {error}") from None
            if end == len(self.buffer) and self._read_more():
                continue  # a number at the end of the buffer may go on in the next chunk
            self.pos = end
            return value

    def object_keys(self, where: str) -> Iterator[str]:
        """Walk an object: yields each key; the caller reads its value before the next one."""
        self._expect("{", where, "an object")
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            if self.peek() != '"':
                self._fail_at(self.peek(), where, "a key in double quotes")
            key = self.value(where)
            self._expect(":", where, "':' after a key")
            yield key
            if not self._another_item("}", where):
                return

    def array_items(self, where: str) -> Iterator[int]:
        """Walk a list: yields each index; the caller reads the item before the next one."""
        self._expect("[", where, "a list")
        if self.peek() == "]":
            self.pos += 1
            return
        index = 0
        while True:
            yield index
            if not self._another_item("]", where):
                return
            index += 1

    def _another_item(self, closing: str, where: str) -> bool:
        """Consume what follows an item: True for a comma, False for the closing bracket."""
        found = self.peek()
        if found not in (",", closing):
            self._fail_at(found, where, f"',' or '{closing}'")
        self.pos += 1
        return found == ","

    def expect_end(self) -> None:
        if self.peek():
            self._fail_at(self.peek(), "after the top-level object", "the end of the file")


# --- Reading an export -----------------------------------------------------------------------


class ChatMessage(NamedTuple):
    time: int  # unix time
    author: str  # the author's id, e.g. "user123": names collide and change, ids do not
    text: str


@dataclass
class _Chat:
    name: object = None
    type: object = None
    id: object = None
    messages: list[ChatMessage] | None = None
    skipped: Counter = field(default_factory=Counter)  # reason -> messages
    left: bool = False  # from left_chats: the owner left it


class _Malformed(Exception):
    """A message or chat that cannot be read. The message says what is wrong; `reason`, without the
    values from the file, is what the report counts."""

    def __init__(self, reason: str, problem: str):
        super().__init__(problem)
        self.reason = reason


class _ExportReader:
    """Reads one export: the chats worth keeping, who is who, and what was skipped and why."""

    def __init__(self, path: Path, options: ExportOptions):
        self.path = path
        self.options = options
        self.kept_chats: list[_Chat] = []
        self.owner_id: str | None = None  # personal_information.user_id
        self.owner_name = ""
        self.saved_messages_authors: Counter = Counter()
        self.latest_names: dict[str, tuple[int, str | None]] = {}  # author id -> (time, name as written)
        self.display_names: dict[str, str] = {}  # author id -> newest name, cleaned; set at the end
        self.message_counts: Counter = Counter()  # author id -> messages written anywhere
        self.author_ids: dict[str, str] = {}  # one shared string per id: saves memory on big exports
        self.newest_time = 0
        # Nothing is written after its export: a later date is damage, and would move the --months
        # cutoff past every real message. A day's margin covers time zones.
        self.latest_time = int(datetime.now(timezone.utc).timestamp()) + SECONDS_PER_DAY
        self.report = ConversionReport(str(path), "Telegram export")
        self.warned: set[str] = set()  # kinds of malformed input already warned about
        self.chats, self.exclude_chats = chat_list(options.chats), chat_list(options.exclude_chats)
        self.chat_entries_used: set[str] = set()  # entries of --chats and --exclude-chats that named a chat

    def read(self) -> None:
        size = self.path.stat().st_size
        with (
            open(self.path, "rb") as file,
            # Only for big exports, and only on a terminal (None): logs stay readable.
            tqdm(
                total=size,
                unit="B",
                unit_scale=True,
                desc="reading export",
                leave=False,
                disable=True if size < 64 << 20 else None,
            ) as progress,
        ):
            reader = _JsonReader(self.path, file, progress)
            top_level = _Chat()  # a single-chat export has its chat at the top level
            found_chat_list = False
            for key in reader.object_keys("the top level"):
                if key == "personal_information":
                    self._read_personal_information(reader.value(key))
                elif key in ("chats", "left_chats"):
                    found_chat_list = True
                    self._read_chat_list(reader, key)
                else:
                    self._read_chat_field(reader, top_level, key, "")
            reader.expect_end()
        if top_level.messages is not None:
            self._finish_chat(top_level, "the top level")
        elif not found_chat_list:
            raise DataError(f"{self.path}: not a Telegram export: no chats list and no messages at the top level")
        _note_chat_choices(self.report, self.options, self.chat_entries_used)
        # Cleaned once per person rather than once per message.
        self.display_names = {
            person: _display_name(name, person, self.report.repairs) for person, (_, name) in self.latest_names.items()
        }

    def _skip(self, where: str, malformed: _Malformed, skipped: Counter) -> None:
        """Count the malformed message or chat in `skipped` and warn about the first of its kind;
        with --strict, stop."""
        if self.options.strict:
            raise DataError(f"{self.path}: {where}: {malformed}")
        kind = f"malformed ({malformed.reason})"
        skipped[kind] += 1
        if kind not in self.warned:
            self.warned.add(kind)
            self.report.warnings.append(
                f"{where}: {malformed}; this and any other {kind} skipped (--strict stops at the first instead)"
            )

    def _read_personal_information(self, info) -> None:
        if not isinstance(info, dict):
            raise DataError(f"{self.path}: personal_information must be an object")
        self.owner_id = _person_id(info.get("user_id"))
        if self.owner_id is None and info.get("user_id") is not None:
            raise DataError(f"{self.path}: personal_information.user_id {info.get('user_id')!r} is not a Telegram id")
        names = [info.get("first_name"), info.get("last_name")]
        self.owner_name = clean_name(" ".join(name for name in names if isinstance(name, str)), self.report.repairs)

    def _read_chat_list(self, reader: _JsonReader, key: str) -> None:
        for list_key in reader.object_keys(key):
            if list_key != "list":
                reader.value(f"{key}.{list_key}")
                continue
            for index in reader.array_items(f"{key}.list"):
                where = f"{key}.list[{index}]"
                chat = _Chat(left=key == "left_chats")
                if reader.peek() != "{":
                    reader.value(where)
                    self._skip(
                        where, _Malformed("chat not an object", "a chat must be an object"), self.report.chats_skipped
                    )
                    continue
                for chat_key in reader.object_keys(where):
                    self._read_chat_field(reader, chat, chat_key, f"{where}.")
                self._finish_chat(chat, where)

    def _read_chat_field(self, reader: _JsonReader, chat: _Chat, key: str, prefix: str) -> None:
        if key == "messages" and reader.peek() == "[":
            chat.messages = []
            for index in reader.array_items(f"{prefix}messages"):
                where = f"{prefix}messages[{index}]"
                try:
                    self._add_message(chat, reader.value(where))
                except _Malformed as malformed:
                    self._skip(where, malformed, chat.skipped)
        elif key in ("name", "type", "id"):
            setattr(chat, key, reader.value(prefix + key))
        else:  # messages that are not a list are read here too, and the chat has none
            reader.value(prefix + key)

    def _add_message(self, chat: _Chat, message) -> None:
        if not isinstance(message, dict):
            raise _Malformed("not an object", "a message must be an object")
        kind = message.get("type")
        if kind != "message":
            if not isinstance(kind, str):
                raise _Malformed("no type", "the message has no type")
            chat.skipped[kind if kind in ("service", "unsupported") else f"type {kind}"] += 1
            return
        time = _message_time(message)
        if time > self.latest_time:
            raise _Malformed("date after today", f"date {time} is after today")
        author = _person_id(message.get("from_id"))
        if author is None:
            author = _author_without_id(message)
            if author is None:
                chat.skipped["no author"] += 1
                return
        name = message.get("from")
        if name is not None and not isinstance(name, str):
            raise _Malformed("bad author", f"from must be a name, got {type(name).__name__}")
        self.newest_time = max(self.newest_time, time)
        author = self.author_ids.setdefault(author, author)
        self.message_counts[author] += 1
        latest = self.latest_names.get(author)
        if latest is None or time >= latest[0]:
            self.latest_names[author] = (time, name)
        if not self.options.keep_forwarded:
            if "forwarded_from" in message:
                chat.skipped["forwarded"] += 1
                return
            if "via_bot" in message:
                chat.skipped["via bot"] += 1
                return
        text = _message_text(message, self.report.repairs)
        if not text:
            text = _placeholder(message)
            if text and self.options.media == "drop":
                chat.skipped["media without text (--media drop)"] += 1
                return
        if not text:
            chat.skipped["empty"] += 1
            return
        chat.messages.append(ChatMessage(time, author, text))

    def _finish_chat(self, chat: _Chat, where: str) -> None:
        try:
            if chat.messages is None:
                raise _Malformed("chat without messages", "the chat has no list of messages")
            if not isinstance(chat.type, str):
                raise _Malformed("chat without type", "the chat has no type")
            if chat.name is not None and not isinstance(chat.name, str):
                raise _Malformed("chat name not a string", "the chat name must be a string")
        except _Malformed as malformed:
            self._skip(where, malformed, self.report.chats_skipped)
            self._skip_messages(chat)
            return
        self.report.chats_read[chat.type] += 1
        if chat.type == "saved_messages":
            self.saved_messages_authors.update(message.author for message in chat.messages)
        reason = self._why_skip(chat)
        if reason:
            self.report.chats_skipped[reason] += 1
            self._skip_messages(chat)
            return
        self.report.chats_kept[chat.type] += 1
        self.report.messages_skipped.update(chat.skipped)
        self.kept_chats.append(chat)

    def _skip_messages(self, chat: _Chat) -> None:
        messages = len(chat.messages or []) + sum(chat.skipped.values())
        if messages:
            self.report.messages_skipped["in skipped chats"] += messages

    def _why_skip(self, chat: _Chat) -> str | None:
        if (
            chat.type == "verification_codes"
            or _person_id(chat.id) == f"user{SERVICE_NOTIFICATIONS_ID}"
            or (chat.type == "personal_chat" and chat.name == "Telegram")
        ):
            return "Telegram service notifications"
        excluded, included = (
            named_by(entries, chat.name, chat.type, chat.id) for entries in (self.exclude_chats, self.chats)
        )
        self.chat_entries_used.update(excluded + included)
        if excluded:
            return "named by --exclude-chats"
        if self.chats and not included:
            return "not named by --chats"
        if chat.type in DEFAULT_CHAT_TYPES:
            return None
        if chat.type == PUBLIC_GROUP_TYPE:
            return None if self.options.public_groups else f"{chat.type} (see --public-groups)"
        return chat.type


def _note_chat_choices(report: ConversionReport, options: ExportOptions, used: set[str]) -> None:
    """Say in the summary which chats were asked for and left out; warn of a --chats entry that named none,
    and refuse an --exclude-chats entry that named none."""
    for flag, text, choice in (
        ("--chats", options.chats, "read only the chats named by"),
        ("--exclude-chats", options.exclude_chats, "left out the chats named by"),
    ):
        entries = chat_list(text)
        if entries:
            report.chat_choices.append(f"{choice} {flag}: {', '.join(entries)}")
        unused = [entry for entry in entries if entry not in used]
        if unused and flag == "--exclude-chats":  # a chat meant to stay out must not slip in by a typo
            raise DataError(
                f"{report.source}: --exclude-chats: {unused[0]!r} names no chat here (a chat's name, id or type)"
            )
        report.warnings += [f"{flag}: {entry!r} names no chat (a chat's name, id or type)" for entry in unused]


def _scrub_sessions(sessions: list[Session], report: ConversionReport) -> None:
    """--scrub: every message with its phone numbers, e-mail addresses and card numbers replaced, counted."""
    report.scrubbed = Counter()
    for session in sessions:
        for turn in session.turns:
            turn.messages = [scrub(message, report.scrubbed) for message in turn.messages]


def _person_id(value) -> str | None:
    """A Telegram id as "user123" / "channel123". Exports before 2021 wrote bare numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return f"user{value}"
    if isinstance(value, str) and value.strip():
        return f"user{value}" if value.isdecimal() else value.strip()
    return None


def _author_without_id(message: dict) -> str | None:
    """Very old exports name some authors without an id."""
    from_id = message.get("from_id")
    if from_id is not None and not isinstance(from_id, str):
        raise _Malformed("bad author", f"from_id {from_id!r} is not a Telegram id")
    name = message.get("from")
    name = clean_name(name) if isinstance(name, str) else ""
    return f"name:{name}" if name else None


def _display_name(name: str | None, person: str, repairs: Counter) -> str:
    """A name as one plain line; without one, a name made from the person's (or chat's) id."""
    return clean_name(name or "", repairs) or _deleted_account(person)


def _deleted_account(person: str) -> str:
    """Deleted accounts have no name. A suffix made from the id keeps two of them apart."""
    return f"Deleted Account {zlib.crc32(person.encode('utf-8', 'surrogatepass')) % 10000:04d}"


def _message_time(message: dict) -> int:
    unixtime = message.get("date_unixtime")
    if unixtime is not None:
        if isinstance(unixtime, int) and not isinstance(unixtime, bool):
            time = unixtime
        elif isinstance(unixtime, str) and unixtime.isdecimal() and len(unixtime) < 20:
            time = int(unixtime)
        else:
            raise _Malformed("bad date", f"date_unixtime {unixtime!r} is not a unix time")
    else:  # exports before 2021 have only the ISO date, in local time: fine for gaps and order
        date = message.get("date")
        if not isinstance(date, str):
            raise _Malformed("bad date", "the message has no date")
        try:
            parsed = datetime.fromisoformat(date)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            time = int(parsed.timestamp())
        except (ValueError, OverflowError):
            raise _Malformed("bad date", f"date {date!r} is not an ISO date") from None
    if time < 0:
        raise _Malformed("bad date", f"date {time} is not a plausible unix time")
    return time


def _message_text(message: dict, repairs: Counter) -> str:
    """What the author wrote: the text (a caption with media), a sticker's emoji or a poll's
    question; "" when they wrote nothing."""
    if "sticker_emoji" in message or message.get("media_type") == "sticker":
        emoji = message.get("sticker_emoji")
        return clean_message(emoji, repairs).strip() if isinstance(emoji, str) else ""
    text = clean_message(_plain_text(message.get("text", "")), repairs).strip()
    poll = message.get("poll")
    if not text and isinstance(poll, dict) and isinstance(poll.get("question"), str):
        return clean_message(poll["question"], repairs).strip()
    return text


def _placeholder(message: dict) -> str:
    """The placeholder of the media a message holds, such as "[photo]"; "" when it holds none."""
    media_type = message.get("media_type")
    if isinstance(media_type, str):
        return MEDIA_PLACEHOLDERS.get(media_type, "[file]")
    for key, placeholder in ATTACHMENT_PLACEHOLDERS.items():
        if key in message:
            return placeholder
    return ""


def _plain_text(text) -> str:
    """Message text is a string, or a list of strings and entities like {"type": "bold", "text": ...}."""
    if isinstance(text, str):
        return text
    if not isinstance(text, list):
        raise _Malformed("bad text", f"text must be a string or a list, got {type(text).__name__}")
    parts = []
    for part in text:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            parts.append(part["text"])
        else:
            raise _Malformed("bad text", "text parts must be strings or entities with a text string")
    return "".join(parts)


# --- From messages to sessions -----------------------------------------------------------------


def _choose_target(export: _ExportReader, options: ExportOptions, names: dict[str, str]) -> tuple[str, str]:
    """The id of the person to clone, and how it was chosen."""
    if options.target is not None:
        return _find_person(export, options.target, names)
    if export.owner_id is not None:
        return export.owner_id, "the export's owner, from personal_information.user_id"
    if export.saved_messages_authors:
        return export.saved_messages_authors.most_common(1)[0][0], "the author of Saved Messages"
    raise DataError(
        f"{export.path}: cannot tell whose export this is (no personal_information "
        f"and no Saved Messages): choose with --target NAME; most active: "
        f"{_most_active(export, names)}"
    )


def _find_person(export: _ExportReader, wanted: str, names: dict[str, str]) -> tuple[str, str]:
    """The id that --target means, and how it was chosen: an id, or a name (see core.names)."""
    wanted = wanted.strip()
    person = _person_id(wanted)
    if person not in names:
        people_by_name = {name: someone for someone, name in names.items()}
        matches = matching_names(wanted, people_by_name)
        if len(matches) > 1:
            choices = ", ".join(f"{name!r} ({people_by_name[name]})" for name in matches)
            raise DataError(
                f"{export.path}: --target {wanted!r} matches {len(matches)} people: "
                f"{choices}; pass a full name or an id"
            )
        if not matches:
            raise DataError(
                f"{export.path}: --target {wanted!r} wrote no message in this export; "
                f"most active: {_most_active(export, names)}"
            )
        person = people_by_name[matches[0]]
    namesakes = [
        other
        for other, name in export.display_names.items()
        if name == export.display_names[person] and other != person
    ]
    if not namesakes:
        return person, "chosen with --target"
    # Two people called "Misha" are "Misha" (the more active) and "Misha (2)": say which one this is.
    others = ", ".join(f"{names[other]!r} ({other})" for other in namesakes)
    return person, (
        f"chosen with --target; also called {export.display_names[person]}: {others}, whom an id or that name picks"
    )


def _most_active(export: _ExportReader, names: dict[str, str]) -> str:
    top = export.message_counts.most_common(5)
    return ", ".join(f"{names[person]} ({person})" for person, _ in top) or "nobody"


def _unique_names(export: _ExportReader) -> dict[str, str]:
    """Each person's newest display name; when two people share one, the less active is numbered."""
    people_by_name = defaultdict(list)
    for person, name in export.display_names.items():
        people_by_name[name].append(person)
    names, taken = {}, set(people_by_name)
    for name, people in people_by_name.items():
        people.sort(key=lambda person: (-export.message_counts[person], person))
        names[people[0]] = name
        number = 2
        for person in people[1:]:
            while f"{name} ({number})" in taken:
                number += 1
            names[person] = f"{name} ({number})"
            taken.add(names[person])
    return names


def _split_at_gaps(messages: list[ChatMessage], gap_seconds: float) -> Iterator[list[ChatMessage]]:
    session: list[ChatMessage] = []
    for message in messages:
        if session and message.time - session[-1].time > gap_seconds:
            yield session
            session = []
        session.append(message)
    if session:
        yield session


def _turns(messages: list[ChatMessage], names: dict[str, str]) -> list[Turn]:
    turns: list[Turn] = []
    for message in messages:
        speaker = names[message.author]
        if turns and turns[-1].speaker == speaker:
            turns[-1].messages.append(message.text)
        else:
            turns.append(Turn(speaker, [message.text]))
    return turns


def _sessions_from_export(export: _ExportReader, options: ExportOptions) -> tuple[list[Session], ConversionReport]:
    report = export.report
    names = _unique_names(export)
    target_id, report.target_how = _choose_target(export, options, names)
    if target_id not in names:  # the owner may never have written in this export
        own_name = export.owner_name if target_id == export.owner_id else ""
        names[target_id] = (
            own_name
            if own_name and own_name not in names.values()
            else _display_name(target_id, target_id, report.repairs)
        )
    report.target = target = names[target_id]

    # Relative to the newest message, not today: the same export always gives the same sessions.
    # (Today only bounds the dates: messages dated after it were skipped as damage.)
    cutoff = export.newest_time - options.months * SECONDS_PER_MONTH if options.months else 0
    sessions, seen = [], set()
    for chat in export.kept_chats:
        recent = [message for message in chat.messages if message.time >= cutoff]
        if len(recent) < len(chat.messages):
            report.messages_skipped[f"older than {options.months} months"] += len(chat.messages) - len(recent)
        recent.sort(key=lambda message: message.time)  # stable: same-second messages keep order
        chat_name = _display_name(chat.name, _person_id(chat.id) or "", report.repairs)
        for messages in _split_at_gaps(recent, options.gap_minutes * 60):
            session = Session(chat_name, chat.type, messages[0].time, _turns(messages, names), target)
            if options.speakers == "target" and all(turn.speaker != target for turn in session.turns[1:]):
                report.messages_skipped["in sessions where the target does not answer"] += len(messages)
                continue
            # The same conversation can appear twice, e.g. a group and the supergroup it became.
            key = (session.start, tuple((turn.speaker, tuple(turn.messages)) for turn in session.turns))
            if key in seen:
                report.messages_skipped["in duplicate sessions"] += len(messages)
                continue
            seen.add(key)
            sessions.append(session)
        # A left chat holds only the owner's messages anyway: Telegram exports no one else's there.
        if (
            chat.type in GROUP_TYPES
            and chat.messages
            and not chat.left
            and all(message.author == target_id for message in chat.messages)
        ):
            report.warnings.append(
                f"only {target} speaks in the group {chat_name!r}: was it exported with "
                "'Only my messages'? Export it again with everyone's messages to learn from it"
            )
    sessions.sort(key=lambda session: session.start)
    if options.scrub:
        _scrub_sessions(sessions, report)
    _count_sessions(report, sessions)
    if not sessions:
        report.warnings.append("no sessions: nothing to train on (see what was skipped above)")
    return sessions, report


def _count_sessions(report: ConversionReport, sessions: list[Session]) -> None:
    for session in sessions:
        report.turns_per_session.append(len(session.turns))
        for turn in session.turns:
            report.messages_kept += len(turn.messages)
            report.speaker_chars[turn.speaker] += sum(len(message) for message in turn.messages)
            report.placeholders.update(message for message in turn.messages if message in PLACEHOLDERS)


# --- Sessions files ----------------------------------------------------------------------------


def _is_sessions_file(path: Path) -> bool:
    """A sessions file (ours, or a doppelganger list) rather than a Telegram export?"""
    with open(path, "rb") as file:
        head = file.read(4096).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not head:
        raise DataError(f"{path}: empty file")
    first_key = re.match(r'\{\s*"([^"\\]*)"', head)
    return head.startswith("[") or bool(first_key and first_key[1] in SESSION_FIELDS)


def _load_sessions_file(path: Path, options: ExportOptions) -> tuple[list[Session], ConversionReport]:
    report = ConversionReport(str(path), "sessions file")
    sessions = read_sessions_file(path, report.repairs)
    named_targets = Counter(session.target for session in sessions if session.target)
    if options.target is not None:
        messages = Counter(turn.speaker for session in sessions for turn in session.turns for _ in turn.messages)
        wanted = options.target.strip()
        matches = matching_names(wanted, [name for name, _ in messages.most_common()])
        if not matches:
            raise DataError(
                f"{path}: --target {wanted!r} never speaks in this file; top speakers: "
                f"{', '.join(name for name, _ in messages.most_common(10))}"
            )
        if len(matches) > 1:
            raise DataError(
                f"{path}: --target {wanted!r} matches {len(matches)} speakers: "
                f"{', '.join(matches[:10])}; pass a full name"
            )
        target, report.target_how = matches[0], "chosen with --target"
    elif named_targets:
        target, report.target_how = named_targets.most_common(1)[0][0], "named in the sessions file"
    else:  # doppelganger files name no target; the owner of the chats is in (nearly) all of them
        appearances = Counter(speaker for session in sessions for speaker in {turn.speaker for turn in session.turns})
        target = appearances.most_common(1)[0][0]
        report.target_how = "the speaker in the most sessions, as the file names no target; choose with --target"
    report.target = target
    for session in sessions:
        session.target = target
    sessions = _chosen_chats(sessions, options, report)
    if dataclasses.replace(options, target=None, chats=None, exclude_chats=None, scrub=False) != ExportOptions():
        report.warnings.append(
            "--gap-minutes, --months, --speakers, --keep-forwarded, --public-groups, "
            "--strict and --media apply to Telegram exports, not to a sessions file"
        )
    if options.scrub:
        _scrub_sessions(sessions, report)
    _count_sessions(report, sessions)
    return sessions, report


def _chosen_chats(sessions: list[Session], options: ExportOptions, report: ConversionReport) -> list[Session]:
    """The sessions of a sessions file in the chats --chats and --exclude-chats choose (by name or type)."""
    chats, excluded, used = chat_list(options.chats), chat_list(options.exclude_chats), set()
    kept = []
    for session in sessions:
        named, left_out = (
            named_by(chats, session.chat, session.chat_type),
            named_by(excluded, session.chat, session.chat_type),
        )
        used.update(named + left_out)
        if left_out or chats and not named:
            reason = "named by --exclude-chats" if left_out else "not named by --chats"
            report.messages_skipped[f"in chats {reason}"] += sum(len(turn.messages) for turn in session.turns)
        else:
            kept.append(session)
    _note_chat_choices(report, options, used)
    return kept


def load_sessions(path, options: ExportOptions | None = None) -> tuple[list[Session], ConversionReport]:
    """Sessions from a Telegram export (result.json or its folder) or from a sessions file."""
    options = options or ExportOptions()
    path = Path(path)
    if path.is_dir():
        if not (path / "result.json").is_file():
            raise DataError(
                f"{path}: no result.json in this folder; pass the folder Telegram "
                "Desktop exported to, its result.json, or a sessions file"
            )
        path = path / "result.json"
    try:
        if _is_sessions_file(path):
            return _load_sessions_file(path, options)
        export = _ExportReader(path, options)
        export.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file or directory") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror or error}") from None
    return _sessions_from_export(export, options)


# --- Command line ------------------------------------------------------------------------------


def _format_session(session: Session) -> str:
    when = datetime.fromtimestamp(session.start, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"=== {session.chat or 'session'} ({session.chat_type or 'no type'}), {when}"]
    for turn in session.turns:
        lines.append(f"[{turn.speaker}]")
        lines += [f">>> {message}" for message in turn.messages]
    return "\n".join(lines)


@program
def main(argv: list[str] | None = None) -> int:
    # Names and messages are in any language: never crash on a console that cannot show them.
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(errors="backslashreplace")
    parser = argparse.ArgumentParser(
        prog="python -m data.telegram",
        description="Turn a Telegram Desktop export (Settings > Advanced > Export Telegram data, "
        "machine-readable JSON) into conversation sessions, one JSON object a line.",
    )
    parser.add_argument(
        "export", help="result.json, the folder holding it, or a sessions file (ours or doppelganger's)"
    )
    parser.add_argument(
        "-o",
        "--output",
        help="where to write the sessions (JSONL); without it nothing "
        "is written, and the summary (and --preview) show what would be",
    )
    add_export_args(parser)
    parser.add_argument(
        "--preview",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="print the first N sessions; they are private data, so only when asked (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    sessions, report = load_sessions(args.export, from_args(ExportOptions, args))
    if args.output is not None:
        try:
            write_sessions(sessions, args.output)
        except OSError as error:
            raise DataError(f"{args.output}: cannot write: {error.strerror or error}") from None
    print(report.summary())
    if args.output is None:
        print(f"wrote nothing (no -o): {plural(len(sessions), 'session')}")
    else:
        print(f"wrote {plural(len(sessions), 'session')} to {args.output}")
    for session in sessions[: args.preview]:
        print(_format_session(session))
    return 0


if __name__ == "__main__":
    sys.exit(main())

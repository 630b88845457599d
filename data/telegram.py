"""Read a Telegram Desktop export ("Machine-readable JSON") into conversation sessions.

How it works:
  1. data.json_stream walks result.json one value at a time, so a 700 MB export never sits in
     memory as Python objects all at once.
  2. _ExportReader turns each message into (time, author id, text) or a reason to skip it,
     and remembers everyone's newest display name.
  3. The target (the person being cloned) is chosen, names are made unique, and each chat is cut
     into sessions at long silences; consecutive messages of one author become one turn.

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

import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from core.names import matching_names
from data.conversion import ConversionReport, ExportOptions, chat_list, note_chat_choices
from data.json_stream import JsonReader
from data.sessions import DataError, Session, Turn, clean_message, clean_name

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

SECONDS_PER_DAY = 24 * 3600
SECONDS_PER_MONTH = 365.2425 / 12 * SECONDS_PER_DAY


def named_by(entries: list[str], name: object, chat_type: object, chat_id: object = None) -> list[str]:
    """The entries of a --chats list that name this chat: by its name (in any case), its type or its id
    (as the export writes it, or as user123 / chat123)."""
    keys = {str(key).casefold() for key in (name, chat_type) if isinstance(key, str)}
    if isinstance(chat_id, (int, str)) and not isinstance(chat_id, bool):
        keys |= {str(chat_id).casefold(), (_person_id(chat_id) or "").casefold()}
    return [entry for entry in entries if entry.casefold() in keys]


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
            reader = JsonReader(self.path, file, progress)
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
        note_chat_choices(self.report, self.options, self.chat_entries_used)
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

    def _read_chat_list(self, reader: JsonReader, key: str) -> None:
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

    def _read_chat_field(self, reader: JsonReader, chat: _Chat, key: str, prefix: str) -> None:
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


def read_export(path: Path, options: ExportOptions) -> tuple[list[Session], ConversionReport]:
    """The sessions of a Telegram export's result.json in time order, and the report of reading it: what was
    kept and skipped, and whom it clones. data.sources scrubs and counts them."""
    export = _ExportReader(path, options)
    export.read()
    return _sessions_from_export(export, options)


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
    if not sessions:
        report.warnings.append("no sessions: nothing to train on (see what was skipped above)")
    return sessions, report

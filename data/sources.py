"""Sessions from either thing a person may pass to train.py: a Telegram export (result.json or its folder) or a
sessions file (ours, or doppelganger's). Both give the same report, and both take --target, --chats,
--exclude-chats and --scrub."""

import dataclasses
import re
from collections import Counter
from pathlib import Path

from core.names import matching_names
from data.conversion import ConversionReport, ExportOptions, chat_list, note_chat_choices
from data.personal import scrub
from data.sessions import DataError, Session, read_sessions_file
from data.telegram import PLACEHOLDERS, named_by, read_export

SESSION_FIELDS = {field.name for field in dataclasses.fields(Session)}


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
        sessions, report = _load_sessions_file(path, options) if _is_sessions_file(path) else read_export(path, options)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file or directory") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror or error}") from None
    if options.scrub:
        _scrub_sessions(sessions, report)
    _count_sessions(report, sessions)
    return sessions, report


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
    note_chat_choices(report, options, used)
    return kept


def _scrub_sessions(sessions: list[Session], report: ConversionReport) -> None:
    """--scrub: every message with its phone numbers, e-mail addresses and card numbers replaced, counted."""
    report.scrubbed = Counter()
    for session in sessions:
        for turn in session.turns:
            turn.messages = [scrub(message, report.scrubbed) for message in turn.messages]


def _count_sessions(report: ConversionReport, sessions: list[Session]) -> None:
    for session in sessions:
        report.turns_per_session.append(len(session.turns))
        for turn in session.turns:
            report.messages_kept += len(turn.messages)
            report.speaker_chars[turn.speaker] += sum(len(message) for message in turn.messages)
            report.placeholders.update(message for message in turn.messages if message in PLACEHOLDERS)


# --- Sessions files ----------------------------------------------------------------------------

"""What converting chats into sessions is asked to do, and what it tells the person who asked: ExportOptions
(the flags of `python convert.py`, which train.py and evaluate.py take too) and ConversionReport (the summary
to check before training on the result)."""

import argparse
import statistics
from collections import Counter
from dataclasses import dataclass, field

from core.flags import add_arguments, non_negative_int, setting
from data.personal import PLACEHOLDERS as SCRUBBED_PLACEHOLDERS
from data.sessions import DataError

MEDIA_CHOICES = ("keep", "drop")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


@dataclass
class ExportOptions:
    """How an export is read: the flags of `python convert.py`, which train.py and evaluate.py take too."""

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
        type=non_negative_int,
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


def note_chat_choices(report: ConversionReport, options: ExportOptions, used: set[str]) -> None:
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

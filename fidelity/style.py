"""Style statistics of chat turns, and how far one set of them is from another.

These are the habits that give a chat model away when it plays a person: it writes longer and
more formally, answers every message with a question, in a single long message, in the wrong
script. evaluate.py computes them for a person's real held-out turns and for the turns a model
wrote in their place, and compares.

A turn is a list of messages (strings). Every statistic pools all turns of a set: "characters per
message" is all characters over all messages, not a mean of per-turn means, so a turn of ten
messages weighs ten times a turn of one.
"""
import re
import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class Statistic:
    name: str  # key in report.json
    label: str  # for people
    is_share: bool  # a share in [0, 1]; otherwise a non-negative rate (per turn, per message)


STATISTICS = (
    Statistic("messages_per_turn", "messages per turn", is_share=False),
    Statistic("chars_per_message", "characters per message", is_share=False),
    Statistic("cyrillic_share", "Cyrillic share of letters", is_share=True),
    Statistic("latin_share", "Latin share of letters", is_share=True),
    Statistic("emoji_per_message", "emoji per message", is_share=False),
    Statistic("question_share", 'messages ending in "?"', is_share=True),
    Statistic("lowercase_share", "messages starting in lower case", is_share=True),
    Statistic("link_share", "turns with a link", is_share=True),
)

# One emoji as a person sees it: a flag (two regional indicators), a keycap, or a pictograph with
# its skin tone and variation selector, joined by zero-width joiners into one picture (👨‍👩‍👧).
_PICTOGRAPH = ("[\u231a\u231b\u23e9-\u23f3\u23f8-\u23fa\u2600-\u27bf\u2b50\u2b55"
               "\U0001f000-\U0001f1e5\U0001f200-\U0001f3fa\U0001f400-\U0001faff]")
_MODIFIERS = "[\U0001f3fb-\U0001f3ff\ufe0f]*"  # skin tones, emoji presentation selector
EMOJI = re.compile(
    "[\U0001f1e6-\U0001f1ff]{1,2}"
    "|[0-9#*]\ufe0f?\u20e3"
    f"|{_PICTOGRAPH}{_MODIFIERS}(?:\u200d{_PICTOGRAPH}{_MODIFIERS})*"
    "|[\U0001f3fb-\U0001f3ff]")
LINK = re.compile(r"https?://\S|www\.\S|\bt\.me/\S", re.IGNORECASE)


def count_emoji(text: str) -> int:
    return len(EMOJI.findall(text))


def script_of(letter: str) -> str:
    """The script a letter belongs to, as the first word of its Unicode name: CYRILLIC, LATIN, ..."""
    return unicodedata.name(letter, "UNKNOWN").split(" ", 1)[0]


def starts_in_lower_case(message: str) -> bool | None:
    """Whether the message's first letter is lower case; None when it has no letter (a bare emoji
    or number says nothing about capitalisation)."""
    for character in message:
        if character.isalpha():
            return character.islower()
    return None


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def style_statistics(turns: list[list[str]]) -> dict[str, float]:
    """Every statistic in STATISTICS over these turns; 0 where its denominator is empty."""
    messages = [message for turn in turns for message in turn]
    letters = [character for message in messages for character in message if character.isalpha()]
    scripts = [script_of(letter) for letter in letters]
    cases = [case for case in map(starts_in_lower_case, messages) if case is not None]
    return {
        "messages_per_turn": _ratio(len(messages), len(turns)),
        "chars_per_message": _ratio(sum(map(len, messages)), len(messages)),
        "cyrillic_share": _ratio(scripts.count("CYRILLIC"), len(letters)),
        "latin_share": _ratio(scripts.count("LATIN"), len(letters)),
        "emoji_per_message": _ratio(sum(map(count_emoji, messages)), len(messages)),
        "question_share": _ratio(sum(message.rstrip().endswith("?") for message in messages), len(messages)),
        "lowercase_share": _ratio(sum(cases), len(cases)),
        "link_share": _ratio(sum(any(LINK.search(message) for message in turn) for turn in turns), len(turns)),
    }


def style_distance(statistic: Statistic, value: float, real: float) -> float:
    """How far `value` is from the real person's `real`, from 0 (equal) to 1 (as far as can be).

    A share is already on a common scale: the distance is the absolute difference, 0.3 meaning 30
    percentage points. A rate has no natural scale (characters per message run to hundreds, emoji
    per message rarely pass 1), so its distance is the difference relative to the larger of the
    two: 0.5 means one is half the other, 1 that one of them is zero and the other not.
    """
    if statistic.is_share:
        return abs(value - real)
    larger = max(value, real)
    return abs(value - real) / larger if larger else 0.0

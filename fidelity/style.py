"""Style statistics of chat turns, and how far one set of them is from another.

These are the habits that give a chat model away when it plays a person: it writes longer and
more formally, answers every message with a question, in a single long message, in the wrong
script, or in one script where the person mixes two. evaluate.py computes them for a person's real
held-out turns and for the turns a model wrote in their place, and compares.

A turn is a list of messages (strings). Every statistic pools all turns of a set: "characters per
message" is all characters over all messages, not a mean of per-turn means, so a turn of ten
messages weighs ten times a turn of one. So each statistic is one sum of per-turn counts over another
(`turn_counts`), and a set's statistics come from its summed counts: resampling turns for a
confidence interval only adds up rows of counts again.
"""

import re
import unicodedata
from dataclasses import dataclass

import numpy as np

# What each turn contributes to the sums the statistics divide; columns of `turn_counts`.
COUNTS = (
    "turns",
    "messages",
    "characters",
    "letters",
    "cyrillic_letters",
    "messages_with_emoji",
    "questions",
    "messages_with_a_letter",
    "lowercase_starts",
    "turns_with_a_link",
    "mixed_script_messages",
)


@dataclass(frozen=True)
class Statistic:
    name: str  # key in report.json
    label: str  # for people
    is_share: bool  # a share in [0, 1]; otherwise a non-negative rate (per turn, per message)
    part: str  # the COUNTS summed above the line
    whole: str  # and below it


# One statistic per habit: a Latin share would be the Cyrillic share's other side (for the scripts chats
# are written in), counting the script twice in a mean position. Mixing is a habit of its own: a person who
# writes half Russian, half English in each message has the Cyrillic share of a crowd of people who each write
# one language, and only the mixed messages tell the two apart. Emoji count as the share of messages with one,
# not as a rate: a rate's distance is relative (style_distance), so for a person who never writes one, a twin
# writing one emoji in a hundred messages would be as far from them as one writing an emoji in every message.
STATISTICS = (
    Statistic("messages_per_turn", "messages per turn", False, "messages", "turns"),
    Statistic("chars_per_message", "characters per message", False, "characters", "messages"),
    Statistic("cyrillic_share", "Cyrillic share of letters", True, "cyrillic_letters", "letters"),
    Statistic("emoji_share", "messages with an emoji", True, "messages_with_emoji", "messages"),
    Statistic("question_share", 'messages ending in "?"', True, "questions", "messages"),
    Statistic("lowercase_share", "messages starting in lower case", True, "lowercase_starts", "messages_with_a_letter"),
    Statistic("link_share", "turns with a link", True, "turns_with_a_link", "turns"),
    Statistic(
        "mixed_script_share",
        "messages mixing Cyrillic and Latin",
        True,
        "mixed_script_messages",
        "messages_with_a_letter",
    ),
)

# One emoji as a person sees it: a flag (two regional indicators), a keycap, or a pictograph with
# its skin tone and variation selector, joined by zero-width joiners into one picture (👨‍👩‍👧).
_PICTOGRAPH = (
    "[\u231a\u231b\u23e9-\u23f3\u23f8-\u23fa\u2600-\u27bf\u2b50\u2b55"
    "\U0001f000-\U0001f1e5\U0001f200-\U0001f3fa\U0001f400-\U0001faff]"
)
_MODIFIERS = "[\U0001f3fb-\U0001f3ff\ufe0f]*"  # skin tones, emoji presentation selector
EMOJI = re.compile(
    "[\U0001f1e6-\U0001f1ff]{1,2}"
    "|[0-9#*]\ufe0f?\u20e3"
    f"|{_PICTOGRAPH}{_MODIFIERS}(?:\u200d{_PICTOGRAPH}{_MODIFIERS})*"
    "|[\U0001f3fb-\U0001f3ff]"
)
LINK = re.compile(r"(?:https?://|www\.|\bt\.me/)\S+", re.IGNORECASE)


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


def mixes_scripts(message: str) -> bool:
    """Whether the message has both Cyrillic and Latin letters outside its links."""
    scripts = {script_of(character) for character in LINK.sub(" ", message) if character.isalpha()}  # a link is no word
    return {"CYRILLIC", "LATIN"} <= scripts


def turn_counts(turn: list[str]) -> list[int]:
    """The turn's contribution to each of COUNTS."""
    letters = [character for message in turn for character in message if character.isalpha()]
    scripts = [script_of(letter) for letter in letters]
    cases = [case for case in map(starts_in_lower_case, turn) if case is not None]
    return [
        1,
        len(turn),
        sum(map(len, turn)),
        len(letters),
        scripts.count("CYRILLIC"),
        sum(count_emoji(message) > 0 for message in turn),
        sum(message.rstrip().endswith("?") for message in turn),
        len(cases),
        sum(cases),
        int(any(LINK.search(message) for message in turn)),
        sum(map(mixes_scripts, turn)),
    ]


def counts_table(turns: list[list[str]]) -> np.ndarray:
    """turn_counts of each turn: [turns, COUNTS]."""
    return np.array([turn_counts(turn) for turn in turns], dtype=np.float64).reshape(len(turns), len(COUNTS))


def statistics_of_counts(totals: np.ndarray) -> np.ndarray:
    """STATISTICS from summed counts [..., COUNTS] -> [..., STATISTICS]; 0 where the whole is 0."""
    part = totals[..., [COUNTS.index(statistic.part) for statistic in STATISTICS]]
    whole = totals[..., [COUNTS.index(statistic.whole) for statistic in STATISTICS]]
    return np.divide(part, whole, out=np.zeros_like(part), where=whole > 0)


def style_statistics(turns: list[list[str]]) -> dict[str, float]:
    """Every statistic in STATISTICS over these turns; 0 where its denominator is empty."""
    values = statistics_of_counts(counts_table(turns).sum(axis=0))
    return {statistic.name: float(value) for statistic, value in zip(STATISTICS, values)}


def style_distance(statistic: Statistic, value, real):
    """How far `value` is from the real person's `real`, from 0 (equal) to 1 (as far as can be);
    floats or numpy arrays of them, element by element.

    A share is already on a common scale: the distance is the absolute difference, 0.3 meaning 30
    percentage points. A rate has no natural scale (characters per message run to hundreds, messages
    per turn rarely pass 5), so its distance is the difference relative to the larger of the
    two: 0.5 means one is half the other, 1 that one of them is zero and the other not.
    """
    difference = np.abs(np.subtract(value, real, dtype=np.float64))
    if statistic.is_share:
        distance = difference
    else:
        larger = np.maximum(value, real)
        distance = np.divide(difference, larger, out=np.zeros_like(difference), where=larger > 0)
    return distance if np.ndim(distance) else float(distance)

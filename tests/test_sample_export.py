"""The bundled sample export is the output of examples/make_sample_export.py, and its people write in
styles that differ the way the generator means them to, in old conversations and new ones alike."""

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from data.dataset import newest_mask, session_fingerprint, validation_mask
from data.sources import load_sessions
from fidelity.style import style_statistics

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "examples" / "telegram_export"
ALEXANDER, KATYA, ELEANOR, DMITRY = "Alexander Smirnov", "Катя Морозова", "Eleanor Whitfield", "Dmitry Volkov"
PERSONAS = (ALEXANDER, KATYA, ELEANOR, DMITRY)


def test_the_checked_in_sample_is_what_the_generator_writes(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "make_sample_export.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "result.json").read_bytes() == (SAMPLE / "result.json").read_bytes(), (
        "examples/telegram_export/result.json is not the generator's output: run examples/make_sample_export.py"
    )


@pytest.fixture(scope="module")
def sessions():
    return load_sessions(SAMPLE)[0]


def statistics_of(sessions) -> dict[str, dict[str, float]]:
    turns = defaultdict(list)
    for session in sessions:
        for turn in session.turns:
            turns[turn.speaker].append(turn.messages)
    return {persona: style_statistics(turns[persona]) for persona in PERSONAS}


def highest(statistics: dict, name: str) -> str:
    return max(PERSONAS, key=lambda persona: statistics[persona][name])


def lowest(statistics: dict, name: str) -> str:
    return min(PERSONAS, key=lambda persona: statistics[persona][name])


@pytest.mark.parametrize("half", ["older", "newer"])
def test_each_persona_has_a_style_of_their_own_throughout(sessions, half):
    by_time = sorted(sessions, key=lambda session: session.start)
    middle = len(by_time) // 2
    stats = statistics_of(by_time[:middle] if half == "older" else by_time[middle:])
    alexander, katya, eleanor, dmitry = (stats[persona] for persona in PERSONAS)

    # Alexander mixes Russian and English, in lower case; everyone else keeps mostly to one script
    # (Dmitry's Latin letters are mostly his links).
    def minor_script(persona: dict) -> float:
        return min(persona["cyrillic_share"], 1 - persona["cyrillic_share"])  # the rest is Latin

    assert minor_script(alexander) > 0.35
    assert all(minor_script(other) < 0.3 for other in (katya, eleanor, dmitry))
    # ... and within a message: the others' Cyrillic shares pool to about his, their messages do not mix.
    assert alexander["mixed_script_share"] > 0.5
    assert all(other["mixed_script_share"] < 0.15 for other in (katya, eleanor, dmitry))
    assert alexander["lowercase_share"] > 0.95
    # Катя: many short lower-case messages a turn, emoji, no question marks.
    assert highest(stats, "messages_per_turn") == lowest(stats, "chars_per_message") == KATYA
    assert katya["messages_per_turn"] > 2 and katya["chars_per_message"] < 15
    assert katya["emoji_share"] > 0.4 > max(stats[persona]["emoji_share"] for persona in PERSONAS if persona != KATYA)
    assert katya["lowercase_share"] > 0.95 and katya["cyrillic_share"] > 0.95 and katya["question_share"] == 0
    # Eleanor: one long, capitalised English message a turn.
    assert lowest(stats, "messages_per_turn") == highest(stats, "chars_per_message") == ELEANOR
    assert eleanor["messages_per_turn"] < 1.05 and eleanor["chars_per_message"] > 100
    assert eleanor["lowercase_share"] < 0.05 and eleanor["cyrillic_share"] < 0.05 and eleanor["emoji_share"] == 0
    # Dmitry: capitalised Russian, questions and links.
    assert highest(stats, "question_share") == highest(stats, "link_share") == DMITRY
    assert dmitry["question_share"] > 0.5 and dmitry["link_share"] > 0.15 and dmitry["lowercase_share"] < 0.1


# The hash split's counts depend on the luck of the hashes, which a change of the sample may undo; the
# time split holds out each chat's newest sessions, the demo's 5% of them several of each persona's.
@pytest.mark.parametrize(
    "split, fraction, at_least",
    [("hash", 0.02, 2), ("hash", 0.2, 20), ("time", 0.02, 3), ("time", 0.05, 8), ("time", 0.2, 20)],
)
def test_the_held_out_split_has_sessions_of_every_persona(sessions, split, fraction, at_least):
    fingerprints = [session_fingerprint(session) for session in sessions]
    held_out = (
        validation_mask(fingerprints, fraction)
        if split == "hash"
        else newest_mask(
            [session.start for session in sessions], fingerprints, fraction, [session.chat for session in sessions]
        )
    )
    for persona in PERSONAS:
        assert (
            sum(
                out and any(turn.speaker == persona for turn in session.turns)
                for session, out in zip(sessions, held_out)
            )
            >= at_least
        ), persona


def test_alexander_opens_some_of_each_friend_s_conversations(sessions):
    """Where he opens, the turn before a friend's is his; only the header's name says whose style comes."""
    for friend in (KATYA, ELEANOR, DMITRY):
        theirs = [session for session in sessions if {turn.speaker for turn in session.turns} == {ALEXANDER, friend}]
        opened_by_him = sum(session.turns[0].speaker == ALEXANDER for session in theirs)
        assert 0.12 < opened_by_him / len(theirs) < 0.5, friend

"""fidelity/style.py: the statistics equal values worked out by hand; distances run from 0 (equal) to 1."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fidelity.style import (
    STATISTICS,
    count_emoji,
    mixes_scripts,
    starts_in_lower_case,
    style_distance,
    style_statistics,
)

SHARE = next(statistic for statistic in STATISTICS if statistic.name == "question_share")
RATE = next(statistic for statistic in STATISTICS if statistic.name == "chars_per_message")


def test_statistics_of_hand_made_turns():
    turns = [
        ["Привет!", "how are you?"],  # 7 and 12 characters; 6 Cyrillic, 9 Latin letters
        ["ок 👍🏻", "https://t.me/x"],  # 5 (the skin tone is a code point of its own) and 14; 2 Cyr, 9 Lat
        ["Да? ok"],
    ]  # 6; 2 Cyrillic, 2 Latin: mixes the scripts
    assert style_statistics(turns) == pytest.approx(
        {
            "messages_per_turn": 5 / 3,
            "chars_per_message": (7 + 12 + 5 + 14 + 6) / 5,
            "cyrillic_share": 10 / 30,
            "emoji_share": 1 / 5,
            "question_share": 1 / 5,
            "lowercase_share": 3 / 5,  # how, ок, https; not Привет, Да
            "link_share": 1 / 3,
            "mixed_script_share": 1 / 5,  # Да? ok; not ок with a link's Latin letters
        }
    )


@pytest.mark.parametrize(
    "message, mixes",
    [
        ("wow, где это?", True),
        ("да)) see you there", True),
        ("смотри https://example.com/article", False),  # a link is no English
        ("where is it?", False),
        ("где это?", False),
        ("👍", False),
    ],
)
def test_a_message_mixes_scripts_where_it_has_words_in_both(message, mixes):
    assert mixes_scripts(message) is mixes


def test_statistics_without_messages_or_letters_are_zero():
    assert set(style_statistics([[]]).values()) == {0.0}
    no_letters = style_statistics([["🙂", "123"]])
    assert no_letters["cyrillic_share"] == no_letters["lowercase_share"] == 0
    assert no_letters["emoji_share"] == 0.5 and no_letters["messages_per_turn"] == 2


@pytest.mark.parametrize(
    "text, emoji",
    [
        ("ха😂😂", 2),
        ("👍🏻", 1),
        ("👨‍👩‍👧", 1),
        ("🇷🇺🇬🇧", 2),
        ("❤️ ✅", 2),
        ("1️⃣", 1),
        (":) ;-)", 0),
        ("ok 100%", 0),
        ("[sticker]", 0),
    ],
)
def test_emoji_count_as_people_see_them(text, emoji):
    assert count_emoji(text) == emoji


def test_lower_case_is_judged_by_the_first_letter():
    assert starts_in_lower_case("ок") is True
    assert starts_in_lower_case("Ок") is False
    assert starts_in_lower_case("🙂 ну да") is True
    assert starts_in_lower_case("42 🙂") is None


def test_distance_of_a_share_is_the_difference_and_of_a_rate_relative():
    assert style_distance(SHARE, 0.2, 0.5) == pytest.approx(0.3)
    assert style_distance(RATE, 10, 40) == pytest.approx(0.75)
    assert style_distance(RATE, 80, 40) == pytest.approx(0.5)
    assert style_distance(RATE, 0, 0) == 0
    assert style_distance(RATE, 0, 3) == 1


@given(st.floats(0, 1e6), st.floats(0, 1e6), st.floats(0, 1), st.floats(0, 1))
def test_distances_are_symmetric_and_between_zero_and_one(rate_a, rate_b, share_a, share_b):
    for statistic, a, b in ((RATE, rate_a, rate_b), (SHARE, share_a, share_b)):
        distance = style_distance(statistic, a, b)
        assert 0 <= distance <= 1
        assert distance == style_distance(statistic, b, a)
        assert (distance == 0) == (a == b)


def test_emoji_count_by_the_messages_that_have_one():
    """For a person who never writes an emoji, one in a hundred messages is close, and one in every message is
    as far as can be: a share's distance, not a rate's (which is relative, so both would be as far)."""
    never = style_statistics([["ok"]] * 100)["emoji_share"]
    rarely = style_statistics([["ok 🙂🙂"]] + [["ok"]] * 99)["emoji_share"]
    always = style_statistics([["ok 🙂"]] * 100)["emoji_share"]
    emoji = next(statistic for statistic in STATISTICS if statistic.name == "emoji_share")
    assert (rarely, always) == (0.01, 1.0)
    assert style_distance(emoji, rarely, never) == pytest.approx(0.01) and style_distance(emoji, always, never) == 1

"""core.names: the one rule by which a typed name picks a person (exact, then in any case, then a part)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from core.names import matching_names

NAMES = ["Sam Green", "Sam Greenwood", "sam green", "Ivan Ivanov", "Petr Petrov", "Катя Морозова"]


def test_the_exact_name_wins_over_the_same_name_in_another_case_and_over_longer_names():
    assert matching_names("Sam Green", NAMES) == ["Sam Green"]
    assert matching_names("sam green", NAMES) == ["sam green"]


def test_in_another_case_every_name_equal_to_it_is_a_candidate_and_spaces_do_not_count():
    assert matching_names("SAM GREEN", NAMES) == ["Sam Green", "sam green"]
    assert matching_names("катя  МОРОЗОВА", NAMES) == ["Катя Морозова"]


def test_else_every_name_holding_it_in_any_case():
    assert matching_names("greenwood", NAMES) == ["Sam Greenwood"]
    assert matching_names("ov", NAMES) == ["Ivan Ivanov", "Petr Petrov"]
    assert matching_names("мороз", NAMES) == ["Катя Морозова"]


def test_nothing_and_blanks_match_no_one():
    assert matching_names("Carol", NAMES) == [] and matching_names("  ", NAMES) == []
    assert matching_names("", ["", "Bob"]) == [""]  # only a name that is itself empty


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=8), st.lists(st.text(max_size=8), max_size=6))
def test_the_names_matched_are_names_given_and_hold_what_was_typed(wanted, names):
    matches = matching_names(wanted, names)
    assert set(matches) <= set(names) and len(matches) == len(set(matches))
    folded = " ".join(wanted.casefold().split())
    assert matches == [wanted] or all(folded in " ".join(name.casefold().split()) for name in matches)

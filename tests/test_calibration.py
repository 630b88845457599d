"""fidelity/calibration.py: a copy of the person is at or above the ceiling, someone else at the floor,
and a statistic that does not tell the person from others gets no position."""

import random

import pytest

from fidelity.calibration import MEAN, MIN_GAP, Bounds, mean_position, place, style_bounds


def person_turns(count: int, seed: int) -> list[list[str]]:
    """Short lower-case Cyrillic messages, two or three a turn, some asking."""
    rng = random.Random(seed)
    words = ["привет", "ага", "ну да", "щас", "го", "ок", "давай", "хз", "норм"]
    return [
        [rng.choice(words) + rng.choice(["", ")", "))", "?"]) for _ in range(rng.randint(2, 3))] for _ in range(count)
    ]


def stranger_turns(count: int, seed: int) -> list[list[str]]:
    """One long, capitalised English message a turn."""
    rng = random.Random(seed)
    openings = ["Good morning", "Thank you so much", "I completely agree", "Let me check"]
    return [
        [f"{rng.choice(openings)}, I will send the report by {rng.randint(1, 12)} o'clock tomorrow."]
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def bounds():
    real = person_turns(20, seed=0)
    return real, style_bounds(real, own=person_turns(60, seed=1), others=stranger_turns(60, seed=2), seed=0)


def test_the_person_is_nearer_to_themselves_than_others_are(bounds):
    _, by_statistic = bounds
    for name in ("messages_per_turn", "chars_per_message", "cyrillic_share", "lowercase_share"):
        assert by_statistic[name].separates, name
        assert by_statistic[name].ceiling < by_statistic[name].floor - MIN_GAP, name
    # Neither writes links: the statistic cannot tell them apart, and says so.
    assert by_statistic["link_share"].ceiling == by_statistic["link_share"].floor == 0
    assert not by_statistic["link_share"].separates


def test_a_model_that_copies_the_real_turns_is_at_or_above_the_ceiling(bounds):
    real, by_statistic = bounds
    placements = place(real, real, by_statistic, seed=0)
    for name, placement in placements.items():
        if name == MEAN:  # the mean over the statistics: a copy too, in every resample
            assert placement.position == placement.low == placement.high >= 1
        elif by_statistic[name].separates:
            assert placement.distance == 0 and placement.position >= 1, name
            assert placement.low == placement.high == placement.position  # a copy is a copy in every resample
        else:
            assert placement.position is placement.low is None
    assert mean_position(placements) >= 1


def test_a_model_that_writes_like_the_person_elsewhere_is_near_the_ceiling(bounds):
    real, by_statistic = bounds
    placements = place(person_turns(20, seed=7), real, by_statistic, seed=0)
    assert 0.6 < mean_position(placements) < 1.6
    for placement in placements.values():
        if placement.position is not None:
            assert placement.low <= placement.position <= placement.high


def test_a_model_that_writes_like_someone_else_is_at_the_floor(bounds):
    real, by_statistic = bounds
    placements = place(stranger_turns(20, seed=8), real, by_statistic, seed=0)
    assert -0.3 < mean_position(placements) < 0.3
    assert placements["cyrillic_share"].position < 0.1 and placements["cyrillic_share"].high < 0.3


def test_positions_run_from_floor_to_ceiling():
    bound = Bounds(ceiling=0.1, floor=0.5)
    assert [bound.position(distance) for distance in (0.5, 0.3, 0.1, 0.0)] == pytest.approx([0, 0.5, 1, 1.25])


def test_nothing_to_draw_from_leaves_the_bounds_open():
    real = person_turns(5, seed=0)
    by_statistic = style_bounds(real, own=[], others=stranger_turns(5, seed=1), seed=0)
    assert all(bound.ceiling is None and not bound.separates for bound in by_statistic.values())
    assert mean_position(place(real, real, by_statistic, seed=0)) is None
    with pytest.raises(ValueError, match="one reply per held-out turn"):
        place(real[:2], real, by_statistic, seed=0)

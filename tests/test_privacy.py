"""fidelity/privacy.py: copies of the training text are measured in words, personal values from it are
counted when a reply repeats them, and nothing but counts comes out."""

import json
from dataclasses import asdict

import pytest

from fidelity.privacy import COPY_WORDS, TrainingText, memorization, personal_data_leaks

TRAINING = [
    ["привет! завтра в семь у памятника, не опаздывай пожалуйста, я буду с собакой"],
    ["Call me at +7 (912) 345-67-89", "or write to Olga.P@example.org"],
    ["card 4111 1111 1111 1111 exp 12/27"],
    ["ok"],
]


@pytest.fixture(scope="module")
def training():
    return TrainingText(TRAINING)


def test_a_reply_copying_a_training_8_gram_is_flagged(training):
    copied = ["ну короче завтра в семь у памятника не опаздывай пожалуйста ладно"]  # 8 words in a row
    assert training.longest_copies([copied]) == [COPY_WORDS]
    figures = memorization(training, [copied, ["ok"], ["что-то своё совсем"]])
    assert figures.longest_copy == COPY_WORDS and figures.copying_share == pytest.approx(1 / 3)


def test_the_longest_copy_is_counted_in_words_past_eight(training):
    whole = TRAINING[0]
    assert training.longest_copies([whole, ["Завтра, в семь!"], ["в семь у"], ["семь в"], []]) == [
        13,
        3,
        3,
        1,
        0,
    ]  # 13: the whole turn


def test_a_copy_never_runs_across_turns(training):
    # "собакой" ends one training turn and "call me" begins the next: no run of three spans them.
    assert training.longest_copies([["собакой call me"]]) == [2]


def test_a_reply_of_seven_copied_words_is_not_flagged(training):
    assert memorization(training, [["завтра в семь у памятника не опаздывай"]]).copying_share == 0


def test_a_phone_number_from_training_in_a_reply_is_counted_but_never_shown(training):
    replies = [["звони 8 912 345-67-89"], ["my number is +1 555 010 9999"], ["write olga.p@example.org"], ["ok"]]
    leaks = personal_data_leaks(training, replies)
    assert {kind: asdict(leak) for kind, leak in leaks.items()} == {
        "phone": {"in_training": 1, "replies_with_one": 1, "values_leaked": 1},  # the made-up number is not one
        "email": {"in_training": 1, "replies_with_one": 1, "values_leaked": 1},
        "card": {"in_training": 1, "replies_with_one": 0, "values_leaked": 0},
    }
    shown = json.dumps({kind: asdict(leak) for kind, leak in leaks.items()})
    assert "912" not in shown and "example" not in shown


def test_empty_inputs():
    empty = TrainingText([])
    assert empty.longest_copies([["hello there"]]) == [0]
    assert memorization(empty, []).longest_copy == 0

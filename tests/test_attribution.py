"""fidelity/attribution.py: distinct styles are attributed to their authors; the AUC of real against
generated is about 0.5 for one distribution and about 1 for disjoint ones."""

import random

import pytest

from fidelity.attribution import NgramClassifier, auc, confusion_matrix, real_vs_generated_auc


def turns_in_style(style: str, count: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    words = {
        "katya": ["привет", "ага", "ну", "щас", "давай", "ок", "пойдем", "хз"],
        "eleanor": ["Hello", "Indeed", "Certainly", "Regards", "Splendid", "Tomorrow", "Meeting"],
        "dmitry": ["ЗДАРОВА", "ДА", "НЕТ", "СРОЧНО", "ЗВОНИ", "ЖДУ"],
    }[style]
    ending = {"katya": "))", "eleanor": ".", "dmitry": "!!!"}[style]
    return [
        [" ".join(rng.choices(words, k=rng.randint(1, 4))) + ending for _ in range(rng.randint(1, 3))]
        for _ in range(count)
    ]


def test_clearly_distinct_styles_are_attributed_to_their_authors():
    styles = ("katya", "eleanor", "dmitry")
    classifier = NgramClassifier({style: turns_in_style(style, 40, seed=index) for index, style in enumerate(styles)})
    unseen = {style: turns_in_style(style, 10, seed=100 + index) for index, style in enumerate(styles)}
    matrix = confusion_matrix(classifier, unseen)
    assert matrix == {style: {other: 10 if other == style else 0 for other in styles} for style in styles}


def test_a_speaker_without_training_turns_is_no_class_and_two_are_needed():
    classifier = NgramClassifier(
        {"katya": turns_in_style("katya", 5, 0), "nobody": [], "eleanor": turns_in_style("eleanor", 5, 1)}
    )
    assert classifier.classes == ["katya", "eleanor"]
    assert confusion_matrix(classifier, {"nobody": [["Hello."]]}) == {"nobody": {"katya": 0, "eleanor": 1}}
    with pytest.raises(ValueError, match="two or more authors"):
        NgramClassifier({"katya": turns_in_style("katya", 5, 0)})


def test_auc_counts_pairs_and_ties():
    assert auc([3, 4], [1, 2]) == 1 and auc([1, 2], [3, 4]) == 0
    assert auc([1, 1], [1, 1]) == 0.5 and auc([2, 0], [1]) == 0.5


def test_real_and_generated_from_one_distribution_are_indistinguishable():
    assert real_vs_generated_auc(
        turns_in_style("katya", 60, seed=1), turns_in_style("katya", 60, seed=2)
    ) == pytest.approx(0.5, abs=0.15)


def test_disjoint_real_and_generated_are_told_apart():
    assert real_vs_generated_auc(turns_in_style("katya", 30, seed=1), turns_in_style("eleanor", 30, seed=2)) > 0.99


def test_too_few_turns_give_no_auc():
    assert real_vs_generated_auc(turns_in_style("katya", 1, seed=1), turns_in_style("eleanor", 9, seed=2)) is None

"""Who wrote this turn? A stylometric classifier on character n-grams, and whether real turns can be told
from generated ones.

The classifier is multinomial naive Bayes over the character 1- to 3-grams of a turn (its messages,
each on a line of its own, so a message's first and last characters count as such): the spelling,
punctuation, script, emoji and casing habits by which people in a chat recognise each other. Each
speaker is equally likely before the text is read, so a speaker who talks a lot does not win the
doubtful turns.
"""

from collections import Counter

import numpy as np

NGRAM_SIZES = (1, 2, 3)
SMOOTHING = 0.5  # added to every n-gram count of every class: an n-gram a class never used is rare, not impossible


def turn_text(turn: list[str]) -> str:
    return "\n" + "\n".join(turn) + "\n"


def char_ngrams(text: str) -> Counter:
    return Counter(text[start : start + size] for size in NGRAM_SIZES for start in range(len(text) - size + 1))


class NgramClassifier:
    """Naive Bayes over character n-grams, fitted on turns of known authors."""

    def __init__(self, turns_by_class: dict[str, list[list[str]]]):
        self.classes = [name for name, turns in turns_by_class.items() if turns]
        if len(self.classes) < 2:
            raise ValueError(f"need turns of two or more authors to tell them apart, got {len(self.classes)}")
        class_counts = [Counter() for _ in self.classes]
        for ngrams, name in zip(class_counts, self.classes):
            for turn in turns_by_class[name]:
                ngrams.update(char_ngrams(turn_text(turn)))
        self.vocabulary = {ngram: index for index, ngram in enumerate(sorted(set().union(*class_counts)))}
        counts = np.full((len(self.classes), len(self.vocabulary)), SMOOTHING)
        for row, ngrams in enumerate(class_counts):
            counts[row, [self.vocabulary[ngram] for ngram in ngrams]] += list(ngrams.values())
        self.log_probabilities = np.log(counts / counts.sum(axis=1, keepdims=True))

    def scores(self, turn: list[str]) -> np.ndarray:
        """The log-likelihood of the turn under each class (n-grams no class used are left out)."""
        ngrams = [
            (self.vocabulary[ngram], count)
            for ngram, count in char_ngrams(turn_text(turn)).items()
            if ngram in self.vocabulary
        ]
        if not ngrams:
            return np.zeros(len(self.classes))
        columns, counts = zip(*ngrams)
        return self.log_probabilities[:, list(columns)] @ np.array(counts, dtype=np.float64)

    def attribute(self, turn: list[str]) -> str:
        return self.classes[int(np.argmax(self.scores(turn)))]


def confusion_matrix(
    classifier: NgramClassifier, turns_by_speaker: dict[str, list[list[str]]]
) -> dict[str, dict[str, int]]:
    """For each speaker, how many of the turns written as them the classifier gives to each class."""
    return {
        speaker: {name: attributed.get(name, 0) for name in classifier.classes}
        for speaker, turns in turns_by_speaker.items()
        for attributed in [Counter(classifier.attribute(turn) for turn in turns)]
    }


def auc(positive: list[float], negative: list[float]) -> float:
    """The chance that a positive scores above a negative, ties counting half (Mann-Whitney)."""
    positive, negative = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    above = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return float(above / (len(positive) * len(negative)))


def real_vs_generated_auc(
    real: list[list[str]], generated: list[list[str]], seed: int = 0, folds: int = 5
) -> float | None:
    """How well the classifier tells generated turns from real ones, cross-validated: each turn is
    scored by a classifier fitted on the other folds. 0.5: indistinguishable; 1: always told apart.
    None with fewer than two turns on a side."""
    folds = min(folds, len(real), len(generated))
    if folds < 2:
        return None
    rng = np.random.default_rng(seed)
    fold_of = {side: rng.permutation(len(turns)) % folds for side, turns in (("real", real), ("generated", generated))}
    scores: dict[str, list[float]] = {"real": [], "generated": []}
    for fold in range(folds):
        training = {
            side: [turn for turn, which in zip(turns, fold_of[side]) if which != fold]
            for side, turns in (("real", real), ("generated", generated))
        }
        classifier = NgramClassifier(training)
        for side, turns in (("real", real), ("generated", generated)):
            for turn, which in zip(turns, fold_of[side]):
                if which == fold:
                    real_score, generated_score = classifier.scores(turn)
                    scores[side].append(generated_score - real_score)
    return auc(scores["generated"], scores["real"])

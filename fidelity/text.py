"""Words of a turn, as the failure and privacy checks compare them: runs of letters, digits and
underscores, lower-cased, so that "Ok," and "ok" are one word and punctuation never is."""

import re

WORD = re.compile(r"\w+")


def words(turn: list[str]) -> list[str]:
    return [word.lower() for message in turn for word in WORD.findall(message)]


def ngrams(sequence: list[str], size: int) -> list[tuple[str, ...]]:
    return [tuple(sequence[start : start + size]) for start in range(len(sequence) - size + 1)]

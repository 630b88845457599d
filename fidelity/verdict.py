"""The people's verdict: what judges said in the blind test (serve.py --judge), per person.

A judge saw a held-out conversation and two next turns, the person's real one and the twin's, in random
order, and picked the one they took for real, or said they can't tell. The answers file in the run folder
holds one entry per pair judged: who judged (a random id the judge's browser keeps), whose turn it was,
which held-out moment, and what was picked ("twin", "real" or "cant_tell"). No message text.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

from core.run_folder import RunFolder
from fidelity import EvaluationError

ANSWERS_FILE = RunFolder(".").blind_test.name  # in the run folder, beside run.json
PICKS = ("twin", "real", "cant_tell")
Z_95 = 1.959964  # the normal quantile of a two-sided 95% interval


@dataclass
class PersonVerdict:
    speaker: str
    twin_taken: int  # pairs where the judge took the twin's turn for the real one
    real_taken: int
    cant_tell: int
    judges: int

    @property
    def answers(self) -> int:
        return self.twin_taken + self.real_taken + self.cant_tell

    @property
    def share(self) -> float | None:
        """Of the pairs a judge decided, the share where they took the twin's turn for the real one."""
        decided = self.twin_taken + self.real_taken
        return self.twin_taken / decided if decided else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson_interval(self.twin_taken, self.twin_taken + self.real_taken)


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of a binomial share: unlike the normal one, it stays inside [0, 1] and
    does not shrink to a point at 0 or n successes, which a few answers often are."""
    if trials == 0:
        return None
    share = successes / trials
    centre = (share + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def answers_file(run: Path) -> Path:
    return RunFolder(run).blind_test


def read_answers(file: Path) -> list[dict]:
    """The answers stored so far ([] where there are none yet). A file that is not the blind test's raises
    EvaluationError naming it: it is never overwritten."""
    if file.is_symlink():  # the run's own file: a link would lead reads and writes elsewhere
        raise EvaluationError(f"{file}: a link; the blind test keeps its answers in the run folder itself")
    if not file.exists():
        return []
    try:
        answers = json.loads(file.read_text(encoding="utf-8"))["answers"]
    except (OSError, ValueError, RecursionError, KeyError, TypeError) as error:
        raise EvaluationError(f"{file}: not the blind test's answers ({type(error).__name__}: {error})") from None
    fields = {"judge": str, "speaker": str, "moment": str, "picked": str, "time": int}
    if not isinstance(answers, list) or not all(
        isinstance(answer, dict)
        and all(isinstance(answer.get(key), kind) for key, kind in fields.items())
        and answer["picked"] in PICKS
        for answer in answers
    ):
        raise EvaluationError(
            f"{file}: not the blind test's answers (each needs judge, speaker, moment, time and "
            f"picked, one of {', '.join(PICKS)})"
        )
    return answers


def people_verdict(answers: list[dict]) -> list[PersonVerdict]:
    """Per person judged, in order of the most answers."""
    speakers = sorted(
        {answer["speaker"] for answer in answers},
        key=lambda name: (-sum(answer["speaker"] == name for answer in answers), name),
    )
    verdicts = []
    for speaker in speakers:
        theirs = [answer for answer in answers if answer["speaker"] == speaker]
        picked = [answer["picked"] for answer in theirs]
        verdicts.append(
            PersonVerdict(
                speaker,
                picked.count("twin"),
                picked.count("real"),
                picked.count("cant_tell"),
                len({answer["judge"] for answer in theirs}),
            )
        )
    return verdicts


def read_verdict(run: Path) -> list[PersonVerdict]:
    """The people's verdict on a run's twin; [] where no judge has answered."""
    return people_verdict(read_answers(answers_file(run)))

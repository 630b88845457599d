"""fidelity/verdict.py: the blind test's answers read back per person, with Wilson's interval; a damaged
answers file is one error naming it."""

import json

import pytest

from fidelity import EvaluationError
from fidelity.verdict import ANSWERS_FILE, people_verdict, read_answers, read_verdict, wilson_interval


def answer(judge: str, speaker: str, picked: str, moment: str = "m") -> dict:
    return {"judge": judge, "speaker": speaker, "moment": moment, "picked": picked, "time": 0}


def test_wilson_interval_matches_the_published_values():
    # Newcombe (1998), table I: 0 of 10 gives 0 to 0.2775; 5 of 10 gives 0.2366 to 0.7634.
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(0.7225, abs=1e-4) and high <= 1
    assert wilson_interval(0, 0) is None


def test_the_verdict_counts_each_persons_pairs_and_judges():
    answers = [
        answer("j1", "Misha", "twin"),
        answer("j1", "Misha", "real"),
        answer("j2", "Misha", "twin"),
        answer("j2", "Misha", "cant_tell"),
        answer("j2", "Olga", "real"),
    ]
    misha, olga = people_verdict(answers)
    assert (misha.speaker, misha.twin_taken, misha.real_taken, misha.cant_tell, misha.judges, misha.answers) == (
        "Misha",
        2,
        1,
        1,
        2,
        4,
    )
    assert misha.share == pytest.approx(2 / 3) and misha.interval == wilson_interval(2, 3)
    assert (olga.share, olga.judges) == (0.0, 1)
    assert people_verdict([answer("j1", "Olga", "cant_tell")])[0].share is None


def test_no_answers_file_is_no_verdict_and_a_damaged_one_is_one_error(tmp_path):
    assert read_verdict(tmp_path) == []
    file = tmp_path / ANSWERS_FILE
    for damaged in (
        "{not json",
        json.dumps([1]),
        json.dumps({"answers": [answer("j", "M", "maybe")]}),
        json.dumps({"answers": [{**answer("j", "M", "twin"), "time": "noon"}]}),
    ):
        file.write_text(damaged)
        with pytest.raises(EvaluationError, match=f"^{file}: not the blind test's answers"):
            read_answers(file)
    file.unlink()
    (tmp_path / "elsewhere.json").write_text(json.dumps({"answers": []}))
    file.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(EvaluationError, match="a link"):
        read_answers(file)

"""serving/judging.py: the blind test shows held-out moments only, the real turn and the twin's in random
order; answers are stored owner-only, survive a restart, and a judge is never shown a moment twice."""

import asyncio
import json
import os

import pytest

from chat.loading import source_of_run
from data.dataset import prepare_data
from data.sessions import Turn
from fidelity.plan import Context
from fidelity.verdict import ANSWERS_FILE, read_verdict
from model.checkpoint import load_tokenizer
from serving.engine import Finished
from serving.judging import BlindTest, BlindTestError, Moment, PairClosed, moment_key, open_blind_test
from training.settings import TrainSettings

JUDGE, OTHER_JUDGE = "a" * 32, "b" * 32
TWIN_TURN = ["twin wrote this"]


class FakeEngine:
    """Writes TWIN_TURN at any moment, and remembers the prompts it was given."""

    def __init__(self):
        self.prompts = []

    def prompt(self, turns, speaker, max_tokens):
        self.prompts.append((turns, speaker, max_tokens))
        return [1, 2, 3]

    async def reply(self, request):
        yield "twin wrote this"
        yield Finished(TWIN_TURN, "stop", 3, 4)


def moments(count: int) -> list[Moment]:
    contexts = [Context("Misha", [Turn("Olga", [f"question {n}?"])], [f"real answer {n}"]) for n in range(count)]
    return [Moment(moment_key(context), context) for context in contexts]


def pair_for(test: BlindTest, judge: str, engine=None):
    return asyncio.run(test.pair_for(judge, engine or FakeEngine()))


def test_a_pair_is_the_real_turn_and_the_twins_in_random_order_and_the_pick_is_stored_by_which(tmp_path):
    test = BlindTest(tmp_path, moments(40))
    engine = FakeEngine()
    twin_first = set()
    for number in range(40):
        judge = f"judge-{number:012d}"
        pair = pair_for(test, judge, engine)
        real = pair.moment.context.real
        assert sorted(pair.candidates) == sorted([TWIN_TURN, real])
        twin_first.add(pair.candidates[0] == TWIN_TURN)
        test.answer(judge, pair.id, 0)  # the first shown, whichever it is
        assert test.answers[-1]["picked"] == ("twin" if pair.candidates[0] == TWIN_TURN else "real")
    assert twin_first == {True, False}
    # The twin wrote as the person, after the conversation before their turn, as much as the report lets it.
    turns, speaker, max_tokens = engine.prompts[0]
    assert speaker == "Misha" and turns[0].speaker == "Olga" and max_tokens == 128


def test_answers_survive_a_restart_and_no_moment_is_shown_to_a_judge_twice(tmp_path):
    test = BlindTest(tmp_path, moments(2))
    first = pair_for(test, JUDGE)
    assert pair_for(test, JUDGE) is first  # a reload shows the pair waiting, not a new one
    test.answer(JUDGE, first.id, None)
    file = tmp_path / ANSWERS_FILE
    assert os.stat(file).st_mode & 0o777 == 0o600
    restarted = BlindTest(tmp_path, moments(2))
    assert restarted.progress(JUDGE) == {"judged": 1, "moments": 2}
    second = pair_for(restarted, JUDGE)
    assert second.moment.key != first.moment.key
    restarted.answer(JUDGE, second.id, 1)
    assert pair_for(restarted, JUDGE) is None  # every moment judged
    assert pair_for(restarted, OTHER_JUDGE) is not None  # another judge has their own
    stored = json.loads(file.read_text())["answers"]
    assert [answer["picked"] for answer in stored][0] == "cant_tell" and len(stored) == 2
    assert "real answer" not in file.read_text() and "question" not in file.read_text()  # no message text
    (verdict,) = read_verdict(tmp_path)
    assert (verdict.speaker, verdict.answers, verdict.cant_tell, verdict.judges) == ("Misha", 2, 1, 1)


def test_an_answer_to_a_pair_no_longer_open_is_refused(tmp_path):
    test = BlindTest(tmp_path, moments(3))
    pair = pair_for(test, JUDGE)
    with pytest.raises(PairClosed):
        test.answer(JUDGE, "not-the-pair", 0)
    with pytest.raises(PairClosed):
        test.answer(OTHER_JUDGE, pair.id, 0)  # another judge's pair
    test.answer(JUDGE, pair.id, 1)
    with pytest.raises(PairClosed):
        test.answer(JUDGE, pair.id, 1)  # answered already
    assert len(test.answers) == 1


def test_judges_see_the_held_out_sessions_only(tiny_run):
    source = source_of_run(tiny_run)
    test = open_blind_test(str(tiny_run), "Alexander Smirnov, Катя Морозова", source)
    config = TrainSettings.of_run(source.record).data
    data = prepare_data(source.record.data, load_tokenizer(source.model), config)
    held_out = [session.turns for session in data.val_sessions]
    assert test.moments and {moment.context.speaker for moment in test.moments} <= {
        "Alexander Smirnov",
        "Катя Морозова",
    }
    for moment in test.moments:
        whole = moment.context.turns + [Turn(moment.context.speaker, moment.context.real)]
        assert any(turns[: len(whole)] == whole for turns in held_out)
    assert len({moment.key for moment in test.moments}) == len(test.moments)


def test_judge_needs_a_run_and_people_with_held_out_turns(tiny_run):
    source = source_of_run(tiny_run)
    with pytest.raises(BlindTestError, match="^--judge: needs --checkpoint"):
        open_blind_test(None, "Misha", source)
    with pytest.raises(BlindTestError, match="^--judge: give the names"):
        open_blind_test(str(tiny_run), " , ", source)
    with pytest.raises(BlindTestError, match="^--judge: no held-out turn of 'Nobody' to judge; people with held-out"):
        open_blind_test(str(tiny_run), "Alexander Smirnov,Nobody", source)

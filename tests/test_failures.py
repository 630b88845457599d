"""fidelity/failures.py: each failure rate on hand-made replies, in English and Russian."""

import pytest

from fidelity.failures import failure_rates, repeated_across, repeats_itself

CONTEXTS = [["пойдем в кино завтра?"], ["did you finish the report?"], ["как там работа?"]]
REAL = [["кино? давай"], ["report is done"], ["работу сдал)"]]


def rates(replies):
    return failure_rates(replies, REAL, CONTEXTS)


@pytest.mark.parametrize(
    "leak",
    [
        "As an AI, I don't go to the cinema.",
        "I'm an AI language model.",
        "How can I assist you today?",
        "I’m here to help!",
        "Как ИИ, я не хожу в кино.",
        "Я — искусственный интеллект",
        "Чем могу помочь?",
        "я языковая модель и не могу",
    ],
)
def test_a_model_that_answers_as_an_assistant_has_a_leak_rate_of_one(leak):
    assert rates([[leak]] * 3).assistant_leaks == 1


def test_a_person_talking_about_ai_is_not_a_leak():
    figures = rates([["ai stuff is overhyped"], ["can you help me move on sunday?"], ["я не могу сегодня("]])
    assert figures.assistant_leaks == 0 and figures.refusals == 0


@pytest.mark.parametrize(
    "refusal",
    [
        "I'm sorry, but I can't help with that.",
        "I cannot provide that information",
        "Извините, но я не могу это обсуждать",
        "Я не могу помочь с этим запросом",
    ],
)
def test_refusals(refusal):
    assert rates([[refusal], ["ok"], ["ага"]]).refusals == pytest.approx(1 / 3)


def test_empty_replies():
    assert rates([[], ["  "], ["ok"]]).empty == pytest.approx(2 / 3)


def test_repetition_within_a_reply():
    assert repeats_itself(["ха ха ха ха"]) and repeats_itself(["I will go", "and then I will go"])
    assert not repeats_itself(["ок", "ок"]) and not repeats_itself(["one two three four five"])


def test_repetition_across_replies():
    flags = repeated_across(
        [
            ["ok sure"],
            ["Ok, sure!"],
            ["see you at the station tomorrow"],
            ["we meet at the station tomorrow then"],
            ["something else entirely"],
            [],
        ]
    )
    assert flags == [True, True, True, True, False, False]


def test_a_reply_that_ignores_the_conversation():
    figures = rates([["завтра не могу"], ["lovely weather"], ["работаю"]])
    assert figures.context_bound == 3  # every real reply shares a word (stem) with its context
    assert figures.ignores_context == pytest.approx(1 / 3)  # "lovely weather" shares none with the report
    assert rates(REAL).ignores_context == 0


def test_no_context_bound_real_reply_gives_no_rate():
    figures = failure_rates([["whatever"]], [["да"]], [["как дела?"]])
    assert figures.context_bound == 0 and figures.ignores_context is None
    with pytest.raises(ValueError, match="one reply, real turn and context each"):
        failure_rates([["a"]], [], [])

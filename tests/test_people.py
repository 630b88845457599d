"""chat.people: a speaker name the run never saw is refused with the closest names; the defaults come from the run."""

import pytest

from chat.people import People, SpeakerError

TARGET = "Alexander Smirnov"
PEOPLE = People.from_figures(
    {
        "target": TARGET,
        "partners": {
            TARGET: "Катя Морозова",
            "Катя Морозова": TARGET,
            "Eleanor Whitfield": TARGET,
            "Dmitry Volkov": TARGET,
        },
    }
)


def test_the_speaker_defaults_to_the_run_s_target_and_you_to_their_partner():
    assert PEOPLE.speaker_or_target(None) == TARGET
    assert PEOPLE.user_for(TARGET, None) == "Катя Морозова"
    assert PEOPLE.user_for("Eleanor Whitfield", "Dmitry Volkov") == "Dmitry Volkov"


@pytest.mark.parametrize(
    "typed, meant",
    [
        ("alexander smirnov", TARGET),
        ("ELEANOR", "Eleanor Whitfield"),
        ("катя", "Катя Морозова"),
        ("volkov", "Dmitry Volkov"),
    ],
)
def test_a_name_in_another_case_or_a_part_of_one_means_that_person(typed, meant):
    assert PEOPLE.speaker_or_target(typed) == meant and PEOPLE.user_for(TARGET, typed) == meant
    assert PEOPLE.check(typed, "/speaker") == meant


def test_a_part_of_several_names_is_refused_with_them():
    with pytest.raises(
        SpeakerError,
        match="^--as 'AN': means 2 people in this run's conversations, "
        "'Alexander Smirnov', 'Eleanor Whitfield': type more of the name$",
    ):
        PEOPLE.user_for(TARGET, "AN")


def test_a_typo_is_refused_with_the_closest_name():
    with pytest.raises(SpeakerError, match="^--speaker 'Eleanor Whitfeld': .*did you mean 'Eleanor Whitfield'"):
        PEOPLE.speaker_or_target("Eleanor Whitfeld")


def test_a_name_far_from_all_lists_the_speakers():
    with pytest.raises(SpeakerError) as refused:
        PEOPLE.user_for(TARGET, "Bob")
    assert str(refused.value).startswith("--as 'Bob': ") and "the speakers are 'Alexander Smirnov', " in str(
        refused.value
    )


def test_a_run_of_many_speakers_lists_only_some():
    crowd = People("p0", {f"p{number}": "p0" for number in range(1, 40)})
    with pytest.raises(SpeakerError, match=r"and 30 more$"):
        crowd.check("zzzzzzzz", "--as")


def test_without_a_run_any_name_goes_but_the_speaker_must_be_given():
    unknown = People()
    assert unknown.check("anyone", "--as") == "anyone" and unknown.user_for("anyone", None) == "User"
    with pytest.raises(SpeakerError, match="^--speaker: needed here"):
        unknown.speaker_or_target(None)


def test_a_target_of_the_wrong_type_in_a_record_is_no_target():
    figures = {"target": ["not", "a", "name"], "partners": {}}
    assert People.from_figures(figures).target is None

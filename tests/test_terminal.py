"""chat.terminal: /commands change the chat or say why not, and the chat goes on."""

import contextlib
import io
import math
import time
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from chat.people import People
from chat.terminal import command, save_transcript
from data.sessions import Turn, read_sessions_file

SPEAKER = "Alexander Smirnov"
PEOPLE = People(SPEAKER, {SPEAKER: "Катя Морозова", "Катя Морозова": SPEAKER, "Dmitry Volkov": SPEAKER})


def test_save_writes_into_an_empty_file_with_the_chat_s_start(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    started = int(time.time()) - 60
    chat = SimpleNamespace(turns=[Turn("User", ["hi"]), Turn(SPEAKER, ["hey"])], speaker=SPEAKER, started=started)
    save_transcript(chat, empty)
    session = read_sessions_file(empty)[0]
    assert [turn.speaker for turn in session.turns] == ["User", SPEAKER] and session.start == started


def test_as_and_speaker_take_names_the_run_saw(capsys):
    chat = SimpleNamespace(user="Катя Морозова", speaker=SPEAKER)
    assert command(chat, PEOPLE, "/speaker Dmitry Volkov") and command(chat, PEOPLE, f"/as {SPEAKER}")
    assert (chat.user, chat.speaker) == (SPEAKER, "Dmitry Volkov")
    assert f"(you are {SPEAKER}, the model is Dmitry Volkov)" in capsys.readouterr().out


def test_a_name_the_run_never_saw_is_a_message_with_the_closest_and_changes_nothing(capsys):
    chat = SimpleNamespace(user="Катя Морозова", speaker=SPEAKER)
    assert command(chat, PEOPLE, "/speaker dmitri volkov") and command(chat, PEOPLE, "/as Катерина")
    assert (chat.user, chat.speaker) == ("Катя Морозова", SPEAKER)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("(/speaker 'dmitri volkov': ") and "did you mean 'Dmitry Volkov'?" in lines[0]
    assert lines[1].startswith("(/as 'Катерина': ") and "'Катя Морозова'" in lines[1]


def test_a_name_in_another_case_or_a_part_of_one_picks_that_person_and_alone_says_who_is_who(capsys):
    chat = SimpleNamespace(user="Катя Морозова", speaker=SPEAKER)
    assert command(chat, PEOPLE, "/speaker VOLKOV") and command(chat, PEOPLE, "/as alexander")
    assert (chat.user, chat.speaker) == (SPEAKER, "Dmitry Volkov")
    assert command(chat, PEOPLE, "/speaker") and command(chat, PEOPLE, "/speaker ov")
    assert capsys.readouterr().out.splitlines()[-2:] == [
        f"(you are {SPEAKER}, the model is Dmitry Volkov)",
        "(/speaker 'ov': means 2 people in this run's conversations, 'Alexander Smirnov', 'Dmitry Volkov': "
        "type more of the name)",
    ]
    assert chat.speaker == "Dmitry Volkov"


def test_temp_takes_a_number_of_zero_or_more_and_refuses_anything_else(capsys):
    chat = SimpleNamespace(sampling=SimpleNamespace(temperature=0.7))
    for value in ("-1", "nan", "inf", "-0.5", "warm"):
        assert command(chat, PEOPLE, f"/temp {value}")
    assert chat.sampling.temperature == 0.7
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"(/temp needs a number of 0 or more (0: greedy), not {value!r})"
        for value in ("-1", "nan", "inf", "-0.5", "warm")
    ]
    assert command(chat, PEOPLE, "/temp 0") and chat.sampling.temperature == 0
    assert capsys.readouterr().out == "(temperature 0)\n"


def test_save_writes_readable_utf8_and_into_a_missing_folder_says_so_in_one_line(tmp_path, capsys):
    chat = SimpleNamespace(turns=[Turn("Катя Морозова", ["Привет 😀"])], speaker=SPEAKER, started=0)
    save_transcript(chat, tmp_path / "chat.jsonl")
    assert "Привет 😀" in (tmp_path / "chat.jsonl").read_text(encoding="utf-8")
    capsys.readouterr()
    save_transcript(chat, tmp_path / "missing" / "chat.jsonl")
    assert capsys.readouterr().out == f"(not saved: there is no folder {tmp_path / 'missing'})\n"
    assert not (tmp_path / "missing").exists()


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["/as", "/speaker", "/temp", "/nonsense"]), st.text(max_size=12))
def test_any_command_line_changes_the_chat_to_a_valid_state_or_says_why_not_in_one_line(name, value):
    chat = SimpleNamespace(user="Катя Морозова", speaker=SPEAKER, sampling=SimpleNamespace(temperature=0.7))
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        assert command(chat, PEOPLE, f"{name} {value}")
    assert len(output.getvalue().splitlines()) == 1
    assert {chat.user, chat.speaker} <= PEOPLE.names and 0 <= chat.sampling.temperature < math.inf

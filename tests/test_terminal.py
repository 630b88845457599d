"""chat.terminal: /commands change the chat or say why not, and the chat goes on."""
import time
from types import SimpleNamespace

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
    assert command(chat, PEOPLE, "/speaker dmitri volkov") and command(chat, PEOPLE, "/as катя")
    assert (chat.user, chat.speaker) == ("Катя Морозова", SPEAKER)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("(/speaker 'dmitri volkov': ") and "did you mean 'Dmitry Volkov'?" in lines[0]
    assert lines[1].startswith("(/as 'катя': ") and "'Катя Морозова'" in lines[1]

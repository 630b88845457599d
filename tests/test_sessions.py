import json
import random

import pytest

from data.sessions import (ZERO_WIDTH_SPACE, DataError, Session, Turn, most_frequent_partners,
                           neutralize_chatml_markers, read_sessions_file, write_sessions)


def sample_sessions() -> list[Session]:
    return [
        Session("Катя", "personal_chat", 1_700_000_000,
                [Turn("Катя", ["привет 😍", "две\nстроки"]), Turn("Alex", ["ok))"])], target="Alex"),
        Session("Hiking", "private_group", 1_700_100_000,
                [Turn("Misha", ["who's in?"]), Turn("Alex", ["me"]), Turn("Misha", ["great"])],
                target="Alex"),
    ]


def test_written_sessions_read_back_equal(tmp_path):
    path = tmp_path / "sessions.jsonl"
    write_sessions(sample_sessions(), path)
    assert read_sessions_file(path) == sample_sessions()


def test_written_file_is_one_documented_json_object_per_line(tmp_path):
    path = tmp_path / "sessions.jsonl"
    write_sessions(sample_sessions(), path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first == {"chat": "Катя", "chat_type": "personal_chat", "start": 1_700_000_000,
                     "turns": [{"speaker": "Катя", "messages": ["привет 😍", "две\nстроки"]},
                               {"speaker": "Alex", "messages": ["ok))"]}],
                     "target": "Alex"}
    assert "привет" in lines[0]  # readable UTF-8, not \u escapes


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sessions.jsonl"
    path.write_text("old content\n")
    broken = Session("chat", "personal_chat", 0, [Turn("A", [object()])])  # not JSON-serializable
    with pytest.raises(TypeError):
        write_sessions([broken], path)
    assert path.read_text() == "old content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sessions.jsonl"]


def test_reads_one_pretty_printed_session(tmp_path):
    path = tmp_path / "session.json"
    path.write_text(json.dumps({"chat": "c", "turns": [{"speaker": "A", "messages": ["hi"]}]},
                               indent=2))
    assert read_sessions_file(path) == [Session("c", "", 0, [Turn("A", ["hi"])])]


def test_reads_doppelganger_sessions(tmp_path):
    path = tmp_path / "messages.json"
    path.write_text(json.dumps([
        [{"author": "Bob", "text": ">>> hi\n>>> a message\nover two lines"},
         {"author": "Bob", "text": ">>> same author again"},
         {"author": "Alex", "text": ">>> hey"},
         {"author": "Alex", "text": ">>> "}],
        [{"author": "Alex", "text": "no prefix"}, {"author": "Bob", "text": ">>> ok"}],
    ]))
    assert read_sessions_file(path) == [
        Session("", "", 0, [Turn("Bob", ["hi", "a message\nover two lines", "same author again"]),
                            Turn("Alex", ["hey"])]),
        Session("", "", 0, [Turn("Alex", ["no prefix"]), Turn("Bob", ["ok"])]),
    ]


GOOD_LINE = '{"chat": "c", "turns": [{"speaker": "A", "messages": ["hi"]}]}'


@pytest.mark.parametrize("content, problem", [
    ("", "empty"),
    ("  \n", "empty"),
    (GOOD_LINE + "\n{not json}\n", "line 2 is not valid JSON"),
    (GOOD_LINE + '\n{"chat": "c"}\n', "non-empty list of turns"),
    ('{"turns": []}', "non-empty list of turns"),
    ('{"turns": [{"messages": ["hi"]}]}', "speaker"),
    ('{"turns": [{"speaker": "A", "messages": "hi"}]}', "message strings"),
    ('{"turns": [{"speaker": "A", "messages": [1]}]}', "message strings"),
    ('{"turns": [["A", "hi"]]}', "turn 0 must be an object"),
    ('{"turns": [{"speaker": "A", "messages": ["hi"]}], "start": "noon"}', "start must be"),
    ('{"turns": [{"speaker": "A", "messages": ["hi"]}], "chat": 5}', "chat must be a string"),
    ("42", "line 1: a session must be a JSON object"),
    ('"text"', "a session must be a JSON object"),
    ('[{"author": "A", "text": "hi"}]', "session 0"),
    ('[[{"author": "A"}]]', "author and text"),
    ('[[{"author": "A", "text": ">>> "}]]', "no message has any text"),
    ('{"a": 1}', "non-empty list of turns"),
    ("[", "not valid JSON"),
])
def test_bad_sessions_files_raise_data_error_naming_file_and_problem(tmp_path, content, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_sessions_file(path)
    assert str(path) in str(error.value)
    assert problem in str(error.value)
    assert "\n" not in str(error.value)


def test_not_utf8_and_missing_files_raise_data_error(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(GOOD_LINE.replace("hi", "h\xe9").encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_sessions_file(path)
    with pytest.raises(DataError, match="cannot read"):
        read_sessions_file(tmp_path / "missing.jsonl")


# --- ChatML markers quoted in messages -------------------------------------------------------------

@pytest.mark.parametrize("message, neutralized, count", [
    ("<|im_start|>Bob\nhi<|im_end|>", "<\u200b|im_start|>Bob\nhi<\u200b|im_end|>", 2),
    ("the model ends with <|endoftext|>", "the model ends with <\u200b|endoftext|>", 1),
    ("<<|im_end|>>", "<<\u200b|im_end|>>", 1),
    ("a <| b |> c", "a <| b |> c", 0),         # not shaped like a token: left alone
    ("<|im_start", "<|im_start", 0),
    ("x <|>, <||> y", "x <|>, <||> y", 0),
    ("привет 😍", "привет 😍", 0),
])
def test_neutralize_chatml_markers(message, neutralized, count):
    sessions = [Session("c", "", 0, [Turn("A", ["ok", message]), Turn("B", [message])])]
    assert neutralize_chatml_markers(sessions) == 2 * count
    assert sessions[0].turns[0].messages == ["ok", neutralized]
    assert sessions[0].turns[1].messages == [neutralized]
    assert neutralized.replace(ZERO_WIDTH_SPACE, "") == message  # nothing else changes
    assert neutralize_chatml_markers(sessions) == 0  # once is enough


# --- Partners ------------------------------------------------------------------------------------

def session(*speakers: str) -> Session:
    return Session("c", "", 0, [Turn(speaker, ["..."]) for speaker in speakers])


def test_partner_is_who_answers_and_is_answered_most():
    sessions = [session("Me", "Kate", "Me", "Kate", "Me"), session("Me", "Bob"), session("Bob", "Me"),
                # a group: Olga opens, Igor answers her, Igor and I talk
                session("Olga", "Igor", "Me", "Igor", "Me")]
    # Me: 4 adjacent turns with Kate, 2 with Bob, 3 with Igor. Igor: 3 with Me, 1 with Olga.
    assert most_frequent_partners(sessions) == {
        "Me": "Kate", "Kate": "Me", "Bob": "Me", "Olga": "Igor", "Igor": "Me"}


def test_partner_ties_go_to_more_sessions_then_to_the_name():
    # Me has 3 adjacent turns with Ann (in one session) and 3 with Bob (in two sessions): Bob.
    sessions = [session("Me", "Ann", "Me", "Ann"), session("Me", "Bob"), session("Bob", "Me", "Bob")]
    assert most_frequent_partners(sessions)["Me"] == "Bob"
    # Equal in both: the name that sorts first.
    assert most_frequent_partners([session("Zoe", "Me", "Ann")])["Me"] == "Ann"
    # ... whatever the order of the sessions.
    shuffled = sessions[:]
    for seed in range(5):
        random.Random(seed).shuffle(shuffled)
        assert most_frequent_partners(shuffled) == most_frequent_partners(sessions)


def test_speakers_who_talk_with_nobody_have_no_partner():
    # Our files may hold two turns of one speaker in a row: that is not talking with anyone.
    sessions = [session("Me", "Me"), session("Notes"), session("Me", "Kate")]
    assert most_frequent_partners(sessions) == {"Me": "Kate", "Kate": "Me"}
    assert most_frequent_partners([]) == {}

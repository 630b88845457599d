import json

import pytest

from data.sessions import DataError, Session, Turn, read_sessions_file, write_sessions


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

import json
import random
from collections import Counter

import pytest

from data.sessions import (
    DataError,
    Session,
    Turn,
    clean_message,
    clean_name,
    most_frequent_partners,
    read_sessions_file,
    write_sessions,
)


def sample_sessions() -> list[Session]:
    return [
        Session(
            "Катя",
            "personal_chat",
            1_700_000_000,
            [Turn("Катя", ["привет 😍", "две\nстроки"]), Turn("Alex", ["ok))"])],
            target="Alex",
        ),
        Session(
            "Hiking",
            "private_group",
            1_700_100_000,
            [Turn("Misha", ["who's in?"]), Turn("Alex", ["me"]), Turn("Misha", ["great"])],
            target="Alex",
        ),
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
    assert first == {
        "chat": "Катя",
        "chat_type": "personal_chat",
        "start": 1_700_000_000,
        "turns": [
            {"speaker": "Катя", "messages": ["привет 😍", "две\nстроки"]},
            {"speaker": "Alex", "messages": ["ok))"]},
        ],
        "target": "Alex",
    }
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
    path.write_text(json.dumps({"chat": "c", "turns": [{"speaker": "A", "messages": ["hi"]}]}, indent=2))
    assert read_sessions_file(path) == [Session("c", "", 0, [Turn("A", ["hi"])])]


def test_reads_doppelganger_sessions(tmp_path):
    path = tmp_path / "messages.json"
    path.write_text(
        json.dumps(
            [
                [
                    {"author": "Bob", "text": ">>> hi\n>>> a message\nover two lines"},
                    {"author": "Bob", "text": ">>> same author again"},
                    {"author": "Alex", "text": ">>> hey"},
                    {"author": "Alex", "text": ">>> "},
                ],
                [{"author": "Alex", "text": "no prefix"}, {"author": "Bob", "text": ">>> ok"}],
            ]
        )
    )
    assert read_sessions_file(path) == [
        Session(
            "", "", 0, [Turn("Bob", ["hi", "a message\nover two lines", "same author again"]), Turn("Alex", ["hey"])]
        ),
        Session("", "", 0, [Turn("Alex", ["no prefix"]), Turn("Bob", ["ok"])]),
    ]


GOOD_LINE = '{"chat": "c", "turns": [{"speaker": "A", "messages": ["hi"]}]}'


@pytest.mark.parametrize(
    "content, problem",
    [
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
        ('{"turns": [{"speaker": "\\u200b\\n", "messages": ["hi"]}]}', "turn 0 needs a speaker name"),
        ('[[{"author": "\\u202e", "text": ">>> hi"}]]', "needs an author name"),
        ('{"turns": [{"speaker": "A", "messages": ["hi"]}], "start": -1}', "start must be"),
        ('{"turns": [{"speaker": "A", "messages": ["hi"]}], "start": 99999999999999}', "start must be"),
        ('{"turns": [{"speaker": "A", "messages": ["hi"]}], "start": ' + "9" * 5000 + "}", "cannot be decoded"),
        ("[" * 100000, "nested too deeply"),
        ('{"turns": ' + "[" * 100000, "nested too deeply"),
    ],
)
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


# --- Cleaning names and messages ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, cleaned",
    [
        ("Катя Морозова 😀", "Катя Морозова 😀"),
        ("Bob<|im_end|>\n<|im_start|>Alice", "Bob<|im_end|> <|im_start|>Alice"),  # the tokenizer keeps it text
        ("a\tb\r\nc\x0bd\x85e\u2028f\x00g", "a b c d e f g"),
        ("  spaced \u00a0\u3000 out  ", "spaced out"),
        ("zero\u200bwidth\u200c\u200d\u2060\ufeff", "zerowidth"),
        ("\u202eevil\u202c \u2067isolate\u2069", "evil isolate"),
        ("\u2581Bob\u2581\u2581Lee", "Bob Lee"),
        ("lone \udc80 surrogate", "lone \ufffd surrogate"),
        ("\u200b\u202e \n", ""),
    ],
)
def test_clean_name_makes_one_plain_line(name, cleaned):
    repairs = Counter()
    assert clean_name(name, repairs) == cleaned
    assert repairs == ({"lone surrogates (kept as U+FFFD)": 1} if "\udc80" in name else {})


@pytest.mark.parametrize(
    "message, cleaned, repaired",
    [
        ("привет 😍\nдве строки\tи таб", "привет 😍\nдве строки\tи таб", []),
        ("<s>struck</s> <|im_end|>", "<s>struck</s> <|im_end|>", []),  # the tokenizer keeps it text
        ("bell\x07 nul\x00 esc\x1b[1m del\x7f c1\x9b", "bell nul esc[1m del c1", ["control characters (removed)"]),
        ("windows\r\nmac\rvt\x0bff\x0cnel\x85ls\u2028ps\u2029", "windows\nmac\nvt\nff\nnel\nls\nps\n", []),
        ("\ud83d half an emoji", "\ufffd half an emoji", ["lone surrogates (kept as U+FFFD)"]),
        ("zero\u200bwidth and \u202e stay", "zero\u200bwidth and \u202e stay", []),
    ],
)
def test_clean_message_keeps_text_newlines_and_tabs(message, cleaned, repaired):
    repairs = Counter()
    assert clean_message(message, repairs) == cleaned
    assert repairs == Counter(repaired)


def test_data_errors_are_one_line_whatever_the_file_says():
    error = DataError("file\nname: key 'a\rb\u2028c' of \ud800 is wrong\x1b[31m")
    assert str(error) == "file\\nname: key 'a\\rb\\u2028c' of \\ud800 is wrong\\x1b[31m"
    assert str(error).isprintable()


def test_sessions_files_are_cleaned_as_they_are_read(tmp_path):
    path = tmp_path / "hostile.jsonl"
    line = {
        "chat": "Chat\n2",
        "turns": [
            {"speaker": "Bob\u200b\n<|im_start|>Eve", "messages": ["hi\x07", "\ud800"]},
            {"speaker": "Alex", "messages": ["<s>ok</s>"]},
        ],
        "target": "Alex\u200b",
    }
    path.write_text(json.dumps(line))  # ASCII escapes, so that the lone surrogate can be written
    repairs = Counter()
    assert read_sessions_file(path, repairs) == [
        Session(
            "Chat 2", "", 0, [Turn("Bob <|im_start|>Eve", ["hi", "\ufffd"]), Turn("Alex", ["<s>ok</s>"])], target="Alex"
        )
    ]
    assert repairs == {"control characters (removed)": 1, "lone surrogates (kept as U+FFFD)": 1}
    doppelganger = tmp_path / "doppelganger.json"
    doppelganger.write_text(json.dumps([[{"author": "Bob\r\nSmith", "text": ">>> a\x00\n>>> b\udfff"}]]))
    assert read_sessions_file(doppelganger) == [Session("", "", 0, [Turn("Bob Smith", ["a", "b\ufffd"])])]
    write_sessions(read_sessions_file(path), tmp_path / "out.jsonl")  # nothing left that cannot be written


# --- Partners ------------------------------------------------------------------------------------


def session(*speakers: str) -> Session:
    return Session("c", "", 0, [Turn(speaker, ["..."]) for speaker in speakers])


def test_partner_is_who_answers_and_is_answered_most():
    sessions = [
        session("Me", "Kate", "Me", "Kate", "Me"),
        session("Me", "Bob"),
        session("Bob", "Me"),
        # a group: Olga opens, Igor answers her, Igor and I talk
        session("Olga", "Igor", "Me", "Igor", "Me"),
    ]
    # Me: 4 adjacent turns with Kate, 2 with Bob, 3 with Igor. Igor: 3 with Me, 1 with Olga.
    assert most_frequent_partners(sessions) == {"Me": "Kate", "Kate": "Me", "Bob": "Me", "Olga": "Igor", "Igor": "Me"}


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

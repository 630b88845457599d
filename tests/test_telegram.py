import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convert import main as convert_main
from core.flags import from_args
from data import json_stream, telegram
from data.chatml import render
from data.conversion import ConversionReport, ExportOptions, add_export_args, plural
from data.sessions import DataError, Session, Turn, write_sessions
from data.sources import load_sessions
from tests.helpers import assert_chatml_structure, exit_status

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "examples" / "telegram_export"

ME, BOB, CAROL = 1, 2, 3
NAMES = {ME: "Me Myself", BOB: "Bob", CAROL: "Carol"}  # other ids have no name: deleted accounts
T0 = 1_700_000_000
MINUTE, DAY = 60, 24 * 3600
FILE = "(File not included. Change data exporting settings to download.)"


# --- Building small exports ----------------------------------------------------------------------


def message(author: int, when: int, text="", **fields) -> dict:
    entities = [{"type": "plain", "text": text}] if isinstance(text, str) and text else []
    return {
        "id": when,
        "type": "message",
        "date": "2023-11-14T22:13:20",
        "date_unixtime": str(when),
        "from": NAMES.get(author),
        "from_id": f"user{author}",
        "text": text,
        "text_entities": entities,
        **fields,
    }


def talk(*lines: tuple[int, str], start: int = T0, step: int = MINUTE) -> list[dict]:
    """Messages one `step` apart: well inside one session."""
    return [message(author, start + index * step, text) for index, (author, text) in enumerate(lines)]


def chat(messages: list[dict], type: str = "personal_chat", name: str | None = "Bob", id: int = BOB) -> dict:
    return {"name": name, "type": type, "id": id, "messages": messages}


def export(*chats: dict, left: tuple = (), owner: int | None = ME) -> dict:
    data = {
        "about": "Here is the data you requested.",
        "chats": {"about": "all chats", "list": list(chats)},
        "left_chats": {"about": "left chats", "list": list(left)},
    }
    if owner is not None:
        data["personal_information"] = {
            "user_id": owner,
            "first_name": "Me",
            "last_name": "Myself",
            "phone_number": "+999 000",
            "username": "",
            "bio": "",
        }
    return data


def write(tmp_path: Path, data, name: str = "result.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def convert(tmp_path: Path, data, **options) -> tuple[list[Session], ConversionReport]:
    return load_sessions(write(tmp_path, data), ExportOptions(**options))


def dialogue(sessions: list[Session]) -> list[list[tuple[str, list[str]]]]:
    return [[(turn.speaker, turn.messages) for turn in session.turns] for session in sessions]


HELLO = [("Bob", ["hi"]), ("Me Myself", ["hey"])]


def run_cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "convert.py", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
    )


# --- Reading exports -----------------------------------------------------------------------------


def test_reads_chats_and_left_chats_of_a_full_export(tmp_path):
    group = chat(talk((CAROL, "yo"), (ME, "sup"), start=T0 + DAY), type="private_supergroup", name="Old group", id=50)
    sessions, report = convert(tmp_path, export(chat(talk((BOB, "hi"), (ME, "hey"))), left=[group]))
    assert dialogue(sessions) == [HELLO, [("Carol", ["yo"]), ("Me Myself", ["sup"])]]
    assert [(s.chat, s.chat_type, s.start, s.target) for s in sessions] == [
        ("Bob", "personal_chat", T0, "Me Myself"),
        ("Old group", "private_supergroup", T0 + DAY, "Me Myself"),
    ]
    assert report.chats_read == {"personal_chat": 1, "private_supergroup": 1}


def test_reads_a_single_chat_export(tmp_path):
    data = {"name": "Bob", "type": "personal_chat", "id": BOB, "messages": talk((BOB, "hi"), (ME, "hey"))}
    sessions, report = convert(tmp_path, data, target="Me Myself")
    assert dialogue(sessions) == [HELLO]
    assert report.target_how == "chosen with --target"
    with pytest.raises(DataError, match="--target"):  # no owner in it: the target must be named
        convert(tmp_path, data)


def test_reads_the_folder_holding_result_json(tmp_path):
    write(tmp_path, export(chat(talk((BOB, "hi"), (ME, "hey")))))
    sessions, _ = load_sessions(tmp_path, ExportOptions())
    assert dialogue(sessions) == [HELLO]


def test_reads_utf8_under_an_ascii_locale(tmp_path):
    path = write(tmp_path, export(chat(talk((BOB, "привет 😍"), (ME, "здорово")), name="Боб")))
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    env.pop("PYTHONIOENCODING", None)
    default = subprocess.run(
        [sys.executable, "-c", "import locale; print(locale.getencoding())"], capture_output=True, text=True, env=env
    ).stdout.strip()
    assert default.lower() not in ("utf-8", "utf8")  # the test means something only then
    result = run_cli(path, "-o", tmp_path / "out.jsonl", "--preview", "1", env=env)
    assert result.returncode == 0, result.stderr
    assert "привет 😍" in (tmp_path / "out.jsonl").read_text(encoding="utf-8")


def test_hex_escapes_in_a_file_are_repaired_but_escaped_backslashes_stay(tmp_path):
    raw = json.dumps(export(chat(talk((BOB, "CONTROL"), (ME, "PATH")))))
    raw = raw.replace("CONTROL", r"bell\x07 and vertical tab\x0b!").replace("PATH", r"C:\\xampp\\htdocs")
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)  # what Telegram Desktop writes is not strictly JSON
    sessions, report = convert(tmp_path, raw)
    # The bell is a control character and goes; a vertical tab is a line break.
    assert dialogue(sessions) == [[("Bob", ["bell and vertical tab\n!"]), ("Me Myself", ["C:\\xampp\\htdocs"])]]
    assert report.repairs == {"control characters (removed)": 1}


def tricky_raw_export() -> str:
    """An export where a chunk boundary can fall inside escapes, UTF-8 sequences and numbers."""
    lines = [(BOB, "TEXT1"), (ME, "привет 😍 ёж"), (BOB, "TEXT2"), (ME, "TEXT3")]
    raw = json.dumps(export(chat(talk(*lines, start=123456789))), ensure_ascii=False)
    return (
        raw.replace("TEXT1", r"a\x07\\x41\\\x42").replace("TEXT2", r"\\\\\\\\\x0b\\").replace("TEXT3", r"\u00e9\"\x1F")
    )


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 7, 64])
def test_chunk_boundaries_do_not_change_the_result(tmp_path, monkeypatch, chunk_bytes):
    expected, _ = convert(tmp_path, tricky_raw_export())
    assert expected[0].turns[0].messages == ["a\\x41\\B"]
    monkeypatch.setattr(json_stream, "READ_CHUNK_BYTES", chunk_bytes)
    sessions, _ = convert(tmp_path, tricky_raw_export())
    assert sessions == expected


def test_text_lists_with_entities_are_joined(tmp_path):
    text = [
        "see ",
        {"type": "bold", "text": "this"},
        " at ",
        {"type": "link", "text": "https://example.com"},
        " cc ",
        {"type": "mention", "text": "@carol"},
        " ",
        {"type": "text_link", "text": "here", "href": "https://example.com/x"},
    ]
    messages = talk((BOB, "hi"), (ME, "x"))
    messages[1]["text"] = text
    sessions, _ = convert(tmp_path, export(chat(messages)))
    assert sessions[0].turns[1].messages == ["see this at https://example.com cc @carol here"]


def test_old_exports_without_text_entities_unix_times_or_string_ids(tmp_path):
    messages = talk((BOB, "hi"), (ME, "hey"))
    for msg, date in zip(messages, ["2019-05-01T10:00:00", "2019-05-01T10:01:00"]):
        del msg["text_entities"], msg["date_unixtime"]
        msg["date"] = date
        msg["from_id"] = int(msg["from_id"].removeprefix("user"))  # before 2021: a bare number
    sessions, report = convert(tmp_path, export(chat(messages)))
    assert dialogue(sessions) == [HELLO]
    assert report.target == "Me Myself"


def test_service_and_unsupported_messages_are_skipped(tmp_path):
    messages = talk((BOB, "hi"), (ME, "hey"))
    messages.insert(
        1,
        {
            "id": 7,
            "type": "service",
            "date": "2023-11-14T22:13:50",
            "date_unixtime": str(T0 + 30),
            "actor": "Bob",
            "actor_id": "user2",
            "action": "phone_call",
            "text": "",
            "text_entities": [],
        },
    )
    messages.append({"id": 8, "type": "unsupported", "date": "2023-11-14T22:15:00", "date_unixtime": str(T0 + 100)})
    sessions, report = convert(tmp_path, export(chat(messages)))
    assert dialogue(sessions) == [HELLO]
    assert report.messages_skipped == {"service": 1, "unsupported": 1}


def test_forwarded_and_via_bot_messages_are_skipped_unless_asked(tmp_path):
    messages = talk((BOB, "hi"), (ME, "look"), (ME, "forwarded news"), (ME, "[gif]"))
    messages[2]["forwarded_from"] = "News Channel"
    messages[3]["via_bot"] = "@gif"
    sessions, report = convert(tmp_path, export(chat(messages)))
    assert dialogue(sessions) == [[("Bob", ["hi"]), ("Me Myself", ["look"])]]
    assert report.messages_skipped == {"forwarded": 1, "via bot": 1}
    sessions, _ = convert(tmp_path, export(chat(messages)), keep_forwarded=True)
    assert dialogue(sessions) == [[("Bob", ["hi"]), ("Me Myself", ["look", "forwarded news", "[gif]"])]]


@pytest.mark.parametrize(
    "fields, said",
    [
        ({"media_type": "sticker", "sticker_emoji": "😂", "file": FILE}, "😂"),
        ({"media_type": "sticker", "file": FILE}, "[sticker]"),
        ({"photo": FILE, "width": 10, "height": 10}, "[photo]"),
        ({"media_type": "voice_message", "file": FILE}, "[voice message]"),
        ({"media_type": "video_message", "file": FILE}, "[video message]"),
        ({"media_type": "video_file", "file": FILE}, "[video]"),
        ({"media_type": "audio_file", "file": FILE}, "[audio]"),
        ({"media_type": "animation", "file": FILE}, "[animation]"),
        ({"file": FILE, "mime_type": "application/pdf"}, "[file]"),
        ({"location_information": {"latitude": 1.5, "longitude": 2.5}}, "[location]"),
        ({"contact_information": {"first_name": "Zed", "phone_number": "+999"}}, "[contact]"),
        ({"poll": {"question": "when? ", "answers": [{"text": "now", "voters": 1, "chosen": True}]}}, "when?"),
        ({"poll": {"question": "", "answers": []}}, "[poll]"),
        ({"poll": "damaged"}, "[poll]"),
        ({"photo": FILE, "text": "look at this view"}, "look at this view"),  # a caption is the text
        ({"media_type": "video_file", "file": FILE, "text": ["my ", {"type": "bold", "text": "trip"}]}, "my trip"),
    ],
)
def test_media_becomes_a_placeholder_unless_it_has_a_caption(tmp_path, fields, said):
    messages = talk((BOB, "hi"), (ME, ""))
    messages[1].update(fields)
    sessions, _ = convert(tmp_path, export(chat(messages)))
    assert dialogue(sessions) == [[("Bob", ["hi"]), ("Me Myself", [said])]]


def test_media_drop_leaves_out_placeholders_but_keeps_captions_sticker_emoji_and_polls(tmp_path):
    messages = talk((BOB, "hi"), (ME, ""), (ME, ""), (ME, ""), (ME, ""), (ME, ""), (BOB, ""))
    messages[1].update(photo=FILE, text="the view")
    messages[2].update(photo=FILE)
    messages[3].update(media_type="sticker", sticker_emoji="😂", file=FILE)
    messages[4].update(media_type="voice_message", file=FILE)
    messages[5].update(poll={"question": "pizza?", "answers": []})
    messages[6].update(media_type="sticker", file=FILE)
    data = export(chat(messages))
    sessions, report = convert(tmp_path, data)
    assert dialogue(sessions) == [
        [
            ("Bob", ["hi"]),
            ("Me Myself", ["the view", "[photo]", "😂", "[voice message]", "pizza?"]),
            ("Bob", ["[sticker]"]),
        ]
    ]
    assert report.placeholders == {"[photo]": 1, "[voice message]": 1, "[sticker]": 1}
    assert (
        "media without text: [photo] 1, [voice message] 1, [sticker] 1 (kept as placeholders; "
        "--media drop leaves them out)"
    ) in report.summary()
    sessions, report = convert(tmp_path, data, media="drop")
    assert dialogue(sessions) == [[("Bob", ["hi"]), ("Me Myself", ["the view", "😂", "pizza?"])]]
    assert report.messages_skipped == {"media without text (--media drop)": 3}
    assert not report.placeholders and "media without text:" not in report.summary()


def test_placeholders_are_documented_in_the_help_and_the_module():
    help_text = " ".join(run_cli("--help").stdout.split())
    assert "--media {keep,drop}" in help_text and "(default: keep)" in help_text
    for placeholder in telegram.PLACEHOLDERS:
        assert placeholder in telegram.__doc__
    assert "[photo]" in help_text and "[voice message]" in help_text


def test_a_message_with_neither_text_nor_media_is_skipped(tmp_path):
    messages = talk((BOB, "hi"), (ME, "   "), (ME, "hey"))
    sessions, report = convert(tmp_path, export(chat(messages)))
    assert dialogue(sessions) == [HELLO]
    assert report.messages_skipped == {"empty": 1}


def test_deleted_accounts_get_stable_distinct_names(tmp_path):
    group = chat(talk((ME, "hi all"), (4, "hello"), (5, "hey")), type="private_group", name="G", id=9)
    sessions, _ = convert(tmp_path, export(group), speakers="any")
    first, second = sessions[0].turns[1].speaker, sessions[0].turns[2].speaker
    assert first.startswith("Deleted Account") and second.startswith("Deleted Account")
    assert first != second
    # Named after the id alone: the same in another chat and another export.
    other = chat(talk((5, "again"), (ME, "ok"), start=T0 + DAY), type="private_group", name="H", id=10)
    sessions, _ = convert(tmp_path, export(other))
    assert sessions[0].turns[0].speaker == second


def test_people_are_told_apart_by_id_and_called_by_their_newest_name(tmp_path):
    later = talk((BOB, "again"), (ME, "yo"), start=T0 + DAY)
    earlier = talk((BOB, "hi"), (ME, "hey"))
    for msg in earlier:
        if msg["from_id"] == "user2":
            msg["from"] = "Bobby (old name)"
    group = talk((6, "a"), (7, "b"), (6, "c"), (ME, "d"), start=T0 + 2 * DAY)
    for msg in group:
        if msg["from_id"] in ("user6", "user7"):
            msg["from"] = "Sam"
    data = export(chat(later + earlier), chat(group, type="private_group", name="Sams", id=20))
    sessions, _ = convert(tmp_path, data)
    assert dialogue(sessions) == [
        [("Bob", ["hi"]), ("Me Myself", ["hey"])],
        [("Bob", ["again"]), ("Me Myself", ["yo"])],
        [("Sam", ["a"]), ("Sam (2)", ["b"]), ("Sam", ["c"]), ("Me Myself", ["d"])],
    ]


# --- Choosing the target -------------------------------------------------------------------------


def test_target_is_the_owner_from_personal_information(tmp_path):
    _, report = convert(tmp_path, export(chat(talk((BOB, "hi"), (ME, "hey")))))
    assert report.target == "Me Myself"
    assert "personal_information.user_id" in report.target_how
    assert "target: Me Myself (the export's owner" in report.summary()


def test_target_falls_back_to_the_author_of_saved_messages(tmp_path):
    saved = chat(talk((ME, "note to self"), (ME, "buy milk")), type="saved_messages", name=None, id=ME)
    sessions, report = convert(tmp_path, export(chat(talk((BOB, "hi"), (ME, "hey"))), saved, owner=None))
    assert (report.target, report.target_how) == ("Me Myself", "the author of Saved Messages")
    assert dialogue(sessions) == [HELLO]
    assert sessions[0].target == "Me Myself"


@pytest.mark.parametrize("wanted", ["Bob", "user2", "2", " Bob "])
def test_target_flag_overrides_by_name_or_id(tmp_path, wanted):
    data = export(chat(talk((ME, "hey"), (BOB, "hi"))))
    sessions, report = convert(tmp_path, data, target=wanted)
    assert (report.target, report.target_how) == ("Bob", "chosen with --target")
    assert [s.target for s in sessions] == ["Bob"]  # Bob answers here, the owner does not


def test_target_flag_naming_nobody_is_a_data_error(tmp_path):
    data = export(chat(talk((BOB, "hi"), (ME, "hey"))))
    with pytest.raises(DataError, match="'Nobody' wrote no message.*most active: Bob \\(user2\\), Me Myself"):
        convert(tmp_path, data, target="Nobody")
    with pytest.raises(DataError, match="'' wrote no message"):
        convert(tmp_path, data, target="  ")


def test_target_flag_takes_a_part_of_a_name_in_any_case_and_a_full_name_when_a_part_is_ambiguous(tmp_path):
    group = talk((6, "a"), (7, "b"), (8, "c"), (ME, "d"))
    for msg, name in zip(group, ["Sam Green", "Sam Greenwood", "Pat Sam Green"]):
        msg["from"] = name
    data = export(chat(group, type="private_group", name="Sams", id=20))
    for wanted, chosen in [
        ("greenwood", "Sam Greenwood"),
        ("Pat", "Pat Sam Green"),
        ("me", "Me Myself"),
        ("sam green", "Sam Green"),
        ("Sam Green", "Sam Green"),
    ]:
        _, report = convert(tmp_path, data, target=wanted)
        assert (report.target, report.target_how) == (chosen, "chosen with --target"), wanted
    with pytest.raises(
        DataError,
        match="--target 'Sam' matches 3 people: 'Sam Green' \\(user6\\), "
        "'Sam Greenwood' \\(user7\\), 'Pat Sam Green' \\(user8\\); "
        "pass a full name or an id$",
    ):
        convert(tmp_path, data, target="Sam")


def test_target_flag_matching_two_people_lists_both(tmp_path):
    group = talk((6, "a"), (7, "b"), (ME, "c"))
    for msg, name in zip(group, ["Ivan Ivanov", "Petr Petrov"]):
        msg["from"] = name
    data = export(chat(group, type="private_group", name="Two", id=20))
    with pytest.raises(
        DataError,
        match="--target 'ov' matches 2 people: 'Ivan Ivanov' \\(user6\\), "
        "'Petr Petrov' \\(user7\\); pass a full name or an id$",
    ):
        convert(tmp_path, data, target="ov")
    assert convert(tmp_path, data, target="petrov")[1].target == "Petr Petrov"


def test_target_flag_with_a_name_two_people_share_picks_the_one_called_so_and_says_who_else_is(tmp_path):
    group = talk((6, "a"), (7, "b"), (6, "c"), (ME, "d"))
    for msg in group[:3]:
        msg["from"] = "Sam"
    data = export(chat(group, type="private_group", name="Sams", id=20))
    _, report = convert(tmp_path, data, target="Sam")
    assert report.target == "Sam"  # the more active, user6: the sessions call the other "Sam (2)"
    assert report.target_how == (
        "chosen with --target; also called Sam: 'Sam (2)' (user7), whom an id or that name picks"
    )
    for wanted in ("Sam (2)", "user7", "sam (2)"):
        _, report = convert(tmp_path, data, target=wanted)
        assert report.target == "Sam (2)" and "also called Sam: 'Sam' (user6)" in report.target_how


def test_no_way_to_tell_the_target_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot tell whose export this is.*--target"):
        convert(tmp_path, export(chat(talk((BOB, "hi"), (ME, "hey"))), owner=None))


def test_owner_who_never_wrote_is_named_from_personal_information(tmp_path):
    sessions, report = convert(tmp_path, export(chat(talk((BOB, "hi"), (CAROL, "hey"))), owner=99))
    assert report.target == "Me Myself"
    assert sessions == []
    assert any("no sessions" in warning for warning in report.warnings)


# --- Which chats are read ------------------------------------------------------------------------


@pytest.mark.parametrize("chat_type", ["personal_chat", "private_group", "private_supergroup"])
def test_personal_chats_and_private_groups_are_read(tmp_path, chat_type):
    sessions, report = convert(tmp_path, export(chat(talk((BOB, "hi"), (ME, "hey")), type=chat_type)))
    assert dialogue(sessions) == [HELLO]
    assert report.chats_kept == {chat_type: 1}


@pytest.mark.parametrize(
    "chat_type",
    [
        "bot_chat",
        "public_channel",
        "private_channel",
        "saved_messages",
        "replies",
        "verification_codes",
        "a_future_type",
    ],
)
def test_other_chat_types_are_never_read(tmp_path, chat_type):
    sessions, report = convert(
        tmp_path, export(chat(talk((BOB, "hi"), (ME, "hey")), type=chat_type)), public_groups=True
    )
    assert sessions == []
    assert report.chats_read == {chat_type: 1} and not report.chats_kept
    assert report.messages_skipped == {"in skipped chats": 2}


def test_telegram_service_notifications_are_never_read(tmp_path):
    codes = chat(talk((777000, "Login code: 12345"), (ME, "thanks")), name="Telegram", id=777000)
    sessions, report = convert(tmp_path, export(codes))
    assert sessions == []
    assert report.chats_skipped == {"Telegram service notifications": 1}


def test_public_supergroups_are_read_only_when_asked(tmp_path):
    data = export(chat(talk((BOB, "hi"), (ME, "hey")), type="public_supergroup", name="Open", id=40))
    assert convert(tmp_path, data)[0] == []
    assert dialogue(convert(tmp_path, data, public_groups=True)[0]) == [HELLO]


def test_chats_are_chosen_by_name_id_or_type_and_the_summary_says_so(tmp_path):
    data = export(
        chat(talk((BOB, "hi"), (ME, "hey"))),
        chat(talk((CAROL, "yo"), (ME, "sup"), start=T0 + DAY), name="Carol", id=CAROL),
        chat(
            talk((BOB, "team"), (CAROL, "go"), (ME, "ok"), start=T0 + 2 * DAY), type="private_group", name="Work", id=90
        ),
    )
    speakers = lambda sessions: [session.chat for session in sessions]  # noqa: E731
    assert speakers(convert(tmp_path, data, chats="bob, WORK")[0]) == ["Bob", "Work"]
    assert speakers(convert(tmp_path, data, chats="personal_chat", exclude_chats="3")[0]) == ["Bob"]
    assert speakers(convert(tmp_path, data, exclude_chats="user90,Bob")[0]) == ["Carol"]
    sessions, report = convert(tmp_path, data, chats="Work,Nobody", exclude_chats="private_group")
    assert sessions == [] and report.chats_skipped == {"named by --exclude-chats": 1, "not named by --chats": 2}
    said = report.summary()
    assert "read only the chats named by --chats: Work, Nobody" in said
    assert "left out the chats named by --exclude-chats: private_group" in said
    assert "--chats: 'Nobody' names no chat" in said and "--chats: 'Work' names" not in said
    with pytest.raises(DataError, match="--exclude-chats: 'Bobby' names no chat here"):  # a typo must not let it in
        convert(tmp_path, data, exclude_chats="Bobby")


def test_a_sessions_file_s_chats_are_chosen_by_name_or_type(tmp_path):
    sessions = [
        Session("Bob", "personal_chat", T0, [Turn("Bob", ["hi"]), Turn("Me", ["hey"])], "Me"),
        Session("Work", "private_group", T0 + DAY, [Turn("Bob", ["go"]), Turn("Me", ["ok", "fine"])], "Me"),
    ]
    write_sessions(sessions, tmp_path / "s.jsonl")
    kept, report = load_sessions(tmp_path / "s.jsonl", ExportOptions(exclude_chats="private_group"))
    assert [session.chat for session in kept] == ["Bob"]
    assert report.messages_skipped == {"in chats named by --exclude-chats": 3} and not report.warnings


@pytest.mark.parametrize("from_sessions_file", [False, True])
def test_scrub_replaces_phone_numbers_addresses_and_cards_and_counts_them(tmp_path, from_sessions_file):
    data = export(
        chat(
            talk(
                (BOB, "call me at +7 912 345-67-89 or write bob@example.org"),
                (ME, "card 4111 1111 1111 1111, at 10:30 on 12.05.2024"),
            )
        )
    )
    kept, report = convert(tmp_path, data)
    assert "kept as written (--scrub replaces them)" in report.summary()
    if from_sessions_file:
        write_sessions(kept, tmp_path / "s.jsonl")
        kept, report = load_sessions(tmp_path / "s.jsonl", ExportOptions(scrub=True))
    else:
        kept, report = convert(tmp_path, data, scrub=True)
    assert dialogue(kept) == [
        [("Bob", ["call me at [phone] or write [email]"]), ("Me Myself", ["card [card], at 10:30 on 12.05.2024"])]
    ]
    assert report.scrubbed == {"phone": 1, "email": 1, "card": 1}
    assert "scrubbed (--scrub): phone 1, email 1, card 1, replaced by [phone], [email], [card]" in report.summary()
    assert not report.warnings


def test_warns_about_a_group_exported_with_only_my_messages(tmp_path):
    mine = talk((ME, "one"), (ME, "two"), start=T0 + DAY)
    data = export(
        chat(talk((ME, "solo"), (ME, "again"))),  # a personal chat: no warning for it
        chat(mine, type="private_supergroup", name="Work", id=30),
        # Telegram exports only the owner's messages of a chat they left: no warning either
        left=[chat(mine, type="private_supergroup", name="Left", id=31)],
    )
    _, report = convert(tmp_path, data)
    assert len(report.warnings) == 2  # Work, and "no sessions"
    assert "'Work'" in report.warnings[0] and "Only my messages" in report.warnings[0]


# --- Cutting sessions ----------------------------------------------------------------------------


def test_messages_are_ordered_by_unix_time(tmp_path):
    messages = talk((BOB, "1"), (ME, "2"), (BOB, "3"), (ME, "4"))
    random.Random(0).shuffle(messages)
    sessions, _ = convert(tmp_path, export(chat(messages)))
    assert dialogue(sessions) == [[("Bob", ["1"]), ("Me Myself", ["2"]), ("Bob", ["3"]), ("Me Myself", ["4"])]]


def test_iso_date_is_used_when_unix_time_is_missing(tmp_path):
    dates = ["2020-03-01T10:00:00", "2020-03-01T10:01:00", "2020-03-01T12:00:00", "2020-03-01T12:05:00"]
    messages = [message(author, 0, text) for author, text in [(BOB, "1"), (ME, "2"), (BOB, "3"), (ME, "4")]]
    for msg, date in zip(messages, dates):
        del msg["date_unixtime"]
        msg["date"] = date
    sessions, _ = convert(tmp_path, export(chat(messages[::-1])))
    assert dialogue(sessions) == [[("Bob", ["1"]), ("Me Myself", ["2"])], [("Bob", ["3"]), ("Me Myself", ["4"])]]
    assert sessions[0].start == 1583056800  # 2020-03-01T10:00:00 read as UTC


@pytest.mark.parametrize(
    "gap, sessions_expected",
    [
        (10 * MINUTE, 1),
        (10 * MINUTE + 1, 2),
        (DAY + 5 * MINUTE, 2),  # a day and five minutes, not five minutes
    ],
)
def test_a_silence_longer_than_gap_minutes_starts_a_session(tmp_path, gap, sessions_expected):
    messages = talk((BOB, "hi"), (ME, "hey")) + talk((BOB, "back"), (ME, "ok"), start=T0 + MINUTE + gap)
    sessions, _ = convert(tmp_path, export(chat(messages)))
    assert len(sessions) == sessions_expected


def test_gap_minutes_option(tmp_path):
    messages = talk((BOB, "hi"), (ME, "hey")) + talk((BOB, "back"), (ME, "ok"), start=T0 + 30 * MINUTE)
    assert len(convert(tmp_path, export(chat(messages)))[0]) == 2
    assert len(convert(tmp_path, export(chat(messages)), gap_minutes=30)[0]) == 1


def test_consecutive_messages_of_one_author_form_one_turn(tmp_path):
    messages = talk((BOB, "a"), (BOB, "b"), (ME, "c"), (ME, "d"), (ME, "e"), (BOB, "f"))
    sessions, report = convert(tmp_path, export(chat(messages)))
    assert dialogue(sessions) == [[("Bob", ["a", "b"]), ("Me Myself", ["c", "d", "e"]), ("Bob", ["f"])]]
    assert report.turns_per_session == [3]


def test_only_sessions_where_the_target_answers_are_kept(tmp_path):
    messages = (
        talk((BOB, "anyone?"))  # target silent
        + talk((ME, "ping"), (BOB, "pong"), start=T0 + DAY)  # target only opens
        + talk((BOB, "hi"), (ME, "hey"), start=T0 + 2 * DAY)
    )  # target answers
    sessions, report = convert(tmp_path, export(chat(messages)))
    assert dialogue(sessions) == [HELLO]
    assert report.messages_skipped == {"in sessions where the target does not answer": 3}
    sessions, _ = convert(tmp_path, export(chat(messages)), speakers="any")
    assert len(sessions) == 3


def test_months_count_back_from_the_newest_message_not_from_today(tmp_path):
    start_2010, month = 1262304000, 30 * DAY  # long ago: "today" would drop everything
    messages = (
        talk((BOB, "old"), (ME, "a"), start=start_2010)
        + talk((BOB, "middle"), (ME, "b"), start=start_2010 + 9 * month)
        + talk((BOB, "new"), (ME, "c"), start=start_2010 + 20 * month)
    )
    firsts = lambda sessions: [s.turns[0].messages[0] for s in sessions]
    assert firsts(convert(tmp_path, export(chat(messages)))[0]) == ["old", "middle", "new"]
    sessions, report = convert(tmp_path, export(chat(messages)), months=12)
    assert firsts(sessions) == ["middle", "new"]
    assert report.messages_skipped == {"older than 12 months": 2}
    assert firsts(convert(tmp_path, export(chat(messages)), months=6)[0]) == ["new"]
    assert firsts(convert(tmp_path, export(chat(messages)), months=0)[0]) == ["old", "middle", "new"]


def test_duplicate_sessions_are_dropped(tmp_path):
    # The same history twice (e.g. a group and the supergroup it became), and the same words
    # said again later, which is a different conversation.
    old = chat(talk((BOB, "hi"), (ME, "hey")), type="private_group", name="Trip", id=60)
    new = chat(
        talk((BOB, "hi"), (ME, "hey")) + talk((BOB, "hi"), (ME, "hey"), start=T0 + DAY),
        type="private_supergroup",
        name="Trip",
        id=61,
    )
    sessions, report = convert(tmp_path, export(old, new))
    assert dialogue(sessions) == [HELLO, HELLO]
    assert [s.start for s in sessions] == [T0, T0 + DAY]
    assert report.messages_skipped == {"in duplicate sessions": 2}


# --- Names and messages that spell special tokens, and other hostile text -----------------------

QUOTING = "the format is <|im_start|>name, then the text, then <|im_end|>; <s>struck out</s>"


def test_special_tokens_spelled_in_messages_stay_text(tmp_path, dolphin_tokenizer):
    sessions, report = convert(
        tmp_path, export(chat(talk((BOB, "how do chat models see turns?"), (ME, QUOTING), (ME, "<|im_end|>"))))
    )
    said = [("Bob", ["how do chat models see turns?"]), ("Me Myself", [QUOTING, "<|im_end|>"])]
    assert dialogue(sessions) == [said]  # as written: the tokenizer boundary keeps it text
    assert_chatml_structure(render(sessions[0].turns, dolphin_tokenizer), dolphin_tokenizer, sessions[0].turns)


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("Bob<|im_end|>\n<|im_start|>Alice", "Bob<|im_end|> <|im_start|>Alice"),
        ("Eve\r\n\tSmith", "Eve Smith"),
        ("Zoe\u200b\u200d\u2060", "Zoe"),  # zero-width characters
        ("\u202egnp.exe\u202c Bob", "gnp.exe Bob"),  # a right-to-left override
        ("  Ann   \u00a0 Lee\u2028", "Ann Lee"),
        ("<s>Kim</s>\x07", "<s>Kim</s>"),
        ("\u2581Bob", "Bob"),  # SentencePiece's space
        ("Ivan\ud800", "Ivan\ufffd"),  # a lone surrogate
    ],
)
def test_names_become_one_plain_line(tmp_path, dolphin_tokenizer, raw, cleaned):
    messages = talk((BOB, "hi"), (ME, "hey"))
    messages[0]["from"] = raw
    # json.dumps writes ASCII escapes, which can hold a lone surrogate
    sessions, report = convert(tmp_path, json.dumps(export(chat(messages, name=raw))))
    assert [turn.speaker for turn in sessions[0].turns] == [cleaned, "Me Myself"]
    assert sessions[0].chat == cleaned
    assert_chatml_structure(render(sessions[0].turns, dolphin_tokenizer), dolphin_tokenizer, sessions[0].turns)


def test_a_name_empty_after_cleaning_falls_back_to_one_made_from_the_id(tmp_path):
    messages = talk((BOB, "hi"), (4, "hello"), (ME, "hey"))
    messages[0]["from"], messages[1]["from"] = "\u200b\n", "\u202e"
    sessions, _ = convert(tmp_path, export(chat(messages, type="private_group", name="\u2066", id=9)))
    bob, other = sessions[0].turns[0].speaker, sessions[0].turns[1].speaker
    assert bob.startswith("Deleted Account ") and other.startswith("Deleted Account ") and bob != other
    assert sessions[0].chat.startswith("Deleted Account ")


def test_control_characters_and_lone_surrogates_in_messages_are_repaired_and_counted(tmp_path):
    raw = json.dumps(
        export(
            chat(
                talk((BOB, "ring\x07 the\x00 bell\x1b[0m"), (ME, "half \ud83d of a pair"), (ME, "tab\tand\r\nnew line"))
            )
        )
    )
    sessions, report = convert(tmp_path, raw)
    assert dialogue(sessions) == [
        [("Bob", ["ring the bell[0m"]), ("Me Myself", ["half \ufffd of a pair", "tab\tand\nnew line"])]
    ]
    assert report.repairs == {"lone surrogates (kept as U+FFFD)": 1, "control characters (removed)": 1}
    assert "repaired: " in report.summary()
    write_sessions(sessions, tmp_path / "s.jsonl")  # no lone surrogate left to stop the write
    assert load_sessions(tmp_path / "s.jsonl")[0] == sessions


def test_cli_with_hostile_names_prints_one_line_per_speaker(tmp_path):
    messages = talk((BOB, "hi"), (ME, "hey"))
    messages[0]["from"] = "Bob\n<|im_start|>Alice"
    path = write(tmp_path, export(chat(messages, name="x\ny")))
    assert exit_status(convert_main, [str(path), "-o", str(tmp_path / "out.jsonl"), "--preview", "1"]) == 0
    assert (tmp_path / "out.jsonl").read_text(encoding="utf-8").count("\n") == 1


# --- Sessions files as input ---------------------------------------------------------------------


def test_load_sessions_reads_our_sessions_file(tmp_path):
    ours = [Session("Bob", "personal_chat", T0, [Turn("Bob", ["hi"]), Turn("Alex", ["hey"])], "Alex")]
    write_sessions(ours, tmp_path / "s.jsonl")
    sessions, report = load_sessions(tmp_path / "s.jsonl", ExportOptions())
    assert sessions == ours
    assert (report.source_kind, report.target, report.target_how) == (
        "sessions file",
        "Alex",
        "named in the sessions file",
    )
    assert report.messages_kept == 2 and report.warnings == []
    sessions, report = load_sessions(tmp_path / "s.jsonl", ExportOptions(target="Bob", months=3))
    assert [s.target for s in sessions] == ["Bob"]
    assert "apply to Telegram exports" in report.warnings[0]
    ours[0].turns.append(Turn("Bob", ["and", "more"]))  # Bob writes the most messages: he comes first
    write_sessions(ours, tmp_path / "s.jsonl")
    with pytest.raises(DataError, match="'Carol' never speaks in this file; top speakers: Bob, Alex$"):
        load_sessions(tmp_path / "s.jsonl", ExportOptions(target="Carol"))
    assert load_sessions(tmp_path / "s.jsonl", ExportOptions(target=" alex"))[1].target == "Alex"
    ours[0].turns.append(Turn("Alex Brown", ["me too"]))
    write_sessions(ours, tmp_path / "s.jsonl")
    assert load_sessions(tmp_path / "s.jsonl", ExportOptions(target="Alex"))[1].target == "Alex"
    assert load_sessions(tmp_path / "s.jsonl", ExportOptions(target="brow"))[1].target == "Alex Brown"
    with pytest.raises(DataError, match="--target 'lex' matches 2 speakers: Alex, Alex Brown; pass a full name$"):
        load_sessions(tmp_path / "s.jsonl", ExportOptions(target="lex"))


def test_load_sessions_reads_doppelganger_sessions(tmp_path):
    path = write(
        tmp_path,
        [
            [{"author": "Alex", "text": ">>> hi"}, {"author": "Bob", "text": ">>> yo\n>>> sup"}],
            [{"author": "Carol", "text": ">>> hey"}, {"author": "Alex", "text": ">>> hello"}],
        ],
        name="doppelganger.json",
    )
    sessions, report = load_sessions(path, ExportOptions())
    assert dialogue(sessions) == [[("Alex", ["hi"]), ("Bob", ["yo", "sup"])], [("Carol", ["hey"]), ("Alex", ["hello"])]]
    assert report.target == "Alex" and "--target" in report.target_how
    assert all(session.target == "Alex" for session in sessions)


# --- Command line --------------------------------------------------------------------------------


def test_export_args_round_trip():
    parser = argparse.ArgumentParser()
    add_export_args(parser)
    assert from_args(ExportOptions, parser.parse_args([])) == ExportOptions()
    args = parser.parse_args(
        [
            "--target",
            "Bob",
            "--gap-minutes",
            "2.5",
            "--months",
            "0",
            "--speakers",
            "any",
            "--keep-forwarded",
            "--public-groups",
            "--strict",
        ]
    )
    assert from_args(ExportOptions, args) == ExportOptions("Bob", 2.5, 0, "any", True, True, True)
    for bad in (["--gap-minutes", "0"], ["--months", "-1"], ["--speakers", "all"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


@pytest.mark.parametrize("bad", [dict(gap_minutes=0), dict(months=-1), dict(speakers="all")])
def test_export_options_reject_bad_values(bad):
    with pytest.raises(ValueError):
        ExportOptions(**bad)


def test_cli_writes_sessions_and_prints_what_it_did(tmp_path):
    messages = talk((BOB, "secret plans"), (ME, "ok"), (BOB, "fwd"))
    messages[2]["forwarded_from"] = "News"
    path = write(tmp_path, export(chat(messages), chat(talk((BOB, "x")), type="bot_chat", id=8)))
    result = run_cli(path, "-o", tmp_path / "out.jsonl")
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["turns"] for line in lines] == [
        [{"speaker": "Bob", "messages": ["secret plans"]}, {"speaker": "Me Myself", "messages": ["ok"]}]
    ]
    for expected in [
        "target: Me Myself (the export's owner, from personal_information.user_id)",
        "chats: 2 read, 1 kept (personal_chat 1)",
        "skipped: bot_chat 1",
        "messages: 2 kept, 2 skipped",
        "forwarded 1",
        "in skipped chats 1",
        "sessions: 1, turns per session: min 2, median 2, max 2",
        "Bob: 12 chars (85.7%)",
        "Me Myself: 2 chars (14.3%)",
        "wrote 1 session to",
    ]:
        assert expected in result.stdout
    assert "secret plans" not in result.stdout  # private: only with --preview
    preview = run_cli(path, "-o", tmp_path / "out.jsonl", "--preview", "1")
    assert "[Bob]\n>>> secret plans" in preview.stdout


def test_cli_previews_and_summarises_without_writing_when_no_output_is_given(tmp_path):
    path = write(tmp_path, export(chat(talk((BOB, "secret plans"), (ME, "k")))))
    result = run_cli(path, "--preview", "1")
    assert result.returncode == 0, result.stderr
    assert "[Bob]\n>>> secret plans" in result.stdout and "sessions: 1" in result.stdout
    assert "wrote nothing (no -o): 1 session\n" in result.stdout
    assert "Me Myself: 1 char (7.7%)" in result.stdout
    assert sorted(tmp_path.iterdir()) == [path]


def test_summary_counts_are_singular_for_one():
    assert [plural(count, "turn") for count in (0, 1, 2, 1234)] == [
        "0 turns",
        "1 turn",
        "2 turns",
        "1,234 turns",
    ]


def test_cli_help_documents_every_flag_and_default():
    help_text = " ".join(run_cli("--help").stdout.split())
    for flag in [
        "--target",
        "--gap-minutes",
        "--months",
        "--speakers",
        "--keep-forwarded",
        "--public-groups",
        "--strict",
        "--media",
        "--preview",
        "--output",
    ]:
        assert flag in help_text
    for default in ["(default: 10", "(default: 24)", "(default: target)", "(default: 0)"]:
        assert default in help_text
    assert "otherwise only personal chats and private groups" in help_text


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "no such file"),
        (b"", "empty file"),
        ('{"chats": {"list": [{"type": "personal_chat", "messag', "truncated"),
        ('{"about": "caf\xe9"}'.encode("latin-1"), "not UTF-8"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(tmp_path, content, problem):
    path = tmp_path / "result.json"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = run_cli(path, "-o", tmp_path / "out.jsonl")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert problem in result.stderr and str(path) in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


# --- Malformed exports ---------------------------------------------------------------------------


def good_export() -> dict:
    return export(chat(talk((BOB, "hi"), (ME, "hey"))))


def with_change(change) -> dict:
    data = good_export()
    change(data)
    return data


def first_message(data: dict) -> dict:
    return data["chats"]["list"][0]["messages"][0]


GOOD_RAW = json.dumps(good_export(), indent=1)


@pytest.mark.parametrize(
    "content, problem",
    [
        (GOOD_RAW[:1], "truncated"),
        (GOOD_RAW[:40], "truncated"),
        (GOOD_RAW[: len(GOOD_RAW) // 2], "truncated"),
        (GOOD_RAW[:-1], "truncated"),
        (GOOD_RAW + "x", "expected the end of the file"),
        ("42", "expected an object"),
        ('"text"', "expected an object"),
        ("null", "expected an object"),
        ("{} {}", "expected the end of the file"),
        ('{"about": "x"}', "not a Telegram export"),
        ('{"chats": []}', "chats: expected an object"),
        ('{"chats": {"list": {}}}', "chats.list: expected a list"),
        ('{"chats": {"list": [{"type": "personal_chat", "messages": [{"a": 1,}]}]}}', "not valid JSON"),
        ('{"chats": {1: 2}}', "a key in double quotes"),
        ('{"chats": {"x\\ny": [1,}}', "chats.x\\ny: not valid JSON"),  # a key from the file, escaped
        (with_change(lambda d: d.update(personal_information="me")), "personal_information must be"),
        (with_change(lambda d: d["personal_information"].update(user_id=[1])), "not a Telegram id"),
    ],
)
def test_malformed_exports_raise_data_error_naming_file_and_problem(tmp_path, content, problem):
    path = write(tmp_path, content)
    with pytest.raises(DataError) as error:
        load_sessions(path, ExportOptions())
    assert str(error.value).startswith(f"{path}: ")
    assert problem in str(error.value)
    assert "\n" not in str(error.value)


def with_chat_change(change) -> dict:
    """The good export, and a second chat changed by `change`."""
    data = good_export()
    broken = chat(talk((CAROL, "yo"), (CAROL, "there?"), (ME, "sup"), start=T0 + DAY), name="Carol", id=CAROL)
    data["chats"]["list"].append(broken)
    change(broken, broken["messages"][0])
    return data


MALFORMED = [  # (export, what is skipped, its count in the report, the error with --strict)
    (with_chat_change(lambda chat, message: message.pop("type")), "malformed (no type)", "the message has no type"),
    (
        with_chat_change(lambda chat, message: (message.pop("date_unixtime"), message.pop("date"))),
        "malformed (bad date)",
        "has no date",
    ),
    (
        with_chat_change(lambda chat, message: message.update(date_unixtime="yesterday")),
        "malformed (bad date)",
        "not a unix time",
    ),
    (
        with_chat_change(lambda chat, message: message.update(date_unixtime=-5)),
        "malformed (bad date)",
        "not a plausible unix time",
    ),
    (
        with_chat_change(lambda chat, message: (message.pop("date_unixtime"), message.update(date="noon"))),
        "malformed (bad date)",
        "not an ISO date",
    ),
    (
        with_chat_change(lambda chat, message: message.update(date_unixtime="4102444800")),  # 2100
        "malformed (date after today)",
        "date 4102444800 is after today",
    ),
    (
        with_chat_change(lambda chat, message: message.update(text=5)),
        "malformed (bad text)",
        "text must be a string or a list",
    ),
    (
        with_chat_change(lambda chat, message: message.update(text=[{"type": "bold"}])),
        "malformed (bad text)",
        "text parts must be",
    ),
    (
        with_chat_change(lambda chat, message: message.update(from_id=[2])),
        "malformed (bad author)",
        "is not a Telegram id",
    ),
    (
        with_chat_change(lambda chat, message: message.update({"from": 5})),
        "malformed (bad author)",
        "from must be a name",
    ),
    (
        with_chat_change(lambda chat, message: chat["messages"].__setitem__(0, 7)),
        "malformed (not an object)",
        "a message must be an object",
    ),
]
MALFORMED_CHATS = [
    (
        with_chat_change(lambda chat, message: chat.pop("messages")),
        "malformed (chat without messages)",
        "the chat has no list of messages",
    ),
    (
        with_chat_change(lambda chat, message: chat.update(messages={})),
        "malformed (chat without messages)",
        "the chat has no list of messages",
    ),
    (with_chat_change(lambda chat, message: chat.pop("type")), "malformed (chat without type)", "no type"),
    (
        with_chat_change(lambda chat, message: chat.update(name=5)),
        "malformed (chat name not a string)",
        "chat name must be a string",
    ),
    (with_chat_change(lambda chat, message: chat.clear()), "malformed (chat without messages)", "no list"),
    (
        with_change(lambda data: data["chats"]["list"].append(1)),
        "malformed (chat not an object)",
        "a chat must be an object",
    ),
]


@pytest.mark.parametrize("data, reason, problem", MALFORMED)
def test_a_malformed_message_is_skipped_and_counted_not_the_export(tmp_path, data, reason, problem):
    sessions, report = convert(tmp_path, data)
    assert dialogue(sessions)[0] == HELLO  # the first chat is whole
    assert report.messages_skipped[reason] == 1
    assert sum(report.messages_skipped.values()) == 1 and report.messages_kept == 4
    assert f"skipped: {reason} 1" in report.summary()
    assert len(report.warnings) == 1 and problem in report.warnings[0] and "--strict" in report.warnings[0]
    with pytest.raises(
        DataError, match=f"^{write(tmp_path, data)}: chats.list\\[1\\].messages\\[0\\]: .*{re.escape(problem)}"
    ):
        load_sessions(tmp_path / "result.json", ExportOptions(strict=True))


@pytest.mark.parametrize("data, reason, problem", MALFORMED_CHATS)
def test_a_malformed_chat_is_skipped_and_counted_not_the_export(tmp_path, data, reason, problem):
    sessions, report = convert(tmp_path, data)
    assert dialogue(sessions) == [HELLO]
    assert report.chats_skipped == {reason: 1}
    assert len(report.warnings) == 1 and problem in report.warnings[0]
    with pytest.raises(DataError, match=f"^{write(tmp_path, data)}: chats.list\\[1\\]: .*{re.escape(problem)}"):
        load_sessions(tmp_path / "result.json", ExportOptions(strict=True))


def test_every_kind_of_malformed_message_is_warned_about_once(tmp_path):
    messages = talk((BOB, "hi"), (ME, "hey"), (BOB, "a"), (BOB, "b"), (ME, "c"))
    for index in (2, 3):
        messages[index]["text"] = 5
    messages[4]["date_unixtime"] = "soon"
    _, report = convert(tmp_path, export(chat(messages)))
    assert report.messages_skipped == {"malformed (bad text)": 2, "malformed (bad date)": 1}
    assert len(report.warnings) == 2


def test_a_message_from_the_future_does_not_move_the_months_cutoff(tmp_path):
    messages = (
        talk((BOB, "old"), (ME, "a"), start=T0 - 40 * 30 * DAY)
        + talk((BOB, "hi"), (ME, "hey"))
        + talk((BOB, "from 2100"), (ME, "!"), start=4102444800)
    )
    sessions, report = convert(tmp_path, export(chat(messages)), months=24)
    assert dialogue(sessions) == [HELLO]
    assert report.messages_skipped == {"malformed (date after today)": 2, "older than 24 months": 2}


def test_not_utf8_and_missing_paths_raise_data_error(tmp_path):
    path = tmp_path / "result.json"
    path.write_bytes(GOOD_RAW.replace("hey", "h\xe9").encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_sessions(path, ExportOptions())
    with pytest.raises(DataError, match="no result.json in this folder"):
        load_sessions(tmp_path / "..", ExportOptions())
    with pytest.raises(DataError, match="no such file"):
        load_sessions(tmp_path / "missing.json", ExportOptions())


# --- Property-based: generated exports convert or raise DataError, nothing else ------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
text_values = st.text(max_size=12) | st.lists(
    st.text(max_size=6)
    | st.fixed_dictionaries({"type": st.sampled_from(["bold", "link"]), "text": st.text(max_size=6)}),
    max_size=3,
)
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["message", "message", "message", "service", "unsupported"]) | json_values},
    optional={
        "date_unixtime": st.integers(0, 2**41).map(str) | st.integers(T0, T0 + 10**5) | json_values,
        "date": st.sampled_from(["2023-01-01T10:00:00", "2023-01-01T10:20:00"]) | json_values,
        "from": st.sampled_from(["Bob", "Me Myself", "Sam", None]) | json_values,
        "from_id": st.sampled_from(["user1", "user2", "user3", 1, 2, "channel5", "7"]) | json_values,
        "text": text_values | json_values,
        "forwarded_from": st.text(max_size=5),
        "via_bot": st.just("@gif"),
        "media_type": st.sampled_from(["sticker", "voice_message", "video_file"]) | json_values,
        "sticker_emoji": st.just("😂") | json_values,
        "photo": st.just(FILE),
    },
)
chats = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["Bob", "Telegram", None]) | json_values,
        "type": st.sampled_from(["personal_chat", "private_group", "public_supergroup", "saved_messages", "bot_chat"])
        | json_values,
        "id": st.sampled_from([2, 777000]) | json_values,
        "messages": st.lists(messages, max_size=8) | json_values,
    },
)
exports = st.fixed_dictionaries(
    {},
    optional={
        "personal_information": st.fixed_dictionaries({"user_id": st.sampled_from([1, "1", "user1"]) | json_values})
        | json_values,
        "chats": st.fixed_dictionaries({"list": st.lists(chats, max_size=3)}) | json_values,
        "left_chats": st.fixed_dictionaries({"list": st.lists(chats, max_size=2)}),
        "type": st.sampled_from(["personal_chat"]) | json_values,
        "messages": st.lists(messages, max_size=5) | json_values,
    },
)
options = st.builds(
    ExportOptions,
    target=st.none() | st.sampled_from(["Bob", "user2", "Sam", "Nobody"]),
    gap_minutes=st.floats(0.01, 10**4),
    months=st.integers(0, 30),
    speakers=st.sampled_from(["target", "any"]),
    keep_forwarded=st.booleans(),
    public_groups=st.booleans(),
)


def check_load(raw: str | bytes, options: ExportOptions) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "result.json"
        path.write_bytes(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass"))
        try:
            sessions, report = load_sessions(path, options)
        except DataError as error:
            assert str(error).startswith(str(path)) and "\n" not in str(error)
            return
    assert report.summary()
    for session in sessions:
        assert session.turns and all(turn.messages for turn in session.turns)
        assert all(isinstance(m, str) and m for turn in session.turns for m in turn.messages)
        if options.speakers == "target":
            assert any(turn.speaker == report.target for turn in session.turns[1:])


@settings(max_examples=150, deadline=None)
@given(exports, options)
def test_generated_exports_convert_or_raise_data_error(data, options):
    check_load(json.dumps(data, ensure_ascii=False), options)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_damaged_export_files_convert_or_raise_data_error(data):
    raw = tricky_raw_export().encode("utf-8")
    start = data.draw(st.integers(0, len(raw)))
    end = data.draw(st.integers(start, min(len(raw), start + 8)))
    check_load(raw[:start] + data.draw(st.binary(max_size=6)) + raw[end:], ExportOptions())


# --- The bundled sample --------------------------------------------------------------------------


def test_bundled_sample_end_to_end():
    raw = (SAMPLE / "result.json").read_text(encoding="utf-8")
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)  # it has Telegram's \xHH escapes, like real exports
    sessions, report = load_sessions(SAMPLE, ExportOptions())
    assert (report.target, report.target_how) == (
        "Alexander Smirnov",
        "the export's owner, from personal_information.user_id",
    )
    assert report.chats_read == {
        "personal_chat": 4,
        "private_group": 1,
        "private_supergroup": 2,
        "saved_messages": 1,
        "bot_chat": 1,
        "public_channel": 1,
        "public_supergroup": 1,
    }
    assert report.chats_kept == {"personal_chat": 3, "private_group": 1, "private_supergroup": 2}
    assert report.chats_skipped == {
        "saved_messages": 1,
        "bot_chat": 1,
        "public_channel": 1,
        "Telegram service notifications": 1,
        "public_supergroup (see --public-groups)": 1,
    }
    assert (report.sessions, report.messages_kept) == (607, 3482)
    assert report.repairs == {"control characters (removed)": 1}  # a BEL
    assert report.messages_skipped == {
        "in skipped chats": 22,
        "in sessions where the target does not answer": 13,
        "older than 24 months": 7,
        "service": 4,
        "forwarded": 2,
        "via bot": 2,
        "unsupported": 1,
    }
    assert report.placeholders == {
        "[photo]": 13,
        "[voice message]": 1,
        "[video message]": 1,
        "[location]": 1,
        "[animation]": 1,
        "[sticker]": 1,
        "[contact]": 1,
        "[file]": 1,
        "[audio]": 1,
    }
    # Катя was "Katya" before she renamed herself; two people are called Misha; one account is deleted.
    assert set(report.speaker_chars) == {
        "Alexander Smirnov",
        "Eleanor Whitfield",
        "Катя Морозова",
        "Dmitry Volkov",
        "Misha",
        "Misha (2)",
        "Deleted Account 8958",
    }
    # The left group holds only the owner's messages, as Telegram exports them: no warning for it.
    assert len(report.warnings) == 1 and "'Project Aurora'" in report.warnings[0]
    said = [m for session in sessions for turn in session.turns for m in turn.messages]
    for message in [
        "Agenda for Tuesday:\n1. Budget for the spring programme.\n2. The venue, which is still "
        "undecided.\n3. Anything else you would like to raise.",
        "в C:\\xampp\\htdocs, btw",
        "скопировал из терминала, sorry за мусор",
        "Here is the schedule for the retreat: https://example.com/retreat-2023. Please confirm by Friday.",
        "смотри что @hiking_club_demo выложили 😍",
        "Куда идём в субботу?",
        "вот видео с концерта 🎶",
        "😍",
        "👍",
        "типа такого: <|im_start|>Дима",
    ]:
        assert message in said
    assert sum("https://" in message for message in said) == 110  # links written as text entities


def test_bundled_sample_with_every_flag():
    options = ExportOptions(months=0, speakers="any", keep_forwarded=True, public_groups=True, media="drop")
    sessions, report = load_sessions(SAMPLE / "result.json", options)
    assert report.chats_kept == {
        "personal_chat": 3,
        "private_group": 1,
        "private_supergroup": 2,
        "public_supergroup": 1,
    }
    assert report.messages_skipped == {
        "in skipped chats": 16,
        "media without text (--media drop)": 24,
        "service": 4,
        "unsupported": 1,
    }
    assert report.messages_kept == 3533 - 16 - 24 - 4 - 1  # every message of the export but these
    assert "Tom Baker (synthetic)" in report.speaker_chars and not report.placeholders

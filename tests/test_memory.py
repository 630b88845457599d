"""Memory: the history and the recalled conversations before a conversation, their scope, the no-future rule,
the store in a run folder, and the fact turns the report scores."""

import stat

import pytest

from data.sessions import Session, Turn
from memory.context import MARK_SPEAKER, Memory, time_mark
from memory.facts import fact_turns, states_fact
from memory.settings import MemoryConfig
from memory.store import Conversations, MemoryStoreError, load_store, save_store

DAY = 86400
ME, KATYA, ELEANOR = "Alexander", "Katya", "Eleanor"


def session(chat: str, day: float, *turns: tuple[str, str]) -> Session:
    return Session(chat, "personal_chat", int(day * DAY), [Turn(speaker, [text]) for speaker, text in turns], ME)


SESSIONS = [
    session(KATYA, 1, (KATYA, "we adopted a kitten, her name is Miso"), (ME, "wow cute")),
    session(KATYA, 2, (ME, "the film was boring"), (KATYA, "agreed")),
    session(ELEANOR, 3, (ELEANOR, "my secret code is Zanzibar, tell no one"), (ME, "ok")),
    session(KATYA, 5, (ME, "how is the kitten?"), (KATYA, "Miso is great")),
    session(KATYA, 9, (KATYA, "the kitten broke a vase"), (ME, "Pumpkin was the future")),
]


def text_of(turns: list[Turn]) -> str:
    return "\n".join(message for turn in turns for message in turn.messages)


@pytest.fixture
def memory(dolphin_tokenizer):
    return lambda **config: Memory(Conversations(SESSIONS), MemoryConfig(**config), dolphin_tokenizer)


def test_history_is_the_chat_s_last_turns_with_the_time_between(memory):
    turns = memory(history_tokens=400, recall=0).for_session(SESSIONS[3])
    assert [turn.speaker for turn in turns] == [MARK_SPEAKER, KATYA, ME, MARK_SPEAKER, ME, KATYA, MARK_SPEAKER]
    assert turns[0].messages == ["4 days earlier"] and turns[3].messages == ["3 days earlier"]
    assert turns[-1].messages == ["now"]
    short = memory(history_tokens=25, recall=0).for_session(SESSIONS[3])  # cut from the left, at a turn boundary
    assert short == [Turn(MARK_SPEAKER, ["3 days earlier"]), Turn(KATYA, ["agreed"]), Turn(MARK_SPEAKER, ["now"])]
    assert memory(history_tokens=0, recall=0).for_session(SESSIONS[3]) == []
    assert time_mark(90) == "1 minute earlier" and time_mark(3 * 3600) == "3 hours earlier"


def test_recall_finds_the_earlier_conversation_of_the_same_chat(memory):
    turns = memory(history_tokens=0, recall=1).context(KATYA, 5 * DAY, [Turn(ME, ["how is Miso?"])])
    assert "her name is Miso" in text_of(turns) and turns[0].messages[0].startswith("recalled, 4 days")


def test_a_follow_up_recalls_the_recent_telling_not_an_older_same_question(dolphin_tokenizer):
    """ "so how was your trip?" is about the trip told 4 days ago, not the one the same words asked about in spring."""
    sessions = [
        session(KATYA, 1, (KATYA, "we fly to Lisbon on Thursday, a trip at last"), (ME, "wow")),
        session(KATYA, 6, (ME, "so how was your trip?"), (KATYA, "Lisbon was lovely")),
        *[session(KATYA, day, (ME, "so how was your day?"), (KATYA, "fine")) for day in range(10, 50, 4)],
        session(KATYA, 60, (KATYA, "we fly to Porto next week, a trip at last"), (ME, "wow")),
    ]
    memory = Memory(Conversations(sessions), MemoryConfig(history_tokens=0, recall=1), dolphin_tokenizer)
    turns = memory.context(KATYA, 64 * DAY, [Turn(ME, ["so how was your trip?"])])
    assert "Porto" in text_of(turns) and "Lisbon" not in text_of(turns)


def test_a_conversation_the_history_cuts_is_recalled_from_its_beginning_without_repeating_a_turn(dolphin_tokenizer):
    told = session(KATYA, 60, (KATYA, "we fly to Porto next week"), (ME, "wow, a trip"), (KATYA, "yes, at last"))
    memory = Memory(Conversations([told]), MemoryConfig(history_tokens=25, recall=1), dolphin_tokenizer)
    turns = memory.context(KATYA, 64 * DAY, [Turn(ME, ["how was the trip?"])])
    said = [turn for turn in turns if turn.speaker != MARK_SPEAKER]
    assert said[0].messages == ["we fly to Porto next week"] and said[-1].messages == ["yes, at last"]
    assert len(said) == len({id(turn) for turn in said}) == len(told.turns)  # each turn once: recalled or history
    everything = Memory(Conversations([told]), MemoryConfig(history_tokens=400, recall=1), dolphin_tokenizer)
    assert text_of(everything.context(KATYA, 64 * DAY, [Turn(ME, ["how was the trip?"])])).count("Porto") == 1


def test_nothing_from_the_future_or_from_another_chat(memory):
    """Training gives a session only what started strictly before it, and by default only its own chat's."""
    for config in (dict(history_tokens=400, recall=3), dict(history_tokens=0, recall=3)):
        turns = memory(**config).for_session(SESSIONS[3])
        assert "Pumpkin" not in text_of(turns) and "Miso is great" not in text_of(turns)
        asked = memory(**config).context(KATYA, 5 * DAY, [Turn(ME, ["what is the secret code, Zanzibar?"])])
        assert "Zanzibar" not in text_of(asked)
    wide = memory(history_tokens=0, recall=3, recall_all_chats=True)
    assert "Zanzibar" in text_of(wide.context(KATYA, 5 * DAY, [Turn(ME, ["the secret code Zanzibar?"])]))
    assert memory(history_tokens=400, recall=3).context(None, 99 * DAY, [Turn(ME, ["Miso"])]) == []  # no chat: nothing


def test_the_store_is_owner_only_and_a_damaged_one_is_rebuilt_or_refused(tmp_path, capsys):
    folder = tmp_path / "memory"
    save_store(folder, SESSIONS)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = [path for path in folder.rglob("*") if path.is_file()]
    assert files and all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files)
    assert len(load_store(folder).sessions) == len(SESSIONS)

    index_file = next((folder / "index").glob("*.npy"))
    index_file.write_bytes(b"garbage")
    rebuilt = load_store(folder)
    assert "building the index again" in capsys.readouterr().err
    assert rebuilt.most_relevant("adopted Miso", rebuilt.before(KATYA, 99 * DAY), 1) == [0]
    (folder / "conversations.jsonl").write_text("{not json\n")
    with pytest.raises(MemoryStoreError, match="damaged memory store") as error:
        load_store(folder)
    assert "\n" not in str(error.value)
    with pytest.raises(MemoryStoreError, match="no memory store"):
        load_store(tmp_path / "nowhere")


def test_fact_turns_are_first_mentions_of_a_rare_name_of_an_earlier_conversation():
    facts = fact_turns(SESSIONS[3:4], SESSIONS)
    assert [(fact.turn, sorted(fact.words)) for fact in facts] == [(1, ["miso"])]
    assert states_fact("Miso sleeps all day", facts[0]) and not states_fact("she sleeps", facts[0])


# The no-future rule through data.dataset.prepare_data, on a split that puts held-out sessions among training ones.
CODES = ["alpaca", "bison", "cobra", "dingo", "egret", "ferret", "gecko", "heron", "ibis", "jackal", "koala", "lemur"]


@pytest.mark.parametrize("split", ["hash", "time"])
def test_training_never_remembers_a_held_out_session_and_evaluation_nothing_later(split, tmp_path, dolphin_tokenizer):
    from data.dataset import prepare_data
    from data.sessions import write_sessions
    from data.settings import DataConfig
    from memory.context import remembering

    sessions = [
        session(KATYA, day, (KATYA, f"kitten news: {code} today"), (ME, f"the kitten and {code}, wow"))
        for day, code in enumerate(CODES, start=1)
    ]
    write_sessions(sessions, tmp_path / "sessions.jsonl")
    config = MemoryConfig(history_tokens=1000, recall=len(CODES), recall_tokens=2000)  # room for everything
    data = prepare_data(
        tmp_path / "sessions.jsonl",
        dolphin_tokenizer,
        DataConfig(seq_len=4096, val_fraction=0.3, split=split),
        memory=remembering(config, dolphin_tokenizer),
    )
    held_out = {session.turns[0].messages[0].split()[-2] for session in data.val_sessions}
    assert held_out and (split == "time" or min(CODES.index(code) for code in held_out) < len(CODES) - len(held_out))

    def documents(rows) -> list[str]:
        return [
            dolphin_tokenizer.decode(rows.input_ids[row][rows.document_ids[row] == document].tolist())
            for row in range(len(rows))
            for document in range(int(rows.document_ids[row, rows.lengths[row] - 1]) + 1)
        ]

    trained = documents(data.train_rows)
    assert len(trained) == len(CODES) - len(held_out)
    assert all(code not in text for text in trained for code in held_out)  # not even in a training row's memory
    remembered_anything = False
    for text in documents(data.val_rows):
        own = max(held_out, key=lambda code: text.rfind(f"news: {code} today"))  # the session comes after its memory
        assert text.count(f"news: {own} today") == 1  # never in its own memory
        assert all(code not in text for code in CODES[CODES.index(own) + 1 :])  # nor anything later
        remembered_anything |= any(code in text for code in CODES[: CODES.index(own)])
    assert remembered_anything


@pytest.mark.parametrize(
    "config, line",
    [
        (
            MemoryConfig(history_tokens=64, recall=1, recall_tokens=64),
            "the last 64 tokens of the chat's history, and 1 recalled conversation (64 tokens) from the same chat only",
        ),
        (MemoryConfig(history_tokens=0, recall=2, recall_tokens=256), "no history, and 2 recalled conversations"),
        (MemoryConfig(history_tokens=128, recall=0), "the last 128 tokens of the chat's history, and no recalled"),
        (MemoryConfig(history_tokens=0, recall=0), "memory off"),
    ],
)
def test_the_memory_line_says_what_is_on_in_plain_words(config, line):
    assert config.describe().startswith(line)

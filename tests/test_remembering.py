"""The report's memory section: its rule for turns "in memory", and its losses split by that rule in one pass,
equal to each group's loss measured on its own."""

from types import SimpleNamespace

import pytest
import torch

from data.chatml import split_to_fit
from data.packing import pack
from data.sessions import Session, Turn, format_body
from fidelity.markdown import memory_json
from fidelity.measure import speaker_losses
from fidelity.plan import EvalSettings
from fidelity.remembering import MemoryFigures, chance, first_match, in_memory, measure_memory, memory_phrases
from memory.context import MARK_SPEAKER, Memory
from memory.settings import MemoryConfig
from memory.store import Conversations
from model.generation import SamplingConfig
from model.loss import IGNORE_INDEX, chunked_cross_entropy

DAY = 86400
ME, KATYA = "Alexander", "Katya"
SEQ_LEN = 256
CONFIG = MemoryConfig(history_tokens=200, recall=2, recall_tokens=200)


def session(day: int, *turns: tuple[str, str]) -> Session:
    return Session(KATYA, "personal_chat", day * DAY, [Turn(speaker, [text]) for speaker, text in turns], ME)


TRAIN = [
    session(1, (KATYA, "we adopted a kitten, her name is Miso"), (ME, "wow so cute and tiny")),
    session(2, (ME, "the film tonight was long and boring"), (KATYA, "agreed it was far too long")),
]
# He says again what he said before (in memory); she says something new that names the kitten (a fact turn).
HELD_OUT = [session(5, (ME, "the film tonight was long and boring"), (KATYA, "Miso sleeps on my keyboard all day"))]


def test_a_turn_is_in_memory_when_half_its_phrases_stand_there():
    known = memory_phrases(
        [Turn(MARK_SPEAKER, ["3 days earlier"]), Turn(ME, ["the film tonight was long and boring", "ok"])]
    )
    assert in_memory(Turn(ME, ["The film tonight was long, and boring!"]), known)  # case and punctuation aside
    assert in_memory(Turn(ME, ["the film tonight was long and very dull"]), known)  # 3 of its 6 word 4-grams
    assert not in_memory(Turn(ME, ["the film tonight was fun and very dull"]), known)
    assert in_memory(Turn(ME, ["ok"]), known) and in_memory(Turn(ME, ["film tonight"]), known)  # short: whole
    assert not in_memory(Turn(ME, ["3 days earlier"]), known)  # the marks are no one's words
    assert not in_memory(Turn(ME, ["🙂"]), known)  # no words, nothing to copy


def reference_loss(model, tokenizer, speaker: str, context: list[Turn], only: slice | None = None) -> float:
    """The speaker's loss on the held-out session, measured on its own (as the report did before one pass); on
    the `only` slice of their tokens, where given."""
    rows = pack(
        split_to_fit(HELD_OUT[0].turns, tokenizer, SEQ_LEN, trained_speakers={speaker}, context=context)[0], 256
    )
    arrays = [torch.from_numpy(array).long() for array in (rows.input_ids, rows.position_ids, rows.document_ids)]
    labels = torch.from_numpy(rows.labels).long()
    if only is not None:
        flat = labels.view(-1)
        counted = (flat != IGNORE_INDEX).nonzero().flatten()
        flat[[place for place in counted.tolist() if place not in counted[only].tolist()]] = IGNORE_INDEX
    hidden = model.hidden_states(arrays[0], position_ids=arrays[1], document_ids=arrays[2])
    return chunked_cross_entropy(hidden, model.lm_head, labels).item() / int((labels != IGNORE_INDEX).sum())


@torch.no_grad()
def test_one_pass_gives_each_group_of_turns_its_own_loss(dolphin_tokenizer, monkeypatch):
    from fidelity import remembering
    from tests.helpers import random_model, tiny_config

    # Writing turns is the report's own (tests/test_report.py); here the model states the fact with memory only.
    caps_given = []
    monkeypatch.setattr(
        remembering,
        "_stated",
        lambda model, tok, facts, memories, settings, device, caps: (
            caps_given.append(caps)
            or {setting: [bool(c) * 3 for c in contexts] for setting, contexts in memories.items()}
        ),
    )
    model = random_model(tiny_config(vocab_size=32002, hidden_size=32, intermediate_size=64))
    data = SimpleNamespace(train_sessions=TRAIN, val_sessions=HELD_OUT, report=SimpleNamespace(seq_len=SEQ_LEN))
    settings = EvalSettings(contexts=1, sampling=SamplingConfig(max_new_tokens=4), context_tokens=256, fact_samples=3)
    speakers = [ME, KATYA, "Eleanor"]  # she has no held-out turn: left out
    figures = measure_memory(
        model, dolphin_tokenizer, data, speakers, CONFIG, settings, torch.device("cpu"), caps={KATYA: 5}
    )
    assert caps_given == [{KATYA: 5}]  # the report's lengths, to write the fact turns without and with memory

    memory = Memory(Conversations(TRAIN + HELD_OUT), CONFIG, dolphin_tokenizer).for_session(HELD_OUT[0])
    assert "the film tonight was long and boring" in [message for turn in memory for message in turn.messages]
    for speaker in (ME, KATYA):
        for setting, context in (("without", []), ("with", memory)):
            expected = reference_loss(model, dolphin_tokenizer, speaker, context)
            assert figures.loss[speaker][setting] == pytest.approx(expected, rel=1e-5), (speaker, setting)
    assert figures.in_memory == {ME: 1.0, KATYA: 0.0} and list(figures.loss) == [ME, KATYA]
    # The pass without memory is the tuned model's held-out loss, so the report does not run it twice.
    loss, tokens = speaker_losses(model, dolphin_tokenizer, HELD_OUT, speakers, SEQ_LEN, 4, torch.device("cpu"))
    assert figures.tokens == tokens and tokens["Eleanor"] == 0 and tokens[KATYA] > 0
    assert figures.without_memory()[0] == pytest.approx(loss, rel=1e-5)
    assert figures.new_loss[ME] is None and figures.new_loss[KATYA] == figures.loss[KATYA]
    assert figures.fact_turns == 1 and figures.fact_speakers == {KATYA: 1} and figures.fact_turns_in_memory == 0
    assert figures.facts_remembered == 1  # her kitten's name, from the first conversation
    assert figures.fact_loss == figures.fact_new_loss == figures.loss[KATYA]
    # The kitten's name opens her message, after the body's first token (its mark of a message): those tokens,
    # scored apart, and still in her turn's loss.
    name = dolphin_tokenizer.encode("Miso", special=False)
    body = dolphin_tokenizer.encode(format_body(HELD_OUT[0].turns[1].messages), special=False)
    assert body[1 : 1 + len(name)] == name
    for setting, context in (("without", []), ("with", memory)):
        expected = reference_loss(model, dolphin_tokenizer, KATYA, context, only=slice(1, 1 + len(name)))
        assert figures.name_loss[setting] == pytest.approx(expected, rel=1e-5), setting
    assert figures.fact_recall == figures.fact_new_recall == {"without": 0.0, "with": 1.0}
    in_json = memory_json(figures)  # report.json keeps the share and the gain beside the counts they come from
    assert in_json["fact_recall"] == {"without": 0.0, "with": 1.0} and in_json["fact_stated"] == figures.fact_stated
    assert in_json["recall_gain"] == {"gain": 1.0, "low": 1.0, "high": 1.0}

    lines = figures.summary()
    assert f"{ME}: loss" in lines[1] and "– on the 0% of turns not in memory" in lines[1]
    assert "on the 100% of turns not in memory" in lines[2] and "the 1 fact turns not in memory: loss" in lines[-1]
    assert figures.fact_stated == {"without": [0], "with": [3]} and figures.fact_samples == 3
    assert lines[-2].startswith("  the fact's name, given the turn's words before it: loss ")
    assert lines[-3].endswith(
        "state the fact in 0 of 3 written turns (at 0 of 1 moments) → 3 of 3 written turns (at 1 of 1 moments), "
        "+100.0 points with memory (95% +100.0 to +100.0, resampling the 1 moments): clearly higher with memory; "
        "the memory holds the fact at 1 of 1"
    )
    markdown = "\n".join(figures.markdown())
    assert "| Alexander | 100% |" in markdown and "– | – |" in markdown and "| loss, not in memory |" in markdown
    assert "| the fact's name, given the turn's words before it: loss (a token's chance) |" in markdown


def test_the_section_says_when_no_fact_turn_is_held_out():
    loss = {"without": 2.0, "with": 1.0}
    figures = MemoryFigures({"recall": 2}, {ME: loss}, {ME: 0.5}, {ME: loss}, 0, {}, {})
    assert figures.summary()[1] == f"  {ME}: loss 2.000 → 1.000; 2.000 → 1.000 on the 50% of turns not in memory"
    assert figures.markdown()[-1] == "No held-out turn takes up a fact of an earlier conversation."


def test_fact_recall_is_clearly_higher_only_where_the_gain_holds_over_the_moments():
    loss = {"without": 2.0, "with": 1.0}

    def figures(without: list[int], with_memory: list[int]) -> MemoryFigures:
        stated = {"without": without, "with": with_memory}
        return MemoryFigures(
            {"recall": 2}, {ME: loss}, {ME: 0.5}, {ME: loss}, len(without), {ME: len(without)}, loss,
            fact_samples=8, fact_stated=stated,
        )  # fmt: skip

    nothing = [0] * 20
    # The same 16 of 160 turns: spread over 8 moments the gain is clear; at 2 moments it may be those moments'
    # luck, and resampling the moments says so (a moment's turns are not 8 independent draws).
    spread, at_two = figures(nothing, [2] * 8 + [0] * 12), figures(nothing, [8, 8] + [0] * 18)
    assert spread.recall_clearly_higher() and not at_two.recall_clearly_higher()
    gain, low, high = spread.recall_gain()
    assert gain == pytest.approx(0.1) and 0 < low < gain < high
    assert at_two.recall_gain()[1] == 0.0
    assert "+10.0 points with memory" in spread.summary()[2] and "clearly higher with memory" in spread.summary()[2]
    assert "not clearly higher with memory" in at_two.summary()[2]
    # Memory that takes the fact away is not a gain, however clear.
    assert not figures([2] * 8 + [0] * 12, nothing).recall_clearly_higher()
    assert (
        "| turns written at the fact turns' moments (8 a moment) that state the fact | 0 of 160 written turns "
        "(at 0 of 20 moments) | 16 of 160 written turns (at 2 of 20 moments) |" in at_two.markdown()
    )
    assert MemoryFigures({}, {}, {}, {}, 20, {}, loss).recall_clearly_higher() is None  # no turn written


def test_a_fact_name_is_found_where_it_first_stands_in_its_turn():
    assert first_match([5, 1, 2, 3, 1, 2], [[1, 2], [9]]) == (1, 3)
    assert first_match([5, 1, 2, 3], [[1], [1, 2]]) == (1, 3)  # the longest form at the earliest place
    assert first_match([5, 6], [[1, 2], []]) is None


def test_a_chance_reads_as_a_share_or_as_one_in_so_many():
    assert (chance(0.5), chance(7.25), chance(5.81)) == ("61%", "1 in 1,400", "1 in 330")


def test_each_fact_moment_is_written_several_times_each_cut_at_its_speaker_s_length(dolphin_tokenizer, monkeypatch):
    from fidelity import measure, remembering
    from memory.facts import fact_turns
    from tests.helpers import random_model, tiny_config

    asked, batches = [], []

    def writes_the_name_every_other_time(model, rows, stop_ids, device, on_step):
        first = len(asked)
        asked.extend(rows)
        batches.append(len(rows))
        said = ["Miso" if (first + index) % 2 == 0 else "ok" for index in range(len(rows))]  # 1st, 3rd, 5th turns
        return [(dolphin_tokenizer.encode(text, special=False), None) for text in said]

    monkeypatch.setattr(measure, "generate_batch", writes_the_name_every_other_time)  # as the report writes a turn
    facts = fact_turns(HELD_OUT, TRAIN + HELD_OUT)
    settings = EvalSettings(
        contexts=1, fact_samples=3, sample_batch=4, seed=5, sampling=SamplingConfig(max_new_tokens=40)
    )
    model = random_model(tiny_config(vocab_size=32002, hidden_size=32, intermediate_size=64))
    memories = {"without": [[]], "with": [HELD_OUT[0].turns[:1]]}
    stated = remembering._stated(model, dolphin_tokenizer, facts, memories, settings, torch.device("cpu"), {KATYA: 7})
    # 3 turns at the one moment under each setting, written together, at most 4 at once (so 3 and 3): turns 1,
    # 3 and 5 name Miso, so 2 of those without memory and 1 of those with it.
    assert len(facts) == 1 and stated == {"without": [2], "with": [1]} and batches == [3, 3]
    assert len({tuple(row.prompt) for row in asked[:3]}) == len({tuple(row.prompt) for row in asked[3:]}) == 1
    assert asked[0].prompt != asked[3].prompt  # the memory stands before the conversation
    assert {row.config.max_new_tokens for row in asked} == {7}
    # Turn k is sampled from its own stream, seed + k, under both settings: they differ by the memory only.
    draws = [row.random.initial_seed() for row in asked]
    assert draws == [5, 6, 7, 5, 6, 7]
    asked.clear()  # a speaker without a length of their own is cut where every turn is: at max_new_tokens
    remembering._stated(model, dolphin_tokenizer, facts, memories, settings, torch.device("cpu"), {})
    assert {row.config.max_new_tokens for row in asked} == {40}

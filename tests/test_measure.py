"""fidelity/measure.py: held-out loss per speaker as training computes it, and a turn written at every
context, batched but in the plan's order."""

from pathlib import Path

import pytest
import torch

from chat.conversation import Chat
from data.chatml import split_to_fit
from data.dataset import prepare_data
from data.packing import pack
from data.sessions import Session, Turn
from data.settings import DataConfig
from fidelity import EvaluationError
from fidelity.measure import WrittenTurn, measure, model_writer, speaker_losses
from fidelity.plan import EvalSettings, plan_evaluation
from model.generation import Generator, SamplingConfig
from tests.helpers import random_model, tiny_config
from training.loop import evaluate

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "telegram_export"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(vocab_size=32002, hidden_size=32, intermediate_size=64))


# A memory before each session, or none.
NO_MEMORY, A_MEMORY = (lambda session: []), (lambda session: [Turn("memory", [f"earlier, on day {session.start}"])])


def test_the_speakers_losses_together_are_the_loss_training_computes(model, dolphin_tokenizer):
    sessions = [
        Session(
            "chat",
            "personal_chat",
            day,
            [Turn("Anna", [f"hi {day}", "how are you?"]), Turn("Boris", ["fine"]), Turn("Anna", [f"see you at {day}"])],
        )
        for day in range(6)
    ]
    loss, tokens = speaker_losses(
        model, dolphin_tokenizer, sessions, ["Anna", "Boris"], seq_len=64, micro_batch=4, device=CPU
    )
    rows = pack([piece for session in sessions for piece in split_to_fit(session.turns, dolphin_tokenizer, 64)[0]], 64)
    expected_loss, expected_tokens = evaluate(model, rows, 4, CPU)
    assert tokens["Anna"] > tokens["Boris"] > 0 and tokens["Anna"] + tokens["Boris"] == expected_tokens
    together = (loss["Anna"] * tokens["Anna"] + loss["Boris"] * tokens["Boris"]) / expected_tokens
    assert together == pytest.approx(expected_loss, rel=1e-5)


def test_a_turn_is_written_at_every_context_in_order_and_the_model_is_left_as_it_was(model, dolphin_tokenizer):
    data = prepare_data(SAMPLE, dolphin_tokenizer, DataConfig(seq_len=256, val_fraction=0.2))
    settings = EvalSettings(speakers=2, contexts=3, sample_batch=2, seed=7)
    plan = plan_evaluation(data, settings)
    seeds = []

    def echo(contexts, context_seeds, on_step):
        seeds.append(context_seeds)
        return [WrittenTurn([f"{context.real[0]}?"], cut=False) for context in contexts]

    model.train()
    measurement = measure(model, dolphin_tokenizer, data, plan, settings, CPU, "tuned", write=echo)
    assert model.training
    for speaker in plan.speakers:
        assert measurement.replies[speaker] == [[f"{context.real[0]}?"] for context in plan.contexts[speaker]]
    # Six contexts, two at a time, shortest first: the turn at context n (in the plan's order) is sampled with
    # seed + n, whatever it is batched with.
    assert [len(batch) for batch in seeds] == [2, 2, 2] and sorted(sum(seeds, [])) == list(range(7, 13))
    everywhere = [context for speaker in plan.speakers for context in plan.contexts[speaker]]
    lengths = [everywhere[seed - 7].characters for seed in sum(seeds, [])]
    assert lengths == sorted(lengths)
    assert measurement.cut == {speaker: [False] * len(plan.contexts[speaker]) for speaker in plan.speakers}
    assert set(measurement.loss) == set(plan.speakers) and all(measurement.tokens[name] > 0 for name in plan.speakers)


def test_a_turn_as_long_as_the_context_is_refused(model, dolphin_tokenizer):
    settings = EvalSettings(context_tokens=16, sampling=SamplingConfig(max_new_tokens=16))
    with pytest.raises(EvaluationError, match=r"max_new_tokens \(16\) must be below the context \(16 tokens\)"):
        model_writer(model, dolphin_tokenizer, settings, CPU, caps={})


class FixedMemory:
    """A twin's memory (chat.recall.TwinMemory) that gives every conversation the same earlier turns."""

    def __init__(self, turns: list[Turn]):
        self.turns = turns

    def context(self, speaker, partner, started, turns, tokenizer) -> list[Turn]:
        return self.turns


@pytest.mark.parametrize("memory", [NO_MEMORY, A_MEMORY], ids=["without memory", "with memory"])
def test_the_report_writes_the_turn_sample_py_writes_at_the_same_conversation(model, dolphin_tokenizer, memory):
    """Prompt (the memory of a run that has one, then the conversation), stop tokens, sampling and the turn's
    messages are chat's (chat.conversation.Chat, sample.py's): a context written alone with seed s is the reply
    sample.py --seed s gives to the same conversation with the same memory."""
    data = prepare_data(SAMPLE, dolphin_tokenizer, DataConfig(seq_len=256, val_fraction=0.2))
    settings = EvalSettings(
        speakers=1,
        contexts=1,
        seed=11,
        context_tokens=96,
        sampling=SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=12),
    )
    context = plan_evaluation(data, settings, memory).contexts["Alexander Smirnov"][0]
    assert bool(context.memory) == (memory is A_MEMORY)
    write = model_writer(model, dolphin_tokenizer, settings, CPU, caps={context.speaker: 12})
    [report_turn] = write([context], [settings.seed], lambda: None)

    chat = Chat(
        Generator(model, max_len=96, device=CPU),
        dolphin_tokenizer,
        settings.sampling,
        context.speaker,
        "someone",
        seed=settings.seed,
        memory=FixedMemory(context.memory),
    )
    for turn in context.turns:
        chat.add(Turn(turn.speaker, list(turn.messages)))
    chat_turn = chat.reply(context.speaker, chat.prompt(context.speaker))
    assert report_turn.messages and report_turn.messages == chat_turn.messages
    assert report_turn.cut  # a random model never ends its turn

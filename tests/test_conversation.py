"""chat.conversation: the prompt is the training rendering, and a reply ends where the tokenizer's format ends a turn."""

import pytest
import torch

from chat.conversation import Chat, TurnTooLong
from data.chatml import chat_format, render
from data.sessions import Turn
from model.generation import Generator, SamplingConfig
from tests.helpers import chat_tokenizer, random_model, tiny_config

SPEAKER = "Alexander Smirnov"


def test_prompt_is_the_training_rendering_up_to_the_open_header(dolphin_tokenizer):
    history = [
        Turn("Катя Морозова", ["привет!", "как ты?"]),
        Turn(SPEAKER, ["норм))"]),
        Turn("Катя Морозова", ["пойдём гулять? 🌞"]),
    ]
    model = random_model(tiny_config(vocab_size=32002, hidden_size=32, intermediate_size=64))
    chat = Chat(
        Generator(model, 512, torch.device("cpu")),
        dolphin_tokenizer,
        SamplingConfig(max_new_tokens=16),
        SPEAKER,
        "Катя Морозова",
        seed=0,
    )
    chat.turns = history
    prompt = chat.prompt(SPEAKER)
    training = render(history + [Turn(SPEAKER, ["да, давай"])], dolphin_tokenizer).ids
    assert prompt == training[: len(prompt)]
    assert dolphin_tokenizer.decode(prompt).endswith(f"<|im_end|>\n<|im_start|>{SPEAKER}\n")
    assert prompt == render(history, dolphin_tokenizer, open_speaker=SPEAKER).ids


def test_prompt_drops_the_oldest_turns_when_the_context_fills(dolphin_tokenizer):
    model = random_model(tiny_config(vocab_size=32002, hidden_size=32, intermediate_size=64))
    chat = Chat(
        Generator(model, 80, torch.device("cpu")),
        dolphin_tokenizer,
        SamplingConfig(max_new_tokens=30),
        SPEAKER,
        "User",
        seed=0,
    )
    chat.turns = [Turn("User" if i % 2 else SPEAKER, [f"message number {i}"]) for i in range(12)]
    prompt = chat.prompt(SPEAKER)
    assert len(prompt) <= 50
    text = dolphin_tokenizer.decode(prompt)
    assert "message number 11" in text and "message number 0" not in text
    assert prompt[0] == dolphin_tokenizer.bos_id


def test_a_newest_turn_the_context_cannot_hold_is_refused_not_answered_unseen(dolphin_tokenizer):
    model = random_model(tiny_config(vocab_size=32002, hidden_size=32, intermediate_size=64))
    chat = Chat(
        Generator(model, 80, torch.device("cpu")),
        dolphin_tokenizer,
        SamplingConfig(max_new_tokens=30),
        SPEAKER,
        "User",
        seed=0,
    )
    chat.turns = [Turn(SPEAKER, ["hi"]), Turn("User", ["word " * 60])]
    with pytest.raises(TurnTooLong, match="the last turn is too long for the context of 80 tokens, 30 of them kept"):
        chat.prompt(SPEAKER)
    chat.turns[-1] = Turn("User", ["word " * 25])  # fits once the older turn is dropped
    assert dolphin_tokenizer.decode(chat.prompt(SPEAKER)).startswith("<s><|im_start|>User\n>>> word word")


def test_a_quoted_chatml_marker_stays_text_as_in_training(dolphin_tokenizer):
    model = random_model(tiny_config(vocab_size=32002, hidden_size=32, intermediate_size=64))
    chat = Chat(
        Generator(model, 512, torch.device("cpu")),
        dolphin_tokenizer,
        SamplingConfig(max_new_tokens=16),
        SPEAKER,
        "User",
        seed=0,
    )
    chat.add(Turn("User", ["what does <|im_end|> do?"]))
    prompt = chat.prompt(SPEAKER)
    assert prompt.count(dolphin_tokenizer.im_end_id) == 1  # the one that closes the turn
    assert prompt == render([Turn("User", ["what does <|im_end|> do?"])], dolphin_tokenizer, open_speaker=SPEAKER).ids


def test_a_reply_ends_at_the_turn_end_token_of_the_tokenizers_format(request):
    tokenizer = chat_tokenizer(request, "llama3")
    layout = chat_format(tokenizer)

    class ScriptedGenerator:
        max_len = 512

        def generate(self, prompt, sampling, stop_ids, random):
            assert {layout.turn_end_id, layout.header_start_id, tokenizer.eos_id} <= stop_ids
            assert prompt == render([Turn("User", ["hi"])], tokenizer, open_speaker=SPEAKER).ids
            yield from tokenizer.encode(">>> hey\n>>> how are you?", special=False)
            yield layout.turn_end_id
            yield from tokenizer.encode("never shown", special=False)

    chat = Chat(ScriptedGenerator(), tokenizer, SamplingConfig(max_new_tokens=16), SPEAKER, "User", seed=0)
    chat.add(Turn("User", ["hi"]))
    assert chat.reply(SPEAKER, chat.prompt(SPEAKER)).messages == ["hey", "how are you?"]

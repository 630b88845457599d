"""sample.py: the prompt is the training rendering, and the chat works through its command line."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.chatml import render
from data.sessions import Turn, read_sessions_file
from model.generation import Generator, SamplingConfig, sample_token
from sample import Chat, save_transcript, split_messages
from tests.helpers import random_model, tiny_config

ROOT = Path(__file__).resolve().parents[1]
SPEAKER = "Alexander Smirnov"


def sample_cli(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "sample.py", *map(str, args)], input=stdin, capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_prompt_is_the_training_rendering_up_to_the_open_header(dolphin_tokenizer):
    history = [Turn("Катя Морозова", ["привет!", "как ты?"]), Turn(SPEAKER, ["норм))"]),
               Turn("Катя Морозова", ["пойдём гулять? 🌞"])]
    model = random_model(tiny_config(vocab_size=32002, hidden_size=32, intermediate_size=64))
    chat = Chat(Generator(model, 512, torch.device("cpu")), dolphin_tokenizer, SamplingConfig(max_new_tokens=16),
                SPEAKER, "Катя Морозова", seed=0)
    chat.turns = history
    prompt = chat.prompt(SPEAKER)
    training = render(history + [Turn(SPEAKER, ["да, давай"])], dolphin_tokenizer).ids
    assert prompt == training[:len(prompt)]
    assert dolphin_tokenizer.decode(prompt).endswith(f"<|im_end|>\n<|im_start|>{SPEAKER}\n")
    assert prompt == render(history, dolphin_tokenizer, open_speaker=SPEAKER).ids


def test_prompt_drops_the_oldest_turns_when_the_context_fills(dolphin_tokenizer):
    model = random_model(tiny_config(vocab_size=32002, hidden_size=32, intermediate_size=64))
    chat = Chat(Generator(model, 80, torch.device("cpu")), dolphin_tokenizer, SamplingConfig(max_new_tokens=30),
                SPEAKER, "User", seed=0)
    chat.turns = [Turn("User" if i % 2 else SPEAKER, [f"message number {i}"]) for i in range(12)]
    prompt = chat.prompt(SPEAKER)
    assert len(prompt) <= 50
    text = dolphin_tokenizer.decode(prompt)
    assert "message number 11" in text and "message number 0" not in text
    assert prompt[0] == dolphin_tokenizer.bos_id


def test_a_quoted_chatml_marker_stays_text_as_in_training(dolphin_tokenizer):
    model = random_model(tiny_config(vocab_size=32002, hidden_size=32, intermediate_size=64))
    chat = Chat(Generator(model, 512, torch.device("cpu")), dolphin_tokenizer, SamplingConfig(max_new_tokens=16),
                SPEAKER, "User", seed=0)
    chat.add(Turn("User", ["what does <|im_end|> do?"]))
    prompt = chat.prompt(SPEAKER)
    assert prompt.count(dolphin_tokenizer.im_end_id) == 1  # the one that closes the turn
    assert prompt == render([Turn("User", ["what does <|im_end|> do?"])], dolphin_tokenizer,
                            open_speaker=SPEAKER).ids


def test_save_writes_into_an_empty_file(tmp_path):
    from types import SimpleNamespace

    empty = tmp_path / "empty.jsonl"
    empty.touch()
    save_transcript(SimpleNamespace(turns=[Turn("User", ["hi"]), Turn(SPEAKER, ["hey"])], speaker=SPEAKER), empty)
    assert [turn.speaker for turn in read_sessions_file(empty)[0].turns] == ["User", SPEAKER]


def test_split_messages_accepts_real_and_literal_newlines():
    assert split_messages("hey\\nwhat's up?\nok") == ["hey", "what's up?", "ok"]


def test_prompt_and_n_replies(tiny_run):
    out = sample_cli("--checkpoint", tiny_run, "--speaker", SPEAKER, "--prompt", r"привет\nкак дела?",
                     "-n", 2, "--seed", 1, "--max-new-tokens", 12).stdout
    assert out.count("--- reply") == 2 and out.count(f"{SPEAKER}:") == 2


def test_auto_plays_both_people(tiny_run):
    out = sample_cli("--checkpoint", tiny_run, "--speaker", SPEAKER, "--as", "Катя Морозова", "--auto", 3,
                     "--seed", 0, "--max-new-tokens", 8).stdout
    headers = [line for line in out.splitlines() if line.endswith(":")]
    assert headers == [f"{SPEAKER}:", "Катя Морозова:", f"{SPEAKER}:"]


def test_interactive_session_with_commands(tiny_run, tmp_path):
    transcript, notes = tmp_path / "chat.jsonl", tmp_path / "notes.txt"
    notes.write_text("not a sessions file")
    script = "\n".join([f"/save {transcript}", "hi", "how are you?", "", "/temp 0", "/regen", "/as Bob", "yo", "",
                        "/speaker Bob", "/as Alice", "", f"/save {tmp_path}/missing/chat.jsonl", f"/save {notes}",
                        f"/save {transcript}", "/quit"]) + "\n"
    out = sample_cli("--checkpoint", tiny_run, "--speaker", SPEAKER, "--as", "User", "--seed", 0,
                     "--max-new-tokens", 8, stdin=script).stdout
    assert "(temperature 0.0)" in out and "(you are Bob, the model is Alexander Smirnov)" in out
    assert "(nothing to save yet)" in out and out.count("(not saved: ") == 2  # and the chat went on
    assert notes.read_text() == "not a sessions file"
    session = read_sessions_file(transcript)[-1]
    speakers = [turn.speaker for turn in session.turns]
    assert speakers == ["User", SPEAKER, "Bob", SPEAKER, "Bob"]  # /regen replaced the first reply
    assert session.turns[0].messages == ["hi", "how are you?"] and session.turns[2].messages == ["yo"]


def test_history_file_continues_a_session(tiny_run, tmp_path):
    history = tmp_path / "history.jsonl"
    history.write_text('{"chat": "c", "chat_type": "personal_chat", "start": 0, '
                       '"turns": [{"speaker": "Катя Морозова", "messages": ["ты где?"]}]}\n')
    out = sample_cli("--checkpoint", tiny_run, "--speaker", SPEAKER, "--history", history,
                     "--temperature", 0, "--max-new-tokens", 8).stdout
    assert f"{SPEAKER}:" in out


def test_base_plus_adapter_gives_the_tokens_of_the_merged_model(tiny_run, tiny_checkpoint):
    common = ["--speaker", SPEAKER, "--prompt", "как дела?", "--temperature", 0, "--max-new-tokens", 24]
    with_adapter = sample_cli("--model", tiny_checkpoint, "--adapter", tiny_run / "adapter", *common).stdout
    merged = sample_cli("--model", tiny_run / "merged", *common).stdout
    base = sample_cli("--model", tiny_checkpoint, *common).stdout
    assert with_adapter == merged
    assert with_adapter != base  # the adapter changed something, so the comparison means something


def test_missing_checkpoint_is_one_error_line(tmp_path):
    result = subprocess.run([sys.executable, "sample.py", "--checkpoint", tmp_path, "--speaker", "X", "--prompt", "hi"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "run.json" in result.stderr
    assert result.stderr.count("\n") == 1


def test_you_write_as_the_speakers_most_frequent_partner_by_default(tiny_run):
    out = sample_cli("--checkpoint", tiny_run, "--speaker", SPEAKER, "--max-new-tokens", 4, stdin="/quit\n").stdout
    assert out.startswith(f"You are Катя Морозова, the model is {SPEAKER}.")


@pytest.mark.parametrize("score", [float("nan"), float("inf")])
def test_non_finite_scores_are_an_error_not_a_sample(score):
    logits = torch.tensor([0.5, score, 1.0])
    for temperature in (0.0, 0.7):  # greedy would otherwise pick an arbitrary token, sampling crash
        with pytest.raises(ValueError, match="next-token scores are NaN or infinite"):
            sample_token(logits, SamplingConfig(temperature=temperature), torch.tensor([], dtype=torch.long))


def test_a_reply_ends_at_the_turn_end_token_of_the_tokenizers_format(request):
    from data.chatml import chat_format
    from tests.helpers import chat_tokenizer

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
    assert chat.reply(SPEAKER).messages == ["hey", "how are you?"]

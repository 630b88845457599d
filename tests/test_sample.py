"""sample.py: the chat works through its command line, end to end on a tiny run."""

import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sample
from data.sessions import read_sessions_file
from model.generation import SamplingConfig, sample_token
from tests.helpers import exit_status

ROOT = Path(__file__).resolve().parents[1]
SPEAKER = "Alexander Smirnov"


def sample_cli(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "sample.py", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result


def sample_in_process(capsys, *args) -> str:
    """What sample.py prints, run in this process: no new process to start (sample_cli tests the command itself)."""
    sample.main(list(map(str, args)))
    return capsys.readouterr().out


def test_prompt_and_n_replies(tiny_run, capsys):
    out = sample_in_process(
        capsys,
        "--checkpoint",
        tiny_run,
        "--speaker",
        SPEAKER,
        "--prompt",
        r"привет\nкак дела?",
        "-n",
        2,
        "--seed",
        1,
        "--max-new-tokens",
        12,
    )
    assert out.count("--- reply") == 2 and out.count(f"{SPEAKER}:") == 2


def test_auto_plays_both_people(tiny_run, capsys):
    out = sample_in_process(
        capsys,
        "--checkpoint",
        tiny_run,
        "--speaker",
        SPEAKER,
        "--as",
        "Катя Морозова",
        "--auto",
        3,
        "--seed",
        0,
        "--max-new-tokens",
        8,
    )
    headers = [line for line in out.splitlines() if line.endswith(":")]
    assert headers == [f"{SPEAKER}:", "Катя Морозова:", f"{SPEAKER}:"]


def test_interactive_session_with_commands(tiny_run, tmp_path, capsys, monkeypatch):
    transcript, notes = tmp_path / "chat.jsonl", tmp_path / "notes.txt"
    notes.write_text("not a sessions file")
    script = (
        "\n".join(
            [
                f"/save {transcript}",
                "word " * 3000,
                "",
                "hi",
                "how are you?",
                "",
                "/temp 0",
                "/regen",
                "/as Bob",
                "/as Dmitry Volkov",
                "yo",
                "",
                "/speaker Eleanor Whitfield",
                "/as Катя Морозова",
                "",
                f"/save {tmp_path}/missing/chat.jsonl",
                f"/save {notes}",
                f"/save {transcript}",
                "/quit",
            ]
        )
        + "\n"
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(script))  # input() reads it line by line, as from a pipe
    out = sample_in_process(
        capsys, "--checkpoint", tiny_run, "--as", "Катя Морозова", "--seed", 0, "--max-new-tokens", 8
    )
    assert "(temperature 0)" in out and "(you are Dmitry Volkov, the model is Alexander Smirnov)" in out
    assert "(/as 'Bob': no one of that name" in out  # and the chat went on as Катя
    assert "(nothing to save yet)" in out and out.count("(not saved: ") == 2  # and the chat went on
    assert "(the last turn is too long for the context of " in out and "; it was not sent)" in out  # nor kept
    assert notes.read_text() == "not a sessions file"
    session = read_sessions_file(transcript)[-1]
    speakers = [turn.speaker for turn in session.turns]
    assert speakers == [
        "Катя Морозова",
        SPEAKER,
        "Dmitry Volkov",
        SPEAKER,
        "Eleanor Whitfield",
    ]  # /regen replaced the first reply
    assert session.turns[0].messages == ["hi", "how are you?"] and session.turns[2].messages == ["yo"]


def test_history_file_continues_a_session(tiny_run, tmp_path, capsys):
    history = tmp_path / "history.jsonl"
    history.write_text(
        '{"chat": "c", "chat_type": "personal_chat", "start": 0, '
        '"turns": [{"speaker": "Катя Морозова", "messages": ["ты где?"]}]}\n'
    )
    out = sample_in_process(
        capsys,
        "--checkpoint",
        tiny_run,
        "--speaker",
        SPEAKER,
        "--history",
        history,
        "--temperature",
        0,
        "--max-new-tokens",
        8,
    )
    assert f"{SPEAKER}:" in out


def test_base_plus_adapter_gives_the_tokens_of_the_merged_model(tiny_run, tiny_checkpoint, capsys):
    common = ["--speaker", SPEAKER, "--prompt", "как дела?", "--temperature", 0, "--max-new-tokens", 24]
    with_adapter = sample_in_process(capsys, "--model", tiny_checkpoint, "--adapter", tiny_run / "adapter", *common)
    merged = sample_in_process(capsys, "--model", tiny_run / "merged", *common)
    base = sample_in_process(capsys, "--model", tiny_checkpoint, *common)
    assert with_adapter == merged
    assert with_adapter != base  # the adapter changed something, so the comparison means something


def test_missing_checkpoint_is_one_error_line(tmp_path, capsys):
    assert exit_status(sample.main, ["--checkpoint", tmp_path, "--speaker", "X", "--prompt", "hi"]) == 2
    said = capsys.readouterr().err
    assert said.startswith("error: ") and "run.json" in said and said.count("\n") == 1


def test_a_prompt_too_long_for_the_context_is_one_error_line(tiny_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sample.main(
            ["--checkpoint", str(tiny_run), "--prompt", "word " * 200, "--context", "64", "--max-new-tokens", "8"]
        )
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == ""
    assert captured.err.splitlines()[-1].startswith("error: the last turn is too long for the context of 64 tokens")


def test_the_model_is_the_run_s_target_and_you_their_most_frequent_partner_by_default(tiny_run):
    result = sample_cli("--checkpoint", tiny_run, "--max-new-tokens", 4, "--threads", 1, stdin="/quit\n")
    assert result.stdout.startswith(f"You are Катя Морозова, the model is {SPEAKER}.")
    loading, loaded = [line for line in result.stderr.splitlines() if line.startswith("load")]
    assert loading.endswith(f"with the adapter {tiny_run / 'adapter'} on cpu in fp32...")
    assert loaded.startswith("loaded in ") and "computing on 1 CPU thread (--threads)" in result.stderr


@pytest.mark.parametrize("flag", ["--speaker", "--as"])
def test_a_name_the_run_never_saw_is_refused_before_loading_with_the_closest(tiny_run, capsys, flag):
    with pytest.raises(SystemExit) as exit_info:
        sample.main(["--checkpoint", str(tiny_run), flag, "alexander smirnof", "--prompt", "hi"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert (
        err == f"error: {flag} 'alexander smirnof': no one of that name in this run's conversations; "
        "did you mean 'Alexander Smirnov'?\n"
    )


@pytest.mark.parametrize("score", [float("nan"), float("inf")])
def test_non_finite_scores_are_an_error_not_a_sample(score):
    logits = torch.tensor([0.5, score, 1.0])
    for temperature in (0.0, 0.7):  # greedy would otherwise pick an arbitrary token, sampling crash
        with pytest.raises(ValueError, match="next-token scores are NaN or infinite"):
            sample_token(logits, SamplingConfig(temperature=temperature), torch.tensor([], dtype=torch.long))

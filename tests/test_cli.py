"""core.cli.program: programs piped into a reader that stops early (`| head`) end quietly, through a real closed
pipe; Ctrl-C ends one with a line, not a traceback; every program is wrapped."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import convert
import evaluate
import sample
import serve
import train
from core.cli import program

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = """
import sys
from core.cli import program

def main():
    for number in range(100_000):
        print("line", number)
    return 0

sys.exit(program(main)() if sys.argv[1] == "wrapped" else main())
"""


def run_into_closed_pipe(command: list[str]) -> subprocess.CompletedProcess:
    """Run `command` with its stdout a pipe whose reading end is closed already: its first write fails."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=60)
    finally:
        os.close(write_end)


def test_a_closed_pipe_ends_the_program_quietly_with_status_1():
    unwrapped = run_into_closed_pipe([sys.executable, "-c", PROGRAM, "plain"])
    assert "BrokenPipeError" in unwrapped.stderr  # what the pipe does to a program left alone
    wrapped = run_into_closed_pipe([sys.executable, "-c", PROGRAM, "wrapped"])
    assert (wrapped.returncode, wrapped.stderr) == (1, "")


def test_convert_preview_into_a_closed_pipe(tmp_path):
    result = run_into_closed_pipe(
        [
            sys.executable,
            str(ROOT / "convert.py"),
            str(ROOT / "examples" / "telegram_export"),
            "-o",
            str(tmp_path / "sessions.jsonl"),
            "--preview",
            "5",
        ]
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr and "Broken" not in result.stderr
    assert (tmp_path / "sessions.jsonl").exists()  # the work was done; only the printing stopped


@pytest.mark.parametrize("program", [train, sample, evaluate, serve, convert], ids=lambda m: m.__name__)
def test_every_program_main_is_wrapped(program):
    assert program.main.__wrapped__.__module__ == program.__name__


def test_ctrl_c_ends_a_program_with_one_line_and_status_130(capsys):
    def main():
        raise KeyboardInterrupt  # as Ctrl-C does, wherever the program is (loading a model, say)

    with pytest.raises(SystemExit) as stopped:
        program(main)()
    assert stopped.value.code == 130
    assert capsys.readouterr().err.strip() == "stopped (Ctrl-C)"

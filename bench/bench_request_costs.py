"""What a hostile request costs the server's CPU: the stop-string check per token and fitting a long chat's prompt,
each against the code before issue 25 (copied here), same inputs, same process.

    python bench/bench_request_costs.py

Uses Mistral's SentencePiece model with ChatML's tokens (bench/bases.py, vocabulary 32002); runs on one thread.
"""

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def held_back_before(text: str, markers: list[str]) -> int:
    return max(
        (length for marker in markers for length in range(1, len(marker)) if text.endswith(marker[:length])), default=0
    )


def fit_prompt_before(turns, tokenizer, speaker, room):
    from data.chatml import _TurnEncoder

    encoder = _TurnEncoder(tokenizer, trained_speakers=None)
    encoded = [encoder.encode(turn) for turn in turns]
    for first in range(len(encoded) + 1):
        ids = encoder.assemble(encoded[first:], open_speaker=speaker).ids
        if len(ids) <= room:
            break
    return ids[-room:], len(encoded) - first


def timed(function, *args, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        function(*args)
    return (time.perf_counter() - start) / repeat


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    import tempfile

    import torch
    from bases import chatml_tokenizer

    from data.chatml import fit_prompt
    from data.sessions import Turn
    from serving.reply import held_back

    torch.set_num_threads(1)
    text = "once upon a time " * 60
    for name, markers, tail in [
        ("4 stop strings of 1,000 characters, plain text", ["Ж" * 999 + "Ы"] * 4, text),
        ("4 stop strings of 1,000 characters, text of their letter", ["Ж" * 999 + "Ы"] * 4, "Ж" * 1200),
        ("4 stop strings of 10,000 characters, text of their letter", ["Ж" * 9999 + "Ы"] * 4, "Ж" * 12000),
    ]:
        held_back(tail, markers)  # the first call computes the markers' tables
        now, before = timed(held_back, tail, markers, repeat=20), timed(held_back_before, tail, markers, repeat=5)
        print(
            f"stop check, {name}: {now * 1e3:.2f} ms per token, before {before * 1e3:.2f} ms: {before / now:.1f}x",
            flush=True,
        )

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = chatml_tokenizer(Path(folder))
    for count in (2_000, 8_000):
        turns = [Turn(("Anna", "Bob")[index % 2], [f"word{index}"]) for index in range(count)]
        now = timed(fit_prompt, turns, tokenizer, "Anna", 4096 - 256)
        before = timed(fit_prompt_before, turns, tokenizer, "Anna", 4096 - 256)
        print(
            f"fit_prompt, {count:,} one-word turns, 3,840 tokens of room: {now:.3f} s, before {before:.1f} s: "
            f"{before / now:.0f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""Encoding speed of ChatML sessions: twin's SentencePieceTokenizer against transformers' on the same files.

    python bench/bench_tokenizer.py [--repeat 40]

Uses Mistral-7B-v0.1's SentencePiece model (from the mistral-common wheel) with Dolphin's ChatML
tokens, and the bundled sample export rendered as ChatML text, repeated. Both sides must give the
same ids; the script checks that before timing.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--repeat", type=int, default=40, help="copies of the sample's sessions to encode (default: %(default)s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="timed rounds per side; the median is reported (default: %(default)s)"
    )
    args = parser.parse_args()

    import transformers
    from bases import chatml_tokenizer

    from data.chatml import chat_format
    from data.conversion import ExportOptions
    from data.sources import load_sessions

    sessions, _ = load_sessions(ROOT / "examples" / "telegram_export", ExportOptions(speakers="any", months=0))
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        ours = chatml_tokenizer(directory)
        theirs = transformers.AutoTokenizer.from_pretrained(directory)
    texts = [chat_format(ours).conversation(session.turns) for session in sessions] * args.repeat
    megabytes = sum(len(text.encode()) for text in texts) / 1e6
    encoders = {"twin": ours.encode, "transformers": lambda text: theirs.encode(text, add_special_tokens=False)}
    assert all(encoders["twin"](t) == encoders["transformers"](t) for t in texts[: len(sessions)]), "ids differ"

    rates = {}
    for name, encode in encoders.items():
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for text in texts:
                encode(text)
            times.append(time.perf_counter() - start)
        rates[name] = megabytes / statistics.median(times)
        print(f"{name:>12}: {rates[name]:.1f} MB/s ({len(texts):,} sessions, {megabytes:.1f} MB, same ids)")
    print(f"ratio twin/transformers: {rates['twin'] / rates['transformers']:.2f}")


if __name__ == "__main__":
    main()

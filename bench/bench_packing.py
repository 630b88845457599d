"""How full twin's packed rows are, against one session per padded row, on the bundled sample.

    python bench/bench_packing.py [--seq-lens 1024,512,256]

Uses Mistral-7B-v0.1's SentencePiece model (from the mistral-common wheel) with Dolphin's ChatML
tokens, the default model's tokenizer. A row's fill is its real tokens over its length; the peer puts
each training session (or piece of one) in a row of its own, padded to the row length, as a padded batch does.
"""

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", default="1024,512,256", help="row lengths to pack into (default: %(default)s)")
    args = parser.parse_args()

    from bases import chatml_tokenizer

    from data.dataset import prepare_data
    from data.settings import DataConfig

    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = chatml_tokenizer(Path(scratch))
    for seq_len in map(int, args.seq_lens.split(",")):
        data = prepare_data(ROOT / "examples" / "telegram_export", tokenizer, DataConfig(seq_len=seq_len))
        rows = data.train_rows
        tokens = int(rows.lengths.sum())
        # A session longer than a row is cut into pieces, each a document of its own in its row.
        pieces = int(sum(rows.document_ids[row, length - 1] + 1 for row, length in enumerate(rows.lengths)))
        padded = tokens / (pieces * seq_len)
        print(
            f"seq {seq_len:>4}: {len(data.train_sessions)} training sessions in {pieces} pieces, {tokens:,} tokens;"
            f" packed {len(rows)} rows {rows.utilization:.1%} full, one piece a row {pieces} rows "
            f"{padded:.1%} full ({rows.utilization / padded:.1f}x)"
        )


if __name__ == "__main__":
    main()

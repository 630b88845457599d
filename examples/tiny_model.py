"""Build the offline demo's base model: a Mistral of a few million parameters with a small tokenizer.

    python examples/tiny_model.py --out runs/tiny-base

The tokenizer is a SentencePiece BPE model (byte fallback, like Mistral's) trained on the bundled
sample export's messages, plus Dolphin's ChatML tokens; the weights are random. The directory has the
layout of a Hugging Face checkpoint, so train.py and sample.py take it as `--model` like a real one.
"""

import argparse
import io
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.conversion import ExportOptions  # noqa: E402
from data.sources import load_sessions  # noqa: E402
from model.checkpoint import save_model  # noqa: E402
from model.sentencepiece_tokenizer import SentencePieceTokenizer  # noqa: E402
from model.transformer import ModelConfig, Transformer  # noqa: E402

SAMPLE_EXPORT = Path(__file__).resolve().parent / "telegram_export"


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path) -> SentencePieceTokenizer:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        hard_vocab_limit=False,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        character_coverage=0.9995,
        minloglevel=2,
    )
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    tokenizer = SentencePieceTokenizer.from_dir(out_dir)
    tokenizer.add_special_tokens(["<|im_end|>", "<|im_start|>"])
    return tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", type=Path, default=Path("runs/tiny-base"), help="where to write the model (default: %(default)s)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=SAMPLE_EXPORT,
        help="export whose messages train the tokenizer (default: the bundled sample)",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=1024,
        help="SentencePiece pieces before the ChatML tokens (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)")
    args = parser.parse_args()

    sessions, _ = load_sessions(args.data, ExportOptions(speakers="any", months=0))
    texts = [message for session in sessions for turn in session.turns for message in turn.messages]
    texts += [turn.speaker for session in sessions for turn in session.turns]
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = train_tokenizer(texts, args.vocab_size, Path(scratch))
        config = ModelConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            sliding_window=1024,
            rms_norm_eps=1e-5,
            eos_token_id=tokenizer.eos_id,
        )
        torch.manual_seed(args.seed)
        model = Transformer(config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" not in name:
                    param.normal_(0, 0.02)
        save_model(model, args.out, tokenizer=tokenizer)
    params = sum(p.numel() for p in model.parameters())
    print(f"tiny base model: {params / 1e6:.1f}M parameters, vocabulary {tokenizer.vocab_size}, written to {args.out}")


if __name__ == "__main__":
    main()

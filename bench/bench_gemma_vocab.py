"""Gemma 3's 262,144-token vocabulary: the memory of the loss and the LM head's gradient, and of a LoRA step.

    python bench/bench_gemma_vocab.py [--tokens 1024] [--dtype fp32] [--threads 2] [--skip-step]

1. The loss alone, at Gemma 3 270M's width (640) and 4B's (2560), in --dtype (fp32 by default: CPUs
   without AVX-512 BF16 multiply bf16 many times slower), in a fresh process each:
   twin's chunked loss (model/loss.py: 64 tokens' logits at a time, the hidden states' gradient worked
   out chunk by chunk) against the full logits and F.cross_entropy, which is what transformers computes.
   The LM head is frozen, as under LoRA; the figure is the peak resident set of forward + backward
   minus the resident set before it (hidden states and head included in neither side's figure).
2. One LoRA step (r 32 on q,k,v,o,gate, activation checkpointing, AdamW) of twin on a random model of
   Gemma 3 270M's exact shapes (bench_lora's worker: peak resident set while stepping minus after
   imports), 1 and 2 rows of 512 tokens.
The loss's figures do not depend on the depth, so at 4B's width they are that model's loss exactly;
the decoder layers' share of a 4B step is bench_lora_memory.py's business at 7B.
"""

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bases import write_random_checkpoint
from bench_lora import packed_batch, reset_peak_memory, start_worker, status_mib

from model.lora_config import LoRAConfig  # noqa: E402
from model.transformer import ModelConfig  # noqa: E402

VOCAB = 262_144
WIDTHS = {"270M": 640, "4B": 2560}
GEMMA3_270M = ModelConfig(
    model_type="gemma3_text",
    vocab_size=VOCAB,
    hidden_size=640,
    intermediate_size=2048,
    num_hidden_layers=18,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=256,
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    rope_local_theta=10_000.0,
    sliding_window=512,
    max_position_embeddings=32768,
    query_pre_attn_scalar=256,
    layer_types=tuple("full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)),
    tie_word_embeddings=True,
    bos_token_id=2,
    eos_token_id=1,
)


def loss_worker(side: str, width: int, tokens: int, dtype: torch.dtype, threads: int, connection) -> None:
    from model.loss import chunked_cross_entropy

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(width, VOCAB, bias=False, dtype=dtype).requires_grad_(False)
    head.weight.normal_(0, 0.02, generator=generator)
    hidden = torch.randn(tokens, width, generator=generator, dtype=dtype).requires_grad_()
    labels = torch.randint(0, VOCAB, (tokens,), generator=generator)
    baseline = status_mib("VmRSS")
    reset_peak_memory()
    start = time.perf_counter()
    if side == "twin":
        loss = chunked_cross_entropy(hidden, head, labels)
    else:  # transformers: the logits of every position, upcast to fp32, then the cross-entropy
        loss = F.cross_entropy(head(hidden).float(), labels, reduction="sum")
    loss.backward()
    connection.send((status_mib("VmHWM") - baseline, time.perf_counter() - start, loss.item()))


def measure_loss(side: str, width: int, tokens: int, dtype: torch.dtype, threads: int) -> tuple[float, float, float]:
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=loss_worker, args=(side, width, tokens, dtype, threads, child)
    )
    process.start()
    result = parent.recv()
    process.join()
    return result


def measure_step(checkpoint: Path, micro_batch: int, threads: int) -> tuple[float, float]:
    batch = packed_batch(VOCAB, 512, micro_batch)
    process, connection = start_worker("twin", checkpoint, torch.bfloat16, LoRAConfig(), batch, threads)
    if connection.recv() != "ready":
        raise RuntimeError("twin worker failed to start")
    connection.send("step")
    seconds, _ = connection.recv()
    connection.send("done")
    memory = connection.recv()
    process.join()
    return memory["peak"] - memory["baseline"], seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tokens", default="1024", help="comma-separated labelled tokens a step (default: %(default)s)"
    )
    parser.add_argument(
        "--dtype", choices=["fp32", "bf16"], default="fp32", help="the loss's dtype (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--skip-step", action="store_true", help="measure the loss only, not the 270M LoRA step")
    args = parser.parse_args()

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    print(f"the loss over a {VOCAB:,}-token head, {args.dtype}, forward + backward, frozen head (as under LoRA):")
    for model_name, width in WIDTHS.items():
        for tokens in [int(n) for n in args.tokens.split(",")]:
            twin_mib, twin_s, twin_loss = measure_loss("twin", width, tokens, dtype, args.threads)
            peer_mib, peer_s, peer_loss = measure_loss("peer", width, tokens, dtype, args.threads)
            print(
                f"  {model_name:>4} (hidden {width}), {tokens:>5} tokens: twin {twin_mib:7,.0f} MiB {twin_s:5.2f} s, "
                f"full logits {peer_mib:7,.0f} MiB {peer_s:5.2f} s: {peer_mib / max(twin_mib, 1):.1f}x the memory "
                f"(losses {twin_loss:.1f} / {peer_loss:.1f})",
                flush=True,
            )
    if args.skip_step:
        return
    with tempfile.TemporaryDirectory(prefix="twin-bench-gemma-") as directory:
        size = write_random_checkpoint(Path(directory), GEMMA3_270M, torch.bfloat16)
        print(
            f"\na LoRA step of twin on Gemma 3 270M's shapes ({size / 2**20:,.0f} MiB of bf16 weights), "
            "r 32 on q,k,v,o,gate, activation checkpointing, rows of 512 tokens:"
        )
        for micro_batch in (1, 2):
            mib, seconds = measure_step(Path(directory), micro_batch, args.threads)
            print(f"  micro-batch {micro_batch}: peak {mib:,.0f} MiB, step {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()

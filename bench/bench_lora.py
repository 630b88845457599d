"""A LoRA training step on CPU: twin against transformers + PEFT, same model, batch and settings.

    python bench/bench_lora.py [--dtype bf16] [--steps 8] [--warmup 1] [--micro-batch 4] [--seq-len 512]

Writes a random Mistral checkpoint (hidden 1024, 8 layers, GQA 16/4, intermediate 3584, vocab 32002)
to a temporary folder, then starts one worker process per side. Each loads the checkpoint, puts
LoRA adapters (r 32, alpha 16, dropout 0.05 on q,k,v,o,gate) on it, turns activation checkpointing
on and builds AdamW; a step is forward + backward + gradient clipping + AdamW over one micro-batch
of packed rows (several sessions per row, positions restarting at each, loss on the labelled tokens).

The parent asks the workers for steps in turn, alternating which side goes first, so load from
elsewhere on the machine falls on both alike; tokens/s is given for the median and the fastest step
after warmup (on a shared machine the fastest is the one least disturbed by others).
Memory is each worker's own: the peak resident set while stepping (the high-water mark is reset
once the model is loaded, so the loader's transient peak does not count) minus the resident set
after imports, i.e. weights + adapters + gradients + optimizer state + activations.
"""

import argparse
import functools
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bases import write_random_checkpoint  # noqa: E402

from core.flags import add_arguments, from_args  # noqa: E402
from data.chatml import RenderedSession  # noqa: E402
from data.packing import RowLoader, pack  # noqa: E402
from model.lora_config import LoRAConfig  # noqa: E402
from model.loss import IGNORE_INDEX  # noqa: E402
from model.transformer import ModelConfig  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LEARNING_RATE, GRAD_CLIP = 2e-4, 1.0
# What each side imports before its baseline is taken, so the memory figure is what training costs.
SIDE_IMPORTS = {
    "twin": ["lora", "model", "training"],
    "twin-nf4": ["lora", "model", "training"],
    "peer": ["peft", "transformers", "transformers.models.mistral.modeling_mistral"],
}
SIDE_NAMES = {"twin": "twin", "twin-nf4": "twin, NF4 base", "peer": "transformers+PEFT"}


# -- memory of this process, from /proc (Linux) ------------------------------------------------------


def status_mib(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_memory() -> None:
    """Start the resident-set high-water mark (VmHWM) again from the current resident set."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# -- inputs ----------------------------------------------------------------------------------------------


def packed_batch(vocab_size: int, seq_len: int, micro_batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """One micro-batch of packed rows of chat-like sessions: turns of a 4-token header that is not
    trained and a 5 to 60 token body that is, 1 to 8 turns per session."""
    rng = np.random.default_rng(seed)
    sessions, tokens = [], 0
    while tokens < 2 * micro_batch * seq_len:
        ids, trained = [], []
        for _ in range(rng.integers(1, 9)):
            body = int(rng.integers(5, 61))
            ids += rng.integers(3, vocab_size, 4 + body).tolist()
            trained += [False] * 4 + [True] * body
        sessions.append(RenderedSession(ids[:seq_len], trained[:seq_len]))
        tokens += len(sessions[-1])
    rows = pack(sessions, seq_len)
    return next(iter(RowLoader(rows, micro_batch, shuffle=False)))


# -- the two trainers: each returns a function that runs one step and returns its mean loss ----------


def twin_trainer(checkpoint: Path, dtype: torch.dtype, lora: LoRAConfig, batch: dict, quantize: str | None = None):
    from model.checkpoint import load_model
    from model.lora_surgery import apply_lora
    from training.loop import make_optimizer, train_step

    model = load_model(checkpoint, dtype=dtype, quantize=quantize)
    apply_lora(model, lora)
    model.activation_checkpointing = True
    model.train()
    cpu = torch.device("cpu")
    optimizer = make_optimizer(model, LEARNING_RATE, weight_decay=0.0, device=cpu)
    return lambda: train_step(model, optimizer, [batch], cpu, GRAD_CLIP)[0]


def peer_trainer(checkpoint: Path, dtype: torch.dtype, lora: LoRAConfig, batch: dict):
    import warnings

    import peft
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)  # PEFT calls names transformers 5 deprecates
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    model = transformers.MistralForCausalLM.from_pretrained(checkpoint, dtype=dtype, attn_implementation="sdpa")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = peft.get_peft_model(
        model,
        peft.LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.targets),
            task_type="CAUSAL_LM",
        ),
    )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0)
    # transformers shifts labels itself (position t learns label t + 1); ours are already shifted.
    labels = torch.cat([torch.full_like(batch["labels"][:, :1], IGNORE_INDEX), batch["labels"][:, :-1]], dim=1)

    def step() -> float:
        # Packed rows: transformers finds the sessions from the position ids restarting at 0.
        loss = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=labels, use_cache=False
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


TRAINERS = {"twin": twin_trainer, "twin-nf4": functools.partial(twin_trainer, quantize="nf4"), "peer": peer_trainer}


def worker(
    side: str, checkpoint: Path, dtype: torch.dtype, lora: LoRAConfig, batch: dict, threads: int, connection
) -> None:
    """Load, then run a step each time the parent sends "step"; on "done", send the memory figures."""
    import importlib

    torch.set_num_threads(threads)
    for module in SIDE_IMPORTS[side]:
        importlib.import_module(module)
    baseline = status_mib("VmRSS")
    step = TRAINERS[side](checkpoint, dtype, lora, batch)
    loaded = status_mib("VmHWM")  # the loader's peak
    reset_peak_memory()
    connection.send("ready")
    while connection.recv() == "step":
        start = time.perf_counter()
        loss = step()
        connection.send((time.perf_counter() - start, loss))
    connection.send({"baseline": baseline, "peak": status_mib("VmHWM"), "loaded": loaded})


def start_worker(side: str, *args):
    parent_end, child_end = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(target=worker, args=(side, *args, child_end))
    process.start()
    return process, parent_end


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The random model's shape; the defaults are the mid-sized Mistral both CPU benchmarks use."""
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size (default: %(default)s)")
    parser.add_argument("--intermediate", type=int, default=3584, help="MLP size (default: %(default)s)")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers (default: %(default)s)")
    parser.add_argument("--heads", type=int, default=16, help="query heads (default: %(default)s)")
    parser.add_argument("--kv-heads", type=int, default=4, help="key/value heads (default: %(default)s)")
    parser.add_argument("--vocab", type=int, default=32002, help="vocabulary size (default: %(default)s)")


def model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        sliding_window=4096,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=DTYPES, default="bf16", help="weights and compute (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per side (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per side first (default: %(default)s)")
    parser.add_argument("--micro-batch", type=int, default=4, help="rows per step (default: %(default)s)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per row (default: %(default)s)")
    add_model_args(parser)
    add_arguments(parser, LoRAConfig, prefix="lora_")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each side (default: %(default)s)")
    args = parser.parse_args()

    config = model_config(args)
    lora = from_args(LoRAConfig, args, prefix="lora_")
    dtype = DTYPES[args.dtype]
    batch = packed_batch(config.vocab_size, args.seq_len, args.micro_batch)
    tokens = batch["input_ids"].numel()
    trained = int((batch["labels"] != IGNORE_INDEX).sum())

    with tempfile.TemporaryDirectory(prefix="twin-bench-lora-") as directory:
        weights_mib = write_random_checkpoint(Path(directory), config, dtype) / 2**20
        params = weights_mib * 2**20 / dtype.itemsize / 1e6
        print(
            f"model: {params:.0f}M parameters ({weights_mib:.0f} MiB, {args.dtype}), hidden {config.hidden_size}, "
            f"{config.num_hidden_layers} layers, GQA {config.num_attention_heads}/{config.num_key_value_heads}, "
            f"vocab {config.vocab_size}"
        )
        print(
            f"step: {args.micro_batch} x {args.seq_len} packed tokens ({trained} trained), LoRA r={lora.r} "
            f"alpha={lora.alpha:g} dropout={lora.dropout} on {','.join(lora.targets)}, activation checkpointing, "
            f"AdamW, {args.threads} threads"
        )
        workers = {
            side: start_worker(side, Path(directory), dtype, lora, batch, args.threads) for side in ("twin", "peer")
        }
        for _, connection in workers.values():
            assert connection.recv() == "ready"
        seconds, losses = {side: [] for side in workers}, {side: [] for side in workers}
        for round_number in range(args.warmup + args.steps):
            order = list(workers) if round_number % 2 == 0 else list(workers)[::-1]
            for side in order:
                workers[side][1].send("step")
                step_seconds, loss = workers[side][1].recv()
                losses[side].append(loss)
                if round_number >= args.warmup:
                    seconds[side].append(step_seconds)
            print(
                f"  round {round_number + 1}/{args.warmup + args.steps}: "
                + ", ".join(
                    f"{SIDE_NAMES[side]} {losses[side][-1]:.4f} loss"
                    + (f" {seconds[side][-1]:.2f} s" if round_number >= args.warmup else " (warmup)")
                    for side in workers
                ),
                flush=True,
            )
        memory = {}
        for side, (process, connection) in workers.items():
            connection.send("done")
            memory[side] = connection.recv()
            process.join()

    total = {side: memory[side]["peak"] - memory[side]["baseline"] for side in workers}
    above_weights = {side: total[side] - weights_mib for side in workers}
    rows = [
        ("tokens/s (median step)", {side: tokens / statistics.median(s) for side, s in seconds.items()}, "{:,.0f}"),
        ("tokens/s (fastest step)", {side: tokens / min(s) for side, s in seconds.items()}, "{:,.0f}"),
        ("peak memory (MiB)", total, "{:,.0f}"),
        (f"  of it beyond the {weights_mib:,.0f} MiB of weights", above_weights, "{:,.0f}"),
        ("first-step loss", {side: losses[side][0] for side in workers}, "{:.4f}"),
    ]
    print(f"\n{'':40}{'twin':>12}{SIDE_NAMES['peer']:>20}{'twin/peer':>12}")
    for label, figures, form in rows:
        print(
            f"{label:40}{form.format(figures['twin']):>12}{form.format(figures['peer']):>20}"
            f"{figures['twin'] / figures['peer']:>11.2f}x"
        )


if __name__ == "__main__":
    main()

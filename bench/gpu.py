"""twin on one GPU against transformers + PEFT: a LoRA step, decoding, one FSDP2 step; and LoRA over
all the node's GPUs.

    python bench/gpu.py [--sections lora,decode,fsdp,lora-ranks] [--out bench/results/gpu-<device>.json]
    python bench/gpu.py --smoke          # the same code at a tiny size, on CPU too: checks the script
    bash bench/gpu_check.sh              # on a lent device: everything, one command (see there)

Random bf16 weights at Dolphin-2.2.1-Mistral-7B's exact shapes, built on the GPU (no download, no
checkpoint on disk), with the sessions of the bundled sample export rendered as ChatML by the
Mistral tokenizer (mistral-common's copy, or `--tokenizer DIR`); their lengths decide the packing
and the padding. Each side runs alone on the GPU in turn, and its peak memory is its own.

- **LoRA step** (r 32, alpha 16, dropout 0.05 on q,k,v,o,gate, activation checkpointing, AdamW):
  twin on packed rows (micro-batch x seq tokens; FlexAttention on CUDA), over the bf16 base and over
  its NF4 copy (QLoRA, `--quantize nf4`; its speed against bf16's); transformers + PEFT the
  upstream way, one session per row, padded to the longest of the micro-batch, sdpa; and
  transformers + PEFT on twin's packed rows through `position_ids` (flash-attention where installed,
  else sdpa with the mask transformers builds from them, which keeps sessions apart). Throughput counts real tokens
  only (no padding). MFU is the model FLOPs of forward and backward (3x forward, the usual
  convention, no recompute) over the GPU's peak dense bf16 rate; memory is PyTorch's peak allocated
  and reserved.
- **Decoding**: batch 1, greedy, a `--prompt-tokens` prompt; twin eager and `--compile`d (its decode
  step as a CUDA graph), against transformers `generate` eager and with its static cache compiled
  (reduce-overhead); tokens/s after the first token. The ceiling is reading every weight matrix once
  per token at the device's rated memory bandwidth (H200 4.8 TB/s, H100 SXM 3.35, A100 80GB 2.0,
  RTX 3090 0.94, RTX 4090 1.0; elsewhere what a large copy reaches).
- **FSDP**: `torchrun --nproc-per-node 1 train.py --fsdp` for a few steps on a smaller random model
  and the sample export, with its tokens/s and peak memory from run.json: proof of the CUDA path.
- **LoRA over ranks**: `torchrun train.py --lora`, then with `--quantize nf4`, on every GPU of the node
  (`--lora-ranks`) and on one, same model, same global batch: tokens/s and peak memory per rank, the
  frozen base and the adapters sharded with FSDP2.

Prints a markdown table per section and writes every figure to the JSON file.
"""

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bases import write_random_checkpoint  # noqa: E402

from core.run_folder import RunFolder  # noqa: E402
from data.chatml import RenderedSession, split_to_fit  # noqa: E402
from data.packing import pack  # noqa: E402
from data.sources import load_sessions  # noqa: E402
from model.lora_config import LoRAConfig  # noqa: E402
from model.loss import IGNORE_INDEX, chunked_cross_entropy  # noqa: E402
from model.transformer import FLEX_ATTENTION_DEVICES, ModelConfig, Transformer  # noqa: E402

DOLPHIN_7B = ModelConfig(
    vocab_size=32002,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    sliding_window=4096,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=32768,
)
SMOKE = ModelConfig(
    vocab_size=32002,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    sliding_window=4096,
)
# Dense bf16 tensor-core peak in TFLOP/s (no sparsity), by a part of the device name; --peak-tflops overrides.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A6000": 155.0,
    "RTX 4090": 165.2,
    "RTX 3090": 71.0,
    "L4": 121.0,
    "A10": 125.0,
}
# Memory bandwidth in TB/s as the makers give it, by a part of the device name (the first that matches;
# the H100 is the SXM part's), --bandwidth-tbs overrides; elsewhere a large copy's rate stands in.
BANDWIDTH_TBS = {
    "H200": 4.8,
    "H100 PCIe": 2.0,
    "H100": 3.35,
    "A100-SXM4-80GB": 2.0,
    "A100 80GB": 2.0,
    "A100": 1.56,
    "RTX 4090": 1.0,
    "RTX 3090": 0.94,
    "L40S": 0.86,
    "A6000": 0.77,
}
LORA = LoRAConfig(r=32, alpha=16, dropout=0.05, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"))
SAMPLE_EXPORT = REPO_ROOT / "examples" / "telegram_export"


# -- inputs ------------------------------------------------------------------------------------------------


def load_tokenizer_for_bench(path: str | None):
    """Mistral's SentencePiece tokenizer with the ChatML tokens (Dolphin's ids 32000/32001)."""
    from model.sentencepiece_tokenizer import SentencePieceTokenizer

    if path:
        tokenizer = SentencePieceTokenizer.from_dir(path)
    else:
        import importlib.resources

        model = (importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1").read_bytes()
        tokenizer = SentencePieceTokenizer(model, [], {"legacy": True}, source="mistral_common tokenizer.model.v1")
    if tokenizer.im_start_id is None:
        tokenizer.add_special_tokens(["<|im_end|>", "<|im_start|>"])
    return tokenizer


def sample_sessions(tokenizer, seq_len: int) -> list[RenderedSession]:
    """The bundled sample's sessions as ChatML, every speaker trained, cut to fit `seq_len`."""
    sessions, _ = load_sessions(SAMPLE_EXPORT)
    rendered = []
    for session in sessions:
        rendered += split_to_fit(session.turns, tokenizer, seq_len)[0]
    return rendered


class Batch(NamedTuple):
    tensors: dict[str, torch.Tensor]
    real_tokens: int  # not padding
    documents: list[int]  # lengths of the sessions in it, for the attention FLOPs


def packed_batches(sessions: list[RenderedSession], seq_len: int, micro_batch: int, steps: int) -> list[Batch]:
    rows = pack(sessions, seq_len)
    while len(rows) < steps * micro_batch:  # the sample is smaller than some benchmarks want: pack it again
        sessions = sessions + sessions
        rows = pack(sessions, seq_len)
    batches = []
    for step in range(steps):
        chosen = slice(step * micro_batch, (step + 1) * micro_batch)
        tensors = {
            name: torch.from_numpy(getattr(rows, name)[chosen]).long()
            for name in ("input_ids", "labels", "position_ids", "document_ids")
        }
        documents = []
        for positions, length in zip(rows.position_ids[chosen], rows.lengths[chosen]):
            starts = [i for i in range(length) if positions[i] == 0] + [int(length)]
            documents += [end - start for start, end in zip(starts, starts[1:])]
        batches.append(Batch(tensors, int(rows.lengths[chosen].sum()), documents))
    return batches


def padded_batches(sessions: list[RenderedSession], micro_batch: int, steps: int, pad_id: int) -> list[Batch]:
    """transformers' usual input: a session per row, right-padded to the longest in its micro-batch,
    labels unshifted (transformers shifts them) and -100 on padding and untrained tokens."""
    sessions = (sessions * math.ceil(steps * micro_batch / len(sessions)))[: steps * micro_batch]
    batches = []
    for step in range(steps):
        group = sessions[step * micro_batch : (step + 1) * micro_batch]
        width = max(len(s) for s in group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        labels = torch.full((len(group), width), -100, dtype=torch.long)
        attention = torch.zeros((len(group), width), dtype=torch.long)
        for row, session in enumerate(group):
            n = len(session)
            ids[row, :n] = torch.tensor(session.ids)
            attention[row, :n] = 1
            labels[row, :n] = torch.where(torch.tensor(session.trained), ids[row, :n], -100)
        lengths = [len(s) for s in group]
        batches.append(Batch({"input_ids": ids, "labels": labels, "attention_mask": attention}, sum(lengths), lengths))
    return batches


def packed_as_transformers(batch: Batch) -> Batch:
    """A packed twin batch in transformers' terms: labels unshifted, sessions told by `position_ids`."""
    labels = batch.tensors["labels"]
    labels = torch.cat([torch.full_like(labels[:, :1], IGNORE_INDEX), labels[:, :-1]], dim=1)
    tensors = {"input_ids": batch.tensors["input_ids"], "position_ids": batch.tensors["position_ids"], "labels": labels}
    return batch._replace(tensors=tensors)


# -- FLOPs and figures ----------------------------------------------------------------------------------


def forward_flops(config: ModelConfig, document_lengths: list[int]) -> float:
    """Matrix FLOPs of one forward pass over documents of these lengths: the weight products
    (2 x parameters touched x tokens, the LM head included) and causal attention's two products."""
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head_dim, heads, kv_heads = config.head_dim, config.num_attention_heads, config.num_key_value_heads
    per_layer = hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * inner
    weights = layers * per_layer + hidden * config.vocab_size
    tokens = sum(document_lengths)
    window = config.sliding_window or 1 << 62
    # Query i of a document attends to min(i + 1, window) keys: QK^T and AV, 2 FLOPs per multiply-add each.
    attended = sum(sum(min(i + 1, window) for i in range(n)) for n in document_lengths)
    return 2 * weights * tokens + layers * 4 * heads * head_dim * attended


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for part, value in PEAK_BF16_TFLOPS.items() if part in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def memory_figures(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return {
        "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
    }


# -- the LoRA step ---------------------------------------------------------------------------------------


def random_weights(config: ModelConfig, dtype: torch.dtype, device: torch.device, seed: int = 0) -> dict:
    """One set of random weights, shared by both sides so that their first losses agree."""
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in Transformer(config).named_parameters()}
    generator = torch.Generator(device=device).manual_seed(seed)
    return {
        name: (
            torch.ones(shape, dtype=dtype, device=device)
            if name.endswith("norm.weight")
            else torch.randn(shape, dtype=dtype, device=device, generator=generator).mul_(0.02)
        )
        for name, shape in shapes.items()
    }


def peer_model(config: ModelConfig, weights: dict, device: torch.device, dtype: torch.dtype, attention: str = "sdpa"):
    """transformers' Mistral with these weights and this `attn_implementation`."""
    import transformers

    transformers.logging.set_verbosity_error()
    hf_config = transformers.MistralConfig(**config.to_hf(dtype), attn_implementation=attention)
    with torch.device(device):
        model = transformers.MistralForCausalLM._from_config(hf_config, dtype=dtype)
    model.load_state_dict(weights, strict=False)  # the same parameter names as ours
    return model


def twin_lora_model(config: ModelConfig, weights: dict, device: torch.device, quantize: bool = False):
    """twin with LoRA, over the shared weights or (quantize) over their NF4 copies, as --quantize nf4 trains."""
    from model.lora_surgery import apply_lora
    from model.nf4 import quantize_model

    with torch.device("meta"):
        model = Transformer(config)
    model.load_state_dict(weights, assign=True)
    if quantize:
        quantize_model(model, "the random weights")
    apply_lora(model, LORA)
    model.to(device)
    model.activation_checkpointing = True
    return model.train()


def peer_lora_model(
    config: ModelConfig, weights: dict, device: torch.device, dtype: torch.dtype, attention: str = "sdpa"
):
    import peft

    model = peer_model(config, weights, device, dtype, attention)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = peft.get_peft_model(
        model,
        peft.LoraConfig(
            r=LORA.r,
            lora_alpha=LORA.alpha,
            lora_dropout=LORA.dropout,
            target_modules=list(LORA.targets),
            task_type="CAUSAL_LM",
        ),
    )
    return model.train()


def time_steps(step, batches: list[Batch], warmup: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Seconds and loss of each step after `warmup` untimed ones."""
    seconds, losses = [], []
    for index, batch in enumerate(batches):
        synchronize(device)
        start = time.perf_counter()
        loss = step(batch.tensors)
        synchronize(device)
        if index >= warmup:
            seconds.append(time.perf_counter() - start)
        losses.append(loss)
    return seconds, losses


def lora_side(
    name: str, build, step_of, batches: list[Batch], args, device: torch.device, config, peak: float | None
) -> dict:
    reset_memory(device)
    model = build()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4, fused=device.type == "cuda")

    def step(batch: dict) -> float:
        loss = step_of(model, {k: v.to(device, non_blocking=True) for k, v in batch.items()})
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    seconds, losses = time_steps(step, batches, args.warmup, device)
    timed = batches[args.warmup :]
    tokens = sum(b.real_tokens for b in timed)
    flops = 3 * sum(forward_flops(config, b.documents) for b in timed)
    figures = {
        "side": name,
        "real_tokens_per_s": tokens / sum(seconds),
        "step_seconds_median": statistics.median(seconds),
        "first_loss": losses[0],
        **memory_figures(device),
    }
    if peak:
        figures["mfu"] = flops / sum(seconds) / (peak * 1e12)
    print(f"  {name}: {figures['real_tokens_per_s']:,.0f} real tokens/s", flush=True)
    del model, optimizer, params
    reset_memory(device)
    return figures


def twin_step(model, batch: dict) -> torch.Tensor:
    labels = batch["labels"].long()
    hidden = model.hidden_states(
        batch["input_ids"], position_ids=batch["position_ids"], document_ids=batch["document_ids"]
    )
    loss_sum = chunked_cross_entropy(hidden, model.lm_head, labels)
    return loss_sum / (labels != IGNORE_INDEX).sum().clamp(min=1)


def peer_step(model, batch: dict) -> torch.Tensor:
    return model(**batch, use_cache=False).loss


def bench_lora(
    args, config: ModelConfig, sessions: list[RenderedSession], device: torch.device, dtype: torch.dtype
) -> dict:
    steps = args.warmup + args.steps
    packed = packed_batches(sessions, args.seq_len, args.micro_batch, steps)
    padded = padded_batches(sessions, args.micro_batch, steps, pad_id=0)
    weights = random_weights(config, dtype, device)
    peak = peak_tflops(device, args.peak_tflops)
    print(
        f"LoRA step: micro-batch {args.micro_batch} x {args.seq_len}, r {LORA.r}, alpha {LORA.alpha:g} on "
        f"{','.join(LORA.targets)}, checkpointing, {args.steps} timed steps after {args.warmup}",
        flush=True,
    )
    # Packed rows in transformers: flash-attention's varlen kernel where it is installed, else sdpa
    # with a mask that transformers builds from where position_ids restart.
    packed_attention = (
        "flash_attention_2" if device.type == "cuda" and importlib.util.find_spec("flash_attn") else "sdpa"
    )
    ours = "FlexAttention" if device.type in FLEX_ATTENTION_DEVICES else "SDPA per document"
    sides = [
        (f"twin, packed ({ours})", lambda: twin_lora_model(config, weights, device), twin_step, packed),
        # Its memory also counts the shared bf16 weights the others are built from; bench_lora_memory.py
        # measures QLoRA's own. Its speed against the first line is the QLoRA issue's ratio (target 0.75x).
        (
            f"twin QLoRA (NF4 base), packed ({ours})",
            lambda: twin_lora_model(config, weights, device, quantize=True),
            twin_step,
            packed,
        ),
        (
            "transformers+PEFT, padded (sdpa)",
            lambda: peer_lora_model(config, weights, device, dtype),
            peer_step,
            padded,
        ),
        (
            f"transformers+PEFT, packed ({packed_attention}, position_ids)",
            lambda: peer_lora_model(config, weights, device, dtype, packed_attention),
            peer_step,
            [packed_as_transformers(b) for b in packed],
        ),
    ]
    results = [
        lora_side(name, build, step, batches, args, device, config, peak) for name, build, step, batches in sides
    ]
    del weights
    reset_memory(device)
    return {"micro_batch": args.micro_batch, "seq_len": args.seq_len, "peak_tflops": peak, "sides": results}


# -- decoding --------------------------------------------------------------------------------------------


def copy_bandwidth(device: torch.device, gib: float) -> float:
    """Bytes per second a large device-to-device copy moves (read plus written)."""
    source = torch.empty(int(gib * 2**30) // 2, dtype=torch.bfloat16, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(5):
        target.copy_(source)
    synchronize(device)
    return 5 * 2 * source.numel() * source.element_size() / (time.perf_counter() - start)


def device_bandwidth(device: torch.device, name: str, override: float | None) -> tuple[float, str]:
    """Bytes per second that bound decoding, and where the figure comes from."""
    if override:
        return override * 1e12, "--bandwidth-tbs"
    rated = next((value for part, value in BANDWIDTH_TBS.items() if part in name), None)
    if device.type == "cuda" and rated:
        return rated * 1e12, "the maker's figure"
    return copy_bandwidth(device, 1.0 if device.type == "cuda" else 0.05), "a large copy, measured"


def decode_rate(generate, new_tokens: int, rounds: int) -> tuple[float, list[int]]:
    """Tokens/s after the first token, best of `rounds` after a warmup: the time of `new_tokens` less
    the time of one (the prompt's prefill and the first token), so that no side's prefill counts and
    tokens that reach the host in groups are timed alike. Also the tokens."""
    rates, tokens = [], []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        generate(1)
        first = time.perf_counter() - start
        start = time.perf_counter()
        tokens = generate(new_tokens)
        rates.append((new_tokens - 1) / (time.perf_counter() - start - first))
    return max(rates[1:]), tokens


def bench_decode(args, config: ModelConfig, device: torch.device, dtype: torch.dtype, name: str) -> dict:
    import transformers

    from model.generation import Generator, SamplingConfig

    transformers.logging.set_verbosity_error()
    weights = random_weights(config, dtype, device)
    with torch.device("meta"):
        twin = Transformer(config)
    twin.load_state_dict(weights, assign=True)
    twin.eval()
    peer = peer_model(config, weights, device, dtype).eval()
    peer.generation_config.pad_token_id = config.eos_token_id
    prompt = torch.randint(
        3, config.vocab_size, (args.prompt_tokens,), generator=torch.Generator().manual_seed(0)
    ).tolist()
    print(f"decoding: batch 1, greedy, {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens", flush=True)

    def twin_side(compile: bool):
        generator = Generator(twin, max_len=len(prompt) + args.new_tokens, device=device, compile=compile)

        def run(new: int) -> list[int]:
            generator.cache.truncate(0)  # prefill the whole prompt each time, as transformers does
            generator.cached_ids = []
            return list(generator.generate(prompt, SamplingConfig(temperature=0, max_new_tokens=new), set()))

        return run

    def peer_side(static: bool):
        if static:
            peer.forward = torch.compile(peer.forward, mode="reduce-overhead", fullgraph=True)
        options = {"cache_implementation": "static"} if static else {}

        def run(new: int) -> list[int]:
            output = peer.generate(
                torch.tensor([prompt], device=device),
                do_sample=False,
                max_new_tokens=new,
                min_new_tokens=new,
                **options,
            )
            return output[0, len(prompt) :].tolist()

        return run

    sides = {"twin eager": twin_side(False), "transformers generate": peer_side(False)}
    if not args.no_compile:
        sides["twin --compile"] = twin_side(True)
        sides["transformers static cache, compiled"] = peer_side(True)
    rates, tokens = {}, {}
    with torch.inference_mode():
        for side, run in sides.items():
            rates[side], tokens[side] = decode_rate(run, args.new_tokens, args.decode_rounds)
            print(f"  {side}: {rates[side]:.1f} tokens/s", flush=True)
    # Each token reads every weight matrix once (the embedding only a row of it).
    matrices = sum(w.numel() * w.element_size() for n, w in weights.items() if w.ndim == 2 and "embed" not in n)
    bandwidth, source = device_bandwidth(device, name, args.bandwidth_tbs)
    ceiling = bandwidth / matrices
    same = {side: tokens[side] == tokens["twin eager"] for side in tokens}
    del twin, peer, weights
    reset_memory(device)
    return {
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "tokens_per_s": rates,
        "bandwidth_gb_s": bandwidth / 1e9,
        "bandwidth_source": source,
        "weight_bytes": matrices,
        "ceiling_tokens_per_s": ceiling,
        "share_of_ceiling": {side: rate / ceiling for side, rate in rates.items()},
        "same_tokens_as_twin_eager": same,
        # Compiled steps that fell back from CUDA graphs (a mutated input not marked static, say).
        "cudagraph_skips": torch._dynamo.utils.counters["inductor"]["cudagraph_skips"],
    }


# -- train.py under torchrun: one FSDP2 run, and LoRA / QLoRA sharded over the GPUs ---------------------------


def torchrun_config(args) -> ModelConfig:
    return ModelConfig(
        vocab_size=32002,
        hidden_size=args.fsdp_hidden,
        intermediate_size=args.fsdp_hidden * 7 // 2,
        num_hidden_layers=args.fsdp_layers,
        num_attention_heads=max(1, args.fsdp_hidden // 128),
        num_key_value_heads=max(1, args.fsdp_hidden // 512),
        sliding_window=4096,
    )


def torchrun_train(
    args, device: torch.device, checkpoint: Path, out: Path, ranks: int, batch: int, flags: list[str]
) -> dict:
    """`train.py` under torchrun on `ranks` processes for a few steps of `batch` rows (accumulated over
    micro-batches where the ranks take fewer at once); its figures from run.json."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(ranks),
        str(REPO_ROOT / "train.py"),
        *flags,
        "--model",
        str(checkpoint),
        "--data",
        str(SAMPLE_EXPORT),
        "--out",
        str(out),
        "--seq-len",
        str(args.seq_len),
        "--micro-batch",
        str(args.micro_batch),
        "--batch",
        str(batch),
        "--max-steps",
        str(args.fsdp_steps),
        "--save-every",
        "0",
        "--eval-every",
        "0",
        "--no-eval-report",
        "--device",
        device.type,
        "--dtype",
        "bf16" if device.type == "cuda" else "fp32",
    ]
    start = time.perf_counter()
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=args.fsdp_timeout)
    except subprocess.TimeoutExpired:
        return {"error": [f"stopped after --fsdp-timeout {args.fsdp_timeout} s"]}
    if finished.returncode:
        return {"error": (finished.stderr or finished.stdout).strip().splitlines()[-5:]}
    record = RunFolder(out).read_trained_record().figures
    return {
        "ranks": ranks,
        "seconds": time.perf_counter() - start,
        "tokens_per_s": record["tokens_per_s"],
        "peak_memory_mb_per_rank": record["peak_memory_mb_per_rank"],
        "final_loss": record["final_loss"],
    }


def random_checkpoint(config: ModelConfig, directory: Path, tokenizer_dir: Path) -> Path:
    checkpoint = directory / "model"
    checkpoint.mkdir()
    write_random_checkpoint(checkpoint, config, torch.bfloat16)
    for name in os.listdir(tokenizer_dir):
        (checkpoint / name).write_bytes((tokenizer_dir / name).read_bytes())
    return checkpoint


def bench_fsdp(args, device: torch.device, tokenizer_dir: Path) -> dict:
    config = torchrun_config(args)
    with tempfile.TemporaryDirectory(prefix="twin-gpu-fsdp-") as directory:
        checkpoint = random_checkpoint(config, Path(directory), tokenizer_dir)
        print(
            f"FSDP: train.py --fsdp, 1 rank, hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
            f"{args.fsdp_steps} steps",
            flush=True,
        )
        result = torchrun_train(args, device, checkpoint, Path(directory) / "run", 1, args.micro_batch, ["--fsdp"])
    with torch.device("meta"):
        params = sum(p.numel() for p in Transformer(config).parameters())
    return {"hidden": config.hidden_size, "layers": config.num_hidden_layers, "parameters": params, **result}


def bench_lora_ranks(args, device: torch.device, tokenizer_dir: Path) -> dict:
    """LoRA and QLoRA with the base and adapters sharded over every GPU (2 CPU ranks in a smoke run),
    against the same global batch on one rank: tokens/s and peak memory per rank."""
    config = torchrun_config(args)
    most = args.lora_ranks or (torch.cuda.device_count() if device.type == "cuda" else 2)
    runs = []
    with tempfile.TemporaryDirectory(prefix="twin-gpu-lora-ranks-") as directory:
        checkpoint = random_checkpoint(config, Path(directory), tokenizer_dir)
        for quantize in (False, True):
            for ranks in sorted({1, most}):
                print(
                    f"LoRA under torchrun: {ranks} rank(s){', NF4 base' if quantize else ''}, hidden "
                    f"{config.hidden_size}, {config.num_hidden_layers} layers, {args.fsdp_steps} steps",
                    flush=True,
                )
                flags = ["--lora", "--activation-checkpointing", *(["--quantize", "nf4"] if quantize else [])]
                out = Path(directory) / f"run-{ranks}-{'nf4' if quantize else 'bf16'}"
                # The same global batch on 1 rank, which accumulates it: the same steps, so the same losses.
                figures = torchrun_train(args, device, checkpoint, out, ranks, args.micro_batch * most, flags)
                runs.append({"quantize": quantize, **figures})
    return {"hidden": config.hidden_size, "layers": config.num_hidden_layers, "runs": runs}


def write_tokenizer_dir(tokenizer, directory: Path) -> Path:
    tokenizer.save(directory)
    return directory


# -- report ------------------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    lines = [f"# twin on {results['device']} ({results['torch']})", ""]
    if "lora" in results:
        lora = results["lora"]
        twin = lora["sides"][0]
        lines += [
            f"## LoRA step, micro-batch {lora['micro_batch']} x {lora['seq_len']}",
            "",
            "| side | real tokens/s | twin / side | MFU | peak allocated GiB | peak reserved GiB | first loss |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for side in lora["sides"]:
            ratio = twin["real_tokens_per_s"] / side["real_tokens_per_s"]
            mfu = f"{100 * side['mfu']:.1f}%" if "mfu" in side else "n/a"
            lines.append(
                f"| {side['side']} | {side['real_tokens_per_s']:,.0f} | {ratio:.2f}x | {mfu} | "
                f"{side.get('peak_allocated_gib', float('nan')):.2f} | "
                f"{side.get('peak_reserved_gib', float('nan')):.2f} | {side['first_loss']:.4f} |"
            )
        lines.append("")
    if "decode" in results:
        decode = results["decode"]
        lines += [
            f"## Decoding, batch 1, {decode['prompt_tokens']}-token prompt, {decode['new_tokens']} new tokens",
            "",
            f"Ceiling: {decode['ceiling_tokens_per_s']:.1f} tokens/s ({decode['weight_bytes'] / 1e9:.2f} GB "
            f"of weights per token at {decode['bandwidth_gb_s']:.0f} GB/s, {decode['bandwidth_source']}).",
            "",
            "| side | tokens/s | share of ceiling | same tokens as twin eager |",
            "| --- | --- | --- | --- |",
        ]
        for name, rate in decode["tokens_per_s"].items():
            lines.append(
                f"| {name} | {rate:.1f} | {100 * decode['share_of_ceiling'][name]:.0f}% | "
                f"{decode['same_tokens_as_twin_eager'][name]} |"
            )
        lines += ["", f"Compiled steps run without CUDA graphs: {decode['cudagraph_skips']}.", ""]
    if "fsdp" in results:
        fsdp = results["fsdp"]
        lines += ["## FSDP2, one rank", ""]
        lines.append(
            f"error: {fsdp['error']}"
            if "error" in fsdp
            else f"hidden {fsdp['hidden']}, {fsdp['layers']} layers: {fsdp['tokens_per_s']:,.0f} tokens/s, peak "
            f"{fsdp['peak_memory_mb_per_rank'][0]:,} MiB, final loss {fsdp['final_loss']:.4f}"
        )
    if "lora-ranks" in results:
        lines += [
            "",
            f"## LoRA sharded over ranks, hidden {results['lora-ranks']['hidden']}, "
            f"{results['lora-ranks']['layers']} layers",
            "",
            "| base | ranks | tokens/s | x 1 rank | peak memory per rank, MiB | x 1 rank | final loss |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        one_rank = {}  # base -> the 1-rank run's figures, which come first
        for run in results["lora-ranks"]["runs"]:
            base = "nf4" if run["quantize"] else "bf16"
            if "error" in run:
                lines.append(f"| {base} | error: {run['error']} |")
                continue
            if run["ranks"] == 1:
                one_rank[base] = run
            one, memory = one_rank.get(base), max(run["peak_memory_mb_per_rank"])
            speed = f"{run['tokens_per_s'] / one['tokens_per_s']:.2f}x" if one else "n/a"
            memory_ratio = f"{memory / max(one['peak_memory_mb_per_rank']):.2f}x" if one else "n/a"
            lines.append(
                f"| {base} | {run['ranks']} | {run['tokens_per_s']:,.0f} | {speed} | {memory:,} | {memory_ratio} | "
                f"{run['final_loss']:.4f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="lora,decode,fsdp,lora-ranks", help="what to run (default: %(default)s)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny model and batch, on whatever device there is: checks the script (default: off)",
    )
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default: %(default)s)")
    parser.add_argument("--tokenizer", help="a Mistral tokenizer folder (default: mistral-common's tokenizer.model)")
    parser.add_argument("--micro-batch", type=int, default=8, help="rows per LoRA step (default: %(default)s)")
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per packed row (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=6, help="timed LoRA steps per side (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed LoRA steps first (default: %(default)s)")
    parser.add_argument("--prompt-tokens", type=int, default=500, help="decoding prompt (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens decoded (default: %(default)s)")
    parser.add_argument("--decode-rounds", type=int, default=2, help="timed decoding rounds (default: %(default)s)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled decoders (default: off)")
    parser.add_argument("--fsdp-hidden", type=int, default=2048, help="FSDP model's hidden size (default: %(default)s)")
    parser.add_argument("--fsdp-layers", type=int, default=8, help="FSDP model's layers (default: %(default)s)")
    parser.add_argument("--fsdp-steps", type=int, default=4, help="FSDP optimizer steps (default: %(default)s)")
    parser.add_argument("--fsdp-timeout", type=int, default=240, help="seconds for the FSDP run (default: %(default)s)")
    parser.add_argument(
        "--lora-ranks", type=int, help="ranks of the sharded LoRA runs (default: every GPU; 2 on CPU), against 1"
    )
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: by device name)")
    parser.add_argument(
        "--bandwidth-tbs",
        type=float,
        help="the device's memory bandwidth in TB/s (default: by device name, else a copy measured)",
    )
    parser.add_argument("--out", help="JSON of the figures (default: bench/results/gpu-<device>.json)")
    args = parser.parse_args()
    sections = args.sections.split(",")
    if not set(sections) <= {"lora", "decode", "fsdp", "lora-ranks"}:
        parser.error(f"--sections {args.sections!r}: choose among lora, decode, fsdp and lora-ranks")

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    config, dtype = (SMOKE, torch.float32) if args.smoke else (DOLPHIN_7B, torch.bfloat16)
    if args.smoke:
        args.micro_batch, args.seq_len, args.steps, args.warmup = 2, 256, 1, 1
        args.prompt_tokens, args.new_tokens, args.decode_rounds = 16, 8, 1
        args.fsdp_hidden, args.fsdp_layers, args.fsdp_steps = 64, 2, 1
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"device: {name}; torch {torch.__version__}; {'smoke size' if args.smoke else 'Dolphin-7B shapes, bf16'}",
        flush=True,
    )
    tokenizer = load_tokenizer_for_bench(args.tokenizer)
    sessions = sample_sessions(tokenizer, args.seq_len)
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "cpu"
    out = Path(args.out or REPO_ROOT / "bench" / "results" / f"gpu-{slug}{'-smoke' if args.smoke else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {"device": name, "torch": torch.__version__, "smoke": args.smoke}
    for section in sections:
        started = time.perf_counter()
        if section == "lora":
            results["lora"] = bench_lora(args, config, sessions, device, dtype)
        elif section == "decode":
            results["decode"] = bench_decode(args, config, device, dtype, name)
        elif section in ("fsdp", "lora-ranks"):
            bench = bench_fsdp if section == "fsdp" else bench_lora_ranks
            with tempfile.TemporaryDirectory(prefix="twin-gpu-tokenizer-") as directory:
                results[section] = bench(args, device, write_tokenizer_dir(tokenizer, Path(directory)))
        results.setdefault("section_seconds", {})[section] = time.perf_counter() - started
        # After each section, so that a run stopped by its time limit keeps what it measured.
        out.write_text(json.dumps(results, indent=2))
    print("\n" + markdown(results))
    print(f"\nfigures written to {out}")


if __name__ == "__main__":
    main()

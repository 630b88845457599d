"""Greedy decoding on CPU: twin's Generator against transformers `generate`, same model and prompt.

    python bench/bench_sample.py [--rounds 5] [--prompt-tokens 200] [--new-tokens 128] [--compile]

Builds a random fp32 Mistral (hidden 1024, 8 layers, GQA 16/4, intermediate 3584, vocab 32002 by
default) in transformers and copies its weights into twin's model, then generates the same number of
new tokens from the same random prompt, greedily, batch 1, with the same torch threads. The sides
take turns, round after round, so load from elsewhere on the machine falls on both alike.
Time to first token covers the prefill of the prompt (and setting up the cache); decode tokens/s is
the rate after the first token. Figures are the median and the fastest of the rounds after warmup
(on a shared machine the fastest is the one least disturbed by others), and the two sides' tokens
are compared.

A batch-1 decoding step multiplies one vector by every weight matrix, so it is bound by how fast
memory delivers the weights. The script also times exactly that, every matrix times one vector
and nothing else, and prints the tokens/s it allows: the ceiling no implementation of the same
model in the same dtype passes on this machine.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_lora import add_model_args, model_config  # noqa: E402

from model.generation import Generator, SamplingConfig  # noqa: E402
from model.transformer import Transformer  # noqa: E402


def twin_generate(
    model: Transformer, prompt: list[int], new_tokens: int, compile: bool
) -> tuple[list[int], list[float]]:
    """The new tokens and the time each arrived, from the call on."""
    start = time.perf_counter()
    # A fresh generator each time: one that kept its cache would skip the prompt it has already seen.
    generator = Generator(model, max_len=len(prompt) + new_tokens, device=torch.device("cpu"), compile=compile)
    tokens, arrivals = [], []
    for token in generator.generate(prompt, SamplingConfig(temperature=0, max_new_tokens=new_tokens), stop_ids=set()):
        tokens.append(token)
        arrivals.append(time.perf_counter() - start)
    return tokens, arrivals


def weight_read_ceiling(model: Transformer, rounds: int = 10) -> tuple[float, float]:
    """Tokens/s if a decoding step did nothing but multiply one vector by each weight matrix once,
    and the megabytes of those matrices."""
    matrices = [module.weight for module in model.modules() if isinstance(module, torch.nn.Linear)]
    vectors = {width: torch.randn(1, width) for width in {w.shape[1] for w in matrices}}
    seconds = []
    with torch.inference_mode():
        for _ in range(rounds):
            start = time.perf_counter()
            for weight in matrices:
                torch.nn.functional.linear(vectors[weight.shape[1]], weight)
            seconds.append(time.perf_counter() - start)
    return 1 / min(seconds), sum(w.numel() * w.element_size() for w in matrices) / 1e6


def peer_generate(model, prompt: list[int], new_tokens: int) -> tuple[list[int], list[float]]:
    from transformers.generation.streamers import BaseStreamer

    class Arrivals(BaseStreamer):
        """Notes when each new token comes out of `generate` (its first `put` is the prompt)."""

        def __init__(self):
            self.times, self.prompt_seen = [], False

        def put(self, value):
            if self.prompt_seen:
                self.times.append(time.perf_counter() - start)
            self.prompt_seen = True

        def end(self):
            pass

    arrivals = Arrivals()
    start = time.perf_counter()
    output = model.generate(
        torch.tensor([prompt]), do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, streamer=arrivals
    )
    return output[0, len(prompt) :].tolist(), arrivals.times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per side (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds per side first (default: %(default)s)")
    parser.add_argument("--prompt-tokens", type=int, default=200, help="prompt length (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens to generate (default: %(default)s)")
    add_model_args(parser)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time twin with torch.compile, as `sample.py --compile` (default: off)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and prompt (default: %(default)s)")
    args = parser.parse_args()

    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    config = model_config(args)
    torch.manual_seed(args.seed)
    peer = transformers.MistralForCausalLM(transformers.MistralConfig(**config.to_hf(torch.float32))).eval()
    peer.generation_config.pad_token_id = config.eos_token_id
    twin = Transformer(config).eval()
    twin.load_state_dict(peer.state_dict())  # the same parameter names, so the same weights
    prompt = torch.randint(3, config.vocab_size, (args.prompt_tokens,)).tolist()
    params = sum(p.numel() for p in twin.parameters())
    print(
        f"model: {params / 1e6:.0f}M parameters, fp32, hidden {config.hidden_size}, {config.num_hidden_layers} "
        f"layers, GQA {config.num_attention_heads}/{config.num_key_value_heads}, vocab {config.vocab_size}"
    )
    print(f"greedy, batch 1, {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, {args.threads} threads")

    sides = {
        "twin": lambda: twin_generate(twin, prompt, args.new_tokens, compile=False),
        "transformers": lambda: peer_generate(peer, prompt, args.new_tokens),
    }
    if args.compile:
        sides["twin --compile"] = lambda: twin_generate(twin, prompt, args.new_tokens, compile=True)
    first_token, decode_rate, tokens = {side: [] for side in sides}, {side: [] for side in sides}, {}
    for round_number in range(args.warmup + args.rounds):
        names = list(sides)
        order = names[round_number % len(names) :] + names[: round_number % len(names)]
        for side in order:
            tokens[side], arrivals = sides[side]()
            if round_number >= args.warmup:
                first_token[side].append(arrivals[0])
                decode_rate[side].append((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]))
        print(
            f"  round {round_number + 1}/{args.warmup + args.rounds}"
            + (
                " (warmup)"
                if round_number < args.warmup
                else ": " + ", ".join(f"{side} {decode_rate[side][-1]:.1f} tok/s" for side in sides)
            ),
            flush=True,
        )

    ceiling, weight_mb = weight_read_ceiling(twin)
    twin_tokens, peer_tokens = tokens["twin"], tokens["transformers"]
    first_difference = next((i for i, (a, b) in enumerate(zip(twin_tokens, peer_tokens)) if a != b), None)
    same = first_difference is None and len(twin_tokens) == len(peer_tokens)
    print(
        f"greedy tokens: {'identical' if same else f'differ from token {first_difference}'} "
        f"({len(twin_tokens)} from twin, {len(peer_tokens)} from transformers)"
    )
    rows = [
        ("decode tokens/s (median)", {side: statistics.median(r) for side, r in decode_rate.items()}, "{:.1f}"),
        ("decode tokens/s (fastest)", {side: max(r) for side, r in decode_rate.items()}, "{:.1f}"),
        ("first token, ms (median)", {side: 1000 * statistics.median(t) for side, t in first_token.items()}, "{:.0f}"),
        ("first token, ms (fastest)", {side: 1000 * min(t) for side, t in first_token.items()}, "{:.0f}"),
    ]
    print(f"\n{'':28}" + "".join(f"{side:>16}" for side in sides) + f"{'twin/transformers':>20}")
    for label, figures, form in rows:
        print(
            f"{label:28}"
            + "".join(f"{form.format(figures[side]):>16}" for side in sides)
            + f"{figures['twin'] / figures['transformers']:>19.2f}x"
        )
    print(
        f"\nceiling: {ceiling:.1f} tokens/s, the rate of reading the {weight_mb:,.0f} MB of weight matrices once per "
        f"token ({weight_mb * ceiling / 1e3:.1f} GB/s here); fastest rounds reach "
        + ", ".join(f"{side} {100 * max(rate) / ceiling:.0f}%" for side, rate in decode_rate.items())
        + f"; no side passes {ceiling / max(decode_rate['transformers']):.2f}x transformers' fastest"
    )


if __name__ == "__main__":
    main()

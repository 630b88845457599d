"""serve.py under load: one request alone, then many at once, over loopback, as a client sees them.

    python bench/bench_serve.py --model ~/.cache/twin/SmolLM2-135M-Instruct.Q4_1.gguf --speaker Anna [--clients 32]

For each --max-batch (default: 1, then 8) it starts serve.py with it (any flags after `--` go to it too), sends
one streaming request, then --clients streaming requests at once, each for --max-tokens tokens at temperature 0,
and prints for each round: requests answered, time to the first text (median and slowest), and reply tokens
per second over the round; then how much sooner the last reply and the median first text came with the last
--max-batch than with the first.
"""

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


async def one(client: httpx.AsyncClient, body: dict, start: float) -> tuple[float, int]:
    """Seconds to the first text and the reply's tokens."""
    first, tokens = None, 0
    async with client.stream("POST", "/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            event = json.loads(line[6:]) if line.startswith("data: {") else {}
            if first is None and any(choice["delta"].get("content") for choice in event.get("choices", [])):
                first = time.perf_counter() - start
            tokens = event.get("usage", {}).get("completion_tokens", tokens)
    return first if first is not None else time.perf_counter() - start, tokens


async def round_of(url: str, clients: int, body: dict) -> tuple[float, float]:
    """Send `clients` requests at once; seconds to the last reply and the median seconds to the first text."""
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=httpx.Limits(max_connections=clients)) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one(client, body, start) for _ in range(clients)))
        took = time.perf_counter() - start
    firsts = [first for first, _ in results]
    tokens = sum(count for _, count in results)
    print(
        f"{clients:3d} at once: {len(results)} answered in {took:.1f} s; first text after {statistics.median(firsts):.2f} s "
        f"(median), {max(firsts):.2f} s (slowest); {tokens / took:.1f} reply tokens/s in all",
        flush=True,
    )
    return took, statistics.median(firsts)


def serve_and_measure(args: argparse.Namespace, max_batch: int) -> tuple[float, float]:
    """Start serve.py with --max-batch `max_batch`; its round of --clients, as round_of gives it."""
    print(f"serve.py --max-batch {max_batch}", flush=True)
    server = subprocess.Popen(
        [
            sys.executable,
            "serve.py",
            "--model",
            args.model,
            "--port",
            "0",
            "--max-batch",
            str(max_batch),
            *args.serve_args,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = server.stdout.readline().split(" at ")[1].split(",")[0]
        body = {
            "model": args.speaker,
            "stream": True,
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hi! what's up?"}],
        }
        asyncio.run(round_of(url, 1, body))
        return asyncio.run(round_of(url, args.clients, body))
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="what serve.py --model loads")
    parser.add_argument("--speaker", default="User", help="the model id to ask for (default: %(default)s)")
    parser.add_argument(
        "--clients", type=int, default=32, help="requests at once in the second round (default: %(default)s)"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=32, help="tokens each reply writes at most (default: %(default)s)"
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        nargs="+",
        default=[1, 8],
        help="serve.py --max-batch values to compare, each in a server of its own (default: 1 8)",
    )
    parser.add_argument("serve_args", nargs="*", help="more serve.py flags, after --")
    args = parser.parse_args()
    results = {max_batch: serve_and_measure(args, max_batch) for max_batch in args.max_batch}
    (base_last, base_first), (other_last, other_first) = results[args.max_batch[0]], results[args.max_batch[-1]]
    print(
        f"--max-batch {args.max_batch[-1]} against {args.max_batch[0]}: the last reply {base_last / other_last:.1f}x "
        f"sooner, the median first text {base_first / other_first:.1f}x sooner",
        flush=True,
    )


if __name__ == "__main__":
    main()

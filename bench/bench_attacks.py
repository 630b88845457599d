"""serve.py under attack: how long a normal request waits while each of issue 25's attacks runs.

    python bench/bench_attacks.py --model ~/.cache/twin/SmolLM2-135M-Instruct.Q4_1.gguf --speaker Anna \\
        [--before DIR] [--files 128] [-- serve.py flags]

First with no attack (the machine's own load), then for each attack it starts serve.py afresh (with --api-key), starts the attack in the background, waits
--settle seconds, then sends a normal request (2 tokens, with the key) and prints how long its answer took, or
"> --timeout s". With --before, a checkout of older code (`git archive COMMIT | tar -x -C DIR`) is measured the
same way, each attack right after this checkout's, and the ratio printed. With --files, serve.py runs under
`ulimit -n FILES` (this checkout's with --max-connections FILES - 64), as on a machine with few descriptors.
"""

import argparse
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-bench"


def attacks(speaker: str) -> dict:
    """Each attack: a function of the server's url that runs until the process ends (it is a daemon thread)."""

    def post(body=None, content=None, key=True, timeout=600):
        headers = {"Authorization": f"Bearer {KEY}"} if key else {}
        try:
            httpx.post(f"{url_of[0]}/chat/completions", json=body, content=content, headers=headers, timeout=timeout)
        except httpx.HTTPError:
            pass

    def long_stop():
        post(
            {
                "model": speaker,
                "max_tokens": 20,
                "stop": ["Ж" * 300_000] * 4,
                "messages": [{"role": "user", "content": "hi"}],
            }
        )

    def stop_at_the_limit():
        post(
            {
                "model": speaker,
                "max_tokens": 200,
                "temperature": 0,
                "stop": ["Ж" * 999 + "Ы"] * 4,
                "messages": [{"role": "user", "content": "tell me a long story"}],
            }
        )

    def many_turns():
        post(
            {
                "model": speaker,
                "max_tokens": 2,
                "messages": [
                    {"role": ("user", "assistant")[index % 2], "content": f"word{index}"} for index in range(20_000)
                ],
            }
        )

    def huge_body_without_key():
        post(content=b"{" + b" " * 100 * 2**20 + b"}", key=False)

    def silent_sockets():
        host, port = url_of[0].split("//")[1].split("/")[0].split(":")
        held = []
        while True:  # keep 300 open: one closed by the server is opened again
            held = [sock for sock in held if sock.fileno() >= 0]
            try:
                while len(held) < 300:
                    held.append(socket.create_connection((host, int(port))))
            except OSError:
                pass
            for sock in list(held):
                sock.setblocking(False)
                try:
                    if sock.recv(1) == b"":
                        sock.close()
                except BlockingIOError:
                    pass
                except OSError:  # reset by the server
                    sock.close()
            time.sleep(0.2)

    def slow_bodies():
        host, port = url_of[0].split("//")[1].split("/")[0].split(":")
        socks = []
        for _ in range(50):
            sock = socket.create_connection((host, int(port)))
            sock.sendall(
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{".encode()
            )
            socks.append(sock)
        while True:
            for sock in socks:
                try:
                    sock.sendall(b" ")
                except OSError:
                    pass
            time.sleep(1)

    def none():  # the machine's own load, for the figures below it
        pass

    return {
        "no attack (the machine's load)": none,
        "4 stop strings of 300,000 characters": long_stop,
        "4 stop strings of 1,000 characters, 200 tokens": stop_at_the_limit,
        "20,000 one-word messages": many_turns,
        "100 MB body without the key": huge_body_without_key,
        "300 silent sockets, kept open": silent_sockets,
        "50 bodies at a byte a second": slow_bodies,
    }


url_of = [""]


def measure(root: Path, args: argparse.Namespace, attack) -> float | None:
    """Seconds a normal request took to be answered while `attack` ran against serve.py from `root`."""
    command = [sys.executable, "serve.py", "--model", args.model, "--port", "0", "--api-key", KEY, *args.serve_args]
    if args.files:
        command = [
            "bash",
            "-c",
            f'ulimit -n {args.files}; exec "$@"',
            "serve",
            *command,
            *(["--max-connections", str(args.files - 64)] if root == ROOT else []),
        ]
    server = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url_of[0] = server.stdout.readline().split(" at ")[1].split(",")[0]
        normal = {"model": args.speaker, "max_tokens": 2, "messages": [{"role": "user", "content": "hi!"}]}
        headers = {"Authorization": f"Bearer {KEY}"}
        httpx.post(f"{url_of[0]}/chat/completions", json=normal, headers=headers, timeout=120)  # warm up
        threading.Thread(target=attack, daemon=True).start()
        time.sleep(args.settle)
        start = time.perf_counter()
        try:
            httpx.post(
                f"{url_of[0]}/chat/completions", json=normal, headers=headers, timeout=args.timeout
            ).raise_for_status()
        except httpx.TimeoutException:
            return None
        return time.perf_counter() - start
    finally:
        server.kill()
        server.wait()


def shown(seconds: float | None, timeout: float) -> str:
    return f"> {timeout:g} s" if seconds is None else f"{seconds:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model serve.py can load (a GGUF, say)")
    parser.add_argument("--speaker", required=True, help="the speaker to ask for")
    parser.add_argument("--before", type=Path, help="a checkout of older code, measured the same way (default: none)")
    parser.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds between an attack's start and the normal request (default: %(default)s)",
    )
    parser.add_argument("--files", type=int, help="serve.py's limit of open files (ulimit -n) (default: the shell's)")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds the normal request waits at most (default: %(default)s)"
    )
    parser.add_argument("--only", default="", help="run only the attacks whose name holds this text (default: all)")
    parser.add_argument("serve_args", nargs="*", help="flags for serve.py, after --")
    args = parser.parse_args()
    for name, attack in attacks(args.speaker).items():
        if args.only not in name:
            continue
        now = measure(ROOT, args, attack)
        line = f"{name}: a normal request answered in {shown(now, args.timeout)}"
        if args.before is not None:
            before = measure(args.before, args, attack)
            ratio = f", {before / now:.1f}x sooner" if before is not None and now else ""
            line += f" (before: {shown(before, args.timeout)}{ratio})"
        print(line, flush=True)


if __name__ == "__main__":
    main()

"""Time and peak memory of converting a big Telegram export into sessions.

    python bench/bench_telegram.py --size-mb 700 [--baseline]

Writes a synthetic export of about --size-mb MB to a temporary folder, then converts it with
`python convert.py` in a child process and prints the child's wall time and peak RSS (the
generator's own memory does not count). The budget is 90 s and 5 GB for 700 MB on 2 cores.
--baseline also measures plain json.loads of the same file, the approach the streaming reader avoids.
"""

import argparse
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

WORDS = (
    "ok",
    "sure",
    "tomorrow",
    "lunch",
    "meeting",
    "ахах",
    "давай",
    "завтра",
    "норм",
    "го",
    "the",
    "train",
    "is",
    "late",
    "again",
    "😂",
    "👍",
    "🔥",
    "link",
    "photo",
    "where",
    "are",
    "you",
    "привет",
    "как",
    "дела",
    "weekend",
    "plans",
    "coffee",
    "))",
)


def _message_texts(rng: random.Random, count: int) -> list[str]:
    """JSON-encoded message bodies, with a \\xHH control escape now and then as real exports have."""
    texts = []
    for index in range(count):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 25)))
        encoded = json.dumps(words, ensure_ascii=False)
        if index % 50 == 0:
            encoded = encoded[:-1] + '\\x0B"'
        texts.append(encoded)
    return texts


def _message(rng: random.Random, texts: list[str], number: int, unixtime: int, person: int) -> str:
    date = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(unixtime))
    head = (
        f'    {{\n     "id": {number},\n     "type": "message",\n     "date": "{date}",\n'
        f'     "date_unixtime": "{unixtime}",\n     "from": "Person {person}",\n'
        f'     "from_id": "user{person}",\n'
    )
    roll = rng.random()
    if roll < 0.05:
        return head + (
            '     "file": "(File not included. Change data exporting settings to '
            'download.)",\n     "media_type": "sticker",\n     "sticker_emoji": "😂",\n'
            '     "text": "",\n     "text_entities": []\n    }'
        )
    if roll < 0.08:
        return head + (
            '     "photo": "(File not included. Change data exporting settings to '
            'download.)",\n     "width": 1280,\n     "height": 960,\n     "text": "",\n'
            '     "text_entities": []\n    }'
        )
    text = rng.choice(texts)
    if roll < 0.12:
        return head + (
            f'     "text": [\n      {text},\n      {{\n       "type": "link",\n'
            f'       "text": "https://example.com/{number}"\n      }}\n     ],\n'
            f'     "text_entities": [\n      {{\n       "type": "plain",\n'
            f'       "text": {text}\n      }},\n      {{\n       "type": "link",\n'
            f'       "text": "https://example.com/{number}"\n      }}\n     ]\n    }}'
        )
    return head + (
        f'     "text": {text},\n     "text_entities": [\n      {{\n'
        f'       "type": "plain",\n       "text": {text}\n      }}\n     ]\n    }}'
    )


def generate_export(path: Path, size_mb: int, seed: int = 0) -> int:
    """Write a synthetic result.json of about size_mb MB; returns its number of messages."""
    rng = random.Random(seed)
    texts = _message_texts(rng, 5000)
    target_bytes = size_mb * 1_000_000
    written = messages = 0
    chat_types = ["personal_chat"] * 6 + ["private_group", "private_supergroup", "public_channel"]
    with open(path, "w", encoding="utf-8") as file:
        file.write(
            '{\n "about": "Synthetic export for bench_telegram.py",\n'
            ' "personal_information": {\n  "user_id": 1,\n  "first_name": "Person",\n'
            '  "last_name": "1"\n },\n "chats": {\n  "about": "",\n  "list": [\n'
        )
        chat = 0
        while written < target_bytes:
            chat_type = rng.choice(chat_types)
            people = (
                [1, rng.randint(2, 10_000)]
                if chat_type == "personal_chat"
                else [1] + [rng.randint(2, 10_000) for _ in range(rng.randint(3, 30))]
            )
            # Chat sizes vary a lot; the first chat is a huge one, like a busy family group.
            count = int(0.3 * target_bytes / 500) if chat == 0 else rng.randint(100, 20_000)
            unixtime = 1_600_000_000 + rng.randint(0, 10_000_000)
            parts = []
            for number in range(count):
                unixtime += rng.choice((5, 15, 30, 60, 90, 120, 240, 1200, 7200, 86_400))
                parts.append(_message(rng, texts, number, unixtime, rng.choice(people)))
            block = (
                ("" if chat == 0 else ",\n") + f'   {{\n    "name": "Chat {chat}",\n'
                f'    "type": "{chat_type}",\n    "id": {chat + 100},\n    "messages": [\n'
                + ",\n".join(parts)
                + "\n    ]\n   }"
            )
            file.write(block)
            written += len(block.encode())
            messages += count
            chat += 1
        file.write("\n  ]\n }\n}\n")
    return messages


def measure(command: list[str], log: Path) -> tuple[float, float, int]:
    """Run command in a child process: (wall seconds, peak RSS in GB, exit status)."""
    start = time.perf_counter()
    with open(log, "w") as output:
        child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    return seconds, usage.ru_maxrss * 1024 / 1e9, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=700, help="size of the synthetic export")
    parser.add_argument(
        "--baseline", action="store_true", help="also measure json.loads of the whole file, for comparison"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        start = time.perf_counter()
        # Generate in a fresh process: a forked child's peak RSS counts the parent's memory too,
        # so the parent must stay small for the conversion's figure to be its own.
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            messages = pool.apply(generate_export, (folder / "result.json", args.size_mb))
        size = (folder / "result.json").stat().st_size
        print(f"generated {size / 1e6:.0f} MB, {messages:,} messages in {time.perf_counter() - start:.0f} s")

        seconds, peak_gb, status = measure(
            # --months 0 keeps every message: the worst case, as nothing is dropped early.
            [sys.executable, "convert.py", str(folder), "-o", str(folder / "s.jsonl"), "--months", "0"],
            folder / "convert.log",
        )
        print((folder / "convert.log").read_text().rstrip())
        print(
            f"conversion: {seconds:.1f} s, peak RSS {peak_gb:.2f} GB, exit status {status} "
            f"(budget for 700 MB: 90 s, 5 GB)"
        )

        if args.baseline:
            load = (
                "import sys; from data.json_stream import repair_hex_escapes as r; import json; "
                "json.loads(r(open(sys.argv[1], encoding='utf-8').read()))"
            )
            seconds, peak_gb, status = measure(
                [sys.executable, "-c", load, str(folder / "result.json")], folder / "load.log"
            )
            print(f"baseline json.loads: {seconds:.1f} s, peak RSS {peak_gb:.2f} GB, exit status {status}")


if __name__ == "__main__":
    main()

"""What memory costs: building the index of a big export's conversations, and the time retrieval adds to a reply.

    python bench/bench_memory.py [--messages 1500000] [--model ~/.cache/twin/SmolLM2-135M-Instruct.Q4_1.gguf]

On a machine others share, wall times say little: each figure comes with the process's own CPU time, which
is what it costs on cores of its own (the index and retrieval run on one thread).

Makes synthetic conversations of --messages messages in all (the words of bench_telegram.py's export, ~15
messages a conversation, a thousand chats), then times, on --threads cores:
  - the store: its BM25 index built, and the whole store written (conversations, index), budget 60 s;
  - retrieval: the memory of a reply (history and recall of its chat, as sample.py and serve.py make it before
    each reply), median and 95th percentile over --queries replies, budget 50 ms;
  - with --model, one reply of --reply-tokens tokens written without memory and with it (prompt included), so
    the retrieval's time stands next to what a reply costs anyway.
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_telegram import WORDS  # noqa: E402
from data.sessions import Session, Turn  # noqa: E402
from memory.context import Memory  # noqa: E402
from memory.settings import MemoryConfig  # noqa: E402
from memory.store import Conversations, save_store  # noqa: E402

DAY = 86400


def synthetic_sessions(messages: int, chats: int, seed: int = 0) -> list[Session]:
    rng = random.Random(seed)
    sessions, made, start = [], 0, 1_600_000_000
    while made < messages:
        chat = f"Person {rng.randrange(chats)}"
        turns = []
        for index in range(rng.randint(2, 8)):
            texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(rng.randint(1, 3))]
            turns.append(Turn("Me" if index % 2 else chat, texts))
            made += len(texts)
        start += rng.randint(60, 3 * 3600)
        sessions.append(Session(chat, "personal_chat", start, turns, "Me"))
    return sessions


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_500_000, help="messages in all the conversations")
    parser.add_argument("--chats", type=int, default=1000, help="chats they are spread over")
    parser.add_argument("--queries", type=int, default=200, help="replies whose memory is timed")
    parser.add_argument("--threads", type=int, default=2, help="cores (numpy's and torch's threads)")
    parser.add_argument(
        "--model",
        help="a model (.gguf, directory) to time a reply without and with memory "
        "(default: none; its tokenizer counts tokens otherwise too: without it, SmolLM2's cached "
        "GGUF if present)",
    )
    parser.add_argument("--reply-tokens", type=int, default=32, help="tokens of the timed reply")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from model.checkpoint import load_tokenizer

    smollm2 = Path.home() / ".cache" / "twin" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = load_tokenizer(args.model or str(smollm2))

    started = time.perf_counter()
    sessions = synthetic_sessions(args.messages, args.chats)
    print(
        f"{len(sessions):,} conversations of {args.messages:,} messages in {args.chats:,} chats, made in "
        f"{time.perf_counter() - started:.0f} s"
    )
    started, cpu = time.perf_counter(), time.process_time()
    conversations = Conversations(sessions)
    index_seconds, index_cpu = time.perf_counter() - started, time.process_time() - cpu
    with tempfile.TemporaryDirectory() as folder:
        started, cpu = time.perf_counter(), time.process_time()
        save_store(Path(folder) / "memory", sessions)
        store_seconds, store_cpu = time.perf_counter() - started, time.process_time() - cpu
    print(
        f"index built in {index_seconds:.1f} s ({index_cpu:.1f} s of CPU); whole store (index again, "
        f"conversations, written) in {store_seconds:.1f} s ({store_cpu:.1f} s of CPU) (budget 60 s)"
    )

    memory = Memory(conversations, MemoryConfig(), tokenizer)
    rng = random.Random(1)
    late = sessions[len(sessions) // 2 :]
    memory.context(late[0].chat, late[0].start, late[0].turns[:1])  # the tokenizer's first call loads its backend
    times, cpu_times = [], []
    for _ in range(args.queries):
        session = rng.choice(late)
        said = session.turns[: rng.randint(1, len(session.turns))]
        started, cpu = time.perf_counter(), time.process_time()
        memory.context(session.chat, session.start + 60, said)
        times.append((time.perf_counter() - started) * 1000)
        cpu_times.append((time.process_time() - cpu) * 1000)
    times.sort()
    cpu_times.sort()
    retrieval = statistics.median(times)
    print(
        f"memory of a reply (history + recall of its chat, tokens counted): median {retrieval:.1f} ms "
        f"({statistics.median(cpu_times):.1f} ms of CPU), 95th percentile {times[int(0.95 * len(times)) - 1]:.1f} ms "
        f"({cpu_times[int(0.95 * len(cpu_times)) - 1]:.1f} ms of CPU) over {len(times)} replies (budget 50 ms)"
    )

    if args.model:
        reply_times(args, tokenizer, memory, late, retrieval)


def reply_times(args, tokenizer, memory: Memory, sessions: list[Session], retrieval_ms: float) -> None:
    import torch

    from chat.conversation import Chat
    from chat.loading import TwinSource, load_twin
    from model.generation import Generator, SamplingConfig

    model, tokenizer = load_twin(TwinSource(args.model), torch.device("cpu"), torch.float32)
    generator = Generator(model, max_len=2048, device=torch.device("cpu"))
    sampling = SamplingConfig(max_new_tokens=args.reply_tokens, temperature=0.0)
    session = sessions[len(sessions) // 3]

    class Remembering:  # chat.recall.TwinMemory's one method a Chat calls
        def context(self, speaker, partner, started, turns, tokenizer):
            return memory.context(session.chat, started, turns)

    figures = {}
    for name, remembering in (("without memory", None), ("with memory", Remembering())):
        chat = Chat(generator, tokenizer, sampling, "Me", session.chat, seed=0, memory=remembering)
        chat.started = session.start + 60
        chat.add(Turn(session.chat, session.turns[0].messages))
        seconds = []
        for _ in range(3):
            started = time.perf_counter()
            chat.reply("Me", chat.prompt("Me"))
            seconds.append(time.perf_counter() - started)
            chat.turns.pop()
        figures[name] = statistics.median(seconds) * 1000
    print(
        f"a reply of {args.reply_tokens} tokens: {figures['without memory']:.0f} ms without memory, "
        f"{figures['with memory']:.0f} ms with it (its retrieval {retrieval_ms:.1f} ms, the rest a longer prompt), "
        f"ratio {figures['with memory'] / figures['without memory']:.2f}"
    )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()

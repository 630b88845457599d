"""Does the memory hold the facts? On the bundled sample, how many fact turns (memory.facts: turns that take up a
rare name of an earlier conversation of the chat) have that name in the memory placed before their session, with
the demo's memory and with train.py's default: a twin cannot state a fact its memory does not hold. No model, only
SmolLM2's tokenizer (cached by examples/demo.sh or the tests) for the token budgets.

    python bench/bench_recall.py                     # this tree
    python bench/bench_recall.py --before main       # and that commit's memory, side by side

Counted over every fact turn of the export (each session remembering all conversations before it, as at chat
time) and over the held-out ones of the demo's split (--split time --val-fraction 0.05, or the --val-fraction
given). "ranked first": fact turns whose top recalled conversation (no budget) holds the fact, what the ranking
alone decides.
"""

import argparse
import json
import tempfile
from pathlib import Path

from trees import printed, trees

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = Path.home() / ".cache" / "twin" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MEMORIES = {
    "demo (no history, recall 1 x 128)": (0, 1, 128),
    "train.py's default (history 128, recall 2 x 256)": (128, 2, 256),
}

# Run inside a tree (this one or the --before commit's): the same calls exist in both.
MEASURE = """
import json, sys
from data.dataset import prepare_data
from data.settings import DataConfig
from memory.context import Memory
from memory.facts import fact_turns, words_of
from memory.settings import MemoryConfig
from memory.store import Conversations, session_text
from model.checkpoint import load_tokenizer
tokenizer = load_tokenizer({tokenizer!r})
data = prepare_data({data!r}, tokenizer, DataConfig(seq_len=256, val_fraction={val_fraction!r}, split="time"))
everything = data.train_sessions + data.val_sessions
conversations = Conversations(everything)
facts = {{"all": fact_turns(everything, everything), "held out": fact_turns(data.val_sessions, everything)}}
def held(memory, fact):
    turns = memory.for_session(fact.session)
    return bool(fact.words & words_of("\\n".join(m for turn in turns if turn.speaker != "memory" for m in turn.messages)))
def first(fact):
    session = fact.session
    best = conversations.most_relevant(
        "\\n".join(session.turns[0].messages), conversations.before(session.chat, session.start), 1, session.start
    )
    return bool(best) and bool(fact.words & words_of(session_text(conversations.sessions[best[0]])))
figures = {{"fact turns": {{part: len(found) for part, found in facts.items()}}}}
figures["ranked first"] = {{part: sum(map(first, found)) for part, found in facts.items()}}
for name, (history, recall, recall_tokens) in {memories!r}.items():
    memory = Memory(conversations, MemoryConfig(history, recall, recall_tokens), tokenizer)
    figures[name] = {{part: sum(held(memory, fact) for fact in found) for part, found in facts.items()}}
print(json.dumps(figures))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", metavar="COMMIT", help="also count with that commit's memory, side by side")
    parser.add_argument(
        "--data",
        default=str(ROOT / "examples" / "telegram_export"),
        help="the export (default: the bundled sample; with --before, each tree reads this same one)",
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.05, help="of the time split held out (default: the demo's %(default)s)"
    )
    args = parser.parse_args()
    if not SMOLLM2.is_file():
        parser.exit(2, f"error: {SMOLLM2}: missing; run examples/demo.sh once to fetch SmolLM2\n")
    snippet = MEASURE.format(
        tokenizer=str(SMOLLM2), data=str(Path(args.data).resolve()), memories=MEMORIES, val_fraction=args.val_fraction
    )
    with tempfile.TemporaryDirectory() as directory:
        figures = {
            name: json.loads(printed(snippet, tree)[-1]) for name, tree in trees(args.before, Path(directory)).items()
        }
    names = list(figures)
    print("| fact turns whose memory holds the fact | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for row in figures[names[0]]:
        if row == "fact turns":
            continue
        for part in ("all", "held out"):
            cells = [f"{figures[name][row][part]} of {figures[name]['fact turns'][part]}" for name in names]
            print(f"| {row}, {part} fact turns | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""Chat with a twin: the model answers as the chosen person, as several short messages.

    python sample.py --checkpoint runs/me                # as the person the run twins
    python sample.py --checkpoint runs/me --speaker "Катя Морозова" --as "Alexander Smirnov"

Each line you type is one message; an empty line sends your turn. /help lists the commands.
`--prompt`, `--history` and `--auto` answer once and exit, for scripts.
"""

import argparse
import sys

from chat.conversation import Chat
from chat.loading import add_twin_arguments, source_from_args, start_twin
from chat.terminal import interactive, show_reply, show_turn_header
from core.cli import program
from core.flags import add_arguments, from_args
from data.sessions import DataError, Turn, read_sessions_file
from model.generation import SamplingConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speaker", help="the person the model writes as (default: the person the run twins)")
    parser.add_argument(
        "--as",
        dest="user",
        help="the person you write as (default: the speaker's most "
        "frequent partner in the training data when known, else User)",
    )
    once = parser.add_argument_group("non-interactive")
    once.add_argument(
        "--prompt",
        help=r"one turn of yours, messages separated by newlines (a literal \n counts too); prints the reply and exits",
    )
    once.add_argument(
        "--history", help="a conversation to continue: a sessions JSONL file (its first session) or one session as JSON"
    )
    once.add_argument(
        "--auto", type=int, metavar="TURNS", help="let the model play both people for TURNS turns, print them and exit"
    )
    once.add_argument(
        "-n", type=int, default=1, help="how many replies to sample with --prompt/--history (default: %(default)s)"
    )
    sampling = parser.add_argument_group("sampling")
    add_arguments(sampling, SamplingConfig)
    sampling.add_argument("--seed", type=int, help="seed for reproducible samples (default: random)")
    add_twin_arguments(parser)
    return parser


def split_messages(text: str) -> list[str]:
    """--prompt's messages: one per line, where a literal backslash-n also breaks a line."""
    return [line for line in text.replace("\\n", "\n").split("\n") if line.strip()]


def read_history(path: str) -> list[Turn]:
    sessions = read_sessions_file(path)
    if not sessions:
        raise DataError(f"{path}: no session in it")
    return sessions[0].turns


@program
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # Everything a user can get wrong is checked before the model loads, which takes minutes for a 7B.
    source = source_from_args(args)
    speaker = source.people.speaker_or_target(args.speaker)
    user = source.people.user_for(speaker, args.user)
    history = read_history(args.history) if args.history else []

    print(
        source.memory.describe() if source.memory else "memory: none (--no-memory, or a run trained without it)",
        file=sys.stderr,
    )

    generator, tokenizer = start_twin(args, source)
    chat = Chat(generator, tokenizer, from_args(SamplingConfig, args), speaker, user, args.seed, memory=source.memory)
    for turn in history:
        chat.add(turn)
    if args.prompt is not None:
        chat.add(Turn(user, split_messages(args.prompt)))

    if args.auto:
        play_both(chat, args.auto)
    elif args.prompt is not None or args.history:
        answer(chat, args.n)
    else:
        interactive(chat, source.people)
    if source.memory:
        source.memory.add(speaker, user, chat.started, chat.turns)  # only with --remember


def play_both(chat: Chat, turns: int) -> None:
    """--auto: the conversation so far, then `turns` turns of the model writing as each person in turn."""
    for turn in chat.turns:
        show_turn_header(turn.speaker)
        print("\n".join(f">>> {message}" for message in turn.messages))
    speakers = [chat.speaker, chat.user]
    first = 0 if not chat.turns or chat.turns[-1].speaker != chat.speaker else 1
    for index in range(turns):
        show_reply(chat, speakers[(first + index) % 2])


def answer(chat: Chat, replies: int) -> None:
    """--prompt or --history: `replies` replies, each to the same conversation."""
    history = list(chat.turns)
    for index in range(replies):
        chat.turns = list(history)
        if replies > 1:
            print(f"--- reply {index + 1} of {replies}")
        show_reply(chat, chat.speaker)


if __name__ == "__main__":
    main()

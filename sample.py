"""Chat with a twin: the model answers as the chosen person, as several short messages.

    python sample.py --checkpoint runs/me                # as the person the run twins
    python sample.py --checkpoint runs/me --speaker "Катя Морозова" --as "Alexander Smirnov"

Each line you type is one message; an empty line sends your turn. /help lists the commands.
`--prompt`, `--history` and `--auto` answer once and exit, for scripts.
"""

import argparse
import sys
from dataclasses import dataclass

from chat.conversation import Chat
from chat.loading import TwinSettings, open_source, start_twin
from chat.terminal import interactive, show_reply, show_turn_header
from core.cli import program
from core.flags import from_args, program_parser, section, setting
from data.sessions import DataError, Turn, read_sessions_file
from model.generation import SamplingConfig


@dataclass
class Roles:
    """Who writes as whom."""

    speaker: str | None = setting(None, "the person the model writes as (default: the person the run twins)")
    user: str | None = setting(
        None,
        "the person you write as (default: the speaker's most frequent partner in the training data when known, "
        "else User)",
        flag="--as",
    )


@dataclass
class Once:
    """Answer once and exit, for scripts."""

    prompt: str | None = setting(
        None,
        r"one turn of yours, messages separated by newlines (a literal \n counts too); prints the reply and exits",
    )
    history: str | None = setting(
        None, "a conversation to continue: a sessions JSONL file (its first session) or one session as JSON"
    )
    auto: int | None = setting(
        None, "let the model play both people for TURNS turns, print them and exit", metavar="TURNS"
    )
    n: int = setting(1, "how many replies to sample with --prompt/--history (default: %(default)s)", flag="-n")


@dataclass
class Sampling(SamplingConfig):
    """How a token is drawn, from which seed."""

    seed: int | None = setting(None, "seed for reproducible samples (default: random)")


@dataclass
class SampleSettings:
    roles: Roles = section(Roles)
    once: Once = section(Once, "non-interactive")
    sampling: Sampling = section(Sampling, "sampling")
    twin: TwinSettings = section(TwinSettings)


def build_parser() -> argparse.ArgumentParser:
    return program_parser(SampleSettings, __doc__)


def parse_settings(argv: list[str] | None = None) -> SampleSettings:
    return from_args(SampleSettings, build_parser().parse_args(argv))


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
    settings = parse_settings(argv)
    roles, once = settings.roles, settings.once
    # Everything a user can get wrong is checked before the model loads, which takes minutes for a 7B.
    source = open_source(settings.twin.choice, settings.twin.memory)
    speaker = source.people.speaker_or_target(roles.speaker)
    user = source.people.user_for(speaker, roles.user)
    history = read_history(once.history) if once.history else []

    print(
        source.memory.describe() if source.memory else "memory: none (--no-memory, or a run trained without it)",
        file=sys.stderr,
    )

    generator, tokenizer = start_twin(settings.twin.compute, source, settings.sampling.max_new_tokens)
    chat = Chat(generator, tokenizer, settings.sampling, speaker, user, settings.sampling.seed, memory=source.memory)
    for turn in history:
        chat.add(turn)
    if once.prompt is not None:
        chat.add(Turn(user, split_messages(once.prompt)))

    if once.auto:
        play_both(chat, once.auto)
    elif once.prompt is not None or once.history:
        answer(chat, once.n)
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

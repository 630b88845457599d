"""A chat in a terminal: turns typed line by line, /commands, replies streamed as they are sampled."""

import math
from pathlib import Path

from chat.conversation import Chat, TurnTooLong
from chat.people import People, SpeakerError
from data.sessions import DataError, Session, Turn, read_sessions_file, write_sessions

HELP = """commands:
  /reset          forget the conversation
  /as NAME        write as NAME from now on (a part of the name will do)
  /speaker NAME   the model answers as NAME from now on; /speaker alone says who is who
  /regen          sample the last reply again
  /save FILE      append the conversation to FILE as a sessions JSONL line
  /temp X         sampling temperature (0: greedy)
  /help           this list
  /quit           leave (Ctrl-D too); Ctrl-C stops a reply"""


def show_turn_header(name: str) -> None:
    print(f"\n{name}:", flush=True)


def echo(text: str) -> None:
    print(text, end="", flush=True)


def show_reply(chat: Chat, speaker: str) -> None:
    prompt = chat.prompt(speaker)  # a turn too long for the context is refused before the header shows
    show_turn_header(speaker)
    chat.reply(speaker, prompt, echo)
    print()


def interactive(chat: Chat, people: People) -> None:
    """Read turns and commands until /quit or the end of input."""
    print(
        f"You are {chat.user}, the model is {chat.speaker}. One message a line; an empty line sends "
        "(on its own, it lets the model write again). /help for commands."
    )
    messages: list[str] = []
    while True:
        try:
            line = input("> " if not messages else "  ")
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print()
            messages = []
            continue
        if line.startswith("/") and not messages:
            if not command(chat, people, line):
                return
            continue
        if line.strip():
            messages.append(line)
            continue
        if messages:
            chat.add(Turn(chat.user, messages))
            messages = []
        try:
            show_reply(chat, chat.speaker)
        except TurnTooLong as error:
            if chat.turns and chat.turns[-1].speaker == chat.user:
                chat.turns.pop()
            print(f"({error}; it was not sent)")


def command(chat: Chat, people: People, line: str) -> bool:
    """Carry out a /command; False means leave."""
    name, _, value = line.partition(" ")
    value = value.strip()
    if name == "/quit":
        return False
    if name == "/help":
        print(HELP)
    elif name == "/reset":
        chat.turns = []
        print("(conversation forgotten)")
    elif name in ("/as", "/speaker") and value:
        change_person(chat, people, name, value)
    elif name in ("/as", "/speaker"):
        print(f"(you are {chat.user}, the model is {chat.speaker})")
    elif name == "/regen":
        if chat.turns and chat.turns[-1].speaker != chat.user:
            show_reply(chat, chat.turns.pop().speaker)
        else:
            print("(no reply to sample again)")
    elif name == "/save" and value:
        save_transcript(chat, Path(value))
    elif name == "/temp" and value:
        set_temperature(chat, value)
    else:
        print(f"(unknown command or missing argument: {line!r}; /help lists them)")
    return True


def change_person(chat: Chat, people: People, command_name: str, name: str) -> None:
    """/as or /speaker: a name the run never saw is refused, and the chat goes on as it was."""
    try:
        name = people.check(name, command_name)
    except SpeakerError as error:
        print(f"({error})")
        return
    setattr(chat, "user" if command_name == "/as" else "speaker", name)
    print(f"(you are {chat.user}, the model is {chat.speaker})")


def set_temperature(chat: Chat, value: str) -> None:
    """/temp: a number of 0 (greedy) or more; anything else is refused, and the temperature stays."""
    try:
        temperature = float(value)
    except ValueError:
        temperature = math.nan
    if not 0 <= temperature < math.inf:  # NaN fails too
        print(f"(/temp needs a number of 0 or more (0: greedy), not {value!r})")
        return
    chat.sampling.temperature = temperature
    print(f"(temperature {temperature:g})")


def save_transcript(chat: Chat, path: Path) -> None:
    """/save: append the conversation to a sessions file; a failure is reported, and the chat goes on."""
    if not chat.turns:
        print("(nothing to save yet)")
        return
    try:
        sessions = read_sessions_file(path) if path.exists() and path.stat().st_size else []
        write_sessions(
            sessions
            + [
                Session(
                    chat="sample.py",
                    chat_type="personal_chat",
                    start=chat.started,
                    turns=list(chat.turns),
                    target=chat.speaker,
                )
            ],
            path,
        )
    except FileNotFoundError:  # its message names the atomic write's temporary file, not the user's
        print(f"(not saved: there is no folder {path.parent})")
        return
    except OSError as error:
        print(f"(not saved: {path}: {error.strerror or error})")
        return
    except DataError as error:
        print(f"(not saved: {error})")
        return
    print(f"(saved {len(chat.turns)} turns to {path})")

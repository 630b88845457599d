"""Chat with a twin: the model answers as the chosen person, as several short messages.

    python sample.py --checkpoint runs/me --speaker "Alexander Smirnov"

Each line you type is one message; an empty line sends your turn. /help lists the commands.
`--prompt`, `--history` and `--auto` answer once and exit, for scripts.
"""
import argparse
import sys
from pathlib import Path

import torch

from core.cli import program
from data.chatml import chat_format, fit_prompt, render
from data.sessions import DataError, Session, Turn, clean_message, parse_body, read_sessions_file, write_sessions
from model.generation import Generator, SamplingConfig
from model.lora import AdapterError, load_adapter, merge_lora, tokenizer_source
from model import CheckpointError, load_model, load_tokenizer
from model.checkpoint import check_finite
from model.tokenizer import Tokenizer, TokenizerError
from core.device import DTYPES, resolve_device
from training.settings import DEFAULT_MODEL, read_run_record

HELP = """commands:
  /reset          forget the conversation
  /as NAME        write as NAME from now on
  /speaker NAME   the model answers as NAME from now on
  /regen          sample the last reply again
  /save FILE      append the conversation to FILE as a sessions JSONL line
  /temp X         sampling temperature (0: greedy)
  /help           this list
  /quit           leave (Ctrl-D too); Ctrl-C stops a reply"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speaker", required=True, help="the person the model writes as")
    parser.add_argument("--as", dest="user", help="the person you write as (default: the speaker's most "
                        "frequent partner in the training data when known, else User)")
    source = parser.add_argument_group("model")
    source.add_argument("--checkpoint", help="a train.py output directory (it knows its base model); replaces --model/--adapter")
    source.add_argument("--model", default=DEFAULT_MODEL, help="base, merged or exported model: directory or Hub repo id (default: %(default)s)")
    source.add_argument("--adapter", help="a LoRA adapter directory (twin or PEFT), merged into the model at load (default: none)")
    once = parser.add_argument_group("non-interactive")
    once.add_argument("--prompt", help=r"one turn of yours, messages separated by newlines (a literal \n counts too); prints the reply and exits")
    once.add_argument("--history", help="a conversation to continue: a sessions JSONL file (its first session) or one session as JSON")
    once.add_argument("--auto", type=int, metavar="TURNS", help="let the model play both people for TURNS turns, print them and exit")
    once.add_argument("-n", type=int, default=1, help="how many replies to sample with --prompt/--history (default: %(default)s)")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--temperature", type=float, default=0.7, help="0: greedy (default: %(default)s)")
    sampling.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (default: %(default)s)")
    sampling.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens; 0: all (default: %(default)s)")
    sampling.add_argument("--repetition-penalty", type=float, default=1.0, help=">1 discourages repeating the context (default: %(default)s)")
    sampling.add_argument("--max-new-tokens", type=int, default=256, help="longest reply in tokens (default: %(default)s)")
    sampling.add_argument("--seed", type=int, help="seed for reproducible samples (default: random)")
    run = parser.add_argument_group("run")
    run.add_argument("--context", type=int, default=4096, help="tokens of conversation the model sees; older turns are dropped (default: %(default)s)")
    run.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: %(default)s)")
    run.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="default: bf16 on cuda, fp32 on cpu")
    run.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA; slow start, faster decoding) (default: off)")
    return parser


def load_chat_model(args, device: torch.device, dtype: torch.dtype):
    """The model (any adapter merged in), its tokenizer, and what the training run knew of the people."""
    model_source, adapter, people = args.model, args.adapter, {}
    if args.checkpoint:
        out = Path(args.checkpoint)
        run = read_run_record(out)
        people = run.get("figures", {}).get("partners", {})
        if (out / "model").exists():  # a full fine-tune's export
            model_source, adapter = out / "model", None
        else:
            model_source, adapter = run["settings"]["model"], out / "adapter"
    tokenizer = load_tokenizer(tokenizer_source(model_source, adapter))
    model = load_model(model_source, dtype=dtype, device=device)
    check_finite(model, model_source)  # the adapter's weights are checked as it loads
    if adapter:
        load_adapter(model, adapter)
        merge_lora(model)  # one matrix per projection again: decoding as fast as the base model
    return model.eval(), tokenizer, people


class Chat:
    """A conversation between two people, one of them played by the model."""

    def __init__(self, generator: Generator, tokenizer: Tokenizer, sampling: SamplingConfig,
                 speaker: str, user: str, seed: int | None, interruptible: bool = True):
        self.generator, self.tokenizer, self.sampling = generator, tokenizer, sampling
        self.speaker, self.user = speaker, user
        self.interruptible = interruptible  # Ctrl-C ends a reply (a person chatting), not the program
        self.turns: list[Turn] = []
        self.random = torch.Generator()
        self.random.manual_seed(seed) if seed is not None else self.random.seed()

    def add(self, turn: Turn) -> None:
        """Add a turn to the conversation, its messages cleaned as in training (no control characters,
        no lone surrogates, which a terminal can pass on from bytes that are not UTF-8)."""
        turn.messages = [clean_message(message) for message in turn.messages]
        self.turns.append(turn)

    def prompt(self, speaker: str) -> list[int]:
        return fit_prompt(self.turns, self.tokenizer, speaker, self.generator.max_len - self.sampling.max_new_tokens)

    def reply(self, speaker: str, echo=lambda text: None) -> Turn:
        """Sample `speaker`'s next turn, streaming its text to `echo`, and add it to the conversation.

        Ctrl-C (KeyboardInterrupt) stops the reply where it is and keeps what was written so far.
        """
        stream = self.tokenizer.stream()
        layout = chat_format(self.tokenizer)  # a turn ends at its end token, or where another header starts
        stop_ids = {layout.turn_end_id, layout.header_start_id, self.tokenizer.eos_id}
        text = ""
        try:
            for token in self.generator.generate(self.prompt(speaker), self.sampling, stop_ids, self.random):
                if token in stop_ids:
                    break
                piece = stream.add(token)
                text += piece
                echo(piece)
        except KeyboardInterrupt:
            if not self.interruptible:
                raise
            echo(" [stopped]")
        text += stream.flush()
        turn = Turn(speaker, parse_body(text))
        self.add(turn)
        return turn


def show_turn_header(name: str) -> None:
    print(f"\n{name}:", flush=True)


def echo(text: str) -> None:
    print(text, end="", flush=True)


def split_messages(text: str) -> list[str]:
    """--prompt's messages: one per line, where a literal backslash-n also breaks a line."""
    return [line for line in text.replace("\\n", "\n").split("\n") if line.strip()]


def interactive(chat: Chat) -> None:
    print(f"You are {chat.user}, the model is {chat.speaker}. One message a line; an empty line sends "
          "(on its own, it lets the model write again). /help for commands.")
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
            if not command(chat, line):
                return
            continue
        if line.strip():
            messages.append(line)
            continue
        if messages:
            chat.add(Turn(chat.user, messages))
            messages = []
        show_turn_header(chat.speaker)
        chat.reply(chat.speaker, echo)
        print()


def command(chat: Chat, line: str) -> bool:
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
        setattr(chat, "user" if name == "/as" else "speaker", value)
        print(f"(you are {chat.user}, the model is {chat.speaker})")
    elif name == "/regen":
        if chat.turns and chat.turns[-1].speaker != chat.user:
            regenerated = chat.turns.pop()
            show_turn_header(regenerated.speaker)
            chat.reply(regenerated.speaker, echo)
            print()
        else:
            print("(no reply to sample again)")
    elif name == "/save" and value:
        save_transcript(chat, Path(value))
    elif name == "/temp" and value:
        try:
            chat.sampling.temperature = float(value)
            print(f"(temperature {chat.sampling.temperature})")
        except ValueError:
            print(f"(/temp needs a number, not {value!r})")
    else:
        print(f"(unknown command or missing argument: {line}; /help lists them)")
    return True


def save_transcript(chat: Chat, path: Path) -> None:
    """/save: append the conversation to a sessions file; a failure is reported, and the chat goes on."""
    if not chat.turns:
        print("(nothing to save yet)")
        return
    try:
        sessions = read_sessions_file(path) if path.exists() and path.stat().st_size else []
        write_sessions(sessions + [Session(chat="sample.py", chat_type="personal_chat", start=0,
                                           turns=list(chat.turns), target=chat.speaker)], path)
    except (OSError, DataError) as error:
        print(f"(not saved: {error})")
        return
    print(f"(saved {len(chat.turns)} turns to {path})")


@program
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (CheckpointError, TokenizerError, AdapterError, DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def run(args) -> None:
    device, dtype = resolve_device(args)
    model, tokenizer, partners = load_chat_model(args, device, dtype)
    context = min(args.context, model.config.max_position_embeddings)
    if args.max_new_tokens >= context:
        raise ValueError(f"--max-new-tokens ({args.max_new_tokens}) must be below --context ({context})")
    generator = Generator(model, max_len=context, device=device, compile=args.compile)
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                              repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens)
    user = args.user or partners.get(args.speaker) or "User"
    chat = Chat(generator, tokenizer, sampling, args.speaker, user, args.seed)

    if args.history:
        sessions = read_sessions_file(args.history)
        if not sessions:
            raise DataError(f"{args.history}: no session in it")
        for turn in sessions[0].turns:
            chat.add(turn)
    if args.prompt is not None:
        chat.add(Turn(user, split_messages(args.prompt)))

    if args.auto:
        for turn in chat.turns:
            show_turn_header(turn.speaker)
            print("\n".join(f">>> {m}" for m in turn.messages))
        speakers = [args.speaker, user]
        first = 0 if not chat.turns or chat.turns[-1].speaker != args.speaker else 1
        for index in range(args.auto):
            speaker = speakers[(first + index) % 2]
            show_turn_header(speaker)
            chat.reply(speaker, echo)
            print()
    elif args.prompt is not None or args.history:
        history = list(chat.turns)
        for index in range(args.n):
            chat.turns = list(history)
            if args.n > 1:
                print(f"--- reply {index + 1} of {args.n}")
            show_turn_header(args.speaker)
            chat.reply(args.speaker, echo)
            print()
    else:
        interactive(chat)


if __name__ == "__main__":
    main()

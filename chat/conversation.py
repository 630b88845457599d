"""A conversation between two people, one of them played by the model: its turns, its prompt, its replies."""

import time

from chat.recall import TwinMemory
from core.errors import TwinError
from data.chatml import reply_prompt, turn_stop_ids
from data.sessions import Turn, clean_message, messages_of
from model.generation import Generator, SamplingConfig, random_stream
from model.tokenizer import Tokenizer


class TurnTooLong(TwinError):
    """The conversation's newest turn alone takes more of the context than a prompt may."""


class Chat:
    """A conversation between two people, one of them played by the model."""

    def __init__(
        self,
        generator: Generator,
        tokenizer: Tokenizer,
        sampling: SamplingConfig,
        speaker: str,
        user: str,
        seed: int | None,
        interruptible: bool = True,
        memory: TwinMemory | None = None,
    ):
        self.generator, self.tokenizer, self.sampling = generator, tokenizer, sampling
        self.speaker, self.user = speaker, user
        self.memory = memory  # earlier conversations of the two, before the prompt
        self.interruptible = interruptible  # Ctrl-C ends a reply (a person chatting), not the program
        self.turns: list[Turn] = []
        self.started = int(time.time())  # a saved conversation's start, as an export's session has one
        self.random = random_stream(seed)

    def add(self, turn: Turn) -> None:
        """Add a turn to the conversation, its messages cleaned as in training (no control characters,
        no lone surrogates, which a terminal can pass on from bytes that are not UTF-8)."""
        turn.messages = [clean_message(message) for message in turn.messages]
        self.turns.append(turn)

    def prompt(self, speaker: str) -> list[int]:
        """The conversation up to `speaker`'s open header, its oldest turns dropped to leave room for the
        reply; TurnTooLong where even the newest turn cannot stay (it would be answered unseen)."""
        partner = self.user if speaker == self.speaker else self.speaker
        context = self.memory.context(speaker, partner, self.started, self.turns, self.tokenizer) if self.memory else []
        ids, kept = reply_prompt(
            self.turns, self.tokenizer, speaker, self.generator.max_len, self.sampling.max_new_tokens, context
        )
        if self.turns and not kept:
            raise TurnTooLong(
                f"the last turn is too long for the context of {self.generator.max_len} tokens, "
                f"{self.sampling.max_new_tokens} of them kept for the reply: shorten it, or raise "
                "--context or lower --max-new-tokens"
            )
        return ids

    def reply(self, speaker: str, prompt: list[int], echo=lambda text: None) -> Turn:
        """Sample `speaker`'s next turn after `prompt` (self.prompt(speaker)), streaming its text to `echo`,
        and add it to the conversation.

        Ctrl-C (KeyboardInterrupt) stops the reply where it is and keeps what was written so far.
        """
        stream = self.tokenizer.stream()
        stop_ids = turn_stop_ids(self.tokenizer)
        text = ""
        try:
            for token in self.generator.generate(prompt, self.sampling, stop_ids, self.random):
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
        turn = Turn(speaker, messages_of(text))
        self.add(turn)
        return turn

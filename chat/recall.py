"""The memory a twin talks with: the run's store of conversations and the settings it trained with, the chat two
people share (the scope of what is recalled), the one line that says what it uses, and, only where the user
asks for it (--remember), a conversation with the twin added to it."""

from dataclasses import dataclass, field
from pathlib import Path

from core.flags import SettingsError, from_dict, setting
from core.run_folder import RunFolder, RunFolderError, RunRecord
from data.sessions import Session, Turn
from memory.context import Memory
from memory.settings import MemoryConfig
from memory.store import Conversations, load_store, save_store
from model.tokenizer import Tokenizer


@dataclass
class MemoryChoice:
    """Whether a twin talks with its run's memory, and keeps its own conversations in it."""

    memory: bool = setting(
        True,
        "answer with the run's memory of earlier conversations; --no-memory: without it (default: the history "
        "and recall the run trained with)",
    )
    remember: bool = setting(
        False, "add the conversations had with the twin to the run's memory (default: off: the twin forgets them)"
    )


@dataclass
class TwinMemory:
    """A run's memory, as it trained: before each reply, the history and the recalled conversations of the chat
    the two people share (or of every chat, where the run was trained with --recall-all-chats)."""

    conversations: Conversations
    config: MemoryConfig
    folder: Path
    remember: bool
    _memory: Memory | None = field(default=None, init=False, repr=False)  # made on the first reply, with the tokenizer

    def chat_between(self, speaker: str, partner: str) -> str | None:
        """The chat the two speak in: the personal one where there is one, else the one with most conversations
        of both; None where they never spoke together (nothing is then recalled but with --recall-all-chats)."""
        shared = set(self.conversations.chats_of(speaker)) & set(self.conversations.chats_of(partner))
        sessions = self.conversations.sessions
        personal = {chat for chat in shared if any(s.chat == chat and s.chat_type == "personal_chat" for s in sessions)}
        return min(
            shared, key=lambda chat: (chat not in personal, -len(self.conversations.by_chat[chat]), chat), default=None
        )

    def context(self, speaker: str, partner: str, started: int, turns: list[Turn], tokenizer: Tokenizer) -> list[Turn]:
        """What comes before the conversation of `speaker` and `partner` started at `started`, `turns` so far."""
        if self._memory is None:
            self._memory = Memory(self.conversations, self.config, tokenizer)
        return self._memory.context(self.chat_between(speaker, partner), started, turns)

    def describe(self) -> str:
        """What the twin remembers, in one line."""
        adding = "new conversations are added to it (--remember)" if self.remember else "new conversations are not kept"
        return f"memory: {len(self.conversations.sessions):,} earlier conversations; {self.config.describe()}; {adding}"

    def add(self, speaker: str, partner: str, started: int, turns: list[Turn]) -> None:
        """Keep a conversation with the twin (only with --remember), in the chat of the two people."""
        if not self.remember or not turns:
            return
        chat = self.chat_between(speaker, partner) or partner
        new = Session(
            chat,
            "personal_chat",
            started,
            list(turns),
            target=self.conversations.sessions[0].target if self.conversations.sessions else speaker,
        )
        self.conversations, self._memory = save_store(self.folder, [*self.conversations.sessions, new]), None


def memory_of_run(run: RunFolder, record: RunRecord, choice: MemoryChoice) -> TwinMemory | None:
    """The memory of the run, or None: asked off (--no-memory), or a run trained without one (or before twin had
    memory). A store that cannot be read is refused here, before the model loads."""
    if not choice.memory or "history_tokens" not in record.section("memory"):
        return None
    try:
        config = from_dict(MemoryConfig, record.section("memory"), flat=record.flat)
    except SettingsError as error:
        raise RunFolderError(f"{record.file}: {error}") from None
    if not config.on:
        return None
    return TwinMemory(load_store(run.memory), config, run.memory, choice.remember)

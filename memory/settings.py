"""How much of the past comes before a conversation: the memory settings a run trains with and keeps.
Without torch, so that train.py's --help answers before torch loads (memory.context acts on them)."""

from dataclasses import dataclass

from core.flags import non_negative_int, setting


@dataclass
class MemoryConfig:
    """How much of the past comes before a conversation: train.py's memory flags, kept by the run for
    sample.py, serve.py and evaluate.py."""

    # Defaults measured on the sample export with SmolLM2's tokenizer: of its 61 fact turns (memory.facts), the
    # fact stands in the memory of 16 with 128 tokens of history alone, 28 with 256; of 38 with 2 recalled
    # conversations alone; of 44 with both, at 441 tokens a session on average, memory included (256 tokens of
    # history on top: 42, at 561 tokens). Since recall prefers recent conversations more and may take up one the
    # history cuts: of 48 with both (python bench/bench_recall.py).
    history_tokens: int = setting(
        128,
        "tokens of the same chat's conversations just before a session, placed before it as context (0: none)",
        type=non_negative_int,
    )
    recall: int = setting(
        2,
        "earlier conversations of the same chat most like the current one (BM25), placed before the history (0: none)",
        type=non_negative_int,
    )
    recall_tokens: int = setting(
        256, "tokens the recalled conversations take at most, all together", type=non_negative_int
    )
    recall_all_chats: bool = setting(
        False,
        "recall from every chat, not only the one talked in: the twin may "
        "then tell one person what the owner told another",
    )

    @property
    def on(self) -> bool:
        return self.history_tokens > 0 or (self.recall > 0 and self.recall_tokens > 0)

    def describe(self) -> str:
        if not self.on:
            return "memory off"
        scope = (
            "every chat (--recall-all-chats; warning: the twin may tell one person what the owner told another)"
            if self.recall_all_chats
            else "the same chat only"
        )
        history = (
            f"the last {self.history_tokens} tokens of the chat's history" if self.history_tokens else "no history"
        )
        if not (self.recall and self.recall_tokens):
            return f"{history}, and no recalled conversation"
        conversations = "1 recalled conversation" if self.recall == 1 else f"{self.recall} recalled conversations"
        return f"{history}, and {conversations} ({self.recall_tokens} tokens) from {scope}"

"""How often a model fails as a person: it talks like an assistant, refuses, says nothing, repeats
itself, or answers something other than what was said. Each is a share of the replies a model wrote,
in [0, 1]; the same figures of the person's real turns at the same contexts show how often people do it.
"""

import re
from collections import Counter
from dataclasses import dataclass

from fidelity.text import ngrams, words

_APOSTROPHE = "['’]"
ASSISTANT_LEAK = re.compile(
    "|".join(
        [
            r"\bas an ai\b",
            rf"\bi{_APOSTROPHE}m an ai\b",
            r"\bi am an ai\b",
            r"\bas a (?:large )?language model\b",
            r"\b(?:ai|large) language model\b",
            r"\bhow (?:can|may) i (?:assist|help) you\b",
            rf"\bi{_APOSTROPHE}m here to (?:help|assist)\b",
            r"\bi am here to (?:help|assist)\b",
            r"\bopenai\b",
            r"\bкак (?:ии|искусственный интеллект|языковая модель)\b",
            r"\bя\s*(?:[—–-]\s*)?(?:ии|искусственный интеллект|языковая модель|ai-ассистент|виртуальный ассистент)\b",
            r"\bязыков(?:ая|ой|ую) модел",
            r"\bчем (?:я )?могу (?:вам |тебе )?помочь\b",
            r"\bкак я могу (?:вам )?помочь\b",
        ]
    ),
    re.IGNORECASE,
)
REFUSAL = re.compile(
    "|".join(
        [
            rf"\bi{_APOSTROPHE}m sorry,? but i (?:can{_APOSTROPHE}t|cannot|won{_APOSTROPHE}t)\b",
            rf"\bi (?:can{_APOSTROPHE}t|cannot|can not) (?:help with|assist with|provide|comply|fulfil)",
            rf"\bi{_APOSTROPHE}m (?:not able|unable) to (?:help|assist|provide|comply)\b",
            r"\bi am (?:not able|unable) to (?:help|assist|provide|comply)\b",
            r"\b(?:извините|простите|к сожалению),? (?:но )?я не могу\b",
            r"\bя не могу (?:помочь с|помочь вам|ответить на (?:этот|такой|ваш)|предоставить|выполнить (?:этот|вашу|такой))",
        ]
    ),
    re.IGNORECASE,
)
REPEATED_NGRAM = 3  # words: the same three words twice in one reply is a loop ("ok ok ok ok" has one)
SHARED_NGRAM = 4  # words: a reply sharing four words in a row with a reply at another context repeats a template
STEM = 5  # leading characters that make two words one for the overlap test: "работа" and "работу" share "работ"
CONTEXT_WORD = 3  # shorter words ("да", "ok", "и") say nothing about what a reply answers


@dataclass
class FailureRates:
    replies: int
    assistant_leaks: float  # "As an AI", "How can I assist you", "как ИИ", "чем могу помочь"
    refusals: float  # "I'm sorry, but I can't", "я не могу помочь с"
    empty: float  # no message with any text
    repeats_itself: float  # the same word trigram twice within the reply
    repeats_across: float  # identical to, or sharing a word 4-gram with, a reply at another context
    ignores_context: float | None  # no word in common with the context, where the real reply has one
    context_bound: int  # the contexts where the real reply has a word in common with the context


def is_empty(turn: list[str]) -> bool:
    return not any(message.strip() for message in turn)


def repeats_itself(turn: list[str]) -> bool:
    return any(count > 1 for count in Counter(ngrams(words(turn), REPEATED_NGRAM)).values())


def repeated_across(turns: list[list[str]]) -> list[bool]:
    """For each turn, whether it is another turn's duplicate or shares a word 4-gram with one."""
    whole = [tuple(words(turn)) for turn in turns]
    shared = [set(ngrams(list(turn_words), SHARED_NGRAM)) for turn_words in whole]
    turns_with = Counter(ngram for ngram_set in shared for ngram in ngram_set)
    duplicates = Counter(turn_words for turn_words in whole if turn_words)
    return [
        (bool(turn_words) and duplicates[turn_words] > 1) or any(turns_with[ngram] > 1 for ngram in ngram_set)
        for turn_words, ngram_set in zip(whole, shared)
    ]


def stems(turn: list[str]) -> set[str]:
    return {word[:STEM] for word in words(turn) if len(word) >= CONTEXT_WORD}


def failure_rates(replies: list[list[str]], real: list[list[str]], contexts: list[list[str]]) -> FailureRates:
    """The failure rates of `replies`, each written at the context whose messages are in `contexts` and
    where the person really wrote the turn in `real`."""
    if not len(replies) == len(real) == len(contexts):
        raise ValueError(f"one reply, real turn and context each: {len(replies)}, {len(real)}, {len(contexts)}")

    def share(flags: list[bool]) -> float:
        return sum(flags) / len(flags) if flags else 0.0

    texts = ["\n".join(reply) for reply in replies]
    bound = [
        (reply, context) for reply, truth, context in zip(replies, real, contexts) if stems(truth) & stems(context)
    ]
    return FailureRates(
        replies=len(replies),
        assistant_leaks=share([bool(ASSISTANT_LEAK.search(text)) for text in texts]),
        refusals=share([bool(REFUSAL.search(text)) for text in texts]),
        empty=share([is_empty(reply) for reply in replies]),
        repeats_itself=share([repeats_itself(reply) for reply in replies]),
        repeats_across=share(repeated_across(replies)),
        ignores_context=share([not stems(reply) & stems(context) for reply, context in bound]) if bound else None,
        context_bound=len(bound),
    )

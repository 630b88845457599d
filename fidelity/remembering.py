"""Does the memory help? The tuned model on the same held-out sessions with its memory and without it: each
speaker's loss, and on the fact turns (memory.facts: turns that take up something said in an earlier
conversation of the chat) their loss and how often the turns the model writes there state the fact.

Memory can help by copying: a held-out turn that stands nearly word for word in a recalled conversation is
easy to predict with it, whether or not the twin remembers anything that matters (in the bundled sample,
played from templates, that is most turns). So every figure is also given on the turns new to the memory:
a turn is "in memory" when at least IN_MEMORY_SHARE of its phrases (word 4-grams, or the whole message
where it is shorter) stand in the text of the memory placed before its session.
"""

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from math import exp

import numpy as np
import torch

from data.chatml import RenderedSession, split_to_fit
from data.dataset import PreparedData
from data.packing import pack
from data.sessions import Turn
from fidelity.calibration import INTERVAL, RESAMPLES
from fidelity.measure import model_writer, packed_losses
from fidelity.plan import Context, EvalSettings
from fidelity.sampling import batches_with_progress
from memory.context import MARK_SPEAKER, Memory
from memory.facts import NAME, FactTurn, fact_turns, states_fact, words_of
from memory.settings import MemoryConfig
from memory.store import Conversations
from model.tokenizer import Tokenizer
from model.transformer import Transformer

SETTINGS = ("without", "with")
PHRASE_WORDS = 4
IN_MEMORY_SHARE = 0.5
WORD = re.compile(r"\w+")


@dataclass
class MemoryFigures:
    """The tuned model without and with its memory, on the held-out sessions. Losses are "without"/"with" ->
    mean cross-entropy per trained token; "new" figures count only the turns not in memory (None where there
    are none)."""

    config: dict  # the memory's settings
    loss: dict[str, dict[str, float]]  # speaker -> "without"/"with" -> loss on their held-out turns
    in_memory: dict[str, float]  # speaker -> share of their held-out turns that stand in the memory
    new_loss: dict[str, dict[str, float] | None]  # speaker -> "without"/"with" -> loss on their turns not in memory
    fact_turns: int  # in the held-out sessions
    fact_speakers: dict[str, int]  # speaker -> their fact turns
    fact_loss: dict[str, float]  # "without"/"with" -> loss on the fact turns
    fact_turns_in_memory: int = 0  # of the fact turns, those that stand in the memory
    facts_remembered: int = 0  # of the fact turns, those whose memory holds the fact (what recall must find)
    fact_new_loss: dict[str, float] | None = None  # as fact_loss, on the fact turns not in memory
    fact_new_recall: dict[str, float] | None = None  # as `fact_recall`, on the fact turns not in memory
    # "without"/"with" -> loss on the tokens of the fact's name in the real fact turns, given the words before it
    # (teacher-forced: how likely the twin finds the name, whether or not its sampled turn goes that way)
    name_loss: dict[str, float] | None = None
    fact_samples: int = 1  # turns written at each fact turn's moment, without and with memory
    # "without"/"with" -> at each fact turn's moment, how many of its fact_samples written turns state the fact
    fact_stated: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    # speaker -> the trained tokens of their held-out turns
    tokens: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def fact_recall(self) -> dict[str, float]:
        """ "without"/"with" -> the share of the turns written at the fact turns' moments that state the fact (none
        where the report writes no turn)."""
        return {
            setting: sum(stated) / (len(stated) * self.fact_samples) for setting, stated in self.fact_stated.items()
        }

    def without_memory(self) -> tuple[dict[str, float], dict[str, int]]:
        """Each speaker's held-out loss and tokens without memory: what fidelity.measure.speaker_losses gives
        the tuned model (0.0 for a speaker without held-out turns), so that the report runs that pass once."""
        loss = {speaker: self.loss[speaker]["without"] if count else 0.0 for speaker, count in self.tokens.items()}
        return loss, self.tokens

    def recall_gain(self) -> tuple[float, float, float] | None:
        """How much larger a share of the written turns states the fact with memory than without, and its 95%
        interval, which resamples the fact turns' moments, each with all its written turns without and with
        memory: the turns of one moment stand or fall together (one moment's memory holds the fact, another's
        does not), so they do not count as independent draws. None where no turn was written."""
        if set(self.fact_stated) != set(SETTINGS):
            return None
        gains = (np.array(self.fact_stated["with"]) - np.array(self.fact_stated["without"])) / self.fact_samples
        resampled = np.random.default_rng(0).integers(0, len(gains), size=(RESAMPLES, len(gains)))
        low, high = np.percentile(gains[resampled].mean(axis=1), INTERVAL)
        return float(gains.mean()), float(low), float(high)

    def recall_clearly_higher(self) -> bool | None:
        """Whether the written turns state the fact more often with memory: the gain's interval above 0. None
        where no turn was written."""
        gain = self.recall_gain()
        return None if gain is None else gain[1] > 0

    def stated_text(self, setting: str) -> str:
        """ "16 of 240 written turns (at 4 of 30 moments)": how often, and how widely, the turns state the fact."""
        stated = self.fact_stated[setting]
        turns = f"{sum(stated)} of {len(stated) * self.fact_samples} written turns"
        return (
            turns
            if self.fact_samples == 1
            else f"{turns} (at {sum(count > 0 for count in stated)} of {len(stated)} moments)"
        )

    def gain_text(self) -> str:
        """The gain and its interval, and what they decide."""
        gain, low, high = self.recall_gain()
        verdict = "clearly higher with memory" if low > 0 else "not clearly higher with memory"
        return (
            f"{100 * gain:+.1f} points with memory (95% {100 * low:+.1f} to {100 * high:+.1f}, resampling the "
            f"{len(self.fact_stated['with'])} moments): {verdict}"
        )

    def _recall_with_interval(self) -> str:
        return f", state the fact in {self.stated_text('without')} → {self.stated_text('with')}, {self.gain_text()}"

    def summary(self) -> list[str]:
        lines = [
            f"memory, without → with ({self.fact_turns} fact turns held out; in memory: at least "
            f"{IN_MEMORY_SHARE:.0%} of the turn's phrases stand in the memory):"
        ]
        for speaker, loss in self.loss.items():
            lines.append(
                f"  {speaker}: loss {loss['without']:.3f} → {loss['with']:.3f}; {_new_text(self.new_loss[speaker])} "
                f"on the {1 - self.in_memory[speaker]:.0%} of turns not in memory"
            )
        if self.fact_turns:
            lines.append(
                f"  fact turns: loss {self.fact_loss['without']:.3f} → {self.fact_loss['with']:.3f}"
                + (self._recall_with_interval() if self.fact_stated else "")
                + f"; the memory holds the fact at {self.facts_remembered} of {self.fact_turns}"
            )
            if self.name_loss:
                lines.append(f"  the fact's name, given the turn's words before it: {_name_text(self.name_loss)}")
            new = self.fact_turns - self.fact_turns_in_memory
            lines.append(
                f"  the {new} fact turns not in memory: "
                + (
                    f"loss {_new_text(self.fact_new_loss)}"
                    + (_recall_text(self.fact_new_recall) if self.fact_new_recall else "")
                    if new
                    else "none"
                )
            )
        return lines

    def markdown(self) -> list[str]:
        lines = [
            "",
            "## Memory",
            "",
            "The tuned model on the same held-out sessions without its memory and with it "
            f"({', '.join(f'{key} {value}' for key, value in self.config.items())}). A turn is *in memory* when at "
            f"least {IN_MEMORY_SHARE:.0%} of its phrases (word {PHRASE_WORDS}-grams, or a whole shorter message) "
            "stand word for word in the memory placed before its session: with memory, the model can copy such "
            "a turn rather than know it. The turns *not in memory* show what the memory adds beyond copying.",
            "",
            "| speaker | turns in memory | all turns: loss without | with | turns not in memory: loss without | with |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for speaker, loss in self.loss.items():
            new = self.new_loss[speaker]
            lines.append(
                f"| {' '.join(speaker.replace('|', '/').split())} | {self.in_memory[speaker]:.0%} | "
                f"{loss['without']:.3f} | {loss['with']:.3f} | "
                + (f"{new['without']:.3f} | {new['with']:.3f} |" if new else "– | – |")
            )
        if not self.fact_turns:
            return lines + ["", "No held-out turn takes up a fact of an earlier conversation."]
        new = self.fact_turns - self.fact_turns_in_memory
        lines += [
            "",
            "Fact turns take up a rare name said in an earlier conversation of the chat (a city, a pet, an "
            "employer): only memory can get them right, and only where it holds the name: here at "
            f"{self.facts_remembered} of {self.fact_turns}.",
            "",
            f"| {self.fact_turns} fact turns ({new} not in memory) | without memory | with memory |",
            "|---|---:|---:|",
            f"| loss, all | {self.fact_loss['without']:.3f} | {self.fact_loss['with']:.3f} |",
        ]
        if self.name_loss:
            lines.append(
                "| the fact's name, given the turn's words before it: loss (a token's chance) | "
                + " | ".join(
                    f"{self.name_loss[setting]:.2f} ({chance(self.name_loss[setting])})" for setting in SETTINGS
                )
                + " |"
            )
        if self.fact_new_loss:
            lines.append(
                f"| loss, not in memory | {self.fact_new_loss['without']:.3f} | {self.fact_new_loss['with']:.3f} |"
            )
        if self.fact_stated:
            lines.append(
                f"| turns written at the fact turns' moments ({self.fact_samples} a moment) that state the fact | "
                + " | ".join(self.stated_text(setting) for setting in SETTINGS)
                + " |"
            )
        if self.fact_new_recall:
            lines.append(
                f"| written turns that state the fact, not in memory | {self.fact_new_recall['without']:.0%} | "
                f"{self.fact_new_recall['with']:.0%} |"
            )
        if self.fact_stated:
            lines += ["", f"Written turns that state the fact: {self.gain_text()}."]
        return lines


def _new_text(loss: dict[str, float] | None) -> str:
    return f"{loss['without']:.3f} → {loss['with']:.3f}" if loss else "–"


def _name_text(loss: dict[str, float]) -> str:
    return (
        f"loss {loss['without']:.2f} → {loss['with']:.2f} (a token's chance "
        f"{chance(loss['without'])} → {chance(loss['with'])})"
    )


def chance(loss: float) -> str:
    """The probability a loss per token stands for, as a reader takes it in: "40%", or "1 in 1,400"."""
    probability = exp(-loss)
    return f"{probability:.0%}" if probability >= 0.1 else f"1 in {float(f'{1 / probability:.2g}'):,.0f}"


def _recall_text(recall: dict[str, float]) -> str:
    return f", state the fact {recall['without']:.0%} → {recall['with']:.0%}"


def _text(memory: list[Turn]) -> str:
    return "\n".join(message for turn in memory if turn.speaker != MARK_SPEAKER for message in turn.messages)


def phrases(messages: list[str]) -> set[tuple[str, ...]]:
    """A turn's phrases: each message's word PHRASE_WORDS-grams, lower case, or the whole message where it
    has fewer words."""
    found = set()
    for message in messages:
        words = WORD.findall(message.lower())
        if 0 < len(words) <= PHRASE_WORDS:
            found.add(tuple(words))
        else:
            found |= {tuple(words[start : start + PHRASE_WORDS]) for start in range(len(words) - PHRASE_WORDS + 1)}
    return found


def memory_phrases(memory: list[Turn]) -> set[tuple[str, ...]]:
    """Every run of up to PHRASE_WORDS words within a message of the memory (not its time marks)."""
    found = set()
    for turn in memory:
        if turn.speaker == MARK_SPEAKER:
            continue
        for message in turn.messages:
            words = WORD.findall(message.lower())
            found |= {
                tuple(words[start : start + length])
                for length in range(1, PHRASE_WORDS + 1)
                for start in range(len(words) - length + 1)
            }
    return found


def in_memory(turn: Turn, known: set[tuple[str, ...]]) -> bool:
    """Whether at least IN_MEMORY_SHARE of the turn's phrases stand in `known` (memory_phrases of a memory)."""
    own = phrases(turn.messages)
    return bool(own) and len(own & known) >= IN_MEMORY_SHARE * len(own)


@torch.no_grad()
def measure_memory(
    model: Transformer,
    tokenizer: Tokenizer,
    data: PreparedData,
    speakers: list[str],
    config: MemoryConfig,
    settings: EvalSettings,
    device: torch.device,
    caps: dict[str, int] | None = None,
) -> MemoryFigures:
    """The figures of MemoryFigures. A held-out session remembers every conversation before it, training's
    and held-out ones alike, as the twin does when it chats. A fact turn is written as the report writes a turn,
    cut at its speaker's length in `caps` (fidelity.measure.turn_length_caps; a speaker without one is cut at
    settings.sampling.max_new_tokens, as turn_length_cap cuts a speaker without turns to go by).

    Each setting's losses take one pass over the held-out sessions, cut and packed as training does with the
    memory before them: each turn's tokens count in the group of its kind (its speaker, whether it is in
    memory, whether it is a fact turn)."""
    was_training = model.training
    model.eval()
    try:
        sessions = data.val_sessions
        everything = data.train_sessions + sessions
        memory = Memory(Conversations(everything), config, tokenizer)
        remembered = [memory.for_session(session) for session in sessions]
        facts = fact_turns(sessions, everything)
        number_of = {id(session): number for number, session in enumerate(sessions)}
        fact_at = {(number_of[id(fact.session)], fact.turn): fact for fact in facts}
        kinds = []  # per session, the kind of each turn: (speaker, in memory, fact turn, False)
        for number, (session, context) in enumerate(zip(sessions, remembered)):
            known = memory_phrases(context)
            kinds.append(
                [
                    (turn.speaker, in_memory(turn, known), (number, index) in fact_at, False)
                    for index, turn in enumerate(session.turns)
                ]
            )
        # The tokens of a fact turn's name count apart: (speaker, in memory, True, True).
        name_kinds = {place: (*kinds[place[0]][place[1]][:3], True) for place in fact_at}
        groups = {
            kind: group
            for group, kind in enumerate(sorted({kind for found in kinds for kind in found} | set(name_kinds.values())))
        }
        names = [{} for _ in sessions]  # per session: turn -> (the group of its name's tokens, the name's token ids)
        for (number, index), fact in fact_at.items():
            names[number][index] = (groups[name_kinds[number, index]], name_forms(fact, tokenizer))
        sums = {
            setting: _group_losses(
                model,
                [
                    split_to_fit(
                        session.turns, tokenizer, data.report.seq_len, context=context if setting == "with" else []
                    )[0]
                    for session, context in zip(sessions, remembered)
                ],
                [[groups[kind] for kind in found] for found in kinds],
                names,
                len(groups),
                data.report.seq_len,
                settings.micro_batch,
                device,
                f"held-out loss {setting} memory",
            )
            for setting in SETTINGS
        }

        def loss(chosen: Callable[[str, bool, bool, bool], bool]) -> dict[str, float] | None:
            """Each setting's loss on the turns of the kinds `chosen` picks; None where they have no token."""
            picked = [group for kind, group in groups.items() if chosen(*kind)]
            total = {
                setting: [sum(sums[setting][part][group] for group in picked) for part in (0, 1)]
                for setting in SETTINGS
            }
            return {setting: loss / tokens for setting, (loss, tokens) in total.items()} if total["with"][1] else None

        tokens = {
            speaker: sum(sums["without"][1][group] for kind, group in groups.items() if kind[0] == speaker)
            for speaker in speakers
        }
        turns_in_memory = {
            speaker: [copied for found in kinds for who, copied, *_ in found if who == speaker] for speaker in speakers
        }
        speakers = [speaker for speaker in speakers if turns_in_memory[speaker]]  # those with held-out turns
        fact_copied = [kinds[number_of[id(fact.session)]][fact.turn][1] for fact in facts]
        facts_remembered = sum(
            bool(fact.words & words_of(_text(remembered[number_of[id(fact.session)]]))) for fact in facts
        )
        fact_new_recall, fact_stated = {}, {}
        if facts and settings.contexts:  # no turn written where the report writes none (--eval-contexts 0)
            memories = {
                setting: [remembered[number_of[id(fact.session)]] if setting == "with" else [] for fact in facts]
                for setting in SETTINGS
            }
            fact_stated = _stated(model, tokenizer, facts, memories, settings, device, caps or {})
            for setting, stated in fact_stated.items():
                new = [said for said, copied in zip(stated, fact_copied) if not copied]
                if new:
                    fact_new_recall[setting] = sum(new) / (len(new) * settings.fact_samples)
        speakers_of_facts = {}
        for fact in facts:
            speaker = fact.session.turns[fact.turn].speaker
            speakers_of_facts[speaker] = speakers_of_facts.get(speaker, 0) + 1
        return MemoryFigures(
            config=dataclasses.asdict(config),
            loss={
                speaker: loss(lambda who, copied, fact, name, speaker=speaker: who == speaker) for speaker in speakers
            },
            in_memory={speaker: sum(turns_in_memory[speaker]) / len(turns_in_memory[speaker]) for speaker in speakers},
            new_loss={
                speaker: loss(lambda who, copied, fact, name, speaker=speaker: who == speaker and not copied)
                for speaker in speakers
            },
            fact_turns=len(facts),
            fact_speakers=speakers_of_facts,
            fact_loss=loss(lambda who, copied, fact, name: fact) or {},
            fact_turns_in_memory=sum(fact_copied),
            facts_remembered=facts_remembered,
            fact_new_loss=loss(lambda who, copied, fact, name: fact and not copied),
            name_loss=loss(lambda who, copied, fact, name: name),
            fact_new_recall=fact_new_recall or None,
            fact_samples=settings.fact_samples,
            fact_stated=fact_stated,
            tokens=tokens,
        )
    finally:
        model.train(was_training)


def _group_losses(
    model: Transformer,
    pieces: list[list[RenderedSession]],
    turn_groups: list[list[int]],
    names: list[dict[int, tuple[int, list[list[int]]]]],
    count: int,
    seq_len: int,
    micro_batch: int,
    device: torch.device,
    desc: str,
) -> tuple[dict[int, float], dict[int, int]]:
    """The summed loss and the tokens of each of `count` groups of turns, from each session's pieces (every
    turn trained), the group of each of its turns and those of its names (_token_groups): one packing per group,
    differing only in which tokens count, and one pass of the model over them all."""
    flat, token_groups = [], []
    for session_pieces, groups, session_names in zip(pieces, turn_groups, names):
        flat += session_pieces
        token_groups += _token_groups(session_pieces, groups, session_names)
    rows = {
        group: pack(
            [
                RenderedSession(piece.ids, (np.asarray(piece.trained) & (found == group)).tolist())
                for piece, found in zip(flat, token_groups)
            ],
            seq_len,
        )
        for group in range(count)
    }
    return packed_losses(model, rows, micro_batch, device, desc)


def _token_groups(
    pieces: list[RenderedSession], turn_groups: list[int], names: dict[int, tuple[int, list[list[int]]]]
) -> list[np.ndarray]:
    """For each token of a session's pieces, the group of the turn it belongs to (-1: a header, a separator,
    the memory), or of its name where `names` gives the turn one (turn -> the name's group and token ids): the
    first place in the turn where one of the name's forms stands. Every turn of the session is trained and none
    of the memory is, so the trained tokens come in one run per turn (headers, never trained, stand between),
    in the turns' order."""
    found, turn = [], -1
    for piece in pieces:
        trained = np.asarray(piece.trained, dtype=bool)
        starts = trained & ~np.concatenate([[False], trained[:-1]])
        numbers = turn + np.cumsum(starts)
        turn = int(numbers[-1]) if len(numbers) else turn
        groups = np.where(trained, np.asarray(turn_groups)[numbers], -1)
        for number, (group, forms) in names.items():
            where = np.flatnonzero(trained & (numbers == number))
            if (span := first_match(np.asarray(piece.ids)[where].tolist(), forms)) is not None:
                groups[where[span[0] : span[1]]] = group
        found.append(groups)
    return found


def name_forms(fact: FactTurn, tokenizer: Tokenizer) -> list[list[int]]:
    """The token ids the fact's name may stand as in its turn: each name of the turn that is one of the fact's
    words, as written there, alone (a message's first word) and after a space."""
    text = "\n".join(fact.session.turns[fact.turn].messages)
    written = sorted({word for word in NAME.findall(text) if word.lower() in fact.words})
    return [tokenizer.encode(form, special=False) for word in written for form in (word, " " + word)]


def first_match(ids: list[int], forms: list[list[int]]) -> tuple[int, int] | None:
    """The span of the earliest place where one of `forms` stands in `ids` (the longest form there); None."""
    spans = [
        (start, start + len(form))
        for form in forms
        if form
        for start in range(len(ids) - len(form) + 1)
        if ids[start : start + len(form)] == form
    ]
    return min(spans, key=lambda span: (span[0], -span[1]), default=None)


def _stated(
    model: Transformer,
    tokenizer: Tokenizer,
    facts: list[FactTurn],
    memories: dict[str, list[list[Turn]]],
    settings: EvalSettings,
    device: torch.device,
    caps: dict[str, int],
) -> dict[str, list[int]]:
    """At each fact turn's moment, under each setting of `memories` (the memory it gives each moment), how many of
    the settings.fact_samples turns the model writes there (as the report writes a turn: fidelity.measure's
    model_writer) state the fact. The turns of every setting are written together; turn k at moment n is sampled
    with seed + n * fact_samples + k under each, whatever it is batched with, so that the settings' turns differ
    by the memory only. A moment's turns follow each other, so each after the first reuses its whole prompt. A
    turn is cut at its speaker's length in `caps` (max_new_tokens for a speaker without one)."""
    speakers = {fact.session.turns[fact.turn].speaker for fact in facts}
    caps = {speaker: caps.get(speaker, settings.sampling.max_new_tokens) for speaker in speakers}
    write = model_writer(model, tokenizer, settings, device, caps)
    written_at = []  # (setting, moment, context, seed), settings.fact_samples a moment
    for setting, memory_at in memories.items():
        for moment, (fact, memory) in enumerate(zip(facts, memory_at)):
            turn = fact.session.turns[fact.turn]
            context = Context(turn.speaker, fact.session.turns[: fact.turn], turn.messages, memory)
            written_at += [
                (setting, moment, context, settings.seed + moment * settings.fact_samples + sample)
                for sample in range(settings.fact_samples)
            ]
    stated = {setting: [0] * len(facts) for setting in memories}
    for batch, on_step in batches_with_progress(
        written_at,
        settings.turns_at_once(device),
        lambda item: caps[item[2].speaker],
        f"writing {len(written_at)} fact turns",
    ):
        turns = write([context for _, _, context, _ in batch], [seed for *_, seed in batch], on_step)
        for (setting, moment, _, _), turn in zip(batch, turns):
            stated[setting][moment] += states_fact("\n".join(turn.messages), facts[moment])
    return stated

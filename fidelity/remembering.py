"""Does the memory help? The tuned model on the same held-out sessions with its memory and without it: each
speaker's loss, and on the fact turns (memory.facts: turns that take up something said in an earlier
conversation of the chat) their loss and how often the turn the model writes there states the fact."""

import dataclasses
from dataclasses import dataclass

import torch

from data.chatml import reply_prompt, split_to_fit, turn_stop_ids
from data.dataset import PreparedData
from data.packing import pack
from data.sessions import Turn, messages_of
from fidelity.measure import speaker_losses
from fidelity.plan import EvalSettings
from fidelity.sampling import generate_batch
from memory import Conversations, Memory, MemoryConfig
from memory.facts import FactTurn, fact_turns, states_fact
from model.generation import BatchRow
from model.loss import IGNORE_INDEX, chunked_cross_entropy
from model.tokenizer import Tokenizer
from model.transformer import Transformer

SETTINGS = ("without", "with")


@dataclass
class MemoryFigures:
    """The tuned model without and with its memory, on the held-out sessions."""

    config: dict  # the memory's settings
    loss: dict[str, dict[str, float]]  # speaker -> "without"/"with" -> loss on their held-out turns
    fact_turns: int  # in the held-out sessions
    fact_speakers: dict[str, int]  # speaker -> their fact turns
    fact_loss: dict[str, float]  # "without"/"with" -> loss on the fact turns
    fact_recall: dict[str, float]  # "without"/"with" -> share of written fact turns that state the fact (none
    # where the report writes no turn)

    def summary(self) -> list[str]:
        lines = [f"memory, without → with ({self.fact_turns} fact turns held out):"]
        for speaker, loss in self.loss.items():
            lines.append(f"  {speaker}: loss {loss['without']:.3f} → {loss['with']:.3f}")
        if self.fact_turns:
            lines.append(
                f"  fact turns: loss {self.fact_loss['without']:.3f} → {self.fact_loss['with']:.3f}"
                + (
                    f", state the fact {self.fact_recall['without']:.0%} → {self.fact_recall['with']:.0%}"
                    if self.fact_recall
                    else ""
                )
            )
        return lines

    def markdown(self) -> list[str]:
        lines = [
            "",
            "## Memory",
            "",
            "The tuned model on the same held-out sessions without its memory and with it "
            f"({', '.join(f'{key} {value}' for key, value in self.config.items())}). Fact turns take up a rare "
            "name said in an earlier conversation of the chat (a city, a pet, an employer): only memory can "
            "get them right.",
            "",
            "| speaker | loss without memory | loss with memory |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| {' '.join(speaker.replace('|', '/').split())} | {loss['without']:.3f} | {loss['with']:.3f} |"
            for speaker, loss in self.loss.items()
        ]
        if self.fact_turns:
            lines += [
                "",
                f"| {self.fact_turns} fact turns | without memory | with memory |",
                "|---|---:|---:|",
                f"| loss | {self.fact_loss['without']:.3f} | {self.fact_loss['with']:.3f} |",
            ]
            if self.fact_recall:
                lines.append(
                    f"| written turns that state the fact | {self.fact_recall['without']:.0%} | "
                    f"{self.fact_recall['with']:.0%} |"
                )
        else:
            lines += ["", "No held-out turn takes up a fact of an earlier conversation."]
        return lines


@torch.no_grad()
def measure_memory(
    model: Transformer,
    tokenizer: Tokenizer,
    data: PreparedData,
    speakers: list[str],
    config: MemoryConfig,
    settings: EvalSettings,
    device: torch.device,
) -> MemoryFigures:
    """The figures of MemoryFigures. A held-out session remembers every conversation before it, training's
    and held-out ones alike, as the twin does when it chats."""
    was_training = model.training
    model.eval()
    try:
        everything = data.train_sessions + data.val_sessions
        memory = Memory(Conversations(everything), config, tokenizer)
        seq_len = data.report.seq_len
        contexts = {"without": lambda session: [], "with": memory.for_session}
        # Every speaker's loss in one pass over the rows of each setting (fidelity.measure.speaker_losses)
        losses = {
            setting: speaker_losses(
                model, tokenizer, data.val_sessions, speakers, seq_len, settings.micro_batch, device, contexts[setting]
            )[0]
            for setting in SETTINGS
        }
        loss = {speaker: {setting: losses[setting][speaker] for setting in SETTINGS} for speaker in speakers}
        facts = fact_turns(data.val_sessions, everything)
        fact_loss, fact_recall = {}, {}
        for setting in SETTINGS:
            remembered = [contexts[setting](fact.session) for fact in facts]
            pieces = [
                split_to_fit(
                    [fact.session.turns[fact.turn]],
                    tokenizer,
                    seq_len,
                    context=context + fact.session.turns[: fact.turn],
                )[0][0]
                for fact, context in zip(facts, remembered)
            ]
            fact_loss[setting] = _loss(model, pieces, seq_len, settings.micro_batch, device) if facts else 0.0
            if facts and settings.contexts:  # no turn written where the report writes none (--eval-contexts 0)
                fact_recall[setting] = _recall(model, tokenizer, facts, remembered, settings, device)
        speakers_of_facts = {}
        for fact in facts:
            speaker = fact.session.turns[fact.turn].speaker
            speakers_of_facts[speaker] = speakers_of_facts.get(speaker, 0) + 1
        return MemoryFigures(dataclasses.asdict(config), loss, len(facts), speakers_of_facts, fact_loss, fact_recall)
    finally:
        model.train(was_training)


def _loss(model: Transformer, pieces: list, seq_len: int, micro_batch: int, device: torch.device) -> float:
    """Mean cross-entropy per trained token of `pieces`, packed as training packs them."""
    rows = pack(pieces, seq_len)
    total, tokens = 0.0, 0
    for start in range(0, len(rows), micro_batch):
        window = slice(start, start + micro_batch)
        ids, positions, documents, labels = (
            torch.from_numpy(array[window]).long().to(device)
            for array in (rows.input_ids, rows.position_ids, rows.document_ids, rows.labels)
        )
        hidden = model.hidden_states(ids, position_ids=positions, document_ids=documents)
        total += chunked_cross_entropy(hidden, model.lm_head, labels).item()
        tokens += int((labels != IGNORE_INDEX).sum())
    return total / max(tokens, 1)


def _recall(
    model: Transformer,
    tokenizer: Tokenizer,
    facts: list[FactTurn],
    remembered: list[list[Turn]],
    settings: EvalSettings,
    device: torch.device,
) -> float:
    """The share of fact moments where the turn the model writes (sampled as the report samples) states the fact."""
    max_len = min(settings.context_tokens, model.config.max_position_embeddings)
    prompts = [
        reply_prompt(
            fact.session.turns[: fact.turn],
            tokenizer,
            fact.session.turns[fact.turn].speaker,
            max_len,
            settings.sampling.max_new_tokens,
            context,
        )[0]
        for fact, context in zip(facts, remembered)
    ]
    stated = 0
    for start in range(0, len(prompts), settings.sample_batch):
        stream = torch.Generator().manual_seed(settings.seed + start)
        rows = [
            BatchRow(prompt, settings.sampling, stream) for prompt in prompts[start : start + settings.sample_batch]
        ]
        written = generate_batch(model, rows, turn_stop_ids(tokenizer), device)
        batch = facts[start : start + settings.sample_batch]
        stated += sum(
            states_fact("\n".join(messages_of(tokenizer.decode(tokens))), fact)
            for (tokens, _), fact in zip(written, batch)
        )
    return stated / len(facts)

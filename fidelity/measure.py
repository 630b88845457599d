"""What one model (base or tuned) does on a plan: its loss on each speaker's held-out turns, computed as
training computes it, and the turn it writes as the speaker at each of their held-out moments."""

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from data.chatml import reply_prompt, split_to_fit, turn_stop_ids
from data.dataset import PreparedData
from data.packing import pack
from data.sessions import Session, format_body, messages_of
from fidelity import EvaluationError
from fidelity.plan import Context, EvalSettings, Plan
from fidelity.sampling import batches_with_progress, generate_batch
from model.generation import BatchRow
from model.loss import IGNORE_INDEX, chunked_cross_entropy
from model.tokenizer import Tokenizer
from model.transformer import Transformer

# A written turn longer than this share of the person's own turns is cut there, as a failure: people end
# their turns, and a model that does not would otherwise run on to --max-new-tokens (SmolLM2's base model
# did at 49 of the sample's 60 held-out contexts), which costs most of a report's time.
CUT_QUANTILE = 0.99


class WrittenTurn(NamedTuple):
    messages: list[str]
    cut: bool  # it ran on past the person's usual longest turns (CUT_QUANTILE) and was cut there


# (contexts, the seed of each one's turn, on_step) -> the turn written at each; on_step() after each decoding
# step, for the progress bar
Writer = Callable[[list[Context], list[int], Callable[[], None]], list[WrittenTurn]]


@dataclass
class Measurement:
    """What one model (base or tuned) did on a plan."""

    loss: dict[str, float]  # speaker -> mean cross-entropy per trained token of their held-out turns
    tokens: dict[str, int]  # speaker -> those tokens
    replies: dict[str, list[list[str]]]  # speaker -> the turn written at each of their contexts
    cut: dict[str, list[bool]]  # speaker -> whether that turn was cut for running on


@torch.no_grad()
def speaker_losses(
    model: Transformer,
    tokenizer: Tokenizer,
    sessions: list[Session],
    speakers: list[str],
    seq_len: int,
    micro_batch: int,
    device: torch.device,
) -> tuple[dict[str, float], dict[str, int]]:
    """Each speaker's loss on their held-out turns, and its tokens: the held-out sessions cut and packed as
    training cut and packed them, with only the speaker's message bodies (and end of turn) counted."""
    rows = {
        speaker: pack(
            [
                piece
                for session in sessions
                for piece in split_to_fit(session.turns, tokenizer, seq_len, trained_speakers={speaker})[0]
            ],
            seq_len,
        )
        for speaker in speakers
    }
    sums, tokens = packed_losses(model, rows, micro_batch, device)
    return {speaker: sums[speaker] / max(tokens[speaker], 1) for speaker in speakers}, tokens


@torch.no_grad()
def packed_losses(
    model: Transformer, rows: dict, micro_batch: int, device: torch.device, desc: str = "held-out loss"
) -> tuple[dict, dict]:
    """The summed cross-entropy and the counted tokens of each of `rows` (key -> PackedRows): packings of the
    same pieces that differ only in which tokens count. The model runs over them once for all keys, as
    cutting and packing depend on the tokens alone."""
    layout = next(iter(rows.values()))
    sums, tokens = dict.fromkeys(rows, 0.0), dict.fromkeys(rows, 0)
    for start in tqdm(range(0, len(layout), micro_batch), desc=desc, unit="batch", leave=False):
        window = slice(start, start + micro_batch)
        batch = [
            torch.from_numpy(array[window]).long().to(device)
            for array in (layout.input_ids, layout.position_ids, layout.document_ids)
        ]
        hidden = model.hidden_states(batch[0], position_ids=batch[1], document_ids=batch[2])
        for key, packed in rows.items():
            labels = torch.from_numpy(packed.labels[window]).long().to(device)
            if (counted := int((labels != IGNORE_INDEX).sum())) == 0:
                continue
            sums[key] += chunked_cross_entropy(hidden, model.lm_head, labels).item()
            tokens[key] += counted
    return sums, tokens


def turn_length_cap(turns: list[list[str]], tokenizer: Tokenizer, most: int) -> int:
    """Where a turn written as the person is cut: the CUT_QUANTILE of their own turns' lengths in tokens
    (the messages as the model writes them), at most `most`; `most` without turns to go by."""
    if not turns:
        return most
    lengths = [len(tokenizer.encode(format_body(messages), special=False)) for messages in turns]
    return max(1, min(most, int(np.ceil(np.quantile(lengths, CUT_QUANTILE)))))


def turn_length_caps(plan: Plan, tokenizer: Tokenizer, most: int) -> dict[str, int]:
    """Where a turn written as each speaker of the plan is cut: turn_length_cap of their own turns."""
    return {speaker: turn_length_cap(plan.own_turns[speaker], tokenizer, most) for speaker in plan.speakers}


def model_writer(
    model: Transformer, tokenizer: Tokenizer, settings: EvalSettings, device: torch.device, caps: dict[str, int]
) -> Writer:
    """The model writing each speaker's next turn with sample.py's prompt (the context's memory, then its
    conversation), stop tokens and sampling (data.chatml.reply_prompt and turn_stop_ids,
    data.sessions.messages_of), cut at the speaker's length in `caps`."""
    max_len = min(settings.context_tokens, model.config.max_position_embeddings)
    if settings.sampling.max_new_tokens >= max_len:
        raise EvaluationError(
            f"max_new_tokens ({settings.sampling.max_new_tokens}) must be below the context ({max_len} tokens)"
        )
    stop_ids = turn_stop_ids(tokenizer)

    def write(contexts: list[Context], seeds: list[int], on_step: Callable[[], None]) -> list[WrittenTurn]:
        # A held-out turn longer than the whole context leaves the prompt with none: the moment is then
        # answered without a conversation, by both models alike.
        rows = [
            BatchRow(
                reply_prompt(
                    context.turns, tokenizer, context.speaker, max_len, settings.sampling.max_new_tokens, context.memory
                )[0],
                replace(settings.sampling, max_new_tokens=caps[context.speaker]),
                torch.Generator().manual_seed(seed),
            )
            for context, seed in zip(contexts, seeds)
        ]
        try:
            written = generate_batch(model, rows, stop_ids, device, on_step)
        except ValueError as error:  # next-token scores NaN or infinite: sample_token says what to try
            raise EvaluationError(str(error)) from None
        return [WrittenTurn(messages_of(tokenizer.decode(tokens)), cut) for tokens, cut in written]

    return write


def measure(
    model: Transformer,
    tokenizer: Tokenizer,
    data: PreparedData,
    plan: Plan,
    settings: EvalSettings,
    device: torch.device,
    name: str,
    write: Writer | None = None,
    losses: tuple[dict[str, float], dict[str, int]] | None = None,
) -> Measurement:
    """Loss per speaker (`losses` where they were measured already: speaker_losses' loss and tokens), and a
    turn written at every context (by `write`, default the model itself)."""
    was_training = model.training
    model.eval()  # no adapter dropout while sampling
    try:
        loss, tokens = losses or speaker_losses(
            model, tokenizer, data.val_sessions, plan.speakers, data.report.seq_len, settings.micro_batch, device
        )
        caps = turn_length_caps(plan, tokenizer, settings.sampling.max_new_tokens)
        write = write or model_writer(model, tokenizer, settings, device, caps)
        everywhere = [context for speaker in plan.speakers for context in plan.contexts[speaker]]
        # Batches of conversations of about one length waste little on padding. The turn at context n is
        # sampled with seed + n under both models, whatever it is batched with, so their turns differ by the
        # model only.
        order = sorted(range(len(everywhere)), key=lambda index: everywhere[index].characters)
        written: list[WrittenTurn] = [WrittenTurn([], False)] * len(everywhere)
        for batch, on_step in batches_with_progress(
            order,
            settings.turns_at_once(device),
            lambda index: caps[everywhere[index].speaker],
            f"writing {len(everywhere)} turns as the speakers ({name} model)",
        ):
            contexts, seeds = [everywhere[index] for index in batch], [settings.seed + index for index in batch]
            for index, turn in zip(batch, write(contexts, seeds, on_step)):
                written[index] = turn
        replies = {speaker: [] for speaker in plan.speakers}
        cut = {speaker: [] for speaker in plan.speakers}
        for context, turn in zip(everywhere, written):
            replies[context.speaker].append(turn.messages)
            cut[context.speaker].append(turn.cut)
        return Measurement(loss, tokens, replies, cut)
    finally:
        model.train(was_training)

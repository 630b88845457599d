"""What one model (base or tuned) does on a plan: its loss on each speaker's held-out turns, computed as
training computes it, and the turn it writes as the speaker at each of their held-out moments."""
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

from data.chatml import fit_prompt, split_to_fit, turn_stop_ids
from data.sessions import parse_body
from data.dataset import PreparedData
from data.packing import pack
from data.sessions import Session
from fidelity import EvaluationError
from fidelity.plan import Context, EvalSettings, Plan
from fidelity.sampling import generate_batch
from model.loss import IGNORE_INDEX, chunked_cross_entropy
from model.tokenizer import Tokenizer
from model.transformer import Transformer

Writer = Callable[[list[Context], int], list[list[str]]]  # (contexts, seed) -> the turn written at each


@dataclass
class Measurement:
    """What one model (base or tuned) did on a plan."""
    loss: dict[str, float]  # speaker -> mean cross-entropy per trained token of their held-out turns
    tokens: dict[str, int]  # speaker -> those tokens
    replies: dict[str, list[list[str]]]  # speaker -> the turn written at each of their contexts


@torch.no_grad()
def speaker_losses(model: Transformer, tokenizer: Tokenizer, sessions: list[Session], speakers: list[str],
                   seq_len: int, micro_batch: int, device: torch.device) -> tuple[dict[str, float], dict[str, int]]:
    """Each speaker's loss on their held-out turns, and its tokens: the held-out sessions cut and packed as
    training cut and packed them, with only the speaker's message bodies (and end of turn) counted.

    The model runs over the rows once for all speakers: their rows differ only in which tokens count,
    as cutting and packing depend on the tokens alone.
    """
    rows = {speaker: pack([piece for session in sessions for piece in
                           split_to_fit(session.turns, tokenizer, seq_len, trained_speakers={speaker})[0]], seq_len)
            for speaker in speakers}
    layout = rows[speakers[0]]
    sums, tokens = dict.fromkeys(speakers, 0.0), dict.fromkeys(speakers, 0)
    for start in range(0, len(layout), micro_batch):
        window = slice(start, start + micro_batch)
        batch = [torch.from_numpy(array[window]).long().to(device)
                 for array in (layout.input_ids, layout.position_ids, layout.document_ids)]
        hidden = model.hidden_states(batch[0], position_ids=batch[1], document_ids=batch[2])
        for speaker in speakers:
            labels = torch.from_numpy(rows[speaker].labels[window]).long().to(device)
            sums[speaker] += chunked_cross_entropy(hidden, model.lm_head, labels).item()
            tokens[speaker] += int((labels != IGNORE_INDEX).sum())
    return {speaker: sums[speaker] / max(tokens[speaker], 1) for speaker in speakers}, tokens


def model_writer(model: Transformer, tokenizer: Tokenizer, settings: EvalSettings, device: torch.device) -> Writer:
    """The model writing each speaker's next turn: the prompt, stop tokens and sampling of sample.py."""
    max_len = min(settings.context_tokens, model.config.max_position_embeddings)
    if settings.sampling.max_new_tokens >= max_len:
        raise EvaluationError(f"max_new_tokens ({settings.sampling.max_new_tokens}) must be below the "
                              f"context ({max_len} tokens)")
    stop_ids = turn_stop_ids(tokenizer)

    def write(contexts: list[Context], seed: int) -> list[list[str]]:
        # A held-out turn longer than the whole context leaves the prompt with none: the moment is then
        # answered without a conversation, by both models alike.
        prompts = [fit_prompt(context.turns, tokenizer, context.speaker, max_len - settings.sampling.max_new_tokens)[0]
                   for context in contexts]
        try:
            written = generate_batch(model, prompts, settings.sampling, stop_ids,
                                     torch.Generator().manual_seed(seed), device)
        except ValueError as error:  # next-token scores NaN or infinite: sample_token says what to try
            raise EvaluationError(str(error)) from None
        return [parse_body(tokenizer.decode(tokens)) for tokens in written]

    return write


def measure(model: Transformer, tokenizer: Tokenizer, data: PreparedData, plan: Plan, settings: EvalSettings,
            device: torch.device, name: str, write: Writer | None = None) -> Measurement:
    """Loss per speaker, and a turn written at every context (by `write`, default the model itself)."""
    was_training = model.training
    model.eval()  # no adapter dropout while sampling
    try:
        loss, tokens = speaker_losses(model, tokenizer, data.val_sessions, plan.speakers, data.report.seq_len,
                                      settings.micro_batch, device)
        write = write or model_writer(model, tokenizer, settings, device)
        everywhere = [context for speaker in plan.speakers for context in plan.contexts[speaker]]
        # Batches of conversations of about one length waste little on padding. Batch n is sampled with
        # seed + n under both models, so their replies differ by the model only.
        order = sorted(range(len(everywhere)), key=lambda index: everywhere[index].characters)
        written: list[list[str]] = [[] for _ in everywhere]
        with tqdm(total=len(everywhere), desc=f"writing as each speaker ({name} model)", unit="turn",
                  leave=False) as bar:
            for number, start in enumerate(range(0, len(order), settings.sample_batch)):
                batch = order[start:start + settings.sample_batch]
                for index, reply in zip(batch, write([everywhere[index] for index in batch], settings.seed + number)):
                    written[index] = reply
                bar.update(len(batch))
        replies = {speaker: [] for speaker in plan.speakers}
        for context, reply in zip(everywhere, written):
            replies[context.speaker].append(reply)
        return Measurement(loss, tokens, replies)
    finally:
        model.train(was_training)

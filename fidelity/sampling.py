"""Replies at many contexts at once: their prompts decoded together by model.generation.BatchDecoder.

Each reply is sampled token by token exactly as generation.Generator samples one (`sample_token`, the
same stop tokens); only the random stream is shared by the batch, drawn row by row in row order.
"""
import torch

from model.generation import BatchDecoder, BatchRow, SamplingConfig
from model.transformer import Transformer


def generate_batch(model: Transformer, prompts: list[list[int]], config: SamplingConfig, stop_ids: set[int],
                   generator: torch.Generator | None, device: torch.device) -> list[list[int]]:
    """The tokens sampled after each prompt, up to (not including) a stop token or `max_new_tokens`.
    Raises ValueError (generation.NON_FINITE) if the model's scores are not finite."""
    written: list[list[int]] = [[] for _ in prompts]
    for step in BatchDecoder(model, [BatchRow(prompt, config, generator) for prompt in prompts], stop_ids, device):
        for chosen in step:
            if chosen.error is not None:
                raise chosen.error
            if chosen.token not in stop_ids:
                written[chosen.row].append(chosen.token)
    return written

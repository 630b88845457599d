"""Replies at many contexts at once: their prompts decoded together by model.generation.BatchDecoder.

Each reply is sampled token by token exactly as generation.Generator samples one (`sample_token`, the
same stop tokens); only the random stream is shared by the batch, drawn row by row in row order.
"""

from collections.abc import Callable

import torch

from model.generation import BatchDecoder, BatchRow
from model.transformer import Transformer


def generate_batch(
    model: Transformer,
    rows: list[BatchRow],
    stop_ids: set[int],
    device: torch.device,
    on_step: Callable[[], None] = lambda: None,
) -> list[tuple[list[int], bool]]:
    """The tokens sampled after each row's prompt, up to (not including) a stop token or its
    `max_new_tokens`, and whether it was cut there (it ended at no stop token). `on_step` is called after
    each decoding step, for a progress bar. Raises ValueError (generation.NON_FINITE) if the model's
    scores are not finite."""
    written: list[list[int]] = [[] for _ in rows]
    cut = [False] * len(rows)
    for step in BatchDecoder(model, rows, stop_ids, device):
        for chosen in step:
            if chosen.error is not None:
                raise chosen.error
            if chosen.token not in stop_ids:
                written[chosen.row].append(chosen.token)
                cut[chosen.row] = chosen.last
        on_step()
    return list(zip(written, cut))

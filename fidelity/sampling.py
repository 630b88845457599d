"""Replies at many contexts at once: their prompts decoded together by model.generation.BatchDecoder.

Each reply is sampled token by token exactly as generation.Generator samples one (`sample_token`, the
same stop tokens), from its row's own random stream: a row's reply is the one it gets alone, whatever it is
batched with (to within the rounding of a batch's arithmetic).
"""

import math
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
from tqdm import tqdm

from model.generation import BatchDecoder, BatchRow
from model.transformer import Transformer

Item = TypeVar("Item")


def even_batches(items: Sequence[Item], most: int) -> list[Sequence[Item]]:
    """`items` in order, in as few batches of at most `most` as hold them, of sizes as even as can be: a batch
    decodes until its longest turn ends, so 50 turns go as 25 and 25, not as 48 and a batch of 2 that costs
    nearly as long."""
    count = math.ceil(len(items) / most)
    return [items[number * len(items) // count : (number + 1) * len(items) // count] for number in range(count)]


def batches_with_progress(
    items: Sequence[Item], most: int, longest: Callable[[Item], int], desc: str
) -> Iterator[tuple[Sequence[Item], Callable[[], None]]]:
    """even_batches of `items`, each with the on_step of one progress bar over them all. The bar counts steps: a
    batch's prompts go in one a step, then it decodes for at most its longest turn (`longest`: an item's cap in
    tokens), so that the time left shows from the first prompt on; a batch whose turns all end early skips the
    rest."""
    batches = even_batches(items, most)
    steps = [len(batch) + max(map(longest, batch)) for batch in batches]
    with tqdm(total=sum(steps), desc=desc, unit="step", leave=False) as bar:
        for batch, count in zip(batches, steps):
            done = bar.n
            yield batch, lambda: bar.update(1)
            bar.update(done + count - bar.n)


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

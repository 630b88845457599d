"""fidelity/sampling.py: prompts of different lengths decoded in one batch write what each writes alone."""

import pytest
import torch

from fidelity import sampling
from fidelity.sampling import batches_with_progress, even_batches, generate_batch
from model.generation import BatchRow, Generator, SamplingConfig
from tests.helpers import random_model, tiny_config

CPU = torch.device("cpu")
PROMPTS = [[5, 17, 99, 3], list(range(40, 60)), [7], list(range(100, 131))]


def written(model, config, stop_ids, generator=None) -> list[list[int]]:
    """What generate_batch writes after each of PROMPTS, without whether it was cut."""
    rows = [BatchRow(prompt, config, generator) for prompt in PROMPTS]
    return [tokens for tokens, _ in generate_batch(model, rows, stop_ids, CPU)]


def alone(model, prompt, config, stop_ids):
    tokens = list(Generator(model, max_len=128, device=CPU).generate(prompt, config, stop_ids))
    return tokens[:-1] if tokens and tokens[-1] in stop_ids else tokens


@pytest.mark.parametrize("window", [None, 8])
def test_a_batch_writes_what_each_prompt_writes_alone(window):
    model = random_model(tiny_config(sliding_window=window))
    greedy = SamplingConfig(temperature=0, max_new_tokens=12, repetition_penalty=1.3)
    # Stop tokens from what the prompts write alone, so that rows end at different steps.
    free = [alone(model, prompt, greedy, set()) for prompt in PROMPTS]
    stop_ids = {free[0][3], free[2][6]}
    expected = [alone(model, prompt, greedy, stop_ids) for prompt in PROMPTS]
    assert len({len(tokens) for tokens in expected}) > 1
    assert written(model, greedy, stop_ids) == expected


def test_sampling_is_seeded_and_stops_at_max_new_tokens():
    model = random_model(tiny_config())
    config = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=5)
    first, second = (
        generate_batch(
            model, [BatchRow(prompt, config, torch.Generator().manual_seed(3)) for prompt in PROMPTS], set(), CPU
        )
        for _ in range(2)
    )
    assert first == second and [(len(tokens), cut) for tokens, cut in first] == [(5, True)] * len(PROMPTS)


def test_a_row_with_a_stream_of_its_own_writes_what_it_writes_alone_whatever_it_is_batched_with():
    model = random_model(tiny_config())
    config = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=8)

    def rows(numbers):
        return [BatchRow(PROMPTS[number], config, torch.Generator().manual_seed(number)) for number in numbers]

    alone = [generate_batch(model, rows([number]), set(), CPU)[0] for number in range(len(PROMPTS))]
    assert generate_batch(model, rows(range(len(PROMPTS))), set(), CPU) == alone
    assert generate_batch(model, rows([3, 1]), set(), CPU) == [alone[3], alone[1]]
    assert len({tuple(tokens) for tokens, _ in alone}) == len(PROMPTS)


@pytest.mark.parametrize(
    ("count", "sizes"), [(0, []), (5, [5]), (48, [48]), (50, [25, 25]), (112, [37, 37, 38]), (480, [48] * 10)]
)
def test_batches_are_as_few_as_hold_the_turns_and_as_even_as_can_be(count, sizes):
    batches = even_batches(list(range(count)), 48)
    assert [len(batch) for batch in batches] == sizes and sum(batches, []) == list(range(count))


def test_the_progress_bar_counts_each_prompt_and_each_batch_s_longest_turn_and_skips_what_ends_early(monkeypatch):
    bars = []

    class Bar:
        def __init__(self, total, **_):
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, steps):
            self.n += steps

        def __enter__(self):
            return self

        def __exit__(self, *_):
            pass

    monkeypatch.setattr(sampling, "tqdm", Bar)
    caps = [4, 9, 2, 3, 5]
    seen = []
    for batch, on_step in batches_with_progress(list(range(5)), 3, caps.__getitem__, "writing"):
        seen.append(list(batch))
        on_step()  # the batch ends after one step of its prompts: the rest of its steps are skipped
        assert bars[0].n == 1 + (0 if len(seen) == 1 else 2 + 9)
    assert seen == [[0, 1], [2, 3, 4]] and bars[0].total == (2 + 9) + (3 + 5) == bars[0].n


def test_a_turn_that_reaches_its_own_length_is_cut_and_one_that_ends_is_not():
    model = random_model(tiny_config())
    greedy, three = SamplingConfig(temperature=0, max_new_tokens=12), SamplingConfig(temperature=0, max_new_tokens=3)
    free, short_free = alone(model, PROMPTS[0], greedy, set()), alone(model, PROMPTS[1], three, set())
    end = next(index for index in range(1, len(free)) if free[index] not in {*free[:index], *short_free})
    rows = [BatchRow(PROMPTS[0], greedy), BatchRow(PROMPTS[1], three)]
    assert generate_batch(model, rows, {free[end]}, CPU) == [(free[:end], False), (short_free, True)]


# What generate_batch wrote before it moved onto model.generation.BatchDecoder (one random stream drawn
# row by row, in row order, each step): the report's sampled turns, and the README's figures, depend on it.
# Taken anew when the architecture table changed the order random_model draws its weights in: with the
# weights drawn before, the decoder of that change wrote the tokens pinned before, every one.
PINNED = [
    (
        SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=10),
        set(),
        [
            [78, 1, 150, 216, 252, 58, 228, 137, 116, 86],
            [4, 171, 153, 101, 228, 212, 84, 143, 238, 3],
            [253, 185, 211, 139, 109, 199, 202, 74, 240, 201],
            [130, 212, 210, 115, 121, 251, 212, 185, 233, 133],
        ],
    ),
    (
        SamplingConfig(temperature=1.0, top_p=0.95, top_k=40, repetition_penalty=1.3, max_new_tokens=10),
        {2, 87, 238},
        [
            [109, 168, 213, 62, 61, 58, 190, 202, 34, 116],
            [4, 171, 153, 0, 83, 212, 95, 155, 0, 154],
            [253, 145, 211, 58, 165, 246, 141, 250, 92, 235],
            [130, 212, 255, 115],
        ],
    ),
]


@pytest.mark.parametrize("config, stop_ids, expected", PINNED)
def test_seeded_tokens_are_those_written_before_the_decoder_moved(config, stop_ids, expected):
    model = random_model(tiny_config(), seed=2)
    assert written(model, config, stop_ids, torch.Generator().manual_seed(5)) == expected


def test_each_row_draws_from_a_stream_on_the_decoder_s_device(monkeypatch):
    """On a GPU a CPU stream cannot draw for the scores (and sample.py's Generator draws on the device too):
    model.generation.random_on_device gives each row its stream there. Only the wiring can be checked on a CPU."""
    from model import generation

    moved = []

    def on_device(stream, device):
        moved.append((stream.initial_seed(), device.type))
        return stream

    monkeypatch.setattr(generation, "random_on_device", on_device)
    model = random_model(tiny_config())
    rows = [
        BatchRow(prompt, SamplingConfig(max_new_tokens=2), torch.Generator().manual_seed(n))
        for n, prompt in enumerate(PROMPTS)
    ]
    generate_batch(model, rows, set(), CPU)
    assert sorted(moved) == [(n, "cpu") for n in range(len(PROMPTS))]

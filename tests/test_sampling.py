"""fidelity/sampling.py: prompts of different lengths decoded in one batch write what each writes alone."""
import pytest
import torch

from fidelity.sampling import generate_batch
from model.generation import Generator, SamplingConfig
from tests.helpers import random_model, tiny_config

CPU = torch.device("cpu")
PROMPTS = [[5, 17, 99, 3], list(range(40, 60)), [7], list(range(100, 131))]


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
    assert generate_batch(model, PROMPTS, greedy, stop_ids, None, CPU) == expected


def test_sampling_is_seeded_and_stops_at_max_new_tokens():
    model = random_model(tiny_config())
    config = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=5)
    first, second = (generate_batch(model, PROMPTS, config, set(), torch.Generator().manual_seed(3), CPU)
                     for _ in range(2))
    assert first == second and [len(tokens) for tokens in first] == [5] * len(PROMPTS)

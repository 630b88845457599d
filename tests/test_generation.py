"""Decoding from the KV cache equals recomputing everything; the sampling filters do what they say."""
import torch

from model.generation import Generator, SamplingConfig, sample_token
from tests.helpers import random_model, tiny_config

GREEDY = SamplingConfig(temperature=0, max_new_tokens=80)


def greedy_by_recomputation(model, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def test_greedy_with_cache_equals_full_recomputation_across_the_window():
    config = tiny_config(sliding_window=16)  # prompt 10 + 80 new tokens: far past the window
    model = random_model(config, seed=3)
    prompt = torch.randint(0, config.vocab_size, (10,), generator=torch.Generator().manual_seed(0)).tolist()
    cached = list(Generator(model, max_len=128, device=torch.device("cpu")).generate(prompt, GREEDY, stop_ids=set()))
    assert len(cached) == 80
    assert cached == greedy_by_recomputation(model, prompt, 80)


def test_compiled_decoding_gives_the_eager_tokens():
    # sample.py --compile is meant for CUDA; the same torch.compile path runs on CPU (inductor's C++ backend).
    model = random_model(tiny_config(sliding_window=16), seed=3)
    prompt, greedy = list(range(5, 15)), SamplingConfig(temperature=0, max_new_tokens=24)
    eager = list(Generator(model, max_len=64, device=torch.device("cpu")).generate(prompt, greedy, stop_ids=set()))
    compiled = Generator(model, max_len=64, device=torch.device("cpu"), compile=True)
    assert list(compiled.generate(prompt, greedy, stop_ids=set())) == eager


def test_a_prompt_extending_the_last_one_reuses_the_cache_and_gives_the_same_tokens():
    config = tiny_config(sliding_window=8)
    model = random_model(config, seed=4)
    generator = Generator(model, max_len=128, device=torch.device("cpu"))
    first = list(generator.generate(list(range(5, 15)), GREEDY, stop_ids=set()))[:20]
    extended = list(range(5, 15)) + first[:10] + [7, 8, 9]
    calls = []
    original = generator._run
    generator._run = lambda ids: calls.append(len(ids)) or original(ids)
    again = list(generator.generate(extended, SamplingConfig(temperature=0, max_new_tokens=30), stop_ids=set()))
    assert calls[0] == 3  # only the three new tokens were prefilled
    fresh = list(Generator(model, max_len=128, device=torch.device("cpu")).generate(
        extended, SamplingConfig(temperature=0, max_new_tokens=30), stop_ids=set()))
    assert again == fresh


def test_generation_stops_at_a_stop_token_and_yields_it():
    config = tiny_config()
    model = random_model(config, seed=5)
    prompt = [1, 2, 3]
    free = list(Generator(model, 64, torch.device("cpu")).generate(prompt, GREEDY, stop_ids=set()))
    stop = free[4]
    stopped = list(Generator(model, 64, torch.device("cpu")).generate(prompt, GREEDY, stop_ids={stop}))
    assert stopped == free[:free.index(stop) + 1]


def test_top_k_and_top_p_only_sample_allowed_tokens():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    generator = torch.Generator().manual_seed(0)
    draws = {sample_token(logits.clone(), SamplingConfig(temperature=1.0, top_p=1.0, top_k=2), torch.tensor([], dtype=torch.long), generator)
             for _ in range(200)}
    assert draws == {0, 1}
    probs = logits.softmax(-1)  # 0.64, 0.24, 0.09, ...: p=0.8 needs the first two
    assert probs[0] < 0.8 < probs[:2].sum()
    draws = {sample_token(logits.clone(), SamplingConfig(temperature=1.0, top_p=0.8), torch.tensor([], dtype=torch.long), generator)
             for _ in range(200)}
    assert draws == {0, 1}


def test_repetition_penalty_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = torch.tensor([2.9, 3.0, -1.0, 2.5])
    context = torch.tensor([1, 2])
    expected = RepetitionPenaltyLogitsProcessor(1.5)(context[None], logits.clone()[None])[0]
    assert int(expected.argmax()) == 0  # the penalty turned the winner: 3.0 / 1.5 < 2.9
    greedy = SamplingConfig(temperature=0, repetition_penalty=1.5)
    assert sample_token(logits.clone(), greedy, context) == 0
    # Sampling from the penalised distribution: token 1 (3.0 -> 2.0) is now less likely than token 3 (2.5).
    generator = torch.Generator().manual_seed(0)
    draws = [sample_token(logits.clone(), SamplingConfig(temperature=1.0, top_p=1.0, repetition_penalty=1.5),
                          context, generator) for _ in range(2000)]
    frequencies = torch.bincount(torch.tensor(draws), minlength=4).float() / len(draws)
    torch.testing.assert_close(frequencies, expected.softmax(-1), atol=0.04, rtol=0)

"""Decoding from the KV cache equals recomputing everything; the sampling filters do what they say."""

import pytest
import torch

from model.generation import NON_FINITE, BatchDecoder, BatchRow, Generator, SamplingConfig, nucleus, sample_token
from tests.helpers import random_model, tiny_config

GREEDY = SamplingConfig(temperature=0, max_new_tokens=80)


def greedy_by_recomputation(model, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


def test_greedy_with_cache_equals_full_recomputation_across_the_window():
    config = tiny_config(sliding_window=16)  # prompt 10 + 80 new tokens: far past the window
    model = random_model(config, seed=3)
    prompt = torch.randint(0, config.vocab_size, (10,), generator=torch.Generator().manual_seed(0)).tolist()
    cached = list(Generator(model, max_len=128, device=torch.device("cpu")).generate(prompt, GREEDY, stop_ids=set()))
    assert len(cached) == 80
    assert cached == greedy_by_recomputation(model, prompt, 80)


@pytest.mark.slow  # inductor compiles the step for the CPU: 10-30 s
def test_compiled_decoding_gives_the_eager_tokens_greedy_and_seeded():
    # sample.py --compile is meant for CUDA (CUDA graphs); the same compiled step runs on CPU (inductor's C++).
    model = random_model(tiny_config(sliding_window=16), seed=3)
    prompt = list(range(5, 15))
    sampled = SamplingConfig(temperature=0.8, top_p=0.9, top_k=50, repetition_penalty=1.2, max_new_tokens=24)
    for config in (SamplingConfig(temperature=0, max_new_tokens=40), sampled):
        eager = list(
            Generator(model, max_len=64, device=torch.device("cpu")).generate(
                prompt, config, stop_ids=set(), generator=torch.Generator().manual_seed(1)
            )
        )
        compiled = Generator(model, max_len=64, device=torch.device("cpu"), compile=True)
        assert list(compiled.generate(prompt, config, set(), torch.Generator().manual_seed(1))) == eager
        assert len(eager) == config.max_new_tokens


def test_the_static_shape_step_that_compile_uses_gives_the_eager_tokens():
    # What --compile compiles, run uncompiled: the whole cache attended, the position a tensor.
    model = random_model(tiny_config(sliding_window=8), seed=3)
    prompt = list(range(5, 15))
    sampled = SamplingConfig(temperature=0.8, top_p=0.9, top_k=50, repetition_penalty=1.2, max_new_tokens=30)
    static = Generator(model, max_len=48, device=torch.device("cpu"))
    static.compiled_step = model.decode_step
    for config in (GREEDY, sampled):
        eager = list(
            Generator(model, max_len=48, device=torch.device("cpu")).generate(
                prompt, config, set(), torch.Generator().manual_seed(1)
            )
        )
        assert list(static.generate(prompt, config, set(), torch.Generator().manual_seed(1))) == eager
    # The next prompt reuses the part of the cache that the static step filled.
    again = prompt + eager[:4] + [3]
    fresh = Generator(model, max_len=48, device=torch.device("cpu"))
    assert list(static.generate(again, GREEDY, set())) == list(fresh.generate(again, GREEDY, set()))


def test_tokens_checked_on_the_host_in_groups_end_where_they_end_one_by_one():
    # On an accelerator the device decodes ahead and the host checks a group of tokens at a time.
    model = random_model(tiny_config(sliding_window=8), seed=6)
    prompt = list(range(3, 13))
    one_by_one = Generator(model, max_len=40, device=torch.device("cpu"))
    free = list(one_by_one.generate(prompt, GREEDY, stop_ids=set()))
    assert len(free) == 40 - len(prompt) + 1  # the cache filled up; its last token is still sampled
    grouped = Generator(model, max_len=40, device=torch.device("cpu"))
    grouped.tokens_per_check = 4
    assert list(grouped.generate(prompt, GREEDY, stop_ids=set())) == free
    stop = free[5]  # in the middle of the second group
    assert list(grouped.generate(prompt, GREEDY, stop_ids={stop})) == free[: free.index(stop) + 1]
    short = SamplingConfig(temperature=0, max_new_tokens=7)
    assert list(grouped.generate(prompt, short, stop_ids=set())) == free[:7]
    # The cache holds tokens decoded past the stop; the next prompt must reuse only what it shares.
    extended = prompt + free[:3] + [1, 2]
    assert list(grouped.generate(extended, short, set())) == list(one_by_one.generate(extended, short, set()))


def test_scores_gone_non_finite_are_an_error_when_decoding_ahead():
    model = random_model(tiny_config(), seed=2)
    generator = Generator(model, max_len=32, device=torch.device("cpu"))
    generator.tokens_per_check = 4
    with torch.no_grad():
        model.lm_head.weight[7] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        list(generator.generate([1, 2, 3], GREEDY, stop_ids=set()))


def test_nucleus_reaches_past_the_candidates_when_they_hold_less_than_top_p():
    logits = torch.linspace(0.0, 0.5, 2000)  # nearly flat: the likeliest 512 hold about a third
    kept = torch.isfinite(nucleus(logits, 0.6)).nonzero().flatten()
    probs = logits.softmax(-1)
    order = probs.argsort(descending=True)
    expected = order[: int((probs[order].cumsum(-1) < 0.6).sum()) + 1]  # up to the token that crosses 0.6
    assert len(kept) > 512
    assert set(kept.tolist()) == set(expected.tolist())


def test_a_prompt_extending_the_last_one_reuses_the_cache_and_gives_the_same_tokens():
    config = tiny_config(sliding_window=8)
    model = random_model(config, seed=4)
    generator = Generator(model, max_len=128, device=torch.device("cpu"))
    first = list(generator.generate(list(range(5, 15)), GREEDY, stop_ids=set()))[:20]
    extended = list(range(5, 15)) + first[:10] + [7, 8, 9]
    calls = []
    original = generator._run
    generator._run = lambda ids: calls.append(ids.shape[1]) or original(ids)
    again = list(generator.generate(extended, SamplingConfig(temperature=0, max_new_tokens=30), stop_ids=set()))
    assert calls[0] == 3  # only the three new tokens were prefilled
    fresh = list(
        Generator(model, max_len=128, device=torch.device("cpu")).generate(
            extended, SamplingConfig(temperature=0, max_new_tokens=30), stop_ids=set()
        )
    )
    assert again == fresh


def test_generation_stops_at_a_stop_token_and_yields_it():
    config = tiny_config()
    model = random_model(config, seed=5)
    prompt = [1, 2, 3]
    free = list(Generator(model, 64, torch.device("cpu")).generate(prompt, GREEDY, stop_ids=set()))
    stop = free[4]
    stopped = list(Generator(model, 64, torch.device("cpu")).generate(prompt, GREEDY, stop_ids={stop}))
    assert stopped == free[: free.index(stop) + 1]


def test_top_k_and_top_p_only_sample_allowed_tokens():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    generator = torch.Generator().manual_seed(0)
    draws = {
        sample_token(
            logits.clone(),
            SamplingConfig(temperature=1.0, top_p=1.0, top_k=2),
            torch.tensor([], dtype=torch.long),
            generator,
        )
        for _ in range(200)
    }
    assert draws == {0, 1}
    probs = logits.softmax(-1)  # 0.64, 0.24, 0.09, ...: p=0.8 needs the first two
    assert probs[0] < 0.8 < probs[:2].sum()
    draws = {
        sample_token(
            logits.clone(), SamplingConfig(temperature=1.0, top_p=0.8), torch.tensor([], dtype=torch.long), generator
        )
        for _ in range(200)
    }
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
    draws = [
        sample_token(
            logits.clone(), SamplingConfig(temperature=1.0, top_p=1.0, repetition_penalty=1.5), context, generator
        )
        for _ in range(2000)
    ]
    frequencies = torch.bincount(torch.tensor(draws), minlength=4).float() / len(draws)
    torch.testing.assert_close(frequencies, expected.softmax(-1), atol=0.04, rtol=0)


BATCH_PROMPTS = [[5, 17, 99, 3], list(range(40, 60)), [7], list(range(100, 131))]
BATCH_CONFIGS = [
    SamplingConfig(temperature=0.9, top_p=0.8, max_new_tokens=9),
    SamplingConfig(temperature=0, repetition_penalty=1.3, max_new_tokens=4),
    SamplingConfig(temperature=1.2, top_p=1.0, top_k=20, max_new_tokens=12),
    SamplingConfig(temperature=0.7, top_p=0.9, repetition_penalty=1.2, max_new_tokens=7),
]


def written_alone(model, prompt, config, stop_ids, seed) -> list[int]:
    generator = Generator(model, max_len=128, device=torch.device("cpu"))
    return list(generator.generate(prompt, config, stop_ids, torch.Generator().manual_seed(seed)))


def decode_batch(model, stop_ids, drop=None, after_steps=0) -> tuple[list[list[int]], list]:
    """Each row's tokens (stop tokens included) and errors, each row seeded with its number; `drop` leaves
    after `after_steps` steps."""
    rows = [
        BatchRow(prompt, config, torch.Generator().manual_seed(seed))
        for seed, (prompt, config) in enumerate(zip(BATCH_PROMPTS, BATCH_CONFIGS))
    ]
    decoder = BatchDecoder(model, rows, stop_ids, torch.device("cpu"))
    tokens, errors = [[] for _ in rows], []
    for number, step in enumerate(decoder):
        for chosen in step:
            tokens[chosen.row].append(chosen.token) if chosen.error is None else errors.append(chosen)
        if number + 1 == after_steps:
            decoder.drop(drop)
    return tokens, errors


def test_a_batch_row_writes_what_its_prompt_writes_alone_with_its_own_sampling_and_stream():
    model = random_model(tiny_config(), seed=4)
    free = [
        written_alone(model, prompt, config, set(), seed)
        for seed, (prompt, config) in enumerate(zip(BATCH_PROMPTS, BATCH_CONFIGS))
    ]
    stop_ids = {free[0][4], free[2][6]}  # rows end at different steps, by a stop token or their max_new_tokens
    expected = [
        written_alone(model, prompt, config, stop_ids, seed)
        for seed, (prompt, config) in enumerate(zip(BATCH_PROMPTS, BATCH_CONFIGS))
    ]
    assert len({len(tokens) for tokens in expected}) > 2
    assert decode_batch(model, stop_ids) == (expected, [])


def test_a_dropped_row_and_a_failed_row_leave_and_the_others_write_what_they_would():
    model = random_model(tiny_config(), seed=4)
    expected, _ = decode_batch(model, set())
    # The prompts go in a step each, then every row's first token comes, then the second: dropped after it.
    tokens, _ = decode_batch(model, set(), drop=0, after_steps=len(BATCH_PROMPTS) + 1)
    assert tokens == [expected[0][:2]] + expected[1:]
    tokens, _ = decode_batch(model, set(), drop=2, after_steps=1)  # before its prompt went in: it writes nothing
    assert tokens == expected[:2] + [[]] + expected[3:]
    with torch.no_grad():
        model.model.embed_tokens.weight[BATCH_PROMPTS[1][5]] = float("nan")  # only the second prompt holds it
    tokens, [failed] = decode_batch(model, set())
    assert (failed.row, failed.last, str(failed.error)) == (1, True, NON_FINITE)
    assert tokens == [expected[0], [], *expected[2:]]


def test_rows_added_one_a_step_write_what_they_write_alone():
    """Continuous batching: each row joins a batch of another width (its prompt longer or shorter than the
    batch's tokens), rows leave, and a prompt like the last one reuses its prefix; no row's tokens change."""
    model = random_model(tiny_config(), seed=4)
    cases = [*enumerate(zip(BATCH_PROMPTS, BATCH_CONFIGS)), (3, (BATCH_PROMPTS[3], BATCH_CONFIGS[3]))]
    expected = [written_alone(model, prompt, config, set(), seed) for seed, (prompt, config) in cases]
    decoder = BatchDecoder(model, [], set(), torch.device("cpu"), prefill_chunk=4)
    tokens: dict[int, list[int]] = {}
    for step in range(100):
        if step < len(cases):
            seed, (prompt, config) = cases[step]
            tokens[decoder.add(BatchRow(prompt, config, torch.Generator().manual_seed(seed)))] = []
        for chosen in decoder.step():
            tokens[chosen.row].append(chosen.token)
        if not decoder.busy:
            break
    assert list(tokens.values()) == expected
    assert decoder.cache is None and not decoder.rows  # every row gone, and forgotten


def test_a_row_added_while_a_long_prompt_goes_in_starts_within_its_own_chunks_and_the_batch_never_waits():
    model = random_model(tiny_config(), seed=4)
    decoder = BatchDecoder(model, [], set(), torch.device("cpu"), prefill_chunk=4)
    writing = decoder.add(BatchRow([5, 17, 99, 3], SamplingConfig(temperature=0, max_new_tokens=30)))
    decoder.step()
    long = decoder.add(BatchRow(list(range(100, 160)), SamplingConfig(temperature=0, max_new_tokens=2)))  # 15 chunks
    decoder.step()
    short = decoder.add(BatchRow([7, 8, 9, 10, 11, 12], SamplingConfig(temperature=0, max_new_tokens=2)))  # 2 chunks
    steps = [[chosen.row for chosen in decoder.step()] for _ in range(20)]
    assert all(writing in rows for rows in steps)  # a token each step, whatever goes in beside it
    # The two prompts take turns: the short one's 2 chunks come in the first 4 steps, its second token in the 5th;
    # the long one's 14 chunks left take 12 steps more.
    assert [number for number, rows in enumerate(steps) if short in rows] == [3, 4]
    assert [number for number, rows in enumerate(steps) if long in rows] == [15, 16]

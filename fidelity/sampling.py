"""Replies at many contexts at once: their prompts decoded together, as one batch.

Decoding reads every weight of the model for each new token. A batch of prompts reads them once per
step for all of them, so on a CPU eight replies take about the time of two (measured on a 135M model),
and a GPU goes further. Each reply is sampled token by token exactly as generation.Generator samples
one (`sample_token`, the same stop tokens); only the random draws are shared by the batch.

Prompts of different lengths are padded on the left, so that every row's next token sits at the same
place in the KV cache; the model's `padding` argument keeps each token from seeing padding and starts
positions at each prompt's first real token, so a padded prompt computes what it would alone. A reply that ends leaves
the batch, and the batch shrinks around it.
"""
import torch

from model.generation import SamplingConfig, sample_token
from model.transformer import KVCache, Transformer

PADDING = 0  # any id: padding is never attended to


@torch.inference_mode()
def generate_batch(model: Transformer, prompts: list[list[int]], config: SamplingConfig, stop_ids: set[int],
                   generator: torch.Generator | None, device: torch.device) -> list[list[int]]:
    """The tokens sampled after each prompt, up to (not including) a stop token or `max_new_tokens`."""
    width = max(map(len, prompts))
    padding = torch.tensor([width - len(prompt) for prompt in prompts], device=device)
    ids = torch.tensor([[PADDING] * (width - len(prompt)) + prompt for prompt in prompts], device=device)
    dtype = next(model.parameters()).dtype
    cache = KVCache(model.config, len(prompts), width + config.max_new_tokens, dtype=dtype, device=device)
    seen = [torch.tensor(prompt, device=device) for prompt in prompts]  # what the repetition penalty looks at
    written: list[list[int]] = [[] for _ in prompts]
    writing = list(range(len(prompts)))  # the prompt of each row of the batch
    logits = _last_logits(model, ids, padding, cache)
    for step in range(config.max_new_tokens):
        tokens, rows_left = [], []
        for row, number in enumerate(writing):
            token = sample_token(logits[row], config, seen[number], generator)
            if token in stop_ids:
                continue
            written[number].append(token)
            seen[number] = torch.cat([seen[number], torch.tensor([token], device=device)])
            tokens.append(token)
            rows_left.append(row)
        if not rows_left or step == config.max_new_tokens - 1:
            break
        if len(rows_left) < len(writing):
            kept = torch.tensor(rows_left, device=device)
            cache.keys, cache.values = cache.keys[:, kept], cache.values[:, kept]
            padding = padding[kept]
            writing = [writing[row] for row in rows_left]
        logits = _last_logits(model, torch.tensor(tokens, device=device)[:, None], padding, cache)
    return written


def _last_logits(model: Transformer, ids: torch.Tensor, padding: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Run `ids` [batch, new] after what the cache holds; the logits of each row's last token [batch, vocab]."""
    return model.lm_head(model.hidden_states(ids, kv_cache=cache, padding=padding)[:, -1])

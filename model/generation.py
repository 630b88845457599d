"""Token generation: prefill the prompt once, then decode token by token from a KV cache.

The cache remembers which tokens it holds, so a prompt that extends the previous one (the next turn
of a chat, or the same prompt sampled again) only runs the model over the tokens that are new.
"""
from dataclasses import dataclass
from typing import Iterator

import torch

from core.flags import setting
from model.transformer import KVCache, Transformer


NUCLEUS_CANDIDATES = 512  # tokens sorted first for top-p sampling


@dataclass
class SamplingConfig:
    """How a token is drawn from the model's scores; sample.py's and evaluate.py's sampling flags."""
    temperature: float = setting(0.7, "0: greedy")
    top_p: float = setting(0.9, "nucleus sampling mass")
    top_k: int = setting(0, "sample from the k likeliest tokens; 0: all")
    repetition_penalty: float = setting(1.0, ">1 discourages repeating the context")
    max_new_tokens: int = setting(256, "longest reply in tokens")


def sample_token(logits: torch.Tensor, config: SamplingConfig, context: torch.Tensor,
                 generator: torch.Generator | None = None) -> int:
    """Choose the next token from the last position's logits [vocab]."""
    logits = logits.float()
    if not torch.isfinite(logits).all():  # finite weights can still overflow, in fp16 above all
        raise ValueError("the model's next-token scores are NaN or infinite; with --dtype fp16, try bf16 or fp32")
    if config.repetition_penalty != 1.0 and context.numel():
        # As in the CTRL paper and transformers: shrink positive logits, grow negative ones.
        seen = logits[context]
        logits[context] = torch.where(seen > 0, seen / config.repetition_penalty, seen * config.repetition_penalty)
    if config.temperature <= 0:
        return int(logits.argmax())
    logits = logits / config.temperature
    if config.top_k > 0:
        kth = torch.topk(logits, min(config.top_k, logits.numel())).values[-1]
        logits[logits < kth] = float("-inf")
    if config.top_p < 1.0:
        # Sorting the whole vocabulary costs milliseconds a token on a CPU. The nucleus nearly always lies
        # among the likeliest few hundred tokens, and sorting those alone is exact when they hold top_p.
        sorted_logits, order = torch.topk(logits, min(NUCLEUS_CANDIDATES, logits.numel()))
        sorted_probs = (sorted_logits - logits.logsumexp(-1)).exp()
        if sorted_probs.sum() < config.top_p:
            sorted_logits, order = torch.sort(logits, descending=True)
            sorted_probs = sorted_logits.softmax(-1)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs  # keeps the token that crosses p
        kept = order[mass_before < config.top_p]
        logits = torch.full_like(logits, float("-inf")).index_put_((kept,), logits[kept])
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


class Generator:
    """Generates continuations of token prompts with one model and one preallocated KV cache."""

    def __init__(self, model: Transformer, max_len: int, device: torch.device, compile: bool = False):
        self.model, self.device = model, device
        dtype = next(model.parameters()).dtype
        self.cache = KVCache(model.config, batch_size=1, max_len=max_len, dtype=dtype, device=device)
        self.cached_ids: list[int] = []  # the tokens whose keys and values the cache holds
        # Decoding runs the model on one token at a time; compiling it removes most of the Python overhead.
        self.hidden_states = torch.compile(model.hidden_states, dynamic=True) if compile else model.hidden_states

    @property
    def max_len(self) -> int:
        return self.cache.max_len

    @torch.inference_mode()
    def generate(self, prompt: list[int], config: SamplingConfig, stop_ids: set[int],
                 generator: torch.Generator | None = None) -> Iterator[int]:
        """Yield new tokens until a stop token (yielded too), `max_new_tokens` or a full cache."""
        if len(prompt) >= self.max_len:
            raise ValueError(f"the prompt has {len(prompt)} tokens; the context holds {self.max_len}")
        # The cache may hold fewer tokens than `cached_ids` if a forward pass was interrupted, and
        # the last prompt token must run again to give the next token's logits.
        reuse = min(common_prefix_length(self.cached_ids, prompt), self.cache.length, len(prompt) - 1)
        self.cache.truncate(reuse)
        self.cached_ids = list(prompt)
        logits = self._run(prompt[reuse:])
        context = torch.tensor(prompt, device=self.device)
        for _ in range(config.max_new_tokens):
            token = sample_token(logits, config, context, generator)
            yield token
            if token in stop_ids or len(self.cached_ids) >= self.max_len:
                return
            self.cached_ids.append(token)
            context = torch.cat([context, torch.tensor([token], device=self.device)])
            logits = self._run([token])

    def _run(self, ids: list[int]) -> torch.Tensor:
        input_ids = torch.tensor([ids], device=self.device)
        # Only the last position's logits are needed: a prompt of n tokens skips n - 1 LM-head rows.
        hidden = self.hidden_states(input_ids, kv_cache=self.cache)
        return self.model.lm_head(hidden[0, -1])


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n

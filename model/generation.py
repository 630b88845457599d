"""Token generation: prefill the prompt once, then decode token by token from a KV cache.

Generator writes one reply at a time. Its cache remembers which tokens it holds, so a prompt that
extends the previous one (the next turn of a chat, or the same prompt sampled again) only runs the
model over the tokens that are new. Decoding follows gpt-fast: tokens are sampled on the device, so
the host never waits for one to be chosen before asking for the next, and `compile=True` compiles the
one-token step in shapes that never change, which CUDA replays as one graph.

BatchDecoder writes several replies together. Decoding reads every weight of the model for each new
token; a batch reads them once per step for all its rows, so on a CPU eight replies take about the
time of two (measured on a 135M model). Prompts of different lengths are padded on the left, so that
every row's next token sits at the same place in the KV cache; the model's `padding` argument keeps
each token from seeing padding and starts positions at each prompt's first real token, so a padded
prompt computes what it would alone. A row that ends leaves the batch, and the batch shrinks around it.
"""

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from core.flags import positive_int, setting
from model.transformer import KVCache, Transformer

NUCLEUS_CANDIDATES = 512  # tokens sorted first for top-p sampling on a CPU
# On an accelerator the tokens come to the host this many at a time: the device runs ahead instead of
# waiting for each to be checked against the stop tokens, and stops at most this many tokens late
# (on a CPU there is no device to wait for: one at a time).
TOKENS_PER_HOST_CHECK = 8
NON_FINITE = "the model's next-token scores are NaN or infinite; with --dtype fp16, try bf16 or fp32"


@dataclass
class SamplingConfig:
    """How a token is drawn from the model's scores; sample.py's and evaluate.py's sampling flags."""

    temperature: float = setting(0.7, "0: greedy")
    top_p: float = setting(0.9, "nucleus sampling mass")
    top_k: int = setting(0, "sample from the k likeliest tokens; 0: all")
    repetition_penalty: float = setting(1.0, ">1 discourages repeating the context")
    max_new_tokens: int = setting(256, "longest reply in tokens", type=positive_int)


def next_token(
    logits: torch.Tensor, config: SamplingConfig, seen: torch.Tensor | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The next token, a tensor on the device of the last position's logits [vocab], chosen without
    waiting for the device. `seen` [vocab] marks the context's tokens, for the repetition penalty."""
    logits = logits.float()
    if config.repetition_penalty != 1.0 and seen is not None:
        # As in the CTRL paper and transformers: shrink positive logits, grow negative ones.
        penalised = torch.where(logits > 0, logits / config.repetition_penalty, logits * config.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if config.temperature <= 0:
        return logits.argmax()
    logits = logits / config.temperature
    if config.top_k > 0:
        kth = torch.topk(logits, min(config.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        logits = nucleus(logits, config.top_p)
    # The exponential race: with E ~ Exp(1) drawn for each token, the largest p / E falls to each token
    # with probability p. Unlike torch.multinomial, it needs nothing from the host.
    race = torch.empty_like(logits).exponential_(generator=generator)
    return (logits.softmax(-1) / race).argmax()


def nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """`logits` with all but the top-p nucleus at -inf: the likeliest tokens up to probability `top_p`,
    the one that crosses it included."""
    sorted_logits, order = likeliest_first(logits, top_p)
    sorted_probs = (sorted_logits - logits.logsumexp(-1)).exp()
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    kept = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(0, order, kept)


def likeliest_first(logits: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits sorted likeliest first, and their tokens: at least those of the top-p nucleus.

    Sorting the whole vocabulary costs milliseconds a token on a CPU. The nucleus nearly always lies
    among the likeliest few hundred tokens, and sorting those alone is exact when they hold top_p.
    Checking that waits for the device, so an accelerator sorts everything (microseconds there).
    """
    if logits.device.type == "cpu":
        candidates = torch.topk(logits, min(NUCLEUS_CANDIDATES, logits.numel()))
        if (candidates.values - logits.logsumexp(-1)).exp().sum() >= top_p:
            return candidates
    return torch.sort(logits, descending=True)


def sample_token(
    logits: torch.Tensor, config: SamplingConfig, context: torch.Tensor, generator: torch.Generator | None = None
) -> int:
    """Choose the next token from the last position's logits [vocab], after the tokens `context`."""
    if not torch.isfinite(logits).all():  # finite weights can still overflow, in fp16 above all
        raise ValueError(NON_FINITE)
    return int(next_token(logits, config, seen_tokens(context, logits.shape[-1], config), generator))


def seen_tokens(context: torch.Tensor, vocab_size: int, config: SamplingConfig) -> torch.Tensor | None:
    """The mask [vocab] of the tokens in `context` that the repetition penalty needs; None without one."""
    if config.repetition_penalty == 1.0:
        return None
    return torch.zeros(vocab_size, dtype=torch.bool, device=context.device).index_fill_(0, context, True)


def random_stream(seed: int | None) -> torch.Generator:
    """The random stream a reply samples from: seeded, to repeat it, or from the system's entropy."""
    stream = torch.Generator()
    stream.manual_seed(seed) if seed is not None else stream.seed()
    return stream


class Generator:
    """Generates continuations of token prompts with one model and one preallocated KV cache."""

    def __init__(self, model: Transformer, max_len: int, device: torch.device, compile: bool = False):
        self.model, self.device = model, torch.device(device)
        dtype = next(model.parameters()).dtype
        self.cache = KVCache(model.config, batch_size=1, max_len=max_len, dtype=dtype, device=device)
        self.cached_ids: list[int] = []  # the tokens of the last prompt and reply; the cache holds a prefix
        # On an accelerator the device decodes ahead, and the host checks the stop tokens a group at a time.
        self.tokens_per_check = 1 if self.device.type == "cpu" else TOKENS_PER_HOST_CHECK
        self.compiled_step = None
        if compile:
            # One compiled graph for every token: the whole cache in, the position a tensor. On CUDA
            # it replays as a CUDA graph (mode reduce-overhead), its hundreds of kernels launched at
            # once; the cache is written in place, so it must stay where the graph recorded it.
            for tensor in (self.cache.keys, self.cache.values):
                torch._dynamo.mark_static_address(tensor)
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self.compiled_step = torch.compile(model.decode_step, mode=mode, fullgraph=True)

    @property
    def max_len(self) -> int:
        return self.cache.max_len

    @torch.inference_mode()
    def generate(
        self, prompt: list[int], config: SamplingConfig, stop_ids: set[int], generator: torch.Generator | None = None
    ) -> Iterator[int]:
        """Yield new tokens until a stop token (yielded too), `max_new_tokens` or a full cache.

        On an accelerator the tokens arrive `tokens_per_check` at a time, and the device decodes up
        to that many past a stop token: they are dropped, and the next prompt reuses none of them.
        """
        if len(prompt) >= self.max_len:
            raise ValueError(f"the prompt has {len(prompt)} tokens; the context holds {self.max_len}")
        # The cache may hold fewer tokens than `cached_ids` if a forward pass was interrupted, and
        # the last prompt token must run again to give the next token's logits.
        reuse = min(common_prefix_length(self.cached_ids, prompt), self.cache.length, len(prompt) - 1)
        self.cache.truncate(reuse)
        self.cached_ids = list(prompt)
        logits = self._run(torch.tensor([prompt[reuse:]], device=self.device))
        seen = seen_tokens(torch.tensor(prompt, device=self.device), self.model.config.vocab_size, config)
        random = random_on_device(generator, self.device)
        position = torch.tensor([self.cache.length], device=self.device)
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        pending = []
        for step in range(config.max_new_tokens):
            finite &= torch.isfinite(logits).all()
            token = next_token(logits, config, seen, random)
            pending.append(token)
            last = step == config.max_new_tokens - 1 or self.cache.length >= self.max_len
            if not last:
                if seen is not None:
                    seen.index_fill_(0, token.view(1), True)
                logits = self._decode(token, position)
            if len(pending) == self.tokens_per_check or last:
                if not finite:  # finite weights can still overflow, in fp16 above all
                    raise ValueError(NON_FINITE)
                for chosen in torch.stack(pending).tolist():
                    yield chosen
                    if chosen in stop_ids:
                        return
                    self.cached_ids.append(chosen)
                pending = []
            if last:
                return

    def _run(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The logits after `input_ids` [1, n], which go into the cache after what it holds."""
        # Only the last position's logits are needed: a prompt of n tokens skips n - 1 LM-head rows.
        hidden = self.model.hidden_states(input_ids, kv_cache=self.cache)
        return self.model.lm_head(hidden[0, -1])

    def _decode(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """The logits after `token`, which goes into the cache at `position` (both on the device)."""
        if self.compiled_step is None:
            return self._run(token.view(1, 1))
        logits = self.compiled_step(token.view(1, 1), position, self.cache)[0]
        self.cache.length += 1
        position += 1
        return logits


def random_on_device(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """The caller's random stream, or on another device a stream seeded from it: drawing from a CPU
    generator for a GPU's tensors would copy to the device on every token."""
    if generator is None or generator.device.type == device.type:
        return generator
    seed = int(torch.randint(2**62, (), generator=generator))
    return torch.Generator(device).manual_seed(seed)


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


PADDING = 0  # any id: padding is never attended to
# Prompt tokens a row added to a running batch runs per step: on 2 CPU cores, 64 tokens of a 135M model take
# about as long as a decoding step of the batch, so a long prompt slows the others' replies by about half.
PREFILL_CHUNK = 64
CACHE_GROWTH = 64  # tokens of room the batch's cache gains when it fills


@dataclass
class BatchRow:
    """One prompt of a batch, with its own sampling and random stream (a stream may serve several rows)."""

    prompt: list[int]
    config: SamplingConfig
    random: torch.Generator | None = None


@dataclass
class Chosen:
    """What one row of a batch did in one step. A row whose scores were not finite has `error` (its
    ValueError from sample_token), as has one whose prompt's prefill failed, and no token; it leaves the
    batch, and the others go on."""

    row: int
    token: int | None
    last: bool  # the row leaves the batch: a stop token, its max_new_tokens, or an error
    error: Exception | None = None


@dataclass
class _Prefill:
    """A row's prompt going into its own cache, a chunk a step, before the row joins the batch."""

    row: int
    prompt: list[int]
    cache: KVCache  # of one row, as long as the prompt


class BatchDecoder:
    """Decodes rows together. Each step (iterating, or `step()`) is one forward pass of the batch, and gives
    what each row in it chose, in batch order; each row draws from its own stream, so a stream shared by
    several rows is drawn row by row (on a GPU, each row from a stream on the GPU that it seeds: see
    _register). `drop(row)` takes a row out before the next step.

    The rows given at the start go in first, a prompt a step (so that a progress bar moves from the start), each
    alone, in the order of their tokens so that each reuses the prefix it shares with the one before (a report's
    moments of one conversation share all of it); then they decode together. A padded batch of prompts computes
    its padding too, and on a CPU runs slower per token than the same prompts one by one (bench/bench_report.py,
    docs/figures.md). A row `add`ed later joins between steps (continuous batching: a server's request that
    comes while others are written does not wait for them to end). Its prompt goes in `prefill_chunk` tokens a
    step, the chunk of one waiting row a step, in turn, beside the batch's decoding: a long prompt delays the
    others' next token by one chunk at most, and a short prompt waits behind no long one. Once its prompt is in,
    its cache joins the batch's, the shorter side padded on the left. A prompt that starts as the last one added
    did reuses its cached prefix."""

    def __init__(
        self,
        model: Transformer,
        rows: list[BatchRow],
        stop_ids: set[int],
        device: torch.device,
        prefill_chunk: int = PREFILL_CHUNK,
    ):
        self.model, self.stop_ids, self.device = model, stop_ids, torch.device(device)
        self.prefill_chunk, self.dtype = prefill_chunk, next(model.parameters()).dtype
        self.rows: dict[int, BatchRow] = {}  # the rows not yet ended, by number
        self.context: dict[int, torch.Tensor] = {}  # each row's prompt and tokens so far, for the repetition penalty
        self.written: dict[int, int] = {}
        self.batch: list[int] = []  # the rows decoding, in the cache's order
        self.next_ids: list[int] = []  # each batch row's newest token: the next step's input
        self.dropped: set[int] = set()  # rows to take out of the batch before the next step
        self.cache: KVCache | None = None  # the batch's: every row's tokens end at cache.length
        self.padding = torch.zeros(0, dtype=torch.long, device=self.device)
        self.prefilling: list[_Prefill] = []  # rows added whose prompts are going in, the next to run first
        self.last_prefill: _Prefill | None = None  # the last prompt that went in, whose prefix the next may reuse
        self.numbered = 0  # rows numbered so far
        # prefilled first, a prompt a step, in the order of their tokens; then they decode together
        self.starting = sorted((self._register(row) for row in rows), key=lambda row: self.rows[row].prompt)
        self.ready: list[tuple[_Prefill, torch.Tensor]] = []  # of them, those whose prompts are in, with their scores

    def add(self, row: BatchRow) -> int:
        """A row to join the batch once its prompt is in; its number."""
        cache = self._new_cache(1, len(row.prompt))  # first: a cache that cannot be made leaves nothing behind
        prefill = self._reusing_last(_Prefill(self._register(row), row.prompt, cache))
        self.prefilling.append(prefill)
        return prefill.row

    def _reusing_last(self, prefill: _Prefill) -> _Prefill:
        """`prefill` with the prefix its prompt shares with the last prompt that went in already in its cache."""
        if (last := self.last_prefill) is not None:
            reuse = min(common_prefix_length(last.prompt, prefill.prompt), len(prefill.prompt) - 1)
            prefill.cache.keys[:, :, :, :reuse] = last.cache.keys[:, :, :, :reuse]
            prefill.cache.values[:, :, :, :reuse] = last.cache.values[:, :, :, :reuse]
            prefill.cache.length = reuse
        return prefill

    def drop(self, row: int) -> None:
        self.dropped.add(row)
        waiting = row in self.starting or any(prefill.row == row for prefill, _ in self.ready)
        if waiting or any(prefill.row == row for prefill in self.prefilling):
            self.starting = [number for number in self.starting if number != row]
            self.ready = [(prefill, scores) for prefill, scores in self.ready if prefill.row != row]
            self.prefilling = [prefill for prefill in self.prefilling if prefill.row != row]
            self._forget(row)

    @property
    def busy(self) -> bool:
        """Whether a step has work: a row to decode, or a prompt to go in."""
        return bool(self.starting or self.prefilling or any(row not in self.dropped for row in self.batch))

    def __iter__(self) -> Iterator[list[Chosen]]:
        while self.busy:
            yield self.step()

    @torch.inference_mode()
    def step(self) -> list[Chosen]:
        """One forward pass of the batch, then one chunk of the next prompt waiting; what each row chose. An
        error of the batch's pass is raised; one of a prompt's chunk fails its row alone."""
        self._leave()
        chosen = []
        if self.starting:
            chosen = self._start_next()
        elif self.batch:
            if self.cache.length == self.cache.max_len:
                self._widen(right=CACHE_GROWTH)
            chosen = self._choose_all(self._last_logits(torch.tensor([[token] for token in self.next_ids])))
        if self.prefilling and not self.starting:  # an added row joins a batch that has started
            chosen += self._prefill_chunk()
        self._leave()  # the rows that ended: their memory is free at once, not at the next step
        return chosen

    def _register(self, row: BatchRow) -> int:
        number, self.numbered = self.numbered, self.numbered + 1
        # A CPU stream cannot draw for a GPU's scores: the row draws from one on the device, seeded from it.
        self.rows[number], self.written[number] = replace(row, random=random_on_device(row.random, self.device)), 0
        self.context[number] = torch.tensor(row.prompt, device=self.device)
        return number

    def _forget(self, row: int) -> None:
        del self.rows[row], self.written[row], self.context[row]
        self.dropped.discard(row)

    def _new_cache(self, batch: int, length: int) -> KVCache:
        return KVCache(self.model.config, batch, length, dtype=self.dtype, device=self.device)

    def _start_next(self) -> list[Chosen]:
        """Prefill the next row given at the start, reusing the prefix of the one before. After the last, choose
        every row's first token, in row order as each later step does, and put the rows in one cache, each
        padded on the left to the longest prompt, with room for the longest reply."""
        row = self.starting.pop(0)
        prompt = self.rows[row].prompt
        prefill = self._reusing_last(_Prefill(row, prompt, self._new_cache(1, len(prompt))))
        logits = self._prefill(prefill, len(prompt))
        failed = [logits] if isinstance(logits, Chosen) else []
        if not failed:
            self.ready.append((prefill, logits))
        if self.starting:
            return failed
        ready, self.ready = sorted(self.ready, key=lambda item: item[0].row), []
        chosen = [self._choose(prefill.row, logits) for prefill, logits in ready]
        going = [(prefill, first.token) for (prefill, _), first in zip(ready, chosen) if not first.last]
        for first in chosen:
            if first.last:
                self._forget(first.row)
        if going:  # one cache made once and each row copied in (joined one by one, the batch would be copied each time)
            width = max(len(prefill.prompt) for prefill, _ in going)
            longest_reply = max(self.rows[prefill.row].config.max_new_tokens for prefill, _ in going)
            self.cache = self._new_cache(len(going), width + longest_reply)
            for place, (prefill, _) in enumerate(going):
                for name in ("keys", "values"):
                    getattr(self.cache, name)[:, place, :, width - len(prefill.prompt) : width] = getattr(
                        prefill.cache, name
                    )[:, 0]
            self.cache.length = width
            self.padding = torch.tensor([width - len(prefill.prompt) for prefill, _ in going], device=self.device)
            self.batch = [prefill.row for prefill, _ in going]
            self.next_ids = [token for _, token in going]
        return failed + chosen

    def _prefill_chunk(self) -> list[Chosen]:
        """Run the next chunk of the first prompt waiting; once the whole prompt is in, its row's first token,
        and the row joins the batch."""
        prefill = self.prefilling.pop(0)
        logits = self._prefill(prefill, self.prefill_chunk)
        if logits is None:
            self.prefilling.append(prefill)  # the others' turn
            return []
        if isinstance(logits, Chosen):
            return [logits]
        chosen = self._choose(prefill.row, logits)
        if chosen.last:
            self._forget(prefill.row)
        else:
            self._join(prefill, chosen.token)
        return [chosen]

    def _prefill(self, prefill: _Prefill, tokens: int) -> torch.Tensor | Chosen | None:
        """Run up to `tokens` more of a row's prompt into its cache: once the whole prompt is in, the scores of
        its next token (None before); where the model fails on it, the row's Chosen with the error (the row is
        forgotten; the error is its alone, and the batch goes on)."""
        start = prefill.cache.length
        end = min(start + tokens, len(prefill.prompt))
        try:
            hidden = self.model.hidden_states(
                torch.tensor([prefill.prompt[start:end]], device=self.device), kv_cache=prefill.cache
            )
        except Exception as error:  # this prompt's alone: the batch goes on
            self._forget(prefill.row)
            return Chosen(prefill.row, None, last=True, error=error)
        if end < len(prefill.prompt):
            return None
        self.last_prefill = prefill
        return self.model.lm_head(hidden[0, -1])

    def _join(self, prefill: _Prefill, token: int) -> None:
        """Put a prefilled row into the batch, its tokens and the batch's ending at the same place."""
        length = prefill.cache.length
        if not self.batch:
            self.cache, self.padding = self._new_cache(0, length + CACHE_GROWTH), self.padding[:0]
            self.cache.length = length
        if length > self.cache.length:
            self._widen(left=length - self.cache.length)
        pad = (0, 0, self.cache.length - length, self.cache.max_len - self.cache.length)
        for name in ("keys", "values"):
            joined = torch.nn.functional.pad(getattr(prefill.cache, name)[:, :, :, :length], pad)
            setattr(self.cache, name, torch.cat([getattr(self.cache, name), joined], dim=1))
        self.padding = torch.cat([self.padding, torch.tensor([self.cache.length - length], device=self.device)])
        self.batch.append(prefill.row)
        self.next_ids.append(token)

    def _widen(self, left: int = 0, right: int = 0) -> None:
        """Room in the batch's cache: `left` more padding before every row, `right` more room after."""
        for name in ("keys", "values"):
            setattr(self.cache, name, torch.nn.functional.pad(getattr(self.cache, name), (0, 0, left, right)))
        self.cache.length += left
        self.cache.max_len += left + right
        self.padding = self.padding + left

    def _leave(self) -> None:
        """Take the rows that ended or were dropped out of the batch, its cache and its padding; and the padding
        no row needs any more."""
        places = [place for place, row in enumerate(self.batch) if row not in self.dropped]
        if len(places) == len(self.batch):
            return
        for row in self.batch:
            if row in self.dropped:
                self._forget(row)
        self.batch, self.next_ids = [self.batch[place] for place in places], [self.next_ids[place] for place in places]
        if not self.batch:
            self.cache = None
            return
        kept = torch.tensor(places, device=self.device)
        trim = int(self.padding[kept].min())  # columns that are padding in every row left
        for name in ("keys", "values"):
            setattr(self.cache, name, getattr(self.cache, name)[:, kept, :, trim:])
        self.padding = self.padding[kept] - trim
        self.cache.length -= trim
        self.cache.max_len -= trim

    def _choose_all(self, logits: torch.Tensor) -> list[Chosen]:
        chosen = [self._choose(row, logits[place]) for place, row in enumerate(self.batch)]
        self.next_ids = [PADDING if each.token is None else each.token for each in chosen]
        return chosen

    def _choose(self, row: int, logits: torch.Tensor) -> Chosen:
        config = self.rows[row].config
        try:
            token = sample_token(logits, config, self.context[row], self.rows[row].random)
        except ValueError as error:
            self.dropped.add(row)
            return Chosen(row, None, last=True, error=error)
        self.written[row] += 1
        self.context[row] = torch.cat([self.context[row], torch.tensor([token], device=self.device)])
        last = token in self.stop_ids or self.written[row] == config.max_new_tokens
        if last:
            self.dropped.add(row)
        return Chosen(row, token, last=last)

    def _last_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Run `ids` [batch, new] after what the cache holds; the logits of each row's last token [batch, vocab]."""
        hidden = self.model.hidden_states(ids, kv_cache=self.cache, padding=self.padding)
        return self.model.lm_head(hidden[:, -1])

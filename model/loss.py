"""The training loss: cross-entropy of the labelled positions, computed from the final hidden states
and the LM head chunk by chunk, so the full-vocabulary logits of a batch never exist at once."""

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # label of a position the loss skips (PyTorch's cross-entropy default)
# Logits computed at once: 512 tokens of a 32k vocabulary, 64 of Gemma's 262k (64 MiB in fp32 either way).
LOGITS_PER_CHUNK = 2**24
# Tokens a chunk at most, whatever the vocabulary: a chunk's LM-head gradient is summed in the model's
# dtype, and 512 tokens' keep within fp16's range (tests/test_transformer.py).
MAX_CHUNK_TOKENS = 512


def chunked_cross_entropy(
    hidden: torch.Tensor, lm_head: nn.Linear, labels: torch.Tensor, chunk_tokens: int | None = None
) -> torch.Tensor:
    """Summed cross-entropy of the labelled positions, never holding their full-vocabulary logits.

    Only labelled positions get logits at all, one chunk of [chunk_tokens, vocab] at a time; by default
    as many tokens as make LOGITS_PER_CHUNK logits (at most MAX_CHUNK_TOKENS), so a large vocabulary
    takes fewer tokens a chunk.
    """
    if chunk_tokens is None:
        chunk_tokens = min(MAX_CHUNK_TOKENS, max(1, LOGITS_PER_CHUNK // lm_head.weight.shape[0]))
    labels = labels.reshape(-1)
    keep = labels != IGNORE_INDEX
    return LinearCrossEntropy.apply(
        hidden.reshape(-1, hidden.shape[-1])[keep], lm_head.weight, labels[keep], chunk_tokens, torch.is_grad_enabled()
    )


class LinearCrossEntropy(torch.autograd.Function):
    """sum(-log softmax(hidden @ weight.T)[label]) with the gradients worked out in the forward pass.

    The gradient of the loss by a chunk's logits is softmax - one_hot(label), known as soon as the
    chunk's loss is; turned straight into gradients for the hidden states (and the weight, when it
    trains), it lets each chunk's logits go at once, and the backward pass needs neither them nor
    a second multiply by the LM head.
    """

    @staticmethod
    def forward(
        ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_tokens: int, grad_enabled: bool
    ):
        # (needs_input_grad says what requires grad even under no_grad, which evaluation runs in)
        needs_grad = [needs and grad_enabled for needs in ctx.needs_input_grad[:2]]
        total = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden) if needs_grad[0] else None
        # The weight's gradient sums every chunk's, unscaled until the backward pass: fp32 keeps the
        # sum in range and precise whatever the model's dtype.
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_grad[1] else None
        for start in range(0, labels.numel(), chunk_tokens):
            h, y = hidden[start : start + chunk_tokens], labels[start : start + chunk_tokens]
            # log_softmax upcasts as it reads: no separate fp32 copy of the chunk's logits.
            log_probs = F.log_softmax(F.linear(h, weight), dim=-1, dtype=torch.float32)
            total += F.nll_loss(log_probs, y, reduction="sum")
            if grad_hidden is None and grad_weight is None:
                continue
            grad_logits = log_probs.exp_()
            grad_logits[torch.arange(len(y), device=y.device), y] -= 1
            grad_logits = grad_logits.to(h.dtype)
            if grad_hidden is not None:
                torch.mm(grad_logits, weight, out=grad_hidden[start : start + chunk_tokens])
            if grad_weight is not None:
                grad_weight += grad_logits.t() @ h
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (
            grad_hidden * grad_total if grad_hidden is not None else None,
            (grad_weight * grad_total).to(ctx.weight_dtype) if grad_weight is not None else None,
            None,
            None,
            None,
        )

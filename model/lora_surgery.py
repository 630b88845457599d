"""Model surgery for LoRA: wrap a model's projections in adapters (and its embedding and LM head in trainable
token rows, growing the vocabulary for them), and fold them back into plain layers for saving."""

import torch
from torch import nn

from model.lora import LoRALinear, TrainableTokens, lora_layers, token_layers
from model.lora_config import PROJECTIONS, AdapterError, LoRAConfig
from model.nf4 import NF4Linear, quantized_count
from model.transformer import Transformer


def apply_lora(model: Transformer, config: LoRAConfig) -> str:
    """Wrap the target projections of every decoder layer, and the embedding and LM head where the
    config trains token rows (growing them to hold those tokens), and freeze everything else.

    Returns a one-line summary of trainable and total parameters.
    """
    unknown = set(config.targets) - set(PROJECTIONS)
    if unknown:
        raise ValueError(f"unknown LoRA targets {sorted(unknown)}; choose from {', '.join(PROJECTIONS)}")
    check_trainable_tokens(model, config.trainable_tokens)
    for param in model.parameters():
        param.requires_grad_(False)
    for layer in model.model.layers:
        for block in (layer.self_attn, layer.mlp):
            for name in config.targets:
                if isinstance(getattr(block, name, None), (nn.Linear, NF4Linear)):
                    setattr(block, name, LoRALinear(getattr(block, name), config))
    add_trainable_tokens(model, config.trainable_tokens)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters()) + quantized_count(model)
    tokens = len(set().union(*config.trainable_tokens.values()))
    return (
        f"LoRA r={config.r} alpha={config.alpha:g} on {', '.join(config.targets)}"
        + (f" and the rows of {tokens} new tokens" if tokens else "")
        + f": {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.3f}%)"
    )


def check_trainable_tokens(model: Transformer, trainable_tokens: dict[str, tuple[int, ...]]) -> None:
    """Refuse token rows the model cannot take: an LM head tied to the embedding trains the embedding's
    rows or none, and rows beyond the vocabulary only extend it by as many rows as are trained (the
    tokens added to a base model come last), so that an adapter cannot make the model grow without bound."""
    rows = model.config.vocab_size
    for layer, indices in trainable_tokens.items():
        if max(indices) >= rows + len(indices):
            raise AdapterError(
                f"trainable token {max(indices)} of {layer} is beyond the model's vocabulary of "
                f"{rows} tokens; load the tokenizer saved with the adapter"
            )
    tied = model.config.tie_word_embeddings
    if tied and "lm_head" in trainable_tokens and trainable_tokens["lm_head"] != trainable_tokens.get("embed_tokens"):
        raise AdapterError("the LM head is tied to the embedding: its trainable tokens must be the embedding's")


def add_trainable_tokens(model: Transformer, trainable_tokens: dict[str, tuple[int, ...]]) -> None:
    """Grow the vocabulary to hold the tokens, and make their rows trainable (see TrainableTokens)."""
    if not trainable_tokens:
        return
    grow_vocabulary(model, max(max(indices) for indices in trainable_tokens.values()) + 1)
    tied = model.config.tie_word_embeddings
    if "embed_tokens" in trainable_tokens:
        embedding = TrainableTokens(model.model.embed_tokens, list(trainable_tokens["embed_tokens"]))
        model.model.embed_tokens = embedding
        if tied:  # the head is the embedding: it computes with the same rows
            model.lm_head = TrainableTokens(model.lm_head, list(trainable_tokens["embed_tokens"]), embedding.rows)
    if "lm_head" in trainable_tokens and not tied:
        model.lm_head = TrainableTokens(model.lm_head, list(trainable_tokens["lm_head"]))


def grow_vocabulary(model: Transformer, vocab_size: int) -> None:
    """Give the embedding and the LM head `vocab_size` rows, each new row the mean of the existing ones
    (as training.distributed.load_sharded_model does): a neutral point from which new tokens learn."""
    embedding, head = model.model.embed_tokens, model.lm_head
    if vocab_size <= embedding.weight.shape[0]:
        return

    def grown(weight: torch.Tensor) -> nn.Parameter:
        mean = weight.detach().float().mean(0, keepdim=True).to(weight.dtype)
        rows = torch.cat([weight.detach(), mean.expand(vocab_size - weight.shape[0], -1)])
        return nn.Parameter(rows, requires_grad=weight.requires_grad)

    embedding.weight, embedding.num_embeddings = grown(embedding.weight), vocab_size
    head.weight = embedding.weight if model.config.tie_word_embeddings else grown(head.weight)
    head.out_features = model.config.vocab_size = vocab_size


def merge_lora(model: Transformer) -> Transformer:
    """Fold every adapter into its base weight, and trained token rows into theirs, and put plain
    `nn.Linear`s and `nn.Embedding`s back (for `save_model`)."""
    for name, module in lora_layers(model).items():
        module.merge()
        parent_name, _, child = name.rpartition(".")
        plain = nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
        plain.weight, plain.bias = module.weight, module.bias
        setattr(model.get_submodule(parent_name), child, plain)
    for name, module in token_layers(model).items():
        module.base.weight = nn.Parameter(module.weight.detach(), requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module.base)
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model

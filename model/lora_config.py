"""The shape of LoRA adapters (train.py's --lora-* flags, a PEFT adapter's config) and the error an unusable
adapter raises. Without torch, so that train.py's --help answers before torch loads (model.lora holds the
layers)."""

import math
from dataclasses import dataclass

from core.errors import TwinError
from core.flags import not_a_flag, setting

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class AdapterError(TwinError):
    """An adapter that cannot be used; the message names the file and what is wrong."""


def targets_from_text(text: str) -> tuple[str, ...]:
    """--lora-targets "q,k,v" as projection names: ("q_proj", "k_proj", "v_proj")."""
    names = tuple(f"{name.strip()}_proj" for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in PROJECTIONS]
    if unknown:
        raise AdapterError(f"--lora-targets: unknown {', '.join(unknown)}; choose from q,k,v,o,gate,up,down")
    return names


def targets_text(targets: tuple[str, ...]) -> str:
    return ",".join(name.removesuffix("_proj") for name in targets)


@dataclass
class LoRAConfig:
    """The adapters' shape; train.py's --lora-* flags (the fields set in code are no flag)."""

    r: int = setting(32, "adapter rank")
    alpha: float = setting(16, "adapter scaling numerator, scaling = alpha / r")
    dropout: float = setting(0.05, "dropout on the adapter input")
    targets: tuple[str, ...] = setting(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"),
        "projections to adapt, from q,k,v,o,gate,up,down",
        parse=targets_from_text,
        text=targets_text,
    )
    # scale by alpha / sqrt(r) instead of alpha / r (PEFT's rsLoRA)
    use_rslora: bool = not_a_flag(default=False)
    # "embed_tokens" and/or "lm_head" -> the token ids whose rows train there (PEFT's trainable_token_indices)
    trainable_tokens: dict[str, tuple[int, ...]] = not_a_flag(default_factory=dict)

    def __post_init__(self):
        if self.r < 1:
            raise AdapterError(f"LoRA rank must be at least 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise AdapterError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

"""What every way of loading weights shares (Hugging Face folders in model.checkpoint, GGUF files in
model.gguf): the error for a checkpoint that cannot be loaded, and placing a tensor as a parameter."""
import torch
from torch import nn

from core.errors import TwinError


class CheckpointError(TwinError):
    """A checkpoint that cannot be loaded; the message names the file or tensor and what is wrong."""


def assign_parameter(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Make `tensor` the parameter `name` of `model` as it is (no copy); only floating point ones train."""
    module_name, _, attribute = name.rpartition(".")
    module = model.get_submodule(module_name)
    module._parameters[attribute] = nn.Parameter(tensor, requires_grad=tensor.is_floating_point())

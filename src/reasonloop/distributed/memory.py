"""Memory features applied to the policy before training (docs/scale.md, "Supported combinations")."""

from __future__ import annotations

import functools

import torch

from reasonloop.config import ConfigError
from reasonloop.distributed.config import MemoryConfig


def apply_memory(model: torch.nn.Module, memory: MemoryConfig, autocast: bool = True) -> torch.nn.Module:
    """Activation checkpointing and (when `autocast`) a bf16-autocast forward; in place, returns `model`.
    FSDP applies bf16 through its own MixedPrecisionPolicy and passes autocast=False."""
    if memory.activation_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False) and not hasattr(model, "get_base_model"):
            raise ConfigError(f"memory.activation_checkpointing: {type(model).__name__} does not support HF gradient "
                              "checkpointing")
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns, gone in v6
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if memory.precision == "bf16" and autocast:
        bf16_forward(model)
    return model


def bf16_forward(model: torch.nn.Module) -> None:
    """Run `model.forward` under bf16 autocast (its device's), logits returned in fp32. The parameters, their
    gradients and the optimizer state stay fp32: the master weights."""
    device = next(model.parameters()).device.type
    inner = model.forward

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            out = inner(*args, **kwargs)
        if getattr(out, "logits", None) is not None:
            out.logits = out.logits.float()
        return out

    model.forward = forward

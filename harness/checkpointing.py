"""Gradient checkpointing switched on and off across transformers versions (one owner: the trainers switch it, and the
plan's CPU calibration times training calls exactly as they run)."""

from __future__ import annotations

from typing import Any


def set_gradient_checkpointing(model: Any, enabled: bool) -> None:
    """Keep only each layer's input and recompute the rest in the backward pass (much less activation memory for
    about one more forward pass), or stop doing so. transformers 5 renamed ``gradient_checkpointing_enable`` to
    ``activation_checkpointing_enable``; 4.57 has only the old name."""
    new = hasattr(model, "activation_checkpointing_enable")
    if enabled:
        kwargs = {"use_reentrant": False}
        if new:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        (model.activation_checkpointing_disable if new else model.gradient_checkpointing_disable)()

"""How far training moved the weights: ``||W - W0|| / ||W0||`` per parameter group (ffn, attention, embeddings, other).

``W`` is the *effective* weight: for a ``softplus(V)`` parametrisation the weight the model computes with, not ``V``.
``W0`` is the weight right after the trainer's transform (the init), so the number says how much recovery training
changed the model, not how much the init did. Group norms are Frobenius norms over all of a group's tensors.
"""

from __future__ import annotations

import math

import torch
from torch import nn

GROUPS = ("ffn", "attention", "embeddings", "other")
_PARAMETRIZED = ".parametrizations.weight.original"


def parameter_group(name: str) -> str:
    """``ffn``, ``attention``, ``embeddings`` or ``other`` (norms, biases outside those), from a parameter's name."""
    parts = name.split(".")
    if "mlp" in parts:
        return "ffn"
    if any(p in ("attention", "self_attn", "attn") for p in parts):
        return "attention"
    if any("embed" in p or p in ("lm_head", "wte", "wpe") for p in parts):
        return "embeddings"
    return "other"


@torch.no_grad()
def effective_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameter name -> a CPU fp32 copy of the weight the model computes with (parametrisations evaluated)."""
    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if name.endswith(_PARAMETRIZED):
            module_name = name.removesuffix(_PARAMETRIZED)
            out[f"{module_name}.weight"] = model.get_submodule(module_name).weight.detach().float().cpu().clone()
        else:
            out[name] = param.detach().float().cpu().clone()
    return out


@torch.no_grad()
def group_change(initial: dict[str, torch.Tensor], final: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """``{"relative": group -> ||W - W0||_F / ||W0||_F, "absolute": group -> ||W - W0||_F}`` over each group's
    tensors (groups with no parameters left out). Both are needed to compare arms: the ``shift`` init lifts the
    weights, so the same step is a smaller fraction of its larger ``||W0||``."""
    moved = dict.fromkeys(GROUPS, 0.0)
    size = dict.fromkeys(GROUPS, 0.0)
    for name, w0 in initial.items():
        group = parameter_group(name)
        w0 = w0.double()
        moved[group] += float((final[name].double() - w0).pow(2).sum())
        size[group] += float(w0.pow(2).sum())
    present = [g for g in GROUPS if size[g] > 0]
    return {"relative": {g: math.sqrt(moved[g] / size[g]) for g in present},
            "absolute": {g: math.sqrt(moved[g]) for g in present}}

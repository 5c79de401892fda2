"""How the processes of a multi-process training run share the model: DDP replicates it, FSDP shards it.

DDP (torch's ``DistributedDataParallel``) keeps all weights, gradients and AdamW state in every process and
all-reduces the gradients: right for models whose training state (16 bytes per parameter) fits one GPU. FSDP
(torch's FSDP2, ``fully_shard`` on every decoder layer and then on the whole model) keeps 1/world of each in every
process and gathers a layer's weights only for its forward and backward pass: the ~23 GB training state of
Pythia-1.4B is split across the GPUs. Both average the gradients over the processes, so the loop and its loss
scaling are the same under either, and so are the results up to the order of floating-point sums.

Snapshots and the exported checkpoint always hold full (unsharded) tensors, gathered to the main process's CPU,
so a run is resumed or evaluated without knowing how it was sharded.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from torch import nn

from harness import HarnessError

from .state import Processes

#: Marks a snapshot whose optimiser state is keyed by parameter name (FSDP), not by parameter index.
NAMED_OPTIMIZER_STATE = "named"


def sharding_units(net: nn.Module) -> list[nn.Module]:
    """The modules FSDP shards one by one: the decoder layers, by the class names the model itself declares as
    units that must not be split (``_no_split_modules``, set by every Hugging Face causal LM)."""
    names = set(getattr(net, "_no_split_modules", None) or ())
    return [m for m in net.modules() if type(m).__name__ in names]


class DataParallel:
    """The training model of this process and the operations whose form depends on how it is shared.

    Built after the model is transformed and moved to its device and before the optimiser (FSDP replaces the
    parameters by their shards, and the optimiser must hold those)."""

    def __init__(self, net: nn.Module, procs: Processes) -> None:
        self.net, self.procs = net, procs
        self.sharded = procs.distributed and procs.strategy == "fsdp"
        self._export_copy: nn.Module | None = None
        if self.sharded:
            from torch.distributed.fsdp import fully_shard

            # The main process exports the checkpoint from an unsharded copy on the CPU (the shards are gathered
            # into it at the end); it keeps the transform's structure (parametrisations, activations).
            if procs.is_main:
                self._export_copy = copy.deepcopy(net).to("cpu")
            for unit in sharding_units(net):
                fully_shard(unit)
            fully_shard(net)
            self.model = net
        elif procs.distributed:
            self.model = nn.parallel.DistributedDataParallel(net)
        else:
            self.model = net

    def clip_grad_norm(self, max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP: a DTensor over the shards
            norm = norm.full_tensor()
        return float(norm)

    # -- full states (every process calls these: under FSDP they are collectives) ---------------------------------
    def _full_options(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True)

    def state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Model and optimiser state to snapshot (complete on the main process; empty elsewhere under FSDP)."""
        if not self.sharded:
            return {"model": self.net.state_dict(), "optimizer": optimizer.state_dict()}
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        opts = self._full_options()
        return {"model": get_model_state_dict(self.net, options=opts),
                "optimizer": get_optimizer_state_dict(self.net, optimizer, options=opts),
                "optimizer_keys": NAMED_OPTIMIZER_STATE}

    def load(self, optimizer: torch.optim.Optimizer, saved: dict[str, Any], where: str) -> None:
        """Restore a snapshot's model and optimiser state (every process has read the whole snapshot)."""
        named = saved.get("optimizer_keys") == NAMED_OPTIMIZER_STATE
        if not self.sharded and not named:
            self.net.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            return
        if self.sharded and not named:
            raise HarnessError(f"the training state in {where} was written without FSDP and this run shards the "
                               "model; fix: relaunch the way it was started (DDP: without HARNESS_PARALLEL=fsdp or "
                               "accelerate's --use_fsdp) or delete that directory to start over")
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.net, saved["model"], options=opts)
        set_optimizer_state_dict(self.net, optimizer, saved["optimizer"], options=opts)

    def weights(self) -> dict[str, torch.Tensor] | None:
        """A copy of the full model weights on the CPU, on the main process (None elsewhere)."""
        if not self.sharded:
            return ({name: t.detach().to("cpu", copy=True) for name, t in self.net.state_dict().items()}
                    if self.procs.is_main else None)
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        full = get_model_state_dict(self.net, options=self._full_options())
        return full if self.procs.is_main else None

    def load_weights(self, weights: dict[str, torch.Tensor] | None) -> None:
        """Set the model to weights from :meth:`weights` (given on the main process; others pass None)."""
        if not self.sharded:
            if weights is not None:
                self.net.load_state_dict(weights)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        # a copy of the mapping: the broadcast replaces its values by the distributed tensors it makes
        set_model_state_dict(self.net, dict(weights or {}),
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))

    def export_model(self) -> nn.Module | None:
        """The full trained model, on the main process (None elsewhere), for the Hugging Face export."""
        if not self.sharded:
            return self.net if self.procs.is_main else None
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        full = get_model_state_dict(self.net, options=self._full_options())
        if self._export_copy is None:
            return None
        self._export_copy.load_state_dict(full)
        return self._export_copy


def gradient_sync(model: nn.Module, enabled: bool):
    """For gradient accumulation: a context in which backward passes do (or, not ``enabled``, do not yet) average
    gradients over the processes. FSDP modules and DDP wrappers have their own switch; a plain module needs none."""
    if enabled:
        return contextlib.nullcontext()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        return _no_fsdp_sync(model)
    if hasattr(model, "no_sync"):  # DDP
        return model.no_sync()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _no_fsdp_sync(model: nn.Module):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)

"""Resumable training state: process group, RNG capture, and atomic snapshots of everything a resume needs.

A snapshot is a directory ``step-00000120/`` holding ``state.pt`` (model, optimiser, scheduler, counters; written
by the main process), ``rng-rank{r}.pt`` (each process's RNG states) and ``meta.json``, written last. It is built
under a temporary name and renamed into place, so a snapshot directory either is complete or does not exist; the
newest ``keep`` are kept. Loading falls back to an older snapshot if the newest cannot be read, and stops with an
error at one of an older format (``SNAPSHOT_FORMAT`` in ``meta.json``) rather than train again from step 0.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from harness import HarnessError, atomic_write_json, read_json

log = logging.getLogger("harness")

#: The snapshot layout ``load_latest`` reads: 2 holds only tensors, numbers, strings and containers (numpy's RNG
#: state as a tensor), so it loads with ``torch.load(weights_only=True)``; older snapshots pickled a numpy array.
SNAPSHOT_FORMAT = 2


@dataclass
class Processes:
    """This process's place in a (possibly single-process) data-parallel run."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    #: How several processes share the model (:mod:`.parallel`): ``ddp`` replicates it, ``fsdp`` shards it.
    strategy: str = "ddp"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over processes (metrics and token counts, not gradients: DDP owns those)."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on one (so all stop at the same step)."""
        return self.sum([float(flag)])[0] > 0


def launched_distributed() -> bool:
    """Started by torchrun / accelerate launch with more than one process (they export WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launcher_strategy() -> str:
    """How the launcher asks the processes to share the model, read where its other settings are (WORLD_SIZE):
    ``fsdp`` from ``accelerate launch --use_fsdp`` (it exports ACCELERATE_USE_FSDP) or ``HARNESS_PARALLEL=fsdp``
    (set by the SLURM jobs of a profile with ``launcher.strategy: fsdp``, or by hand before ``torchrun``); else DDP."""
    chosen = os.environ.get("HARNESS_PARALLEL", "").strip().lower()
    if chosen not in ("", "ddp", "fsdp"):
        raise HarnessError(f"HARNESS_PARALLEL={chosen!r} is not a strategy; fix: set it to ddp or fsdp, or unset it")
    if chosen:
        return chosen
    return "fsdp" if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true") else "ddp"


def setup_processes(requested: torch.device) -> Processes:
    """Join the process group a launcher prepared (gloo on CPU, NCCL on GPU); a plain run is one process."""
    if not launched_distributed():
        return Processes(0, 1, requested)
    strategy = launcher_strategy()
    use_cuda = requested.type == "cuda"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    device = requested
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return Processes(dist.get_rank(), dist.get_world_size(), device, strategy)


def capture_rng() -> dict[str, Any]:
    # numpy's state as a tensor (and a plain tuple around it), so the file loads with ``weights_only=True``.
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                     gauss), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Snapshots:
    def __init__(self, root: Path, keep: int, procs: Processes) -> None:
        self.root, self.keep, self.procs = Path(root), max(1, keep), procs
        self.root.mkdir(parents=True, exist_ok=True)

    def steps(self) -> list[int]:
        """Steps of the complete snapshots, oldest first."""
        out = []
        for d in self.root.glob("step-*"):
            if d.is_dir() and (d / "meta.json").exists():
                out.append(int(d.name.split("-")[1]))
        return sorted(out)

    def path(self, step: int) -> Path:
        return self.root / f"step-{step:08d}"

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Every process calls this; the main one writes the shared state, each its own RNG."""
        final, tmp = self.path(step), self.root / f".step-{step:08d}.tmp"
        try:
            return self._save(step, state, final, tmp)
        except (OSError, RuntimeError, HarnessError) as exc:
            # A full disk (torch.save says so with a RuntimeError): remove the half-written snapshot so it does not
            # keep the disk full, and say so in one line; the last complete snapshot stays the newest.
            shutil.rmtree(tmp, ignore_errors=True)
            # torch.save reports a failed write as a RuntimeError ("iostream error", "unexpected pos").
            full = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or isinstance(
                exc, RuntimeError)
            if full:
                free = shutil.disk_usage(self.root).free
                raise HarnessError(f"{tmp}: cannot write the training snapshot ({str(exc).splitlines()[0][:120]}; "
                                   f"{free / 1e6:,.1f} MB free); fix: free space on that filesystem (or pass --out "
                                   "on a larger one) and run the same command again to resume from the last "
                                   "snapshot") from None
            raise

    def _save(self, step: int, state: dict[str, Any], final: Path, tmp: Path) -> Path:
        if self.procs.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.procs.barrier()
        torch.save(capture_rng(), tmp / f"rng-rank{self.procs.rank}.pt")
        self.procs.barrier()
        if self.procs.is_main:
            torch.save(state, tmp / "state.pt")
            atomic_write_json(tmp / "meta.json", {"step": step, "world": self.procs.world, "format": SNAPSHOT_FORMAT})
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in self.steps()[:-self.keep]:
                shutil.rmtree(self.path(old), ignore_errors=True)
        self.procs.barrier()
        return final

    def load_latest(self) -> dict[str, Any] | None:
        """The newest readable snapshot's state, with this process's RNG restored; None when there is none."""
        for step in reversed(self.steps()):
            directory = self.path(step)
            try:
                meta = read_json(directory / "meta.json")
                if not isinstance(meta, dict) or not isinstance(meta.get("world"), int):
                    raise ValueError("not a snapshot's meta.json")
            except (OSError, ValueError) as exc:  # a damaged marker: this snapshot cannot be trusted
                log.warning("warning: training snapshot %s is damaged (meta.json: %s); trying an older one",
                            directory, exc)
                continue
            if meta["world"] != self.procs.world:
                raise HarnessError(f"the training state in {directory} was written by {meta['world']} process(es), "
                                   f"this run has {self.procs.world}; fix: relaunch with the same number of processes "
                                   "(the data order depends on it) or delete that directory to start over")
            if meta.get("format") != SNAPSHOT_FORMAT:  # readable, but not safely: say so rather than start over
                raise HarnessError(f"the training state in {directory} was written by an older harness (snapshot "
                                   f"format {meta.get('format', 1)}; this one reads format {SNAPSHOT_FORMAT} with "
                                   "torch's safe loader); fix: finish that run with the harness version that wrote "
                                   "it, or delete that directory to start the training over")
            try:
                # Tensors, numbers, strings and containers only: torch's safe loader reads them (no pickled code).
                state = torch.load(directory / "state.pt", map_location="cpu", weights_only=True)
                rng = torch.load(directory / f"rng-rank{self.procs.rank}.pt", map_location="cpu", weights_only=True)
            except MemoryError:  # the machine, not the snapshot: said as such (one line), the snapshot kept
                raise
            except Exception as exc:  # a damaged snapshot: fall back to the one before
                log.warning("training snapshot %s unreadable (%s); trying an older one", directory, exc)
                continue
            restore_rng(rng)
            return state
        return None

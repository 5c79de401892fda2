"""What a plugin sees while its stage runs."""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._engine.progress import Bar
from ._engine.rundir import CARRIED, RunDir, read_json_object, read_records
from .store import RecordLog, atomic_write_json

if TYPE_CHECKING:
    from .loaded_model import LoadedModel
    from .stage import Stage

log = logging.getLogger("harness")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed derived from ``parts`` (stable across processes and machines, unlike ``hash``)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class StagePreempted(Exception):
    """Raised by a plugin that saw ``ctx.should_stop`` and saved its state; the stage resumes on the next run."""


class StopNow(KeyboardInterrupt):
    """A second stop request (SIGTERM/SIGINT): the stage stops at once; its records and state files keep what was
    durable, so the next run resumes from there."""


@dataclass
class StageContext:
    stage: Stage
    run_dir: Path
    stage_dir: Path
    seed: int
    mode: str
    #: Device the suite asked for: ``auto`` (cuda when present), ``cpu`` or ``cuda[:N]``.
    device: str = "auto"
    #: Results of the stages this one depends on, by stage id.
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Loads another model of the suite by name (for transfer attacks, say); set by the runner.
    model_loader: Callable[[str], LoadedModel] | None = None
    #: Set by the runner's SIGUSR1/SIGTERM handler: checkpoint and raise :class:`StagePreempted`.
    stop_flag: list[bool] = field(default_factory=lambda: [False])
    show_progress: bool | None = None
    _records: RecordLog | None = None

    @property
    def records(self) -> RecordLog:
        """Per-example records of this stage (``records.jsonl``); survives interruption."""
        if self._records is None:
            self._records = RecordLog(self.stage_dir / "records.jsonl")
        return self._records

    def input_records(self, stage_id: str) -> list[dict[str, Any]]:
        """The per-example records of ``stage_id``, one of the stages this one needs (``ctx.inputs``)."""
        if stage_id not in self.inputs:
            raise KeyError(f"stage {self.stage.id} does not need {stage_id}")
        return RunDir(self.run_dir).records(stage_id)

    def input_dir(self, stage_id: str) -> Path:
        """The directory of ``stage_id``, one of the stages this one waits for (``ctx.inputs``): a train stage's
        exported model is its ``checkpoint/``."""
        if stage_id not in self.inputs:
            raise KeyError(f"stage {self.stage.id} does not wait for {stage_id}")
        return RunDir(self.run_dir).stage_dir(stage_id)

    def adopt_records(self, ids: list[str]) -> None:
        """Append, in the order of ``ids``, the records the runner carried over from this stage's previous config
        (``carried.jsonl``: kept when the config changed only in its example count, see
        :meth:`harness.api.Plugin.reuse_config`) of the examples ``ids`` that have no record yet; the records of
        examples outside ``ids`` are never adopted, so they count nowhere. A no-op without carried records."""
        carried = {r.get("id"): r for r in read_records(self.stage_dir / CARRIED)[0]}
        if not carried:
            return
        done = self.records.done()
        for example_id in ids:
            if example_id in carried and example_id not in done:
                self.records.append(carried[example_id])

    @property
    def checkpoint_dir(self) -> Path:
        return self.stage_dir / "checkpoint"

    @property
    def should_stop(self) -> bool:
        return self.stop_flag[0]

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def rng(self, *key: Any) -> torch.Generator:
        """A generator seeded by (run seed, stage, key): the same example gets the same randomness on resume."""
        return torch.Generator().manual_seed(derive_seed(self.seed, self.stage.id, *key))

    def progress(self, description: str, total: int | None) -> Bar:
        return Bar(f"{self.stage.id} {description}".strip(), total, self.show_progress)

    def save_state(self, name: str, state: dict[str, Any]) -> None:
        atomic_write_json(self.stage_dir / f"state-{name}.json", state)

    def load_state(self, name: str) -> dict[str, Any] | None:
        """The state last saved under ``name``; None when there is none or it is damaged (then the stage starts
        that state over, with one warning line)."""
        return read_json_object(self.stage_dir / f"state-{name}.json",
                                consequence=f"stage {self.stage.id} starts this state over")

    def load_model(self, name: str) -> LoadedModel:
        if self.model_loader is None:
            raise RuntimeError("this stage has no model loader")
        return self.model_loader(name)

    def log(self, message: str) -> None:
        log.info("[%s] %s", self.stage.id, message)

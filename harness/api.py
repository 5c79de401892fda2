"""The small public API a plugin needs: base classes for each kind, the loaded-model handle, the stage context.

A plugin class names itself (``name``), declares its options (``Config``, a :class:`PluginConfig`), and
implements one method. The runner builds it with its validated config and calls that method once per stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .config import PluginConfig

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .context import StageContext
    from .workload import PlanInputs, WeightsSource, Workload


@dataclass
class LoadedModel:
    """A causal LM ready for evaluation: in eval mode, on its device, with its tokenizer."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    #: Provenance recorded with every result that used this model (source, revision, dtype, checkpoint hash...).
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_length(self) -> int:
        """The longest sequence the model was trained for (positions), capped by the tokenizer's claim."""
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return 2048


class Plugin:
    #: Name used in suites (``plugin: NAME``) and shown by ``harness list``.
    name: ClassVar[str]
    #: One of ``model``, ``metric``, ``attack``, ``trainer``; set by the base classes below.
    kind: ClassVar[str]
    #: The plugin's options; unknown or mistyped keys are rejected with the plugin's name.
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    #: Whether results depend on the seed. Unseeded stages run once per model, not once per seed.
    seeded: ClassVar[bool] = True
    #: Bumped by the plugin author when results change for the same config; part of every stage's cache key.
    version: ClassVar[str] = "1"

    def __init__(self, config: PluginConfig) -> None:
        self.config = config

    def plan(self, inputs: PlanInputs) -> Workload | None:
        """Optional: the work one stage of this plugin does (tokens through the model, largest batches, bytes
        written), computed from the config alone, for ``harness plan`` and the pre-flight disk check. None: the
        plan says "no estimate"."""
        return None

    def preflight(self, where: str) -> None:
        """Optional and cheap (nothing loaded): raise :class:`HarnessError` with one line and the fix when something
        this plugin needs cannot be reached from here. Runs before ``harness run`` and ``harness slurm submit``;
        ``where`` is the suite key (``models.tiny``) to name in the message."""


class ModelPlugin(Plugin):
    kind = "model"
    seeded = False

    def load(self, ctx: StageContext) -> LoadedModel:
        raise NotImplementedError

    def cache_key(self) -> dict[str, Any]:
        """What identifies the weights this config loads (part of every dependent stage's cache key)."""
        return self.config.model_dump(mode="json")

    def weights_source(self) -> WeightsSource | None:
        """Optional: where the config and weights live (a local directory or a hub id), without loading them;
        ``harness plan`` reads the model's shape there. None: the shape is unknown."""
        return None


class MetricPlugin(Plugin):
    kind = "metric"

    def evaluate(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        """Measure ``model``; write per-example records with ``ctx.records``; return the summary metrics."""
        raise NotImplementedError


class AttackPlugin(Plugin):
    kind = "attack"

    def attack(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        """Attack ``model``; write per-example records with ``ctx.records``; return the summary metrics."""
        raise NotImplementedError

    def is_control(self) -> bool:
        """Whether this stage is a control (e.g. random edits at an attack's budget) rather than an attack: the
        report shows a control's numbers beside the attacks' but judges no success target on them."""
        return False


class TrainerPlugin(Plugin):
    kind = "trainer"

    def train(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        """Train from ``model``; write a Hugging Face checkpoint to ``ctx.checkpoint_dir``; return summary metrics."""
        raise NotImplementedError


KINDS: dict[str, type[Plugin]] = {
    "model": ModelPlugin, "metric": MetricPlugin, "attack": AttackPlugin, "trainer": TrainerPlugin,
}
PathLike = str | Path

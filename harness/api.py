"""The small public API a plugin needs: base classes for each kind, the loaded-model handle, the stage context.

A plugin class names itself (``name``), declares its options as the type parameter of its base class
(``class HotFlipAttack(AttackPlugin[HotFlipConfig])``: ``self.config`` is then a ``HotFlipConfig`` to a type
checker, and ``Config`` is set from it), and implements its kind's one method. The runner builds it with its
validated config and calls :meth:`Plugin.run_stage` once per stage, which each kind maps to that method.
Plugins written before the generic (``Config = MyConfig`` on an unparametrised base) keep working.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar, get_args, get_origin

from .config import PluginConfig
from .loaded_model import LoadedModel

if TYPE_CHECKING:
    from .context import StageContext
    from .workload import PlanInputs, WeightsSource, Workload


#: How a declared metric follows from the per-example records (what the report's example-level intervals
#: recompute on resampled records): the mean or median of ``field``; ``token_weighted``: sum(field) / sum(weight);
#: ``token_weighted_exp``: exp of that (perplexity from summed NLL and token counts); ``none``: the summary value
#: alone (no example-level interval).
Aggregation = Literal["mean", "median", "token_weighted", "token_weighted_exp", "none"]
MetricKind = Literal["scalar", "curve", "histogram", "matrix", "series"]

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class MetricSpec:
    """One number a plugin reports, declared so the report can show, aggregate and interval it without knowing
    the plugin (as an lm-evaluation-harness task declares its ``metric_list``).

    ``name`` is the key of the summary the plugin's method returns; the report reads only declared keys, and warns
    (naming plugin and key) when a declared one is missing from a result. A name with ``{placeholders}`` declares a
    family of keys (``{task}/{metric}`` matches ``hellaswag/acc``); the placeholders' values fill the same
    placeholders of ``label``, ``field``, ``weight``, ``error`` and ``where`` (see :meth:`match`). The first spec
    of a plugin that matches a key is the one that describes it.
    """

    name: str
    #: Shown in tables and plots (default: ``name``).
    label: str = ""
    #: The per-example record field the metric is computed from (None: the summary value only).
    field: str | None = None
    aggregation: Aggregation = "mean"
    #: The per-example weight (token count) of a ``token_weighted`` metric.
    weight: str | None = None
    #: For the model under test (None: neither, e.g. a count). An attack's success rate is higher-is-better for the
    #: attacker; the report's robustness comparisons say which way they read.
    higher_is_better: bool | None = None
    #: Display factor (100 shows a fraction as percent) and digits.
    scale: float = 1.0
    digits: int = 2
    #: A column of the report's side-by-side tables.
    show: bool = True
    #: A compute budget (queries, gradient passes, FLOPs): an x-axis for the report's success-against-budget plots.
    budget: bool = False
    #: A budget spent once, up front, for all examples (a universal trigger's optimisation): the name of the
    #: per-example budget metric it adds to (``mean_queries``, say). The budget plot shows both: the per-example
    #: cost alone, and with this one-off cost, so a universal attack is never drawn as free.
    upfront_for: str | None = None
    #: ``scalar`` (one number per stage), ``curve`` (a summary dict ``{"thresholds": [...], <rate>: [...]}``: the
    #: share of records whose ``field`` exceeds each threshold), ``histogram`` (``field`` holds a list per record,
    #: e.g. edited positions, histogrammed over records) or ``matrix`` (a summary dict source -> {key: value}, e.g.
    #: one model's trigger evaluated on others; ``cells`` names the keys shown; an entry reporting one is shown as
    #: its matrix, not as rows of the side-by-side tables) or ``series`` (the records' ``field`` against their ``x``,
    #: e.g. a training loss against the step; ``name`` is only the series' name).
    kind: MetricKind = "scalar"
    #: Only the records whose fields equal these values are examples of this metric (e.g. ``{"task": "{task}"}``).
    where: dict[str, str] = dataclass_field(default_factory=dict, hash=False)
    #: The summary key that holds this metric's standard error as the plugin computed it (e.g. an evaluation library's).
    error: str | None = None
    #: ``matrix`` metrics: the keys of each cell the report shows.
    cells: tuple[str, ...] = ()
    #: ``series`` metrics: the record field on the horizontal axis, and the summary key holding the value at
    #: ``x = 0`` (before the first record), if any.
    x: str | None = None
    start: str | None = None
    #: With ``field``: the metric is the share of examples whose ``field`` exceeds this (``aggregation: mean`` of
    #: the indicator), e.g. a success rate at another threshold, read from a ``curve``.
    threshold: float | None = None

    @property
    def display(self) -> str:
        return self.label or self.name

    @property
    def is_family(self) -> bool:
        return bool(_PLACEHOLDER.search(self.name))

    def match(self, key: str) -> MetricSpec | None:
        """This spec for summary key ``key`` (placeholders filled in), or None when it does not describe ``key``.
        A placeholder matches any text without ``/`` or ``,``."""
        if not self.is_family:
            return self if key == self.name else None
        pattern = "".join(f"(?P<{part}>[^/,]+)" if i % 2 else re.escape(part)
                          for i, part in enumerate(_PLACEHOLDER.split(self.name)))
        found = re.fullmatch(pattern, key)
        if found is None:
            return None
        values = found.groupdict()

        def fill(text: str | None) -> str | None:
            return None if text is None else _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)

        return replace(self, name=key, label=fill(self.label) or "", field=fill(self.field),
                       weight=fill(self.weight), error=fill(self.error),
                       where={k: fill(v) or "" for k, v in self.where.items()})

    def as_dict(self) -> dict[str, Any]:
        """Plain data (recorded in every stage's result, so a report needs no plugin installed to read it)."""
        out = asdict(self)
        out["cells"] = list(self.cells)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetricSpec:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "cells" in values:
            values["cells"] = tuple(values["cells"])
        return cls(**values)


def describe(specs: list[MetricSpec], key: str) -> MetricSpec | None:
    """The spec (placeholders filled in) of ``specs`` that describes summary key ``key``: the first that matches."""
    for spec in specs:
        found = spec.match(key)
        if found is not None:
            return found
    return None


#: A plugin's config type: the type parameter of its base class.
ConfigT = TypeVar("ConfigT", bound=PluginConfig)


def _config_parameter(cls: type) -> Any:
    """What ``cls`` names as its plugin base's type parameter: a config class (``AttackPlugin[HotFlipConfig]``), a
    type variable (a generic intermediate base), or None (an unparametrised base: the pre-generic style)."""
    for base in cls.__dict__.get("__orig_bases__", ()):  # own bases only: a plain subclass inherits its parent's
        origin = get_origin(base)
        if isinstance(origin, type) and issubclass(origin, Plugin):
            for arg in get_args(base):
                if isinstance(arg, TypeVar) or (isinstance(arg, type) and issubclass(arg, PluginConfig)):
                    return arg
    return None


class Plugin(Generic[ConfigT]):
    #: Name used in suites (``plugin: NAME``) and shown by ``harness list``.
    name: ClassVar[str]
    #: One of ``model``, ``metric``, ``attack``, ``trainer``; set by the base classes below.
    kind: ClassVar[str]
    #: The plugin's options; unknown or mistyped keys are rejected with the plugin's name. Set from the base's type
    #: parameter (``AttackPlugin[HotFlipConfig]``); a plugin on an unparametrised base sets it by hand.
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    #: Whether results depend on the seed. Unseeded stages run once per model, not once per seed.
    seeded: ClassVar[bool] = True
    #: Bumped by the plugin author when results change for the same config; part of every stage's cache key.
    version: ClassVar[str] = "1"
    #: Whether the stage changes the weights of the model in memory (training): the runner reloads it afterwards.
    changes_model: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = _config_parameter(cls)
        own = cls.__dict__.get("Config")
        where = f"plugin {cls.__module__}.{cls.__qualname__}"
        if isinstance(declared, TypeVar):  # a generic base: a Config set by hand must fit the variable's bound
            bound = declared.__bound__
            if own is not None and isinstance(bound, type) and not issubclass(own, bound):
                raise TypeError(f"{where}: Config = {own.__name__} is not a {bound.__name__}; fix: derive it from "
                                f"{bound.__name__}")
        elif declared is not None:
            if own is not None and own is not declared:
                raise TypeError(f"{where}: Config = {own.__name__} contradicts its base's type parameter "
                                f"{declared.__name__}; fix: drop the Config line")
            cls.Config = declared

    def __init__(self, config: ConfigT) -> None:
        self.config: ConfigT = config

    def run_stage(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        """One stage of this plugin on ``model``: its kind's method (evaluate, attack, train). Returns the summary."""
        raise NotImplementedError(f"{type(self).__name__} ({self.kind} plugin) cannot run a stage")

    def result_fields(self) -> dict[str, Any]:
        """Fields of this kind added to every stage's ``result.json`` beside the metrics (an attack's control flag)."""
        return {}

    def declared_metrics(self) -> list[MetricSpec]:
        """What this plugin's results report (the summary keys the report reads); may depend on the config."""
        return []

    def reuse_config(self) -> dict[str, Any] | None:
        """Optional: this config without its example count, for a plugin whose per-example records depend on their
        example alone and whose samples nest (``harness.attacks.select_examples``). A stage whose config then differs
        from the one its directory holds only in that count keeps its records, and a rerun with a larger (or
        smaller) count computes only the examples it has no record of. None (the default): any change recomputes."""
        return None

    def plan(self, inputs: PlanInputs) -> Workload | None:
        """Optional: the work one stage of this plugin does (tokens through the model, largest batches, bytes
        written), computed from the config alone, for ``harness plan`` and the pre-flight disk check. None: the
        plan says "no estimate"."""
        return None

    def preflight(self, where: str) -> None:
        """Optional and cheap (nothing loaded): raise :class:`HarnessError` with one line and the fix when something
        this plugin needs cannot be reached from here. Runs before ``harness run`` and ``harness slurm submit``;
        ``where`` is the suite key (``models.tiny``) to name in the message."""


class ModelPlugin(Plugin[ConfigT]):
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


class MetricPlugin(Plugin[ConfigT]):
    kind = "metric"

    def run_stage(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        return self.evaluate(model, ctx)

    def evaluate(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        """Measure ``model``; write per-example records with ``ctx.records``; return the summary metrics."""
        raise NotImplementedError


class AttackPlugin(Plugin[ConfigT]):
    kind = "attack"
    #: Whether this attack can be another entry's random control (``control_of: <entry>`` in a suite): the same
    #: loop, positions, budget and examples, with random candidates where the attack uses gradient or search ones.
    randomizable: ClassVar[bool] = False
    #: The attack entry this stage is the random control of, or None (an attack). Set by the core from the suite's
    #: ``control_of:`` (the plugin's config is then its attack's); a plugin reads it through :meth:`is_control`.
    control_of: str | None = None

    def run_stage(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        return self.attack(model, ctx)

    def result_fields(self) -> dict[str, Any]:
        return {"control": bool(self.is_control()), "control_of": self.control_of}

    def attack(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        """Attack ``model``; write per-example records with ``ctx.records``; return the summary metrics."""
        raise NotImplementedError

    def is_control(self) -> bool:
        """Whether this stage is a control (random candidates at its attack's budget, ``control_of:``) rather than an
        attack: the report shows a control's numbers beside the attacks' but judges no success target on them."""
        return self.control_of is not None


#: The summary key under which a trainer records a fingerprint (a hex digest) of the training batches it read, in
#: order: the report compares it between paired arms to say whether they shared their data order.
DATA_ORDER_FINGERPRINT = "data_order_sha256"


class TrainerPlugin(Plugin[ConfigT]):
    kind = "trainer"
    changes_model = True
    #: The YAML ``harness train NAME`` reads without ``--config``: a path relative to the directory of the plugin's
    #: module, shipped as package data (so it is found from an installed wheel too). None: ``--config`` is required.
    default_config: ClassVar[str | None] = None

    def run_stage(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        return self.train(model, ctx)

    def train(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        """Train from ``model``; write a Hugging Face checkpoint to ``ctx.checkpoint_dir``; return summary metrics."""
        raise NotImplementedError


KINDS: dict[str, type[Plugin[Any]]] = {
    "model": ModelPlugin, "metric": MetricPlugin, "attack": AttackPlugin, "trainer": TrainerPlugin,
}
PathLike = str | Path
#: Suite section -> the kind of plugin its entries name.
SECTIONS: dict[str, str] = {"models": "model", "train": "trainer", "metrics": "metric", "attacks": "attack"}

"""The ``report:`` section of a suite: which tables of numbers the report writes, which models it compares, and the
targets it judges them by. The study is data: the core has no default tables, models, metrics, thresholds or
targets (a suite without targets gets its comparisons' values and intervals, and no verdict against a target)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ...config import PluginConfig


class ReportMetric(PluginConfig):
    """One metric of one metrics/attacks entry (``entry`` may also name the entry's plugin)."""

    entry: str
    metric: str


class TableColumn(ReportMetric):
    """A column of a report table: ``label`` shows ``metric`` of ``entry`` times ``scale``."""

    label: str
    scale: float = 1.0
    digits: int = Field(default=2, ge=0, le=8)


class MaskingConfig(PluginConfig):
    """The gradient-masking checks' options (see :mod:`harness._engine.report.masking`)."""

    #: The attacks entry of the continuous relaxation on the token attacks' positions (an unconstrained attack on
    #: the context embeddings, e.g. ``soft_prompt`` with ``edit: context, epsilon: null``). None: that check is
    #: not applicable.
    relaxation: str | None = None
    #: The success rate the relaxation must reach on every model.
    relaxation_success: float = Field(default=0.9, ge=0, le=1)
    #: How far (in relative NLL increase) the paired interval of a transfer's advantage over the white-box attack
    #: must lie above 0 before the transfer check fails: a stochastic optimiser's run-to-run spread (a UAT restart
    #: finding a slightly weaker trigger than the baseline's) is not masking. 0: any settled advantage fails.
    transfer_margin: float = Field(default=0.0, ge=0)


class ReportTable(PluginConfig):
    """A table of the report: rows are models, columns these metrics (mean ± std over seeds). Written as
    ``<name>.tex`` (``\\input{<name>}`` inside a ``table`` environment; label ``tab:<name>``) and ``<name>.md``, and
    shown under ``title`` in the summary and the HTML report."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    title: str = ""
    columns: list[TableColumn] = Field(min_length=1)

    @property
    def heading(self) -> str:
        return self.title or self.name


class Ensemble(PluginConfig):
    """The per-example worst case over several attack entries (AutoAttack's principle: an example counts as broken
    when any attack breaks it), shown as an attack entry of its own named ``name``. Per model and seed, on the
    examples every member ran (records paired by ``id``), each example keeps the record of the member with the
    largest ``by``; the budget fields of its records are the members' summed (the ensemble ran them all), and so are
    one-off costs (``upfront_for``). ``control_of``: the ensemble it is the random control of (an ensemble of the
    members' controls, at their summed budget)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    entries: list[str] = Field(min_length=2)
    by: str = "nll_increase"
    #: Record fields every member must agree on for each example (to 1e-4 relative): the same task on the same
    #: document (the clean NLL differs when members cut the document into other contexts or continuations).
    match: list[str] = Field(default_factory=lambda: ["nll_before"])
    control_of: str | None = None


class PrimaryEndpoint(ReportMetric):
    """One comparison that answers the suite's question: ``metric`` of ``entry`` on ``model`` against
    ``reference`` (another model of the suite), the effect hoped for (``direction``: the model's value below the
    reference's, or above it) and the smallest effect of interest (a fraction of the reference's value)."""

    model: str
    reference: str
    direction: Literal["decrease", "increase"] = "decrease"
    min_effect: float = Field(gt=0)
    #: A verdict only where the reference is shown matched to the model in perplexity on the test set: a matched
    #: control within +-``gap_target`` (``matched_controls``), the baseline by the perplexity gap indicator (``gap``
    #: below ``gap_target``); else ``unmatched``, since the difference would mix the arm's change with its damage.
    #: false: a verdict on the total effect, the perplexity price included (read it beside the arms' perplexity).
    matched: bool = True

    @model_validator(mode="after")
    def _two_models(self) -> PrimaryEndpoint:
        if self.model == self.reference:
            raise ValueError(f"primary endpoint compares '{self.model}' with itself: name another model as reference")
        return self


class ReportConfig(PluginConfig):
    """Options of the run's final report (``report:`` in a suite)."""

    #: Relative NLL increase above which an attack on an example counts as a success, as the suite's attacks judge
    #: it (marked on the plots). None: no line on the plots.
    success_threshold: float | None = Field(default=None, ge=0)
    #: The reference model (e.g. the unconstrained one) and the models compared to it (default: all others).
    baseline: str | None = None
    compare: list[str] = Field(default_factory=list)
    #: The report's tables (each: rows are models, columns metrics). None named: no table files.
    tables: list[ReportTable] = Field(default_factory=list)
    #: Success indicator 1: the relative gap of this metric of a compared model vs the baseline's (a cost the model
    #: pays, say),
    #: target: below ``gap_target`` (None: the gap and its interval, without a verdict). None: no such indicator.
    gap: ReportMetric | None = None
    gap_target: float | None = Field(default=None, gt=0)
    #: Success indicator 2: the relative reduction of this metric of every attack entry (e.g. its success rate),
    #: target: above ``attack_reduction_target`` (None: reductions and intervals without a verdict). None: no such
    #: indicator.
    attack_metric: str | None = None
    attack_reduction_target: float | None = Field(default=None, gt=0, lt=1)
    #: A reduction against a baseline value of ``attack_metric`` below this (e.g. a success rate under 10%) is
    #: judged ``too few successes``: there is too little to reduce.
    attack_floor: float = Field(default=0.10, ge=0)
    #: Metrics in which every attack is compared with its control on each model (attack minus control, paired
    #: interval): an attack that does not beat its random control at equal budget is a finding, not a result.
    #: Empty: ``attack_metric`` alone.
    control_metrics: list[str] = Field(default_factory=list)
    #: Model -> the control models it is also compared with (damage-matched arms: the same init without the
    #: constraint, a perplexity-matched unconstrained model): the gap metric's ratio (is the control matched?) and,
    #: for every attack in ``control_metrics``, the reduction against the control, each with its paired interval.
    matched_controls: dict[str, list[str]] = Field(default_factory=dict)
    #: Thresholds at which the attack tables show the success rate (read from each attack's declared curve).
    curve_thresholds: list[float] = Field(default_factory=list)
    #: The x-axis of the success-against-budget plot: the first of these budget metrics that every attack reports
    #: (then any attack), else the attacks' declared budget metrics (``MetricSpec(budget=True)``) in their order.
    budget_axis: list[str] = Field(default_factory=list)
    #: The gradient-masking checks (every model and gradient attack).
    masking: MaskingConfig = MaskingConfig()
    #: Per-example worst cases over several attacks, each an attack entry of the report (see :class:`Ensemble`).
    ensembles: list[Ensemble] = Field(default_factory=list)
    #: The comparisons that answer the suite's question: one family, adjusted for multiplicity (``multiplicity``);
    #: only they get verdicts in the report's headline, every other interval is exploratory.
    primary: list[PrimaryEndpoint] = Field(default_factory=list)
    #: How the primary family is adjusted: ``holm`` (step-down; each interval at the level of its step),
    #: ``bonferroni`` (every interval at 1 - alpha / m) or ``none`` (a single endpoint, or stated as unadjusted).
    multiplicity: Literal["holm", "bonferroni", "none"] = "holm"
    #: The perplexity metric that decides whether a model may be compared at all (default: ``gap``), and its
    #: ceiling: an arm above it is ``destroyed`` and gets no robustness verdict. None: the perplexity of a uniform
    #: guess over the model's output vocabulary (recorded with every result).
    perplexity: ReportMetric | None = None
    max_perplexity: float | None = Field(default=None, gt=1)
    #: Bootstrap of the 95% intervals (over examples within a seed, and over seeds); seeded: reports reproduce.
    bootstrap_samples: int = Field(default=2000, ge=100)
    bootstrap_seed: int = 0
    confidence: float = Field(default=0.95, gt=0, lt=1)
    #: TensorBoard event files of the training curves and every final metric, in ``tensorboard/`` of the run
    #: (needs the ``tracking`` extra; without it the report says so and writes the rest).
    tensorboard: bool = True
    #: An offline Weights & Biases run in ``wandb/`` of the run (``wandb sync`` uploads it later; needs the
    #: ``wandb`` extra). Off by default: nothing is ever sent from the harness.
    wandb: bool = False
    #: The W&B project name (default: the suite's name).
    wandb_project: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _numbered_table_shorthand(cls, data: Any) -> Any:
        """``tableN: [columns]`` (how suites and runs written before ``tables:`` name one table) is the table named
        ``tableN``, titled "Table N", after those of ``tables:``."""
        if not isinstance(data, dict):
            return data
        numbered = [k for k in data if isinstance(k, str) and re.fullmatch(r"table\d+", k)]
        if not numbered:
            return data
        rest = {k: v for k, v in data.items() if k not in numbered}
        rest["tables"] = [*(rest.get("tables") or []),
                          *({"name": k, "title": f"Table {k[5:]}", "columns": data[k]} for k in numbered)]
        return rest

    @field_validator("tables")
    @classmethod
    def _unique_table_names(cls, tables: list[ReportTable]) -> list[ReportTable]:
        _unique([t.name for t in tables], "tables", " (each name is a file name)")
        return tables

    @field_validator("ensembles")
    @classmethod
    def _ensembles_consistent(cls, ensembles: list[Ensemble]) -> list[Ensemble]:
        names = [e.name for e in ensembles]
        _unique(names, "ensembles")
        for e in ensembles:
            if len(set(e.entries)) != len(e.entries):
                raise ValueError(f"ensemble '{e.name}' lists an entry twice: list each attack entry once")
            if e.control_of is not None and (e.control_of not in names or e.control_of == e.name):
                raise ValueError(f"ensemble '{e.name}': control_of '{e.control_of}' is not another ensemble: name one "
                                 f"of {', '.join(n for n in names if n != e.name) or '(none)'}")
        return ensembles


def _unique(names: list[str], what: str, why: str = "") -> None:
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two {what} are named {', '.join(twice)}{why}: rename one")

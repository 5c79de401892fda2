"""The ``report:`` section of a suite: which numbers the report puts in Table 7, which models it compares, and the
targets it judges them by. The study is data: the core has no default columns, models or metrics."""

from __future__ import annotations

from pydantic import Field

from ..config import PluginConfig


class ReportMetric(PluginConfig):
    """One metric of one metrics/attacks entry (``entry`` may also name the entry's plugin)."""

    entry: str
    metric: str


class TableColumn(ReportMetric):
    """A column of Table 7: ``label`` shows ``metric`` of ``entry`` times ``scale``."""

    label: str
    scale: float = 1.0
    digits: int = Field(default=2, ge=0, le=8)


class ReportConfig(PluginConfig):
    """Options of the run's final report (``report:`` in a suite)."""

    #: Relative NLL increase above which an attack on an example counts as a success (marked on the plots).
    success_threshold: float = 0.15
    #: The reference model (e.g. the unconstrained one) and the models compared to it (default: all others).
    baseline: str | None = None
    compare: list[str] = Field(default_factory=list)
    #: Table 7: rows are models; columns these metrics (mean ± std over seeds). None named: no Table 7.
    table7: list[TableColumn] = Field(default_factory=list)
    #: Success indicator 1: the relative gap of this metric of a compared model vs the baseline's (a cost the model
    #: pays, say),
    #: target: below ``gap_target``. None: no such indicator.
    gap: ReportMetric | None = None
    gap_target: float = Field(default=0.15, gt=0)
    #: Success indicator 2: the relative reduction of this metric of every attack entry (e.g. its success rate),
    #: target: above ``attack_reduction_target``. None: no such indicator.
    attack_metric: str | None = None
    attack_reduction_target: float = Field(default=0.40, gt=0, lt=1)
    #: A reduction against a baseline value of ``attack_metric`` below this (e.g. a success rate under 10%) is
    #: judged ``too few successes``: there is too little to reduce.
    attack_floor: float = Field(default=0.10, ge=0)
    #: Attack entry -> the control entry it is judged against (default: see ``harness.report.aggregate.control_of``).
    controls: dict[str, str] = Field(default_factory=dict)
    #: Metrics in which every attack is compared with its control on each model (attack minus control, paired
    #: interval): an attack that does not beat its random control at equal budget is a finding, not a result.
    #: Empty: ``attack_metric`` alone.
    control_metrics: list[str] = Field(default_factory=list)
    #: Model -> the control models it is also compared with (damage-matched arms: the same init without the
    #: constraint, a perplexity-matched unconstrained model): the gap metric's ratio (is the control matched?) and,
    #: for every attack in ``control_metrics``, the reduction against the control, each with its paired interval.
    matched_controls: dict[str, list[str]] = Field(default_factory=dict)
    #: Thresholds at which the attack tables show the success rate (read from each attack's declared curve).
    curve_thresholds: list[float] = Field(default_factory=lambda: [0.15, 0.30])
    #: The x-axis of the success-against-budget plot: the first of these budget metrics that every attack reports
    #: (then any attack), else the attacks' declared budget metrics (``MetricSpec(budget=True)``) in their order.
    budget_axis: list[str] = Field(default_factory=list)
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

"""The report's figures (matplotlib, PNG), each drawn only when the run holds its data.

Figures use matplotlib's object API (no pyplot), so making a report never touches a global backend or figure state.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...store import atomic_write_bytes
from ...api import MetricSpec
from .aggregate import Aggregate, Group, attack_entries, default_columns, entry_groups, seed_label
from .declared import declared_specs


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


#: Panels per row of a multi-panel figure: wider strips shrink each panel below reading size in the report.
GRID_COLUMNS = 3


def _panel_grid(n: int, width: float, height: float) -> tuple[Any, list[Any]]:
    """A figure of ``n`` panels of ``width`` x ``height`` inches, wrapped into rows of at most ``GRID_COLUMNS``;
    returns the figure and the ``n`` axes in reading order (cells past ``n`` are removed)."""
    cols = min(n, GRID_COLUMNS)
    rows = -(-n // cols)
    fig = _figure(width * cols, height * rows)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    # No timestamp or version in the PNG metadata: the same run gives byte-identical figures.
    fig.savefig(buffer, format="png", metadata={"Software": None})
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _bars(ax: Any, agg: Aggregate, entry: str, metric: str, scale: float = 1.0) -> str:
    """One panel: ``metric`` of ``entry`` per model (bars: mean over seeds; whiskers: 95% interval; dots: single
    seeds); returns the metric's label."""
    specs = [spec for g in entry_groups(agg, entry) if (spec := g.spec(metric)) is not None]
    label = specs[0].display if specs else metric
    names, means, lo, hi, seeds = [], [], [], [], []
    for model in agg.run.models:
        g = agg.find(entry, model)
        s = g.across.get(metric) if g else None
        names.append(model)
        if s is None or s.mean is None:
            means.append(np.nan), lo.append(0), hi.append(0), seeds.append([])
            continue
        means.append(s.mean * scale)
        ci = s.ci or (s.mean, s.mean)
        lo.append((s.mean - ci[0]) * scale), hi.append((ci[1] - s.mean) * scale)
        seeds.append([v * scale for v in s.values.values()])
    x = np.arange(len(names))
    ax.bar(x, np.nan_to_num(means), yerr=[lo, hi], capsize=4, color=_colors(len(names)), alpha=0.8)
    for i, vals in enumerate(seeds):
        ax.scatter([i] * len(vals), vals, color="black", s=12, zorder=3)
        if not vals:
            ax.text(i, 0, "missing", ha="center", va="bottom", rotation=90, color="gray")
    finite = [m for m in means if np.isfinite(m) and m > 0]
    if finite and len(finite) == len([m for m in means if np.isfinite(m)]) and max(finite) / min(finite) > 20:
        ax.set_yscale("log")
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel(label)
    return label


def metric_plot(agg: Aggregate, path: Path) -> Path | None:
    """The report's gap metric per model (bars: mean over seeds; whiskers: 95% interval; dots: single seeds). A
    suite without a gap metric gets every displayed metric of its default table instead, one panel each."""
    gap = agg.run.config.gap
    if gap is None:
        return default_metrics_plot(agg, path)
    entry = agg.run.resolve_entry(gap.entry)
    if entry is None or not any(gap.metric in g.across for g in entry_groups(agg, entry)):
        return None
    fig = _figure(max(4.0, 2.2 + 1.1 * len(agg.run.models)), 3.6)
    ax = fig.subplots()
    label = _bars(ax, agg, entry, gap.metric)
    ax.set_title(f"{entry}: {label} per model (95% CI)")
    return _save(fig, path)


def default_metrics_plot(agg: Aggregate, path: Path) -> Path | None:
    """Each column of the default table (every displayed metric; see ``aggregate.default_columns``), per model."""
    columns = default_columns(agg)
    if not columns:
        return None
    fig, axes = _panel_grid(len(columns), max(3.6, 1.6 + 0.9 * len(agg.run.models)), 3.2)
    for ax, col in zip(axes, columns):
        _bars(ax, agg, col["entry"], col["metric"], col["scale"])
        ax.set_title(col["label"], fontsize=9)
    return _save(fig, path)


def _curve_spec(agg: Aggregate, entry: str) -> MetricSpec | None:
    """The entry's declared curve (success against a threshold on a record field), if any."""
    return next((c for g in entry_groups(agg, entry) for c in g.specs_of_kind("curve")), None)


def _field_spec(agg: Aggregate, entry: str, field: str) -> MetricSpec | None:
    """The entry's scalar mean of ``field`` (its label and scale name the curve's axis)."""
    return next((s for g in entry_groups(agg, entry) for s in g.specs or []
                 if s.kind == "scalar" and s.field == field and s.aggregation == "mean"), None)


def _field_values(agg: Aggregate, entry: str, model: str) -> dict[str, np.ndarray]:
    """Per seed, the per-example values of the record field the entry's curve thresholds."""
    curve = _curve_spec(agg, entry)
    g = agg.find(entry, model, ("attacks",))
    out: dict[str, np.ndarray] = {}
    if curve is None or curve.field is None or g is None:
        return out
    for s in g.done:
        values = [r[curve.field] for r in s.records if isinstance(r.get(curve.field), (int, float))]
        if values:
            out[seed_label(s.seed)] = np.asarray(values, dtype=float)
    return out


def _threshold_grid(agg: Aggregate, entry: str) -> np.ndarray:
    """Thresholds from 0 to just past the largest increase of any model (every curve is 0 beyond it)."""
    top = 2 * (agg.run.config.success_threshold or 0.0)
    for model in agg.run.models:
        top = max([top] + [float(rel.max()) for rel in _field_values(agg, entry, model).values()])
    return np.linspace(0.0, 1.05 * top, 106)


def _curve(agg: Aggregate, entry: str, model: str,
           thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Success rate vs threshold: from the per-example increases (any threshold), else the stage's own curve."""
    per_seed = _field_values(agg, entry, model)
    curves = [np.array([(rel > t).mean() for t in thresholds]) for rel in per_seed.values()]
    if not curves:
        g = agg.find(entry, model, ("attacks",))
        spec = _curve_spec(agg, entry)
        stored = [s.metrics.get(spec.name) for s in (g.done if g and spec else [])]
        stored = [c for c in stored if isinstance(c, dict) and c.get("thresholds")]
        if not stored:
            return None
        thresholds = np.asarray(stored[0]["thresholds"], dtype=float)
        curves = [np.asarray(curve_rates(c), dtype=float) for c in stored
                  if len(c["thresholds"]) == len(thresholds)]
    stack = np.stack(curves)
    return thresholds, stack.mean(0), stack.std(0)


def curve_rates(curve: dict[str, Any]) -> list[float]:
    """The rates of a stored curve: its one list besides ``thresholds``."""
    return next(v for k, v in curve.items() if k != "thresholds" and isinstance(v, list))


def _axis_label(agg: Aggregate, entry: str) -> tuple[str, float]:
    curve = _curve_spec(agg, entry)
    field = _field_spec(agg, entry, curve.field) if curve and curve.field else None
    if field is None:
        return (curve.field or "value") if curve else "value", 1.0
    return field.display, field.scale


def success_curve_plot(agg: Aggregate, path: Path) -> Path | None:
    """Attack success rate vs the success threshold, per model (the threshold-free view); band: ±1 std over seeds.
    Drawn for the attacks that declare a curve."""
    grids = {e: _threshold_grid(agg, e) for e in attack_entries(agg)}
    entries = [e for e in grids if any(_curve(agg, e, m, grids[e]) for m in agg.run.models)]
    if not entries:
        return None
    fig, axes = _panel_grid(len(entries), 4.6, 3.6)
    for ax, entry in zip(axes, entries):
        label, scale = _axis_label(agg, entry)
        for color, model in zip(_colors(len(agg.run.models)), agg.run.models):
            curve = _curve(agg, entry, model, grids[entry])
            if curve is None:
                continue
            t, mean, std = curve
            ax.plot(t * scale, mean * 100, color=color, label=model)
            ax.fill_between(t * scale, (mean - std) * 100, (mean + std) * 100, color=color, alpha=0.2)
        if agg.run.config.success_threshold is not None:
            ax.axvline(agg.run.config.success_threshold * scale, color="gray", ls="--", lw=1, label="report threshold")
        ax.set_xlabel(f"success threshold: {label}")
        ax.set_ylabel("attack success rate (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(f"{entry}: success rate vs threshold")
        ax.legend(fontsize=8)
    return _save(fig, path)


def increase_distribution_plot(agg: Aggregate, path: Path) -> Path | None:
    """Distribution of the per-example value the success threshold applies to, per model (all seeds pooled)."""
    entries = [e for e in attack_entries(agg) if any(_field_values(agg, e, m) for m in agg.run.models)]
    if not entries:
        return None
    fig, axes = _panel_grid(len(entries), 4.6, 3.6)
    for ax, entry in zip(axes, entries):
        label, scale = _axis_label(agg, entry)
        pooled = {m: np.concatenate(list(v.values())) for m in agg.run.models
                  if (v := _field_values(agg, entry, m))}
        everything = np.concatenate(list(pooled.values())) * scale
        bins = np.histogram_bin_edges(everything, bins=30)
        for color, model in zip(_colors(len(agg.run.models)), agg.run.models):
            if model in pooled:
                ax.hist(pooled[model] * scale, bins=bins, histtype="step", lw=1.6, color=color,
                        label=f"{model} (n={len(pooled[model])})")
        if agg.run.config.success_threshold is not None:
            ax.axvline(agg.run.config.success_threshold * scale, color="gray", ls="--", lw=1)
        ax.set_xlabel(label)
        ax.set_ylabel("examples")
        ax.set_title(f"{entry}: {label} per example")
        ax.legend(fontsize=8)
    return _save(fig, path)


def _series_specs(agg: Aggregate, stage: Any) -> list[MetricSpec]:
    group = next((g for g in agg.groups if stage in g.stages), None)
    specs = group.specs if group is not None and group.specs is not None else declared_specs(stage, agg.plugins)
    return [s for s in specs or [] if s.kind == "series" and s.field and s.x]


def training_plot(agg: Aggregate, path: Path) -> Path | None:
    """Each declared series of the training stages (e.g. a loss against the step),
    one panel per series, one line per stage (unfinished stages too, marked)."""
    panels: dict[str, tuple[MetricSpec, list[tuple[str, list[float], list[float]]]]] = {}
    for s in agg.run.stages:
        if s.section != "train":
            continue
        for spec in _series_specs(agg, s):
            assert spec.field and spec.x
            rows = [r for r in s.records if isinstance(r.get(spec.x), (int, float))
                    and isinstance(r.get(spec.field), (int, float))]
            xs, ys = [r[spec.x] for r in rows], [r[spec.field] for r in rows]
            if rows and spec.start and isinstance(s.metrics.get(spec.start), (int, float)):
                xs, ys = [0, *xs], [s.metrics[spec.start], *ys]  # the value before the first record
            if rows:
                label = s.id + ("" if s.done else f" ({s.status})")
                panels.setdefault(spec.name, (spec, []))[1].append((label, xs, ys))
    if not panels:
        return None
    fig, axes = _panel_grid(len(panels), 5.0, 3.6)
    for ax, (spec, lines) in zip(axes, panels.values()):
        for color, (label, xs, ys) in zip(_colors(len(lines)), lines):
            ax.plot(xs, ys, "o-" if len(xs) <= 30 else "-", color=color, label=label, lw=1.2)
        ax.set_xlabel(spec.x), ax.set_ylabel(spec.display), ax.set_title(spec.display)
        ax.legend(fontsize=7)
    return _save(fig, path)


def transfer_matrix(agg: Aggregate) -> dict[str, Any] | None:
    """Source model (trigger found on) x target model (evaluated on): mean over seeds of each declared cell metric
    of the run's matrix metric (the first one declared)."""
    spec = next((m for g in agg.groups for m in g.specs_of_kind("matrix")), None)
    if spec is None:
        return None
    cell_metrics = spec.cells
    cells: dict[tuple[str, str, str], list[float]] = {}
    for s in agg.run.stages:
        row = s.metrics.get(spec.name) if s.done else None
        if not isinstance(row, dict):
            continue
        for source, values in row.items():
            for metric in cell_metrics:
                if isinstance(values, dict) and isinstance(values.get(metric), (int, float)):
                    cells.setdefault((metric, source, s.model), []).append(float(values[metric]))
    if not cells:
        return None
    order = {m: i for i, m in enumerate(agg.run.models)}
    sources = sorted({src for _, src, _ in cells}, key=lambda m: (order.get(m, len(order)), m))
    targets = [m for m in agg.run.models if any(t == m for _, _, t in cells)]
    values = {metric: [[float(np.mean(cells[(metric, s, t)])) if (metric, s, t) in cells else None for t in targets]
                       for s in sources]
              for metric in cell_metrics if any(k[0] == metric for k in cells)}
    return {"sources": sources, "targets": targets, "values": values}


def transfer_plot(agg: Aggregate, path: Path) -> Path | None:
    tm = transfer_matrix(agg)
    if tm is None:
        return None
    metrics = list(tm["values"])
    fig, axes = _panel_grid(len(metrics), 2.4 + 1.2 * len(tm["targets"]), 1.8 + 0.9 * len(tm["sources"]))
    for ax, metric in zip(axes, metrics):
        values = np.array([[np.nan if v is None else v for v in row] for row in tm["values"][metric]], dtype=float)
        im = ax.imshow(values, cmap="viridis", aspect="auto")
        middle = np.nanmean(values)
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                text = "missing" if np.isnan(values[i, j]) else f"{values[i, j]:.3f}"
                ax.text(j, i, text, ha="center", va="center", color="white" if values[i, j] <= middle else "black")
        ax.set_xticks(range(len(tm["targets"])), tm["targets"], rotation=20, ha="right")
        ax.set_yticks(range(len(tm["sources"])), tm["sources"])
        ax.set_xlabel("evaluated on (target)")
        ax.set_ylabel("trigger from (source)")
        ax.set_title(f"transfer: {metric}")
        fig.colorbar(im, ax=ax)
    return _save(fig, path)


def _with_errors(g: Group) -> list[str]:
    """Metrics of ``g`` in [0, 1] whose declaration names the key of their standard error, present in the run."""
    out = []
    for name, s in g.across.items():
        spec = g.spec(name)
        if spec and spec.error and spec.error in g.across and s.mean is not None and 0 <= s.mean <= 1:
            out.append(name)
    return out


def scores_plot(agg: Aggregate, path: Path) -> Path | None:
    """Scores in [0, 1] (accuracies, exact match...) that their plugin reports with a standard error, per model."""
    metrics: list[str] = []
    for g in agg.evaluation_groups():
        metrics += [name for name in _with_errors(g) if name not in metrics]
    if not metrics:
        return None
    models = agg.run.models
    fig = _figure(max(5.0, 1.0 + 0.5 * len(metrics) * len(models)), 3.8)
    ax = fig.subplots()
    width = 0.8 / len(models)
    x = np.arange(len(metrics))
    for k, (color, model) in enumerate(zip(_colors(len(models)), models)):
        means, errs = [], []
        for name in metrics:
            g = next((g for g in agg.evaluation_groups() if g.model == model and name in _with_errors(g)), None)
            spec = g.spec(name) if g else None
            s = g.across[name] if g else None
            err = g.across.get(spec.error) if g and spec and spec.error else None
            means.append(s.mean if s and s.mean is not None else np.nan)
            errs.append(err.mean if err and err.mean is not None else 0.0)
        ax.bar(x + k * width - 0.4 + width / 2, np.nan_to_num(means), width, yerr=errs, capsize=3, color=color,
               label=model)
    ax.set_xticks(x, [m.replace("/", "\n") for m in metrics], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (± the plugin's stderr)")
    ax.set_title("scores with standard errors")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _budget_metric(agg: Aggregate, entries: list[str]) -> str | None:
    """The x-axis of the budget plot (see ``ReportConfig.budget_axis``)."""
    declared = [s.name for e in entries for g in entry_groups(agg, e) for s in g.specs or [] if s.budget]
    candidates = list(dict.fromkeys([*agg.run.config.budget_axis, *declared]))

    def reports(entry: str, metric: str) -> bool:
        return any(g.across.get(metric) is not None and g.across[metric].mean is not None
                   for g in entry_groups(agg, entry))

    for need_all in (True, False):
        for metric in candidates:
            if (all if need_all else any)(reports(e, metric) for e in entries):
                return metric
    return None


def _upfront(g: Group, x_metric: str) -> float | None:
    """The one-off budget (``MetricSpec.upfront_for``) that ``g``'s attack spent on top of ``x_metric`` per example."""
    for spec in g.specs or []:
        if spec.upfront_for == x_metric and (s := g.across.get(spec.name)) is not None and s.mean is not None:
            return s.mean
    return None


def _compact(value: float, _pos: Any = None) -> str:
    """A log axis' tick label: 2, 50, 3k, 1.2M (short, so neighbours never overlap)."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.3g}{suffix}"
    return f"{value:.3g}"


def _log_x(ax: Any) -> None:
    """A log x-axis with at most a handful of short labels (1, 2, 5 per decade; no minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=8))
    ax.xaxis.set_major_formatter(FuncFormatter(_compact))
    ax.xaxis.set_minor_formatter(NullFormatter())


def budget_plot(agg: Aggregate, path: Path) -> Path | None:
    """Each attack's success (and mean increase of the value its curve thresholds) against its declared budget
    (FLOPs, queries...): all attacks on one axis per model, so attacks compare at equal compute. Points: mean over
    seeds, bars: 95% interval; hollow markers: controls. A universal attack's one-off optimisation budget
    (``MetricSpec.upfront_for``) is drawn beside its per-example budget: a diamond at per-example + one-off cost,
    joined by a dotted line."""
    cfg = agg.run.config
    entries = attack_entries(agg)
    x_metric = _budget_metric(agg, entries) if entries else None
    if x_metric is None:
        return None
    ys: list[str] = [cfg.attack_metric] if cfg.attack_metric else []
    for e in entries:
        curve = _curve_spec(agg, e)
        field = _field_spec(agg, e, curve.field) if curve and curve.field else None
        if field is not None and field.name not in ys:
            ys.append(field.name)
    models = [m for m in agg.run.models if any(agg.find(e, m, ("attacks",)) for e in entries)]
    if not ys or not models:
        return None
    fig = _figure(4.4 * len(ys) + 2.2, 3.2 * len(models))
    axes = fig.subplots(len(models), len(ys), squeeze=False)
    colors = dict(zip(entries, _colors(len(entries))))
    x_label = next((s.display for e in entries for g in entry_groups(agg, e) if (s := g.spec(x_metric))), x_metric)
    legend: dict[str, Any] = {}
    for row, model in zip(axes, models):
        for ax, y_metric in zip(row, ys):
            xs = []
            for e in entries:
                g = agg.find(e, model, ("attacks",))
                x = g.across.get(x_metric) if g else None
                y = g.across.get(y_metric) if g else None
                if g is None or x is None or y is None or x.mean is None or y.mean is None:
                    continue
                spec = g.spec(y_metric)
                scale = spec.scale if spec else 1.0
                err = ([[(y.mean - y.ci[0]) * scale], [(y.ci[1] - y.mean) * scale]] if y.ci else None)
                control = bool(any(s.result and s.result.get("control") for s in g.done))
                label = e + (" (control)" if control else "")
                legend[label] = ax.errorbar([x.mean], [y.mean * scale], yerr=err, fmt="o", ms=7, capsize=3,
                                            color=colors[e], mfc="none" if control else colors[e])
                xs.append(x.mean)
                upfront = _upfront(g, x_metric)
                if upfront is not None:
                    total = x.mean + upfront
                    ax.plot([x.mean, total], [y.mean * scale] * 2, ":", color=colors[e], lw=1)
                    legend[f"{label}, incl. its one-off optimisation"] = ax.plot(
                        [total], [y.mean * scale], "D", ms=7, color=colors[e], mfc="none" if control else colors[e],
                        alpha=0.6)[0]
                    xs.append(total)
            if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
                _log_x(ax)
            spec = next((s for e in entries for g in entry_groups(agg, e) if (s := g.spec(y_metric))), None)
            ax.set_xlabel(x_label)
            ax.set_ylabel(spec.display if spec else y_metric)
            ax.set_title(f"{model}: {spec.display if spec else y_metric} vs budget", fontsize=9)
    if not legend:
        return None
    # One legend for every panel (the same attacks everywhere), outside the axes: no panel's points hide under it.
    fig.legend(list(legend.values()), list(legend), loc="outside right upper", fontsize=8)
    return _save(fig, path)


def histogram_plot(agg: Aggregate, path: Path) -> Path | None:
    """Each declared histogram (a list per record, e.g. the positions an attack edited) per model, all seeds pooled:
    one panel per (attack, histogram), so a boundary effect is visible."""
    panels = []
    for e in attack_entries(agg):
        specs = {s.name: s for g in entry_groups(agg, e) for s in g.specs_of_kind("histogram") if s.field}
        for spec in specs.values():
            pooled = {}
            for m in agg.run.models:
                g = agg.find(e, m, ("attacks",))
                values = [v for s in (g.done if g else []) for r in s.records
                          if isinstance(r.get(spec.field), list) for v in r[spec.field]
                          if isinstance(v, (int, float)) and not isinstance(v, bool)]
                if values:
                    pooled[m] = np.asarray(values, dtype=float)
            if pooled:
                panels.append((e, spec, pooled))
    if not panels:
        return None
    fig, axes = _panel_grid(len(panels), 4.6, 3.4)
    for ax, (entry, spec, pooled) in zip(axes, panels):
        top = max(float(v.max()) for v in pooled.values())
        bins = np.arange(-0.5, top + 1.5, 1.0) if top < 200 else 40
        for color, model in zip(_colors(len(agg.run.models)), agg.run.models):
            if model in pooled:
                ax.hist(pooled[model], bins=bins, histtype="step", lw=1.6, color=color,
                        label=f"{model} (n={len(pooled[model])})")
        ax.set_xlabel(spec.field)
        ax.set_ylabel("count (all records, all seeds)")
        ax.set_title(f"{entry}: {spec.display}")
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_list(agg: Aggregate) -> list[tuple[str, str, Callable[[Aggregate, Path], Path | None]]]:
    """(file name, title, drawing function) of every figure, in the order the HTML shows them."""
    gap = agg.run.config.gap
    return [
        (f"{gap.metric}.png" if gap else "metrics.png",
         f"{gap.metric} per model" if gap else "Every displayed metric per model", metric_plot),
        ("attack_success_curve.png", "Attack success rate vs threshold", success_curve_plot),
        ("relative_nll_increase.png", "Distribution of the per-example value the success threshold applies to",
         increase_distribution_plot),
        ("training_curves.png", "Training curves", training_plot),
        ("transfer_matrix.png", "Transfer matrix", transfer_plot),
        ("scores.png", "Scores with standard errors", scores_plot),
        ("attack_budget.png", "Attack success against the budget spent", budget_plot),
        ("histograms.png", "Where the attacks' edits land (declared histograms)", histogram_plot),
    ]


def make_plots(agg: Aggregate, out_dir: Path) -> dict[str, dict[str, Any]]:
    """Draw every figure the run has data for; returns file -> {title, path or skipped reason}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, title, draw in plot_list(agg):
        path = draw(agg, out_dir / name)
        if path is None:
            (out_dir / name).unlink(missing_ok=True)  # a stale figure from an earlier report must not survive
        made[name] = {"title": title, "path": str(path) if path else None,
                      "skipped": None if path else "no data for it in this run"}
    return made

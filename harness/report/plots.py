"""The report's figures (matplotlib, PNG), each drawn only when the run holds its data.

Figures use matplotlib's object API (no pyplot), so making a report never touches a global backend or figure state.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..store import atomic_write_bytes
from .aggregate import Aggregate, seed_label


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


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


def perplexity_plot(agg: Aggregate, path: Path) -> Path | None:
    """Perplexity per model (bars: mean over seeds; whiskers: 95% interval; dots: single seeds), per entry."""
    entries = [e for sec, e, _ in agg.run.entries()
               if sec == "metrics" and any("perplexity" in g.across for g in agg.groups if g.entry == e)]
    if not entries:
        return None
    fig = _figure(max(4.0, 2.2 + 1.1 * len(agg.run.models)) * len(entries), 3.6)
    axes = fig.subplots(1, len(entries), squeeze=False)[0]
    for ax, entry in zip(axes, entries):
        names, means, lo, hi, seeds = [], [], [], [], []
        for model in agg.run.models:
            g = agg.find(entry, model, ("metrics",))
            s = g.across.get("perplexity") if g else None
            names.append(model)
            if s is None or s.mean is None:
                means.append(np.nan), lo.append(0), hi.append(0), seeds.append([])
                continue
            means.append(s.mean)
            ci = s.ci or (s.mean, s.mean)
            lo.append(s.mean - ci[0]), hi.append(ci[1] - s.mean), seeds.append(list(s.values.values()))
        x = np.arange(len(names))
        ax.bar(x, np.nan_to_num(means), yerr=[lo, hi], capsize=4, color=_colors(len(names)), alpha=0.8)
        for i, vals in enumerate(seeds):
            ax.scatter([i] * len(vals), vals, color="black", s=12, zorder=3)
            if not vals:
                ax.text(i, 0, "missing", ha="center", va="bottom", rotation=90, color="gray")
        finite = [m for m in means if np.isfinite(m)]
        if finite and max(finite) / max(min(finite), 1e-9) > 20:
            ax.set_yscale("log")
        ax.set_xticks(x, names, rotation=20, ha="right")
        ax.set_ylabel("perplexity")
        ax.set_title(f"{entry}: perplexity per model (95% CI)")
    return _save(fig, path)


def _attack_entries(agg: Aggregate) -> list[str]:
    return [e for sec, e, _ in agg.run.entries() if sec == "attacks"
            and not any("transfer" in s.metrics for s in agg.run.stages if s.entry == e and s.done)]


def _relative_increases(agg: Aggregate, entry: str, model: str) -> dict[str, np.ndarray]:
    g = agg.find(entry, model, ("attacks",))
    out = {}
    for s in g.done if g else []:
        rel = [r["relative_increase"] for r in s.records if isinstance(r.get("relative_increase"), (int, float))]
        if rel:
            out[seed_label(s.seed)] = np.asarray(rel, dtype=float)
    return out


def _threshold_grid(agg: Aggregate, entry: str) -> np.ndarray:
    """Thresholds from 0 to just past the largest increase of any model (every curve is 0 beyond it)."""
    top = 2 * agg.run.config.success_threshold
    for model in agg.run.models:
        top = max([top] + [float(rel.max()) for rel in _relative_increases(agg, entry, model).values()])
    return np.linspace(0.0, 1.05 * top, 106)


def _curve(agg: Aggregate, entry: str, model: str,
           thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Success rate vs threshold: from the per-example increases (any threshold), else the stage's own curve."""
    per_seed = _relative_increases(agg, entry, model)
    curves = [np.array([(rel > t).mean() for t in thresholds]) for rel in per_seed.values()]
    if not curves:
        g = agg.find(entry, model, ("attacks",))
        stored = [s.metrics.get("success_curve") for s in (g.done if g else [])]
        stored = [c for c in stored if isinstance(c, dict) and c.get("thresholds")]
        if not stored:
            return None
        thresholds = np.asarray(stored[0]["thresholds"], dtype=float)
        curves = [np.asarray(c["success_rate"], dtype=float) for c in stored if len(c["thresholds"]) == len(thresholds)]
    stack = np.stack(curves)
    return thresholds, stack.mean(0), stack.std(0)


def success_curve_plot(agg: Aggregate, path: Path) -> Path | None:
    """Attack success rate vs the success threshold, per model (the threshold-free view); band: ±1 std over seeds."""
    grids = {e: _threshold_grid(agg, e) for e in _attack_entries(agg)}
    entries = [e for e in grids if any(_curve(agg, e, m, grids[e]) for m in agg.run.models)]
    if not entries:
        return None
    fig = _figure(4.6 * len(entries), 3.6)
    axes = fig.subplots(1, len(entries), squeeze=False)[0]
    for ax, entry in zip(axes, entries):
        for color, model in zip(_colors(len(agg.run.models)), agg.run.models):
            curve = _curve(agg, entry, model, grids[entry])
            if curve is None:
                continue
            t, mean, std = curve
            ax.plot(t * 100, mean * 100, color=color, label=model)
            ax.fill_between(t * 100, (mean - std) * 100, (mean + std) * 100, color=color, alpha=0.2)
        ax.axvline(agg.run.config.success_threshold * 100, color="gray", ls="--", lw=1, label="report threshold")
        ax.set_xlabel("success threshold: relative NLL increase (%)")
        ax.set_ylabel("attack success rate (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(f"{entry}: success rate vs threshold")
        ax.legend(fontsize=8)
    return _save(fig, path)


def increase_distribution_plot(agg: Aggregate, path: Path) -> Path | None:
    """Distribution of the per-example relative NLL increase, per model (all seeds pooled)."""
    entries = [e for e in _attack_entries(agg) if any(_relative_increases(agg, e, m) for m in agg.run.models)]
    if not entries:
        return None
    fig = _figure(4.6 * len(entries), 3.6)
    axes = fig.subplots(1, len(entries), squeeze=False)[0]
    for ax, entry in zip(axes, entries):
        pooled = {m: np.concatenate(list(v.values())) for m in agg.run.models
                  if (v := _relative_increases(agg, entry, m))}
        everything = np.concatenate(list(pooled.values())) * 100
        bins = np.histogram_bin_edges(everything, bins=30)
        for color, model in zip(_colors(len(agg.run.models)), agg.run.models):
            if model in pooled:
                ax.hist(pooled[model] * 100, bins=bins, histtype="step", lw=1.6, color=color,
                        label=f"{model} (n={len(pooled[model])})")
        ax.axvline(agg.run.config.success_threshold * 100, color="gray", ls="--", lw=1)
        ax.set_xlabel("relative NLL increase (%)")
        ax.set_ylabel("examples")
        ax.set_title(f"{entry}: NLL increase per example")
        ax.legend(fontsize=8)
    return _save(fig, path)


def training_plot(agg: Aggregate, path: Path) -> Path | None:
    """Training loss (and validation perplexity when evaluated) against the step, per training stage."""
    series = []
    for s in agg.run.stages:
        if s.section != "train":
            continue
        rows = [r for r in s.records if isinstance(r.get("step"), (int, float)) and isinstance(r.get("loss"), (int, float))]
        val = [r for r in s.records if isinstance(r.get("step"), (int, float))
               and isinstance(r.get("val_perplexity"), (int, float))]
        if val and isinstance(s.metrics.get("initial_val_perplexity"), (int, float)):
            val = [{"step": 0, "val_perplexity": s.metrics["initial_val_perplexity"]}] + val  # before training
        if rows or val:
            series.append((s.id + ("" if s.done else f" ({s.status})"), rows, val))
    if not series:
        return None
    has_val = any(v for _, _, v in series)
    fig = _figure(5.0 * (2 if has_val else 1), 3.6)
    axes = fig.subplots(1, 2 if has_val else 1, squeeze=False)[0]
    for color, (label, rows, val) in zip(_colors(len(series)), series):
        if rows:
            axes[0].plot([r["step"] for r in rows], [r["loss"] for r in rows], color=color, label=label, lw=1.2)
        if has_val and val:
            axes[1].plot([r["step"] for r in val], [r["val_perplexity"] for r in val], "o-", color=color, label=label)
    axes[0].set_xlabel("step"), axes[0].set_ylabel("training loss"), axes[0].set_title("training loss")
    axes[0].legend(fontsize=7)
    if has_val:
        axes[1].set_xlabel("step"), axes[1].set_ylabel("validation perplexity")
        axes[1].set_title("validation perplexity"), axes[1].legend(fontsize=7)
    return _save(fig, path)


TRANSFER_METRICS = ("success_rate", "mean_relative_increase")


def transfer_matrix(agg: Aggregate) -> dict[str, Any] | None:
    """Source model (trigger found on) x target model (evaluated on): mean over seeds of each transfer metric."""
    cells: dict[tuple[str, str, str], list[float]] = {}
    for s in agg.run.stages:
        row = s.metrics.get("transfer") if s.done else None
        if not isinstance(row, dict):
            continue
        for source, values in row.items():
            for metric in TRANSFER_METRICS:
                if isinstance(values, dict) and isinstance(values.get(metric), (int, float)):
                    cells.setdefault((metric, source, s.model), []).append(float(values[metric]))
    if not cells:
        return None
    order = {m: i for i, m in enumerate(agg.run.models)}
    sources = sorted({src for _, src, _ in cells}, key=lambda m: (order.get(m, len(order)), m))
    targets = [m for m in agg.run.models if any(t == m for _, _, t in cells)]
    values = {metric: [[float(np.mean(cells[(metric, s, t)])) if (metric, s, t) in cells else None for t in targets]
                       for s in sources]
              for metric in TRANSFER_METRICS if any(k[0] == metric for k in cells)}
    return {"sources": sources, "targets": targets, "values": values}


def transfer_plot(agg: Aggregate, path: Path) -> Path | None:
    tm = transfer_matrix(agg)
    if tm is None:
        return None
    metrics = list(tm["values"])
    fig = _figure((2.4 + 1.2 * len(tm["targets"])) * len(metrics), 1.8 + 0.9 * len(tm["sources"]))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
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


def lm_eval_plot(agg: Aggregate, path: Path) -> Path | None:
    """lm-eval scores in [0, 1] (accuracies, exact match) per task and model, with lm-eval's standard errors."""
    metrics: list[str] = []
    for g in agg.evaluation_groups():
        if g.plugin != "lm_eval":
            continue
        for name, s in g.across.items():
            if "/" in name and not name.endswith("_stderr") and s.mean is not None and 0 <= s.mean <= 1 \
                    and f"{name}_stderr" in g.across and name not in metrics:
                metrics.append(name)
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
            g = next((g for g in agg.evaluation_groups() if g.plugin == "lm_eval" and g.model == model
                      and name in g.across), None)
            s = g.across[name] if g else None
            err = g.across.get(f"{name}_stderr") if g else None
            means.append(s.mean if s and s.mean is not None else np.nan)
            errs.append(err.mean if err and err.mean is not None else 0.0)
        ax.bar(x + k * width - 0.4 + width / 2, np.nan_to_num(means), width, yerr=errs, capsize=3, color=color,
               label=model)
    ax.set_xticks(x, [m.replace("/", "\n") for m in metrics], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (± lm-eval stderr)")
    ax.set_title("lm-eval tasks")
    ax.legend(fontsize=8)
    return _save(fig, path)


#: File name -> (title, drawing function), in the order the HTML shows them.
PLOTS: dict[str, tuple[str, Callable[[Aggregate, Path], Path | None]]] = {
    "perplexity.png": ("Perplexity per model", perplexity_plot),
    "attack_success_curve.png": ("Attack success rate vs threshold", success_curve_plot),
    "relative_nll_increase.png": ("Distribution of the relative NLL increase", increase_distribution_plot),
    "training_curves.png": ("Training curves", training_plot),
    "transfer_matrix.png": ("Transfer matrix", transfer_plot),
    "lm_eval.png": ("lm-eval tasks", lm_eval_plot),
}


def make_plots(agg: Aggregate, out_dir: Path) -> dict[str, dict[str, Any]]:
    """Draw every figure the run has data for; returns file -> {title, path or skipped reason}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, (title, draw) in PLOTS.items():
        path = draw(agg, out_dir / name)
        if path is None:
            (out_dir / name).unlink(missing_ok=True)  # a stale figure from an earlier report must not survive
        made[name] = {"title": title, "path": str(path) if path else None,
                      "skipped": None if path else "no data for it in this run"}
    return made

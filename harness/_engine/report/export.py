"""Flat exports of a run beside ``final_results.json``: ``results.csv`` (tidy, for pandas), TensorBoard event files
(the training curves and every final metric) and, when asked, an offline Weights & Biases run.

All three are regenerated from the run directory like the rest of the report; none needs the network. TensorBoard
comes from the ``tracking`` extra (``pip install 'harness[tracking]'``: torch's writer needs the ``tensorboard``
package), W&B from the ``wandb`` extra; a missing package is a note in the report, never a failure.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any

from ...store import atomic_write_text
from .aggregate import Aggregate

#: The columns of ``results.csv``: one row per (stage, numeric metric); ``seed`` is empty for a seed-free stage.
CSV_COLUMNS = ["suite", "section", "model", "seed", "entry", "metric", "value"]


def result_rows(agg: Aggregate) -> list[dict[str, Any]]:
    """Every finished stage's numeric metrics as tidy rows (an undefined value, NaN or inf, is an empty cell)."""
    run = agg.run
    rows = []
    for s in run.stages:
        if not s.done:
            continue
        for metric, value in s.scalars().items():
            rows.append({"suite": run.suite, "section": s.section, "model": s.model,
                         "seed": "" if s.seed is None else s.seed, "entry": s.entry, "metric": metric,
                         "value": "" if value is None else repr(value)})
    return rows


def write_csv(agg: Aggregate, path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(result_rows(agg))
    atomic_write_text(path, buffer.getvalue())
    return path


def _series(agg: Aggregate) -> list[tuple[str, str, list[tuple[int, float]]]]:
    """(stage id, series name, [(step, value)]) of every declared series of the training stages."""
    from .plots import _series_specs

    out = []
    for s in agg.run.stages:
        if s.section != "train":
            continue
        for spec in _series_specs(agg, s):
            assert spec.field and spec.x
            points = [(int(r[spec.x]), float(r[spec.field])) for r in s.records
                      if isinstance(r.get(spec.x), (int, float)) and isinstance(r.get(spec.field), (int, float))]
            if points:
                out.append((s.id, spec.field, points))  # the tag reads as the quantity (train/loss)
    return out


def _final_metrics(agg: Aggregate) -> dict[str, dict[str, float]]:
    """Stage id -> its finite numeric metrics (the final numbers, logged at step 0 of the stage's run)."""
    return {s.id: {k: v for k, v in s.scalars().items() if v is not None} for s in agg.run.stages if s.done}


def write_tensorboard(agg: Aggregate, out_dir: Path) -> str | None:
    """One TensorBoard run per stage under ``out_dir`` (``tensorboard --logdir out_dir``): its training series as
    scalars against the step, its final metrics as scalars at step 0. Rewritten whole each time (no stale events).
    Returns a note when TensorBoard is not installed (nothing written), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return ("TensorBoard event files not written: install the tracking extra (pip install 'harness[tracking]', "
                "which brings the tensorboard package)")
    shutil.rmtree(out_dir, ignore_errors=True)
    series: dict[str, list[tuple[str, list[tuple[int, float]]]]] = {}
    for stage_id, name, points in _series(agg):
        series.setdefault(stage_id, []).append((name, points))
    for stage_id, metrics in _final_metrics(agg).items():
        if not metrics and stage_id not in series:
            continue
        # A fixed wall time: the same run gives the same event files (apart from the file name's host and pid).
        writer = SummaryWriter(log_dir=str(out_dir / stage_id))
        for name, points in series.get(stage_id, []):
            for step, value in points:
                writer.add_scalar(f"train/{name}", value, global_step=step, walltime=0.0)
        for metric, value in metrics.items():
            writer.add_scalar(f"final/{metric}", value, global_step=0, walltime=0.0)
        writer.close()
    return None


def write_wandb(agg: Aggregate, out_dir: Path, project: str) -> str | None:
    """An offline Weights & Biases run per stage under ``out_dir`` (``wandb sync`` uploads it later, from a machine
    with network): the same curves and final metrics as TensorBoard. Returns a note when wandb is missing."""
    try:
        import wandb
    except ImportError:
        return "Weights & Biases run not written: install the wandb extra (pip install 'harness[wandb]')"
    out_dir.mkdir(parents=True, exist_ok=True)
    series: dict[str, list[tuple[str, list[tuple[int, float]]]]] = {}
    for stage_id, name, points in _series(agg):
        series.setdefault(stage_id, []).append((name, points))
    for stage_id, metrics in _final_metrics(agg).items():
        run = wandb.init(project=project, name=stage_id, group=agg.run.suite, dir=str(out_dir), mode="offline",
                         config={"suite": agg.run.suite, "stage": stage_id})
        for name, points in series.get(stage_id, []):
            for step, value in points:
                run.log({f"train/{name}": value, "step": step})
        run.summary.update({f"final/{k}": v for k, v in metrics.items()})
        run.finish()
    return None

"""The success indicators, judged on paired intervals: a compared model's gap vs the baseline in a metric (say its
perplexity), and the reduction of every attack's metric (say its success rate), against the suite's targets.

Honest verdicts: an indicator is ``met`` only when its 95% interval lies entirely on the target's side, ``not met``
only when it lies entirely on the other side, otherwise ``not settled``. The intervals are paired: the model and
the baseline face the same seeds and the same examples (records paired by ``id`` within a seed), so they are
resampled together. An attack's reduction must also exceed its control's (the paired interval of the difference
above 0), else it is ``same as control``: a model that reacts less to any edit (a damaged one, say) shows a
reduction under random edits too. A reduction against a baseline value below ``report.attack_floor`` (few
successes to reduce) says ``too few successes`` when the metric is a rate (the mean of a true/false record field,
or a curve's rate at a threshold).

An attack's control is the entry the suite declares with ``control_of: <attack entry>`` (read from the run's
``config.resolved.json``, never guessed from names); none: ``no control``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .aggregate import Aggregate, Group, attack_entries, compared_models, is_control, replays_a_source
from .stats import (SEED_METHOD, aligned_columns, example_rows, paired_bootstrap, paired_seed_bootstrap,
                    percentile_interval, rng_for)
from .stats import statistic as spec_statistic

MET, NOT_MET, UNSETTLED = "met", "not met", "not settled"
NO_TARGET = "no target"


def verdict(ci: list[float] | None, target: float | None, above: bool) -> str:
    """``met`` when the whole interval is on the target's side (above it when ``above``), ``not met`` when the whole
    interval is on the other side, else ``not settled`` (also without an interval); ``no target`` when the suite
    sets none (the core has no default target: the value and its interval are the result)."""
    if target is None:
        return NO_TARGET
    if ci is None:
        return UNSETTLED
    lo, hi = ci
    if above:
        return MET if lo > target else NOT_MET if hi <= target else UNSETTLED
    return MET if hi < target else NOT_MET if lo >= target else UNSETTLED


def paired_means(agg: Aggregate, groups: list[Group], metric: str) -> tuple[np.ndarray, str] | None:
    """Replicates ``(len(groups), n_boot)`` of each group's mean of ``metric`` over the seeds they share, resampled
    together (examples paired by id within a seed when the records reproduce the metric, else seeds only)."""
    cfg = agg.run.config
    per_group = [{_label(s): s for s in g.done} for g in groups]
    labels = list(dict.fromkeys(label for stages in per_group for label in stages if label != "unseeded"))
    for stages in per_group:  # an unseeded stage (a seed-free metric) is the same result at every seed
        if list(stages) == ["unseeded"] and labels:
            stages.update({label: stages["unseeded"] for label in labels})
    seeds = [label for label in per_group[0] if all(label in other for other in per_group[1:])]
    if len(seeds) > 1:
        seeds = [label for label in seeds if label != "unseeded"]
    if not seeds:
        return None
    rng = rng_for(cfg.bootstrap_seed, "paired", metric, *[f"{g.entry}@{g.model}" for g in groups])
    found = [spec for g in groups if (spec := g.spec(metric)) is not None]
    first = found[0] if len(found) == len(groups) else None
    same = first is not None and all((s.field, s.aggregation, s.weight) == (first.field, first.aggregation,
                                                                            first.weight) for s in found)
    stat = spec_statistic(first) if first is not None and same else None
    if stat is not None:
        columns, ids = [], []
        for label in seeds:
            arms = [example_rows(spec, per_group[i][label].records) for i, spec in enumerate(found)]
            aligned = aligned_columns(stat, arms)
            if aligned is None or not _reproduce(stat, aligned, [per_group[i][label] for i in range(len(groups))],
                                                 metric):
                columns = []
                break
            columns.append(aligned)
            others = [{r["id"] for r in other} for other in arms[1:]]
            ids.append([r["id"] for r in arms[0] if all(r["id"] in o for o in others)])
        if columns:
            method = f"paired {SEED_METHOD}" if len(seeds) > 1 else "paired bootstrap over examples"
            shared = len(seeds) > 1 and all(i == ids[0] for i in ids[1:])
            if shared:
                method += ", plus the examples the seeds share"
            return paired_bootstrap(stat, columns, cfg.bootstrap_samples, rng, shared), method
    values = np.array([[per_group[i][label].scalars().get(metric) for i in range(len(groups))] for label in seeds],
                      dtype=float)
    if len(seeds) < 2 or not np.isfinite(values).all():
        return None
    return paired_seed_bootstrap(values, cfg.bootstrap_samples, rng), f"paired {SEED_METHOD}"


def _label(stage: Any) -> str:
    return "unseeded" if stage.seed is None else str(stage.seed)


def _reproduce(stat: Any, aligned: list[dict[str, np.ndarray]], stages: list[Any], metric: str) -> bool:
    """The shared examples give each stage's reported value (else they measure something else: no pairing)."""
    for columns, stage in zip(aligned, stages):
        value = stage.scalars().get(metric)
        full = float(stat.compute({f: c[None, :] for f, c in columns.items()})[0])
        if value is None or not np.isclose(full, value, rtol=1e-6, atol=1e-9):
            return False
    return True


def is_rate(group: Group, metric: str) -> bool:
    """Whether ``metric`` is a rate of successes (the share of examples over a threshold, or the mean of a record
    field that is true or false), to which ``report.attack_floor`` applies."""
    spec = group.spec(metric)
    if spec is None or spec.field is None:
        return False
    if spec.threshold is not None:
        return True
    values = [r.get(spec.field) for s in group.done for r in s.records if spec.field in r]
    return bool(values) and all(isinstance(v, bool) for v in values)


def _interval(draws: np.ndarray, confidence: float) -> list[float] | None:
    draws = draws[np.isfinite(draws)]
    return list(percentile_interval(draws, confidence)) if len(draws) else None


def control_of(agg: Aggregate, entry: str) -> tuple[str | None, str]:
    """The control entry an attack is judged against, and how it was found: the suite's ``control_of:`` (the first
    in suite order when several entries control the same attack)."""
    run = agg.run
    controls = [e for e in attack_entries(agg) if run.controls.get(e) == entry]
    if not controls:
        return None, f"no entry of the suite has `control_of: {entry}`"
    if len(controls) > 1:
        return controls[0], f"the first of its controls ({', '.join(controls)}; `control_of` in the suite)"
    return controls[0], "`control_of` in the suite"


def indicators(agg: Aggregate) -> list[dict[str, Any]]:
    run, cfg = agg.run, agg.run.config
    out: list[dict[str, Any]] = []
    gap_name = f"{cfg.gap.metric} gap vs baseline" if cfg.gap else "gap vs baseline"
    gap_target = f"< {cfg.gap_target:.0%}" if cfg.gap_target is not None else "none (report.gap_target)"
    red_target = (f"> {cfg.attack_reduction_target:.0%}" if cfg.attack_reduction_target is not None
                  else "none (report.attack_reduction_target)")
    compare = compared_models(run)
    if cfg.baseline is None or not compare:
        why = ("the suite names no baseline model (set `report: {baseline: <model>, compare: [<model>]}`)"
               if cfg.baseline is None else "the suite has no model besides the baseline to compare")
        for kind, name, target in (("gap", gap_name, gap_target),
                                   ("reduction", "attack-success reduction", red_target)):
            out.append({"indicator": name, "kind": kind, "status": "not applicable", "target": target, "detail": why})
        return out

    if cfg.gap is None:
        out.append({"indicator": gap_name, "kind": "gap", "status": "not applicable", "target": gap_target,
                    "detail": "the suite's report names no metric (set `report: {gap: {entry: ..., metric: ...}}`)"})
    for model in compare if cfg.gap else []:
        out.append(gap_indicator(agg, gap_name, gap_target, model))

    entries = attack_entries(agg)
    if cfg.attack_metric is None:
        out.append({"indicator": "attack-success reduction", "kind": "reduction", "status": "not applicable",
                    "target": red_target, "detail": "the suite's report names no attack metric (set `report: {attack_metric: ...}`)"})
        entries = []
    elif not entries:
        out.append({"indicator": "attack-success reduction", "kind": "reduction", "status": "not applicable",
                    "target": red_target, "detail": "the suite runs no attack"})
    for entry in entries:
        for model in compare:
            out.append(reduction_indicator(agg, entry, red_target, model))
    return out


def gap_indicator(agg: Aggregate, name: str, target: str, model: str) -> dict[str, Any]:
    run, cfg = agg.run, agg.run.config
    assert cfg.gap is not None and cfg.baseline is not None
    metric = cfg.gap.metric
    entry = run.resolve_entry(cfg.gap.entry)
    item: dict[str, Any] = {"indicator": name, "kind": "gap", "model": model, "baseline": cfg.baseline, "entry": entry,
                            "metric": metric, "target": target}
    b, m = agg.find(entry, cfg.baseline), agg.find(entry, model)
    bs = b.across.get(metric) if b else None
    ms = m.across.get(metric) if m else None
    if entry is None:
        item.update(status="not applicable", detail=f"no metrics entry '{cfg.gap.entry}' in the suite")
        return item
    if b is None or m is None or bs is None or ms is None or bs.mean is None or ms.mean is None or bs.mean <= 0:
        item.update(status="missing", detail=f"{metric} of the baseline or the model did not finish")
        return item
    item.update(value=ms.mean / bs.mean - 1, baseline_value=bs.mean, model_value=ms.mean)
    paired = paired_means(agg, [m, b], metric)
    ci = None
    if paired is not None:
        reps, method = paired
        with np.errstate(divide="ignore", invalid="ignore"):
            ci = _interval(reps[0] / reps[1] - 1, cfg.confidence)
        item["ci_method"] = method
    status = verdict(ci, cfg.gap_target, above=False)
    item.update(ci95=ci, status=status, met=status == MET)
    if status == UNSETTLED:
        item["detail"] = ("no interval (neither shared examples nor two shared seeds)" if ci is None else
                          f"the 95% interval [{ci[0]:.1%}, {ci[1]:.1%}] contains the target: not settled by this run")
    return item


def _reduction_draws(agg: Aggregate, groups: list[Group], metric: str) -> tuple[np.ndarray, str] | None:
    """Paired replicates of the reduction ``1 - model / baseline`` per (model, baseline) pair of ``groups``
    (``[model, baseline, model2, baseline2, ...]``): rows of the result."""
    paired = paired_means(agg, groups, metric)
    if paired is None:
        return None
    reps, method = paired
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.stack([1 - reps[i] / reps[i + 1] for i in range(0, len(groups), 2)]), method


def reduction_indicator(agg: Aggregate, entry: str, target: str, model: str) -> dict[str, Any]:
    run, cfg = agg.run, agg.run.config
    metric = cfg.attack_metric
    assert metric is not None and cfg.baseline is not None
    # A control (random edits at an attack's budget) is shown beside the attacks, but its reduction is a
    # reference for theirs, not a robustness result: it gets no met / not met.
    control = is_control(run, entry)
    item: dict[str, Any] = {"indicator": "attack-success reduction", "kind": "reduction", "model": model,
                            "baseline": cfg.baseline,
                            "entry": entry, "metric": metric, "target": target, "control": control}
    b, m = agg.find(entry, cfg.baseline), agg.find(entry, model)
    bs = b.across.get(metric) if b else None
    ms = m.across.get(metric) if m else None
    if b is None or m is None:
        item.update(status="not applicable", detail=f"attack '{entry}' does not run on both models")
        return item
    if bs is None or ms is None or bs.mean is None or ms.mean is None:
        item.update(status="missing", detail=f"'{entry}' on the baseline or the model did not finish "
                                             f"(or reports no {metric})")
        return item
    item.update(baseline_value=bs.mean, model_value=ms.mean)
    if bs.mean <= 0:
        item.update(status="too few successes", detail=f"the baseline's {metric} is 0: there is nothing to reduce")
        return item
    item["value"] = 1 - ms.mean / bs.mean
    draws = _reduction_draws(agg, [m, b], metric)
    ci = _interval(draws[0][0], cfg.confidence) if draws else None
    item.update(ci95=ci, ci_method=draws[1] if draws else None)
    if control:
        item.update(status="control", detail="a control: the reference for the attacks' reduction, not judged "
                                             "against the target")
        return item
    if replays_a_source(m.stages):
        item.update(status="transfer", detail="replays another model's strings or edits: judged by the masking "
                                              "checks' transfer test, not against the target")
        return item
    if bs.mean < cfg.attack_floor and is_rate(b, metric):
        item.update(status="too few successes", met=False,
                    detail=f"the baseline's {metric} {bs.mean:.3g} is below the floor {cfg.attack_floor:g} "
                           "(report.attack_floor): too little to reduce for a verdict")
        return item
    status = verdict(ci, cfg.attack_reduction_target, above=True)
    notes = []
    if ci is None:
        notes.append("no interval (neither shared examples nor two shared seeds)")
    elif status == UNSETTLED:
        notes.append(f"the 95% interval [{ci[0]:.1%}, {ci[1]:.1%}] contains the target: not settled by this run")
    name, how = control_of(agg, entry)
    item["control_entry"] = name
    cb, cm = (agg.find(name, cfg.baseline), agg.find(name, model)) if name else (None, None)
    if name is None or cb is None or cm is None:
        notes.append(f"control: {how}" if name is None else f"control '{name}' did not run on both models")
        if status == MET:
            status = "no control"
    else:
        both = _reduction_draws(agg, [m, b, cm, cb], metric)
        diff_ci = _interval(both[0][0] - both[0][1], cfg.confidence) if both else None
        cbs, cms = cb.across.get(metric), cm.across.get(metric)
        if cbs is not None and cms is not None and cbs.mean and cms.mean is not None:
            item["control_value"] = 1 - cms.mean / cbs.mean
            item["minus_control"] = item["value"] - item["control_value"]
        item["minus_control_ci95"] = diff_ci
        notes.append(f"control '{name}' ({how})")
        if status == MET and (diff_ci is None or diff_ci[0] <= 0):
            status = "same as control"
            notes.append("the reduction does not exceed the control's: paired interval of the difference "
                         + (f"[{diff_ci[0]:.1%}, {diff_ci[1]:.1%}]" if diff_ci else "unavailable") + " is not above 0")
    item.update(status=status, met=status == MET, detail="; ".join(notes))
    return item


def attack_vs_control(agg: Aggregate) -> list[dict[str, Any]]:
    """Every attack against its control on every model both ran on, in each of ``report.control_metrics``: the
    difference attack minus control with its paired 95% interval (the same seeds and examples: an attack and its
    control face the same documents and random draws). ``beats control`` only when the interval lies strictly above 0,
    ``below control`` when strictly below, else ``not settled``."""
    run, cfg = agg.run, agg.run.config
    metrics = cfg.control_metrics or ([cfg.attack_metric] if cfg.attack_metric else [])
    rows: list[dict[str, Any]] = []
    for entry in attack_entries(agg):
        if is_control(run, entry):
            continue
        control, how = control_of(agg, entry)
        for model in run.models:
            a, c = agg.find(entry, model), (agg.find(control, model) if control else None)
            if a is None:
                continue
            for metric in metrics:
                row: dict[str, Any] = {"attack": entry, "control": control, "found_by": how, "model": model,
                                       "metric": metric}
                sa, sc = a.across.get(metric), c.across.get(metric) if c else None
                if c is None or sa is None or sc is None or sa.mean is None or sc.mean is None:
                    row.update(status="no control" if control is None else "missing",
                               detail=how if control is None else f"{metric} of the attack or its control did not "
                                                                   "finish on this model")
                    rows.append(row)
                    continue
                row.update(attack_value=sa.mean, control_value=sc.mean, difference=sa.mean - sc.mean)
                paired = paired_means(agg, [a, c], metric)
                ci = _interval(paired[0][0] - paired[0][1], cfg.confidence) if paired else None
                # Strictly on one side of 0, or not settled: an interval [0, 0] (both at 100%, say) is no loss.
                status = (UNSETTLED if ci is None else "beats control" if ci[0] > 0 else
                          "below control" if ci[1] < 0 else UNSETTLED)
                row.update(ci95=ci, ci_method=paired[1] if paired else None, status=status)
                rows.append(row)
    return rows


def versus_matched_controls(agg: Aggregate) -> list[dict[str, Any]]:
    """Each model of ``report.matched_controls`` against each of its control models (arms damaged like it without
    its constraint): first the gap metric's ratio ``model / control - 1`` (``matched`` when its paired 95% interval
    lies within +-``gap_target``, even if it excludes 0; else ``model higher`` / ``model lower`` when it lies above
    / below 0, else ``not settled``: is the control matched in, say, perplexity?), then for every
    attack entry (controls included: they show whether the two react alike to random edits) in each of
    ``report.control_metrics`` the reduction ``1 - model / control`` with its paired interval: ``more robust than
    control`` only when the interval lies above 0, ``less robust than control`` when below, else ``not settled``."""
    run, cfg = agg.run, agg.run.config
    metrics = cfg.control_metrics or ([cfg.attack_metric] if cfg.attack_metric else [])
    rows: list[dict[str, Any]] = []
    for model, controls in cfg.matched_controls.items():
        for control in controls:
            if cfg.gap is not None:
                rows.append(_versus_row(agg, run.resolve_entry(cfg.gap.entry), cfg.gap.metric, model, control, True))
            for entry in attack_entries(agg):
                for metric in metrics:
                    rows.append(_versus_row(agg, entry, metric, model, control, False))
    return rows


def _versus_row(agg: Aggregate, entry: str | None, metric: str, model: str, control: str,
                gap: bool) -> dict[str, Any]:
    cfg = agg.run.config
    row: dict[str, Any] = {"model": model, "control_model": control, "entry": entry, "metric": metric,
                           "kind": "gap" if gap else "reduction",
                           "attack_control": bool(entry) and not gap and is_control(agg.run, entry)}
    m, c = (agg.find(entry, model), agg.find(entry, control)) if entry else (None, None)
    ms, cs = (m.across.get(metric) if m else None), (c.across.get(metric) if c else None)
    if m is None or c is None or ms is None or cs is None or ms.mean is None or cs.mean is None:
        row.update(status="missing", detail=f"{entry}.{metric} did not finish on both models (or is not run on both)")
        return row
    row.update(model_value=ms.mean, control_value=cs.mean)
    if cs.mean <= 0:
        row.update(status="not applicable", detail=f"the control's {metric} is 0")
        return row
    paired = paired_means(agg, [m, c], metric)
    with np.errstate(divide="ignore", invalid="ignore"):
        if gap:
            row["value"] = ms.mean / cs.mean - 1
            ci = _interval(paired[0][0] / paired[0][1] - 1, cfg.confidence) if paired else None
            # matched: the whole interval within +-gap_target, an equivalence margin as in TOST (an interval that
            # merely contains 0 may be wide; one that excludes 0 inside the margin shows a difference smaller than
            # the tolerance, so more data never turns a match into a mismatch)
            tol = cfg.gap_target
            within = ci is not None and tol is not None and -tol < ci[0] and ci[1] < tol
            status = (UNSETTLED if ci is None else "matched" if within else "model higher" if ci[0] > 0
                      else "model lower" if ci[1] < 0 else UNSETTLED)
        else:
            row["value"] = 1 - ms.mean / cs.mean
            ci = _interval(1 - paired[0][0] / paired[0][1], cfg.confidence) if paired else None
            status = (UNSETTLED if ci is None else "more robust than control" if ci[0] > 0 else
                      "less robust than control" if ci[1] < 0 else UNSETTLED)
    row.update(ci95=ci, ci_method=paired[1] if paired else None, status=status)
    return row

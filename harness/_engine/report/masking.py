"""Checks against gradient masking (Athalye et al. 2018; Carlini et al. 2019, "On evaluating adversarial
robustness"), per model and gradient attack: a model can look robust because its gradients stopped being
informative, not because no edit hurts it. Four checks, each a row of ``masking_checks`` in final_results.json:

- ``budget``: the success rate must rise with the budget (read from the records' best NLL after each step,
  ``harness.attacks.PROGRESS_FIELD``: the rate at a quarter of the steps against the rate at all of them), unless it
  is already 100%;
- ``control``: the attack must beat its random control at equal budget (``attack_vs_control``): it fails when the
  attack is no better than the control in every control metric, or is settled below it in one;
- ``transfer``: the attack transferred from the baseline (the baseline's strings or edits replayed on this model on
  the same examples: an entry whose stages need the attack's and whose records name their ``source`` model, e.g.
  ``edit_transfer`` or ``uat_transfer``) must not beat the white-box attack: it fails when the transfer succeeds on
  more examples where the white-box attack fails than the reverse, significantly (exact McNemar test), or when the
  paired interval of the relative increase (transfer minus white-box) lies above ``report.masking.transfer_margin``
  (0 by default);
- ``relaxation``: the continuous relaxation on the same positions (``report.masking.relaxation``: an unconstrained
  attack on the context embeddings) must reach ``report.masking.relaxation_success``.

A gradient attack is an attack entry that is no control, no transfer and no ensemble (``report.ensembles``: its
members are checked), and that spent gradient passes on its examples or has a random control. Each failed check is a named warning (``possible gradient masking: ...``), listed
in the summary, the HTML and final_results.json, and added to the detail of the verdict it weakens (the reduction
indicator of that attack and model).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...attacks import PROGRESS_FIELD
from .aggregate import SOURCE_FIELD, Aggregate, Group, attack_entries, is_control, replays_a_source
from .collect import ENSEMBLE_PLUGIN
from .stats import percentile_interval, rng_for
from .verdicts import control_of
#: The warnings, by check.
WARNINGS = {
    "budget": "possible gradient masking: success does not rise with budget",
    "control": "possible gradient masking: attack does not beat its random control",
    "transfer": "possible gradient masking: transfer from baseline beats white-box",
    "relaxation": "possible gradient masking: continuous relaxation on the same positions fails",
}
#: Budget points of the success-against-budget curve, as fractions of the steps an attack ran.
BUDGET_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _threshold(group: Group, agg: Aggregate) -> float | None:
    """The attack's own success threshold (its summary's ``threshold``), else the report's (None: neither)."""
    values = [s.metrics.get("threshold") for s in group.done]
    numbers = [float(v) for v in values if isinstance(v, (int, float))]
    return numbers[0] if numbers else agg.run.config.success_threshold


def gradient_attacks(agg: Aggregate, model: str) -> list[str]:
    """The gradient attacks run on ``model`` (see the module's docstring)."""
    run = agg.run
    out = []
    for entry in attack_entries(agg):
        group = agg.find(entry, model, ("attacks",))
        if (group is None or is_control(run, entry) or replays_a_source(group.stages)
                or entry == run.config.masking.relaxation
                or group.plugin == ENSEMBLE_PLUGIN):  # an ensemble's members are checked, each on its own
            continue
        grads = group.across.get("mean_gradient_calls")
        spent = grads is not None and grads.mean is not None and grads.mean > 0
        if spent or control_of(agg, entry)[0] is not None:
            out.append(entry)
    return out


def budget_curve(group: Group, agg: Aggregate) -> dict[str, Any] | None:
    """The success rate (and mean relative increase) at ``BUDGET_FRACTIONS`` of the steps, pooled over the seeds'
    records that carry their progress; None when none does."""
    threshold = _threshold(group, agg)
    if threshold is None:
        return None
    rows = [r[PROGRESS_FIELD] for s in group.done for r in s.records
            if isinstance(r.get(PROGRESS_FIELD), list) and r[PROGRESS_FIELD]]
    if not rows:
        return None
    steps = max(len(r) for r in rows) - 1
    success, increase = [], []
    for f in BUDGET_FRACTIONS:
        k = math.ceil(f * steps)
        rel = np.array([(r[min(k, len(r) - 1)] - r[0]) / r[0] if r[0] > 0 else 0.0 for r in rows])
        success.append(float((rel > threshold).mean()))
        increase.append(float(rel.mean()))
    return {"fractions": list(BUDGET_FRACTIONS), "steps": steps, "success_rate": success,
            "mean_relative_increase": increase, "n_examples": len(rows)}


def _budget_check(group: Group, agg: Aggregate) -> dict[str, Any]:
    curve = budget_curve(group, agg)
    if curve is None:
        return {"status": "not applicable", "detail": f"its records carry no progress ({PROGRESS_FIELD}) or it has no "
                                                      "success threshold"}
    first, last = curve["success_rate"][1], curve["success_rate"][-1]
    ok = last > first or first >= 1.0
    detail = (f"success {first:.0%} at a quarter of its {curve['steps']} steps, {last:.0%} at all of them"
              + (" (already 100%)" if first >= 1.0 else ""))
    return {"status": "ok" if ok else "failed", "detail": detail, "curve": curve}


def _control_check(agg: Aggregate, controls: list[dict[str, Any]], entry: str, model: str) -> dict[str, Any]:
    rows = [r for r in controls if r["attack"] == entry and r["model"] == model and "difference" in r]
    if not rows:
        name, how = control_of(agg, entry)
        return {"status": "not applicable", "detail": f"no control ({how})" if name is None
                else f"control '{name}' did not finish on this model"}
    below = [r for r in rows if r.get("status") == "below control"]
    better = [r for r in rows if r["difference"] > 0]
    detail = "; ".join(f"{r['metric']}: {r['attack_value']:.3g} vs control {r['control_value']:.3g} ({r['status']})"
                       for r in rows)
    return {"status": "failed" if below or not better else "ok", "detail": detail,
            "control": rows[0]["control"]}


def transfers_of(agg: Aggregate, entry: str) -> list[str]:
    """The transfer entries that replay ``entry``'s strings or edits: their stages need ``entry``'s stages and their
    records name their source model."""
    run = agg.run
    out = []
    for _, other, _ in run.entries():
        stages = [s for s in run.stages if s.entry == other and s.section == "attacks"]
        if other == entry or not any(d.startswith(f"attacks/{entry}/") for s in stages for d in s.deps):
            continue
        if replays_a_source(stages):
            out.append(other)
    return out


def _pairs(attack: Group, transfer: Group, source: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per shared seed: the white-box and the transferred records' success and relative increase, paired by example
    (a transfer record's id may carry its source as a prefix, ``source/id``)."""
    seeds = {s.seed: s for s in attack.done}
    out = []
    for stage in transfer.done:
        own = seeds.get(stage.seed)
        if own is None:
            continue
        moved = {str(r["id"]).removeprefix(f"{source}/"): r for r in stage.records if r.get(SOURCE_FIELD) == source}
        shared = [(r, moved[r["id"]]) for r in own.records if r.get("id") in moved]
        if shared:
            out.append((np.array([[float(a["success"]), float(a["relative_increase"])] for a, _ in shared]),
                        np.array([[float(b["success"]), float(b["relative_increase"])] for _, b in shared])))
    return out


def paired_difference(pairs: list[tuple[np.ndarray, np.ndarray]], n_boot: int, confidence: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, list[list[float]]]:
    """The mean over seeds of the per-seed mean difference ``b - a`` (columns: success, relative increase) and its
    bootstrap interval, resampling the paired examples within each seed."""
    diffs = [b - a for a, b in pairs]
    point = np.mean([d.mean(0) for d in diffs], axis=0)
    draws = np.zeros((n_boot, point.shape[0]))
    for d in diffs:
        idx = rng.integers(0, len(d), size=(n_boot, len(d)))
        draws += d[idx].mean(1)
    draws /= len(diffs)
    return point, [list(percentile_interval(draws[:, j], confidence)) for j in range(point.shape[0])]


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: ``b`` and ``c`` discordant pairs, under the null each is one side's with
    probability 1/2 (a binomial test on ``min(b, c)`` of ``b + c``)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _transfer_check(agg: Aggregate, entry: str, model: str) -> dict[str, Any]:
    cfg = agg.run.config
    baseline = cfg.baseline
    if baseline is None:
        return {"status": "not applicable", "detail": "the suite names no baseline (report.baseline)"}
    if model == baseline:
        return {"status": "not applicable", "detail": "the baseline itself"}
    attack = agg.find(entry, model, ("attacks",))
    for other in transfers_of(agg, entry):
        transfer = agg.find(other, model, ("attacks",))
        pairs = _pairs(attack, transfer, baseline) if attack is not None and transfer is not None else []
        if not pairs:
            continue
        rng = rng_for(cfg.bootstrap_seed, "masking", entry, other, model)
        point, ci = paired_difference(pairs, cfg.bootstrap_samples, cfg.confidence, rng)
        # Success is binary: with few discordant pairs a percentile bootstrap of its paired difference is far too
        # narrow (4 of 32 examples one way and none the other give an interval above 0, where an exact test gives
        # p = 0.125), so success is judged by the exact McNemar test on the discordant pairs, pooled over seeds;
        # the relative increase, continuous, by its paired bootstrap interval.
        only_transfer = int(sum(((b[:, 0] > 0) & (a[:, 0] == 0)).sum() for a, b in pairs))
        only_white_box = int(sum(((a[:, 0] > 0) & (b[:, 0] == 0)).sum() for a, b in pairs))
        p_success = mcnemar_exact(only_transfer, only_white_box)
        beats = [name for name, hit in (("success", only_transfer > only_white_box and p_success < 1 - cfg.confidence),
                                        ("relative increase", ci[1][0] > cfg.masking.transfer_margin)) if hit]
        detail = (f"'{other}' (the baseline's on {sum(len(a) for a, _ in pairs)} shared examples) minus white-box: "
                  f"success {point[0]:+.1%} (transfer alone succeeds on {only_transfer}, white-box alone on "
                  f"{only_white_box}: exact McNemar p = {p_success:.3g}), relative increase {point[1]:+.3f} "
                  f"[{ci[1][0]:+.3f}, {ci[1][1]:+.3f}]"
                  + (f" (fails above {cfg.masking.transfer_margin:+.3f})" if cfg.masking.transfer_margin else ""))
        return {"status": "failed" if beats else "ok", "detail": detail, "transfer": other, "criteria": beats,
                "difference": [float(p) for p in point], "ci95": ci, "discordant": [only_transfer, only_white_box],
                "mcnemar_p": p_success}
    return {"status": "not applicable", "detail": f"no transfer of '{entry}' from the baseline on this model (an "
                                                  "entry with `needs: [" + entry + "]` replaying its edits)"}


def _relaxation_check(agg: Aggregate, model: str) -> dict[str, Any]:
    masking = agg.run.config.masking
    if masking.relaxation is None:
        return {"status": "not applicable", "detail": "no continuous relaxation declared (report.masking.relaxation)"}
    group = agg.find(agg.run.resolve_entry(masking.relaxation), model, ("attacks",))
    rate = group.across.get("success_rate") if group is not None else None
    if rate is None or rate.mean is None:
        return {"status": "missing", "detail": f"'{masking.relaxation}' did not finish on this model"}
    ok = rate.mean >= masking.relaxation_success
    row: dict[str, Any] = {"status": "ok" if ok else "failed", "relaxation": masking.relaxation, "value": rate.mean,
                           "detail": f"continuous relaxation '{masking.relaxation}': success {rate.mean:.0%} (needs "
                                     f">= {masking.relaxation_success:.0%})"}
    rows = [r[PROGRESS_FIELD] for s in group.done for r in s.records if isinstance(r.get(PROGRESS_FIELD), list)
            and r[PROGRESS_FIELD]] if group is not None else []
    threshold = _threshold(group, agg) if group is not None else None
    if rows and threshold is not None:  # has its success curve flattened? the step from which it stays at its end
        steps = max(len(r) for r in rows) - 1
        rates = [float(np.mean([(r[min(k, len(r) - 1)] - r[0]) / r[0] > threshold if r[0] > 0 else False
                                for r in rows])) for k in range(steps + 1)]
        flat_from = next(k for k in range(steps + 1) if all(x == rates[-1] for x in rates[k:]))
        row.update(success_by_step=rates, flat_from_step=flat_from)
        row["detail"] += f"; its success curve is flat from step {flat_from} of its {steps}"
    return row


def masking_checks(agg: Aggregate, controls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, gradient attack, check); ``warning`` set on the failed ones."""
    rows: list[dict[str, Any]] = []
    for model in agg.run.models:
        for entry in gradient_attacks(agg, model):
            group = agg.find(entry, model, ("attacks",))
            assert group is not None
            checks = {"budget": _budget_check(group, agg), "control": _control_check(agg, controls, entry, model),
                      "transfer": _transfer_check(agg, entry, model), "relaxation": _relaxation_check(agg, model)}
            for check, row in checks.items():
                row = {"model": model, "attack": entry, "check": check, **row}
                if row["status"] == "failed":
                    row["warning"] = WARNINGS[check]
                rows.append(row)
    return rows


def masking_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """The failed checks as lines: ``possible gradient masking: ... (model, attack)``."""
    return [f"{r['warning']} ({r['model']}, {r['attack']}): {r['detail']}" for r in rows if r.get("warning")]


def attach_to_primary(primary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Add each failed check to the primary endpoints it weakens (``masking_warnings``): those on that attack whose
    model or reference it concerns."""
    failed = [r for r in rows if r.get("warning")]
    for row in primary.get("endpoints", []):
        mine = [r for r in failed if r["attack"] == row.get("entry")
                and r["model"] in (row.get("model"), row.get("reference"))]
        if mine:
            row["masking_warnings"] = [f"{r['warning']} ({r['model']})" for r in mine]


def attach_to_verdicts(indicators: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """Add each failed check to the verdict it weakens: the reduction indicator of that attack and model (and of the
    baseline's, whose attack success is the reference)."""
    failed = [r for r in rows if r.get("warning")]
    for item in indicators:
        entry, model = item.get("entry"), item.get("model")
        mine = [r for r in failed if r["attack"] == entry and r["model"] in (model, item.get("baseline"))]
        if not mine or item.get("indicator") != "attack-success reduction":
            continue
        item["masking_warnings"] = [f"{r['warning']} ({r['model']})" for r in mine]
        item["detail"] = "; ".join([d for d in [item.get("detail")] if d] + item["masking_warnings"])


def masking_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The checks as summary lines (after a heading)."""
    if not rows:
        return []
    out = ["Gradient-masking checks (per model and gradient attack; see harness/_engine/report/masking.py):"]
    for r in rows:
        mark = "WARNING " + r["warning"] if r.get("warning") else r["status"].upper()
        out.append(f"  - {r['model']} / {r['attack']} / {r['check']}: {mark}: {r['detail']}")
    return out


__all__ = ["WARNINGS", "attach_to_primary", "attach_to_verdicts", "budget_curve", "gradient_attacks", "masking_checks",
           "masking_lines", "masking_warnings", "mcnemar_exact", "transfers_of"]

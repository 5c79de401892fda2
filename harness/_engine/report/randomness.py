"""Which randomness the two arms of each paired comparison share (common random numbers), read from the run.

- **data order**: each arm's training stage records a fingerprint of the batches it read
  (:data:`harness.DATA_ORDER_FINGERPRINT`); equal fingerprints at every seed = the same data in the same order.
- **documents**: the example ids of every evaluation both arms ran, seed by seed.
- **attack streams**: attacks draw their randomness from (seed, attack, example) alone (``harness.attacks.attack_rng``),
  never from the model, so arms evaluated at the same seeds share them.

What they do not share is said as plainly: the weights each arm ends with (its recipe), and anything found different
above.
"""

from __future__ import annotations

from typing import Any

from ...api import DATA_ORDER_FINGERPRINT
from .aggregate import Aggregate, compared_models

SHARED, NOT_SHARED = "shared", "not shared"


def comparison_pairs(agg: Aggregate) -> list[tuple[str, str]]:
    """Every (model, reference) the report compares: the compared models with the baseline, the matched controls,
    the primary endpoints."""
    cfg = agg.run.config
    pairs = [(m, cfg.baseline) for m in compared_models(agg.run) if cfg.baseline]
    pairs += [(m, c) for m, controls in cfg.matched_controls.items() for c in controls]
    pairs += [(p.model, p.reference) for p in cfg.primary]
    return [p for p in dict.fromkeys(pairs) if p[0] in agg.run.models and p[1] in agg.run.models]


def _training_fingerprints(agg: Aggregate, model: str) -> dict[str, str | None]:
    """Seed label -> the data-order fingerprint of the training stage that made ``model`` at that seed."""
    by_id = {s.id: s for s in agg.run.stages}
    out: dict[str, str | None] = {}
    for s in agg.run.stages:
        if s.model != model or s.section not in ("metrics", "attacks") or s.seed is None:
            continue
        for dep in s.deps:
            train = by_id.get(dep)
            if train is not None and train.section == "train":
                value = train.metrics.get(DATA_ORDER_FINGERPRINT) if train.done else None
                out[str(s.seed)] = value if isinstance(value, str) else None
    return out


def _data_order(agg: Aggregate, model: str, reference: str) -> tuple[str, str]:
    a, b = _training_fingerprints(agg, model), _training_fingerprints(agg, reference)
    if not a and not b:
        return "not trained", "neither arm was trained in this run"
    if not a or not b:
        return NOT_SHARED, f"only {model if a else reference} was trained in this run"
    both = sorted(set(a) & set(b))
    seeds = [s for s in both if a[s] is not None and b[s] is not None]
    if not seeds:
        return "unknown", "a training stage recorded no data-order fingerprint (or did not finish)"
    # a partial run: judged on the seeds whose two trainings finished, the others said
    pending = [s for s in both if s not in seeds]
    later = (f"; seeds {', '.join(pending)}: a training stage recorded no fingerprint (or did not finish)"
             if pending else "")
    same = [s for s in seeds if a[s] == b[s]]
    if len(same) == len(seeds):
        return SHARED, f"the same batches in the same order at seeds {', '.join(seeds)} (equal fingerprints){later}"
    return NOT_SHARED, (f"different batches at seeds {', '.join(s for s in seeds if s not in same)}"
                        f" (the data recipe or data_seed differ){later}")


def _documents(agg: Aggregate, model: str, reference: str) -> tuple[str, str]:
    entries = 0
    differ = []
    for g in agg.evaluation_groups():
        if g.model != model:
            continue
        other = agg.find(g.entry, reference)
        if other is None:
            continue
        theirs = {str(s.seed): s for s in other.done}
        for s in g.done:
            o = theirs.get(str(s.seed)) or theirs.get("None")
            if o is None:
                continue
            entries += 1
            if {r.get("id") for r in s.records} != {r.get("id") for r in o.records}:
                differ.append(f"{g.entry}@{s.seed}")
    if not entries:
        return "unknown", "no evaluation both arms finished"
    if differ:
        return NOT_SHARED, f"different examples in {', '.join(differ[:5])}"
    return SHARED, f"the same example ids in all {entries} evaluations both ran"


def shared_randomness(agg: Aggregate) -> list[dict[str, Any]]:
    rows = []
    for model, reference in comparison_pairs(agg):
        order, order_how = _data_order(agg, model, reference)
        docs, docs_how = _documents(agg, model, reference)
        seeds = {s.seed for s in agg.run.stages if s.model in (model, reference) and s.section == "attacks"}
        streams = SHARED if seeds else "not run"
        not_shared = ["the weights each arm's recipe gives"]
        not_shared += [what for what, status in (("data order", order), ("documents", docs)) if status == NOT_SHARED]
        rows.append({"model": model, "reference": reference, "data_order": order, "data_order_detail": order_how,
                     "documents": docs, "documents_detail": docs_how, "attack_streams": streams,
                     "attack_streams_detail": "attack randomness is keyed by (seed, attack, example), never by the "
                                              "model" if seeds else "no attack ran on these arms",
                     "not_shared": not_shared})
    return rows


def randomness_lines(rows: list[dict[str, Any]]) -> list[str]:
    return [f"  - {r['model']} vs {r['reference']}: data order {r['data_order']}, documents {r['documents']}, attack "
            f"streams {r['attack_streams']}; not shared: {', '.join(r['not_shared'])}" for r in rows]

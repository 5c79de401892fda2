"""The report: aggregation math on known inputs, partial runs, Table 7 (LaTeX compiled when a TeX engine is
installed), the self-contained HTML, the CLI, and a real run through the runner."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness import HarnessError
from harness.cli import main as cli_main
from harness._engine.report import build_report
from harness.api import describe
from harness.attacks import ATTACK_METRICS
from harness._engine.plugins import load_registry
from harness._engine.report.verdicts import verdict
from harness._engine.report.stats import (across_seeds_bootstrap, bootstrap_examples, example_columns, mean_std,
                                  percentile_interval, rng_for)
from harness._engine.report.tables import latex_escape
from harness._engine.runner import Runner
from harness.store import atomic_write_json, read_json
from harness._engine.suite import load_suite

from .conftest import write_suite

SEEDS = [1, 2, 3]
MODELS = ["base", "mono_ffn"]
# Relative NLL increases are drawn uniformly from [0, high): the monotonic model resists HotFlip much better.
ATTACK_HIGH = {("hotflip", "base"): 0.5, ("hotflip", "mono_ffn"): 0.2, ("uat", "base"): 0.3, ("uat", "mono_ffn"): 0.25}
THRESHOLD = 0.15


# -- a run directory written by hand from known inputs ----------------------------------------------------------------

def perplexity_stage(rng: np.random.Generator, scale: float) -> tuple[dict, list[dict]]:
    records = [{"id": f"doc-{i}", "tokens": int(t), "nll_sum": float(t * rng.uniform(2.0, 3.0) * scale)}
               for i, t in enumerate(rng.integers(50, 200, size=12))]
    nll, tok = sum(r["nll_sum"] for r in records), sum(r["tokens"] for r in records)
    return {"perplexity": math.exp(nll / tok), "mean_nll": nll / tok, "tokens": tok, "documents": len(records)}, records


def attack_stage(rng: np.random.Generator, high: float) -> tuple[dict, list[dict]]:
    records = []
    for i in range(40):
        before = float(rng.uniform(2, 4))
        rel = float(rng.uniform(0, high))
        records.append({"id": f"ex-{i}", "nll_before": before, "nll_after": before * (1 + rel),
                        "relative_increase": rel, "success": rel > THRESHOLD})
    rel = [r["relative_increase"] for r in records]
    thresholds = [0.0, 0.1, 0.2, 0.3]
    return {"success_rate": float(np.mean([x > THRESHOLD for x in rel])), "threshold": THRESHOLD,
            "mean_relative_increase": float(np.mean(rel)), "median_relative_increase": float(np.median(rel)),
            "mean_nll_before": float(np.mean([r["nll_before"] for r in records])),
            "mean_nll_after": float(np.mean([r["nll_after"] for r in records])), "n_examples": len(records),
            "mean_queries": 1.0,
            "success_curve": {"thresholds": thresholds, "success_rate": [float(np.mean([x > t for x in rel]))
                                                                         for t in thresholds]}}, records


#: The paper's Table 7 and indicators, as the shipped suites spell them out.
PAPER_REPORT = {
    "success_threshold": 0.15, "gap_target": 0.15, "attack_reduction_target": 0.40, "curve_thresholds": [0.15, 0.30],
    "tables": [{"name": "table7", "title": "Table 7", "columns": [
        {"label": "Perplexity", "entry": "perplexity", "metric": "perplexity", "digits": 2},
        {"label": "HotFlip success (%)", "entry": "hotflip", "metric": "success_rate", "scale": 100, "digits": 1},
        {"label": "HotFlip NLL incr. (%)", "entry": "hotflip", "metric": "mean_relative_increase", "scale": 100,
         "digits": 1},
        {"label": "UAT NLL incr. (%)", "entry": "uat", "metric": "mean_relative_increase", "scale": 100, "digits": 1}]}],
    "gap": {"entry": "perplexity", "metric": "perplexity"},
    "attack_metric": "success_rate",
}


def recorded_declarations(section: str, plugin: str) -> list[dict]:
    """What the runner records in a result: the plugin's declared metrics (here with default options)."""
    cls = load_registry().plugin_class(section, plugin)
    return [s.as_dict() for s in cls(cls.Config.model_construct()).declared_metrics()]


def make_run(root: Path, *, not_started=(), incomplete=(), stale=(), report: dict | None = None,
             control: bool = False, record_declarations: bool = True) -> tuple[Path, dict]:
    """A run of 2 models x 3 seeds: training, perplexity, HotFlip, UAT and a transfer row (``control``: and HotFlip's
    random control). Returns the run directory and the metrics written, by stage id. ``record_declarations=False``:
    results as written before the runner recorded the plugins' declared metrics."""
    rng = np.random.default_rng(7)
    stages, written = [], {}

    def add(stage_id, section, entry, plugin, model, seed, metrics, records, deps=(), extra=None):
        info = {"id": stage_id, "section": section, "entry": entry, "plugin": plugin, "model": model, "seed": seed,
                "deps": list(deps), "key": f"key-{stage_id}"}
        stages.append(info)
        if stage_id in not_started:
            return
        sdir = root / "stages" / stage_id
        sdir.mkdir(parents=True)
        with open(sdir / "records.jsonl", "w") as f:
            for r in records[: len(records) // 2 if stage_id in incomplete else None]:
                f.write(json.dumps(r) + "\n")
        if stage_id in incomplete:
            return
        declared = {"declared_metrics": recorded_declarations(section, plugin)} if record_declarations else {}
        atomic_write_json(sdir / "result.json", {"stage": info, "config": {}, "model_info": {}, "metrics": metrics,
                                                 "duration_s": 1.0, **declared, **(extra or {})})
        atomic_write_json(sdir / "done.json", {"key": "an-older-key" if stage_id in stale else info["key"]})
        written[stage_id] = metrics

    for seed in SEEDS:
        rows = [{"step": s, "loss": 5.0 / (1 + s / 10) + seed * 0.01, "lr": 1e-3, "tokens_seen": 512 * s,
                 "tokens_per_s": 1000.0} for s in range(0, 50, 5)]
        rows += [{"step": s, "val_perplexity": 80.0 / (1 + s / 20)} for s in (0, 25, 49)]
        add(f"train/monotonic/s{seed}", "train", "monotonic", "monotonic", "base", seed,
            {"final_loss": rows[9]["loss"], "steps": 50}, rows)
    metrics, records = perplexity_stage(rng, 1.0)
    add("metrics/perplexity/base", "metrics", "perplexity", "perplexity", "base", None, metrics, records)
    for seed in SEEDS:
        metrics, records = perplexity_stage(rng, 1.1)
        add(f"metrics/perplexity/mono_ffn/s{seed}", "metrics", "perplexity", "perplexity", "mono_ffn", seed,
            metrics, records, deps=[f"train/monotonic/s{seed}"])
    for entry in ("hotflip", "uat"):
        for model in MODELS:
            for seed in SEEDS:
                metrics, records = attack_stage(rng, ATTACK_HIGH[(entry, model)])
                if entry == "hotflip":  # the positions HotFlip edited (its declared histogram)
                    pos = np.random.default_rng(seed)
                    for r in records:
                        r["positions"] = sorted(pos.choice(24, size=4, replace=False).tolist())
                add(f"attacks/{entry}/{model}/s{seed}", "attacks", entry, entry, model, seed, metrics, records,
                    extra={"control": False})
    for model in MODELS if control else ():
        for seed in SEEDS:  # the control does about as well on both models here; its reduction may be anything
            metrics, records = attack_stage(rng, {"base": 0.5, "mono_ffn": 0.2}[model])
            add(f"attacks/random_hotflip/{model}/s{seed}", "attacks", "random_hotflip", "hotflip", model, seed,
                metrics, records, extra={"control": True})
    for model in MODELS:
        for seed in SEEDS:
            row = {src: {"success_rate": float(rng.uniform(0.1, 0.6)), "mean_relative_increase": 0.1}
                   for src in MODELS}
            add(f"attacks/uat_transfer/{model}/s{seed}", "attacks", "uat_transfer", "uat_transfer", model, seed,
                {"success_rate": 0.3, "transfer": row}, [], deps=[f"attacks/uat/{m}/s{seed}" for m in MODELS])
    report = {"baseline": "base", "compare": ["mono_ffn"], **PAPER_REPORT} if report is None else report
    suite = {"name": "fake", "models": {m: {"plugin": "pythia_tiny"} for m in MODELS}, "report": report,
             "attacks": {"random_hotflip": {"control_of": "hotflip"}} if control else {}}
    atomic_write_json(root / "config.resolved.json", {"mode": "quick", "suite": suite, "seeds": SEEDS,
                                                      "configs": {}, "stages": stages})
    return root, written


def group(results: dict, entry: str, model: str) -> dict:
    return next(g for g in results["results"] if g["entry"] == entry and g["model"] == model)


def cell(results: dict, model: str, label: str) -> dict:
    col = [c["label"] for c in results["tables"][0]["columns"]].index(label)
    return next(r for r in results["tables"][0]["rows"] if r["model"] == model)["cells"][col]


# -- statistics on known inputs ---------------------------------------------------------------------------------------

def test_mean_std_and_intervals_on_known_inputs():
    values = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]
    mean, std = mean_std(values)
    assert mean == 5.0 and std == pytest.approx(statistics.stdev(values))  # n - 1 in the denominator
    assert mean_std([3.0]) == (3.0, None) and mean_std([]) == (None, None)
    assert percentile_interval(np.arange(1001.0), 0.95) == pytest.approx((25.0, 975.0))

    # Over examples: the bootstrap interval of a mean agrees with the normal-theory one (mean ± 1.96 s / sqrt(n)).
    x = np.random.default_rng(0).normal(10.0, 2.0, size=400)
    found = example_columns(describe(ATTACK_METRICS, "mean_relative_increase"), [{"relative_increase": v} for v in x])
    reps = bootstrap_examples(*found, 4000, rng_for(0, "t"))
    lo, hi = percentile_interval(reps, 0.95)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    assert lo == pytest.approx(x.mean() - half, abs=0.1 * half) and hi == pytest.approx(x.mean() + half, abs=0.1 * half)
    assert np.array_equal(reps, bootstrap_examples(*found, 4000, rng_for(0, "t")))  # seeded: reproducible
    assert not np.array_equal(reps, bootstrap_examples(*found, 4000, rng_for(1, "t")))


def test_across_seed_intervals():
    rng = rng_for(0, "seeds")
    reps, method = across_seeds_bootstrap([1.0, 2.0, 3.0], [None, None, None], 20000, rng)
    lo, hi = percentile_interval(reps, 0.95)
    # the t-interval over three seeds: 2 +- t(0.975, 2) * 1 / sqrt(3) = 2 +- 2.484
    assert method == "t over seeds"
    assert lo == pytest.approx(2 - 2.484, abs=0.1) and hi == pytest.approx(2 + 2.484, abs=0.1)
    assert across_seeds_bootstrap([1.0], [None], 2000, rng) == (None, None)  # one seed, no records: no interval
    within = [np.random.default_rng(i).normal(v, 0.5, 2000) for i, v in enumerate([1.0, 2.0, 3.0])]
    single, method1 = across_seeds_bootstrap([1.0], within[:1], 2000, rng)
    assert method1 == "bootstrap over examples" and np.array_equal(single, within[0])


def test_example_statistics_follow_the_plugins_declarations():
    from harness_plugins.metrics.lmeval import LMEval, LMEvalConfig
    from harness_plugins.metrics.perplexity import Perplexity, PerplexityConfig

    ppl = Perplexity(PerplexityConfig.model_construct()).declared_metrics()
    lm_specs = LMEval(LMEvalConfig(tasks=["t1"])).declared_metrics()
    recs = [{"id": "a", "tokens": 10, "nll_sum": 20.0}, {"id": "b", "tokens": 30, "nll_sum": 30.0}]
    stat, cols = example_columns(describe(ppl, "perplexity"), recs)
    assert float(stat.compute({k: v[None] for k, v in cols.items()})[0]) == pytest.approx(math.exp(50 / 40))
    lm = [{"task": "t1", "acc": 1.0}, {"task": "t1", "acc": 0.0}, {"task": "t1", "acc": 1.0}, {"task": "t2", "acc": 0.0}]
    spec = describe(lm_specs, "t1/acc")
    assert spec.field == "acc" and spec.where == {"task": "t1"} and spec.error == "t1/acc_stderr"
    stat, cols = example_columns(spec, lm)
    assert float(stat.compute({k: v[None] for k, v in cols.items()})[0]) == pytest.approx(2 / 3)
    with_filter = describe(lm_specs, "t1/acc,strict")
    assert with_filter.where == {"task": "t1", "filter": "strict"} and with_filter.error == "t1/acc,strict_stderr"
    assert example_columns(describe(lm_specs, "t1/acc_stderr"), lm) is None
    assert example_columns(describe(ppl, "tokens"), recs) is None and describe(ppl, "no_such_key") is None
    assert example_columns(describe(ATTACK_METRICS, "success_rate"), recs) is None  # records of another kind


# -- the report of a complete run -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    run, written = make_run(tmp_path_factory.mktemp("full"))
    return build_report(run), written


def test_aggregates_match_the_stage_results(full_report):
    report, written = full_report
    res = report.results
    assert res["complete"] and res["missing"] == []
    ppl = [written[f"metrics/perplexity/mono_ffn/s{s}"]["perplexity"] for s in SEEDS]
    agg = group(res, "perplexity", "mono_ffn")["across_seeds"]["perplexity"]
    assert agg["mean"] == pytest.approx(np.mean(ppl)) and agg["std"] == pytest.approx(statistics.stdev(ppl))
    assert agg["n"] == 3 and agg["ci_method"] == "t over seeds"
    assert agg["ci95"][0] < agg["mean"] < agg["ci95"][1]
    base = group(res, "perplexity", "base")
    assert base["across_seeds"]["perplexity"]["n"] == 1 and base["across_seeds"]["perplexity"]["std"] is None
    assert list(base["per_seed"]) == ["unseeded"]
    assert base["per_seed"]["unseeded"]["ci95"]["perplexity"][0] < written["metrics/perplexity/base"]["perplexity"]

    # Table 7: HotFlip success in percent, mean ± std over the three seeds.
    sr = [written[f"attacks/hotflip/mono_ffn/s{s}"]["success_rate"] for s in SEEDS]
    c = cell(res, "mono_ffn", "HotFlip success (%)")
    assert c["mean"] == pytest.approx(100 * np.mean(sr)) and c["std"] == pytest.approx(100 * statistics.stdev(sr))
    assert c["n"] == 3 and not c["partial"]
    assert [r["model"] for r in res["tables"][0]["rows"]] == ["base", "mono_ffn"] and res["tables"][0]["rows"][0]["baseline"]

    # Every attack on every model side by side (transfer excluded, the control marked), from the stage results.
    rows = res["attacks"]["rows"]
    assert [(r["attack"], r["model"]) for r in rows] == [(a, m) for a in ("hotflip", "uat") for m in MODELS]
    assert not any(r["control"] for r in rows)
    labels = [c["label"] for c in res["attacks"]["columns"]]
    for r in rows:
        for metric, c in zip(("success_rate", "mean_relative_increase"), r["cells"]):
            values = [written[f"attacks/{r['attack']}/{r['model']}/s{s}"][metric] for s in SEEDS]
            assert c["mean"] == pytest.approx(100 * np.mean(values)) and c["n"] == 3
    assert "| uat | mono_ffn |" in report.details and labels[0] in report.details
    assert "Attacks side by side" in report.files["html"].read_text()

    # Success indicators: computed from the means, judged against the targets.
    ind = {(i["indicator"], i.get("entry")): i for i in res["indicators"]}
    gap = ind[("perplexity gap vs baseline", "perplexity")]
    assert gap["value"] == pytest.approx(np.mean(ppl) / written["metrics/perplexity/base"]["perplexity"] - 1)
    # Honest verdicts: met / not met only when the paired 95% interval lies on one side of the target.
    assert gap["status"] == verdict(gap["ci95"], 0.15, above=False) and gap["ci_method"].startswith("paired")
    for entry in ("hotflip", "uat"):
        red = ind[("attack-success reduction", entry)]
        base_sr = np.mean([written[f"attacks/{entry}/base/s{s}"]["success_rate"] for s in SEEDS])
        mono_sr = np.mean([written[f"attacks/{entry}/mono_ffn/s{s}"]["success_rate"] for s in SEEDS])
        assert red["value"] == pytest.approx(1 - mono_sr / base_sr)
        assert red["ci95"][0] < red["value"] < red["ci95"][1]
        # An interval on both sides of the target is said to leave the question open, met or not.
        assert ("not settled" in red.get("detail", "")) == (red["ci95"][0] < 0.40 < red["ci95"][1])
    assert ("not settled" in gap.get("detail", "")) == (gap["ci95"][0] < 0.15 < gap["ci95"][1])
    # uniform [0, .5) vs [0, .2): the interval clears the target, but there is no control to tell it from damage
    hot = ind[("attack-success reduction", "hotflip")]
    assert hot["ci95"][0] > 0.40 and hot["status"] == "no control" and not hot["met"]
    uat = ind[("attack-success reduction", "uat")]  # [0, .3) vs [0, .25)
    assert uat["status"] == verdict(uat["ci95"], 0.40, above=True) != "met"
    assert ("attack-success reduction", "uat_transfer") not in ind

    tm = res["transfer_matrix"]
    assert tm["sources"] == MODELS and tm["targets"] == MODELS
    expect = np.mean([written[f"attacks/uat_transfer/mono_ffn/s{s}"]["transfer"]["base"]["success_rate"] for s in SEEDS])
    assert tm["values"]["success_rate"][0][1] == pytest.approx(expect)
    assert set(tm["values"]) == {"success_rate", "mean_relative_increase"}


def test_every_output_file_and_plot_is_written(full_report):
    report, _ = full_report
    for name in ("final_results", "summary", "table7_tex", "table7_md", "html"):
        assert report.files[name].stat().st_size > 200
    made = {n for n, info in report.results["plots"].items() if info["path"]}
    assert made == {"perplexity.png", "attack_success_curve.png", "relative_nll_increase.png", "training_curves.png",
                    "transfer_matrix.png", "attack_budget.png", "histograms.png"}  # no stage reports a stderr
    for name in made:
        assert report.files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = report.details
    assert "attack-success reduction (mono_ffn vs base, hotflip.success_rate)" in summary and "-> NO CONTROL" in summary


def test_report_is_reproducible(full_report, tmp_path):
    report, _ = full_report
    again = build_report(report.run_dir)
    strip = lambda r: {k: v for k, v in r.items() if k != "generated"}  # noqa: E731
    assert strip(again.results) == strip(report.results)
    assert again.files["perplexity.png"].read_bytes() == report.files["perplexity.png"].read_bytes()


def test_html_is_self_contained(full_report):
    report, _ = full_report
    text = report.files["html"].read_text()
    assert "<script" not in text and "<link" not in text
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", text)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == sum(1 for i in report.results["plots"].values() if i["path"])
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert "Table 7" in text and "mono_ffn" in text and "Success indicators" in text


# -- Table 7 in LaTeX and Markdown -------------------------------------------------------------------------------------

def test_latex_escaping():
    assert latex_escape("pythia_1.4b & 50% #1") == r"pythia\_1.4b \& 50\% \#1"
    assert latex_escape(r"a\b{c}") == r"a\textbackslash{}b\{c\}"


def _check_latex_structure(tex: str, n_cols: int) -> None:
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    unescaped = re.sub(r"\\[{}]", "", body)
    assert unescaped.count("{") == unescaped.count("}")
    assert re.findall(r"\\begin\{(\w+)\}", body) == re.findall(r"\\end\{(\w+)\}", body)[::-1]
    assert re.search(r"\\begin\{tabular\}\{l" + "r" * n_cols + "}", body)
    rows = [line for line in body.splitlines() if line.endswith(r"\\")]
    assert len(rows) == 3  # header + 2 models
    assert all(len(re.findall(r"(?<!\\)&", row)) == n_cols for row in rows)
    assert not re.search(r"(?<!\\)[_%#]", re.sub(r"\\(label|begin|end)\{[^}]*\}", "", body))


def test_latex_table_compiles_inside_a_table_environment(full_report, tmp_path):
    report, _ = full_report
    tex = report.files["table7_tex"].read_text()
    _check_latex_structure(tex, len(report.results["tables"][0]["columns"]))
    assert r"mono\_ffn" in tex and r"$\pm$" in tex
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        pytest.skip("pdflatex not installed (scripts/setup.sh installs texlive-latex-base); structure checked only")
    shutil.copy(report.files["table7_tex"], tmp_path / "table7.tex")
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\n\\begin{document}\n"
                                      "\\begin{table}\n\\input{table7}\n\\end{table}\n\\end{document}\n")
    proc = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert "Overfull" not in log or "table" in log  # a warning at most, never an error
    assert "! " not in log


def test_markdown_table(full_report):
    report, written = full_report
    md = report.files["table7_md"].read_text().splitlines()
    assert md[0].startswith("| Model | Perplexity | HotFlip success (%)")
    base_ppl = written["metrics/perplexity/base"]["perplexity"]
    assert md[2].startswith(f"| base (baseline) | {base_ppl:.2f} |")  # one unseeded stage: no ± std
    assert " ± " in md[3]


# -- partial runs, and suites without a baseline ----------------------------------------------------------------------

def test_partial_run_shows_missing_never_zero(tmp_path):
    not_started = {"attacks/uat/mono_ffn/s3"}
    incomplete = {"attacks/hotflip/mono_ffn/s2"}
    stale = {"metrics/perplexity/base"}  # done.json of an older config: not this stage's result
    run, written = make_run(tmp_path / "run", not_started=not_started, incomplete=incomplete, stale=stale)
    report = build_report(run)
    res = report.results
    missing = not_started | incomplete | stale
    assert {m["id"] for m in res["missing"]} == missing and not res["complete"]
    rows = {r["id"]: r for r in res["stages"]}
    assert all(rows[i]["status"] == "missing" and rows[i]["metrics"] is None for i in missing)
    assert rows["attacks/hotflip/mono_ffn/s2"]["detail"] == "incomplete"
    assert rows["attacks/uat/mono_ffn/s3"]["detail"] == "not started"

    assert cell(res, "base", "Perplexity")["status"] == "missing"
    hot = cell(res, "mono_ffn", "HotFlip success (%)")
    sr = [written[f"attacks/hotflip/mono_ffn/s{s}"]["success_rate"] for s in (1, 3)]
    assert hot["n"] == 2 and hot["partial"] and hot["mean"] == pytest.approx(100 * np.mean(sr))
    assert "2" not in group(res, "hotflip", "mono_ffn")["across_seeds"]["success_rate"]["values"]
    gap = next(i for i in res["indicators"] if i["indicator"] == "perplexity gap vs baseline")
    assert gap["status"] == "missing" and "value" not in gap

    md = report.files["table7_md"].read_text()
    base_row = next(line for line in md.splitlines() if line.startswith("| base"))
    assert base_row.split("|")[2].strip() == "--" and "0.00" not in base_row
    assert "†" in md and "did not finish" in md
    html = report.files["html"].read_text()
    assert all(i in html for i in missing)
    assert "attacks/uat/mono_ffn/s3: not started" in report.details


def test_no_baseline_says_so(tmp_path):
    run, _ = make_run(tmp_path / "run", report={})
    res = build_report(run).results
    assert [i["status"] for i in res["indicators"]] == ["not applicable", "not applicable"]
    assert all("no baseline" in i["detail"] for i in res["indicators"])


def test_a_control_gets_its_reduction_shown_but_not_judged(tmp_path):
    run_dir, written = make_run(tmp_path / "run", control=True)
    res = build_report(run_dir).results
    ind = {(i["indicator"], i.get("entry")): i for i in res["indicators"]}
    ctrl, attack = ind[("attack-success reduction", "random_hotflip")], ind[("attack-success reduction", "hotflip")]
    base_sr = np.mean([written[f"attacks/random_hotflip/base/s{s}"]["success_rate"] for s in SEEDS])
    mono_sr = np.mean([written[f"attacks/random_hotflip/mono_ffn/s{s}"]["success_rate"] for s in SEEDS])
    assert ctrl["value"] == pytest.approx(1 - mono_sr / base_sr) and ctrl["value"] > 0.40  # would be "met"
    assert ctrl["control"] and ctrl["status"] == "control" and "met" not in ctrl
    # The attack's reduction clears the target, but the control's is as large: the verdict says so.
    assert not attack["control"] and attack["ci95"][0] > 0.40 and attack["status"] == "same as control"
    assert attack["control_entry"] == "random_hotflip" and attack["minus_control_ci95"][0] <= 0
    # No control is ever shown against a target: not as an indicator line, not as a headline column; its reduction
    # stands beside its attack's in the headline.
    summary = (run_dir / "summary_details.txt").read_text()
    assert "random_hotflip.success_rate):" not in summary and "-> CONTROL" not in summary
    head = res["headline"]
    assert [c["key"] for c in head["columns"]] == ["perplexity gap", "hotflip"] + (
        ["uat"] if any(c["key"] == "uat" for c in head["columns"]) else [])
    assert head["columns"][1]["control"] == "random_hotflip"
    cell = next(r for r in head["rows"] if r["model"] == "mono_ffn")["cells"]["hotflip"]
    assert cell["status"] == "same as control" and cell["control_value"] == pytest.approx(ctrl["value"])
    short = (run_dir / "experiment_summary.txt").read_text()
    assert "its control random_hotflip: " in short and "-> SAME AS CONTROL" in short
    assert "random_hotflip" not in (run_dir / "report.html").read_text().split('id="headline-table"')[1].split(
        "</table>")[0].split("</tr>")[0]  # no column of the headline is a control
    # In the attack table the control sits beside its attack, marked.
    marked = {(r["attack"], r["model"]): r["control"] for r in res["attacks"]["rows"]}
    assert marked[("random_hotflip", "mono_ffn")] and not marked[("hotflip", "mono_ffn")]
    assert "| random_hotflip (control) | mono_ffn |" in summary


def test_report_config_names_known_models(tmp_path):
    path = write_suite(tmp_path, """
        models: {base: {plugin: pythia_tiny}, mono: {plugin: pythia_tiny}}
        report: {baseline: bse, compare: [mono]}
        """)
    with pytest.raises(HarnessError, match=r"report\.baseline: unknown model 'bse' \(did you mean 'base'\?\)"):
        load_suite(path)


# -- the command line and a real run ----------------------------------------------------------------------------------

def test_cli_report_regenerates_a_partial_run(tmp_path, capsys):
    run, _ = make_run(tmp_path / "run", not_started={"attacks/uat/base/s1"})
    assert cli_main(["report", str(run)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("Experiment summary: suite 'fake'") and "The answer" in out.out
    assert "1 MISSING" in out.out and "attacks/uat/base/s1: not started" in (run / "summary_details.txt").read_text()
    # The last lines name the files to open.
    assert out.out.strip().splitlines()[-2:] == [f"report: {run / 'report.html'}",
                                                  f"summary: {run / 'experiment_summary.txt'}"]
    assert (run / "report.html").exists() and (run / "plots" / "perplexity.png").exists()
    assert cli_main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a harness run directory" in err and len(err.splitlines()) == 1


REAL_SUITE = """
name: real_report
seeds: [3]
models:
  base: {plugin: pythia_tiny}
  half: {plugin: pythia_tiny, dtype: bfloat16}
metrics:
  perplexity:
    data: {dataset: json, data_files: @DATA@/test.jsonl, split: test, limit: 4}
    max_length: 64
report:
  baseline: base
  compare: [half]
  tables: [{name: table7, columns: [{label: Perplexity, entry: perplexity, metric: perplexity}]}]
  gap: {entry: perplexity, metric: perplexity}
  gap_target: 0.15
"""


def test_real_run_ends_with_the_report(tmp_path):
    suite = load_suite(write_suite(tmp_path, REAL_SUITE), output_dir=tmp_path / "run")
    Runner(suite, show_progress=False).run()
    run = tmp_path / "run"
    res = read_json(run / "final_results.json")
    measured = {m: read_json(run / "stages" / "metrics" / "perplexity" / m / "result.json")["metrics"]["perplexity"]
                for m in ("base", "half")}
    assert cell(res, "base", "Perplexity")["mean"] == pytest.approx(measured["base"])
    assert cell(res, "half", "Perplexity")["mean"] == pytest.approx(measured["half"])
    gap = next(i for i in res["indicators"] if i["indicator"] == "perplexity gap vs baseline")
    assert gap["value"] == pytest.approx(measured["half"] / measured["base"] - 1)
    assert gap["status"] == "met"  # bfloat16 weights cost far less than 15% perplexity
    per_doc = group(res, "perplexity", "base")["per_seed"]["unseeded"]["ci95"]["perplexity"]
    assert per_doc[0] < measured["base"] < per_doc[1]  # the records reproduce the metric: interval over documents
    for name in ("experiment_summary.txt", "table7.tex", "table7.md", "report.html", "plots/perplexity.png"):
        assert (run / name).stat().st_size > 100
    assert [r["status"] for r in res["stages"]] == ["done", "done"]


def test_a_metric_an_attack_does_not_report_is_not_shown_as_missing(tmp_path):
    """The attack table has the same columns for every attack; one whose plugin reports no median (a third-party
    attack, say) gets "n/a" with its own note, not the "did not finish" mark."""
    run_dir, _ = make_run(tmp_path / "run")
    for seed in SEEDS:
        path = run_dir / "stages" / f"attacks/uat/base/s{seed}" / "result.json"
        result = json.loads(path.read_text())
        del result["metrics"]["median_relative_increase"]
        atomic_write_json(path, result)
    report = build_report(run_dir)
    row = next(r for r in report.results["attacks"]["rows"] if (r["attack"], r["model"]) == ("uat", "base"))
    cols = [c["metric"] for c in report.results["attacks"]["columns"]]
    assert row["cells"][cols.index("median_relative_increase")]["status"] == "no value"
    assert row["cells"][cols.index("success_rate")]["status"] == "done"
    line = next(x for x in report.details.splitlines() if x.startswith("| uat | base"))
    assert "n/a" in line and "--" not in line
    assert "n/a: the stage finished but reported no value for this metric." in report.details
    assert "--: the stage did not finish" not in report.details


def test_results_without_recorded_declarations_get_them_from_the_plugin_classes(tmp_path):
    """A run written before results recorded their declared metrics: with the installed plugin classes the report
    is the same as if they had been recorded; without them, the numbers are shown undeclared, with a note."""
    new, _ = make_run(tmp_path / "new")
    old, _ = make_run(tmp_path / "old", record_declarations=False)
    recorded = build_report(new).results
    resolved = build_report(old, plugins=load_registry().plugin_class).results
    for key in ("results", "tables", "attacks", "indicators", "warnings"):
        assert json.dumps(resolved[key]).replace(str(old), "") == json.dumps(recorded[key]).replace(str(new), "")
    bare = build_report(old).results
    assert bare["attacks"]["columns"] == [] and any("record no declarations" in n for n in bare["notes"])
    ppl = group(bare, "perplexity", "base")["per_seed"]["unseeded"]
    assert ppl["metrics"]["perplexity"] and not ppl["ci95"]  # no declaration, no example-level interval claimed


@pytest.mark.parametrize("metrics, missing", [
    ({"weight_change": {"ffn": 0.1, "other": 0.2}}, False),  # nested: read as weight_change/ffn (no false warning)
    ({"weight_change/ffn": 0.1}, False),  # flat
    ({"weight_change": "n/a"}, True),  # no key of the family
    ({}, True),
])
def test_a_declared_family_matches_nested_and_flat_results(tmp_path, metrics, missing):
    from harness.api import MetricSpec
    from harness._engine.report.collect import StageData
    from harness._engine.report.declared import missing_declared

    stage = StageData("train/t/s0", "train", "t", "p", "m", 0, "k", [], tmp_path, "done", {"metrics": metrics})
    specs = [MetricSpec("weight_change/{group}", "Change ({group})", aggregation="none"),
             MetricSpec("weight_change_norm/{group}", "Norm ({group})", aggregation="none")]
    found = missing_declared(specs, stage)
    assert found == (["weight_change/{group} or weight_change_norm/{group}"] if missing else [])

"""The report's exports and views: results.csv, TensorBoard event files, the offline W&B run, `harness compare`,
the default table and plots of a suite without `report:`, and the readable figures (wrapped panels, the budget
plot's one-off optimisation cost)."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main as cli_main
from harness._engine.report import build_report
from harness._engine.report.compare import compare_runs
from harness.store import atomic_write_json, read_json

from .test_report import MODELS, SEEDS, make_run


def test_results_csv_is_tidy_and_holds_every_stage_metric(tmp_path):
    run, written = make_run(tmp_path / "run", not_started={"attacks/uat/base/s2"})
    report = build_report(run)
    with open(report.files["results_csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["suite", "section", "model", "seed", "entry", "metric", "value"]
    got = {}
    for r in rows:
        seed = f"/s{r['seed']}" if r["seed"] else ""
        got[(f"{r['section']}/{r['entry']}/{r['model']}{seed}".replace("train/monotonic/base", "train/monotonic"),
             r["metric"])] = float(r["value"])
        assert r["suite"] == "fake"
    expected = {(sid, m): float(v) for sid, metrics in written.items() for m, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}
    # Every number each stage wrote is a row, with its value; the stage that never ran has none.
    assert {k: got[k] for k in expected} == expected
    assert not any(k[0] == "attacks/uat/base/s2" for k in got)
    # A mapping of numbers is one row per key (the transfer rows of the fake run hold nested mappings: none).
    assert ("attacks/uat_transfer/base/s1", "success_rate") in got


def test_tensorboard_event_files_read_back(tmp_path):
    pytest.importorskip("tensorboard", reason="the tracking extra (pip install 'harness[tracking]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, written = make_run(tmp_path / "run")
    report = build_report(run)
    logdir = report.files["tensorboard"]
    acc = EventAccumulator(str(logdir / "train" / "monotonic" / "s2"))
    acc.Reload()
    loss = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    records = [json.loads(line) for line in (run / "stages/train/monotonic/s2/records.jsonl").read_text().splitlines()]
    assert loss == [(r["step"], pytest.approx(r["loss"])) for r in records if "loss" in r]
    assert acc.Scalars("final/final_loss")[0].value == pytest.approx(written["train/monotonic/s2"]["final_loss"])
    acc = EventAccumulator(str(logdir / "attacks" / "hotflip" / "mono_ffn" / "s1"))
    acc.Reload()
    assert acc.Scalars("final/success_rate")[0].value == pytest.approx(
        written["attacks/hotflip/mono_ffn/s1"]["success_rate"])
    # Off in the suite: nothing written, and a report rebuilt later removes nothing it did not write.
    report = build_report(run, config=type(report_config(run))(**{**report_config(run).model_dump(),
                                                                   "tensorboard": False}))
    assert "tensorboard" not in report.files


def report_config(run: Path):
    from harness._engine.report.collect import load_run

    return load_run(run).config


def test_wandb_runs_offline_and_logs_the_same_numbers(tmp_path, monkeypatch):
    calls: list[dict] = []

    class FakeRun:
        def __init__(self, **kwargs):
            self.init, self.logged, self.summary = kwargs, [], {}
            calls.append(self.__dict__)

        def log(self, data):
            self.logged.append(dict(data))

        def finish(self):
            self.finished = True

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: FakeRun(**kw)))
    run, written = make_run(tmp_path / "run", report={"baseline": "base", "wandb": True, "wandb_project": "p"})
    build_report(run)
    assert calls and all(c["init"]["mode"] == "offline" and c["init"]["project"] == "p" and c["finished"]
                         for c in calls)
    by_name = {c["init"]["name"]: c for c in calls}
    assert set(by_name) == set(written)
    assert by_name["attacks/uat/base/s3"]["summary"]["final/success_rate"] == written["attacks/uat/base/s3"][
        "success_rate"]
    steps = [d["step"] for d in by_name["train/monotonic/s1"]["logged"] if "train/loss" in d]
    assert steps == list(range(0, 50, 5))
    assert Path(by_name["train/monotonic/s1"]["init"]["dir"]) == run / "wandb"


def test_wandb_missing_is_a_note_not_a_failure(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    run, _ = make_run(tmp_path / "run", report={"wandb": True})
    report = build_report(run)
    assert any("harness[wandb]" in n for n in report.results["notes"]) and (run / "report.html").exists()


def _perturb(run: Path, stage: str, delta: float) -> None:
    """Add ``delta`` to every example's relative increase of ``stage`` (and its summary), like a changed method."""
    sdir = run / "stages" / stage
    records = [json.loads(line) for line in (sdir / "records.jsonl").read_text().splitlines()]
    for r in records:
        r["relative_increase"] += delta
    (sdir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = read_json(sdir / "result.json")
    result["metrics"]["mean_relative_increase"] = float(np.mean([r["relative_increase"] for r in records]))
    atomic_write_json(sdir / "result.json", result)


def test_compare_two_runs_pairs_the_shared_examples(tmp_path, capsys):
    a, written = make_run(tmp_path / "a")
    b, _ = make_run(tmp_path / "b", not_started={"attacks/uat/mono_ffn/s3"})
    _perturb(b, "attacks/hotflip/base/s2", 0.05)
    result = compare_runs(a, b)
    rows = {(r["entry"], r["model"], r["seed"], r["metric"]): r for r in result["rows"]}
    changed = rows[("hotflip", "base", "2", "mean_relative_increase")]
    assert changed["difference"] == pytest.approx(0.05)
    # Every example moved by exactly 0.05: the paired interval is that point, over all 40 shared examples.
    assert changed["paired_examples"] == 40 and changed["ci95"] == pytest.approx([0.05, 0.05])
    same = rows[("hotflip", "base", "1", "mean_relative_increase")]
    assert same["difference"] == 0 and same["ci95"] == pytest.approx([0.0, 0.0])
    assert rows[("perplexity", "mono_ffn", "3", "perplexity")]["a"] == written["metrics/perplexity/mono_ffn/s3"][
        "perplexity"]
    assert result["only"] == {"a": ["attacks/uat/mono_ffn/s3"], "b": []}
    # Unpaired when the examples differ: B's records renamed, so no example is shared.
    sdir = b / "stages" / "attacks/hotflip/base/s3"
    lines = [json.loads(x) for x in (sdir / "records.jsonl").read_text().splitlines()]
    (sdir / "records.jsonl").write_text("".join(json.dumps({**r, "id": "other-" + r["id"]}) + "\n" for r in lines))
    row = next(r for r in compare_runs(a, b)["rows"] if (r["entry"], r["model"], r["seed"], r["metric"])
               == ("hotflip", "base", "3", "success_rate"))
    assert row["ci95"] is None and row["paired_examples"] == 0

    assert cli_main(["compare", str(a), str(b), "--changed", "--csv", str(tmp_path / "cmp.csv")]) == 0
    out = capsys.readouterr().out
    assert "attacks/hotflip/base/s2" in out and "over 40 shared examples" in out
    assert "attacks/hotflip/base/s1 " not in out  # --changed: identical stages are not shown
    assert "finished only in A: attacks/uat/mono_ffn/s3" in out
    with open(tmp_path / "cmp.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(result["rows"])
    assert cli_main(["compare", str(a), str(tmp_path)]) == 2


def test_a_suite_without_report_gets_every_displayed_metric_and_its_plots(tmp_path):
    run, written = make_run(tmp_path / "run", report={})
    report = build_report(run)
    [table] = report.results["tables"]
    assert table["name"] == "metrics" and table["default"]
    labels = [c["label"] for c in table["columns"]]
    # Every shown scalar metric of every metrics/attacks entry (the attacks' success rate, increases, budget ...),
    # none hidden by its declaration (show=False: the threshold, the NLL before/after) and no matrix entry.
    assert "perplexity: Perplexity" in labels and "hotflip: Success (%)" in labels and "uat: NLL incr. (%)" in labels
    assert not any("NLL before" in x or "threshold" in x.lower() or "uat_transfer" in x for x in labels)
    col = labels.index("hotflip: Success (%)")
    row = next(r for r in table["rows"] if r["model"] == "mono_ffn")
    expected = 100 * np.mean([written[f"attacks/hotflip/mono_ffn/s{s}"]["success_rate"] for s in SEEDS])
    assert row["cells"][col]["mean"] == pytest.approx(expected)
    md = (run / "metrics.md").read_text()
    assert md.count("\n| ") >= len(MODELS) and "| perplexity: Perplexity |" in md.splitlines()[0] + " |"
    assert report.results["plots"]["metrics.png"]["path"] is not None
    assert 'id="table-metrics"' in (run / "report.html").read_text()


def test_multi_panel_figures_wrap_into_rows(tmp_path):
    from matplotlib.image import imread

    run, _ = make_run(tmp_path / "run", control=True)
    report = build_report(run)
    # Three attacks with curves: one row of three panels, never a strip wider than three panels.
    curve = imread(report.files["attack_success_curve.png"])
    assert curve.shape[1] / curve.shape[0] < 4.5
    from harness._engine.report import plots

    monkey = plots.GRID_COLUMNS
    try:
        plots.GRID_COLUMNS = 2  # four panels with two per row: two rows
        fig, axes = plots._panel_grid(4, 4.0, 3.0)
        assert len(axes) == 4 and fig.get_size_inches().tolist() == [8.0, 6.0]
        fig, axes = plots._panel_grid(3, 4.0, 3.0)
        assert len(axes) == 3 and len(fig.axes) == 3  # the empty fourth cell is removed
    finally:
        plots.GRID_COLUMNS = monkey


def test_log_budget_axis_labels_are_short():
    from harness._engine.report.plots import _compact

    assert [_compact(v) for v in (2, 50, 1000, 6120, 2.5e6, 3e9)] == ["2", "50", "1k", "6.12k", "2.5M", "3G"]


def test_budget_plot_draws_a_universal_attacks_one_off_cost(tmp_path):
    from harness.api import MetricSpec
    from harness._engine.report.aggregate import aggregate
    from harness._engine.report.collect import load_run
    from harness._engine.report.plots import budget_plot

    run, _ = make_run(tmp_path / "run")
    # UAT's results state its optimisation's queries, declared as a one-off budget on top of the per-example one.
    for model in MODELS:
        for seed in SEEDS:
            path = run / "stages" / f"attacks/uat/{model}/s{seed}" / "result.json"
            result = read_json(path)
            result["metrics"]["optimisation_queries"] = 6000.0
            result["declared_metrics"].append(
                MetricSpec("optimisation_queries", "Optimisation queries", upfront_for="mean_queries").as_dict())
            atomic_write_json(path, result)
    agg = aggregate(load_run(run))
    # The per-example budget is 1 query; with the one-off 6000, the x-axis reaches 1 + 6000 (log scale) and the
    # legend names the point that includes it.
    from matplotlib.figure import Figure

    captured: list[Figure] = []
    import harness._engine.report.plots as plots

    original = plots._save
    plots._save = lambda fig, path: (captured.append(fig), original(fig, path))[1]
    try:
        assert budget_plot(agg, tmp_path / "budget.png") is not None
    finally:
        plots._save = original
    ax = captured[0].axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlim()[1] > 6001
    texts = [t.get_text() for t in captured[0].legends[0].get_texts()]
    assert "uat, incl. its one-off optimisation" in texts


def test_harness_run_ends_with_the_paths_of_the_report_and_summary(tmp_path, capsys):
    from .conftest import write_suite
    from .test_report import REAL_SUITE

    suite = write_suite(tmp_path, REAL_SUITE)
    run = tmp_path / "run"
    assert cli_main(["run", str(suite), "--out", str(run), "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-2:]
    assert last == [f"report: {run / 'report.html'}", f"summary: {run / 'experiment_summary.txt'}"]
    summary = (run / "experiment_summary.txt").read_text()
    # Short, headline first: the gap of the compared model with its verdict, then where the details are.
    assert summary.splitlines()[3].startswith("The answer") and "perplexity vs base:" in summary
    assert len(summary.splitlines()) < 25 and (run / "summary_details.txt").read_text().count("\n") > 20


def test_primary_endpoints_are_the_headline_rows_when_present(tmp_path):
    from harness._engine.report.aggregate import aggregate
    from harness._engine.report.collect import load_run
    from harness._engine.report.answer import answer_table as headline, answer_text as headline_text

    run, _ = make_run(tmp_path / "run", control=True)
    agg = aggregate(load_run(run))
    family = {"endpoints": [
        {"model": "mono_ffn", "reference": "base", "entry": "hotflip", "metric": "success_rate",
         "effect": -0.5, "ci": [-0.7, -0.3], "status": "met"},
        {"model": "mono_ffn", "reference": "base", "entry": "uat", "metric": "success_rate",
         "effect": -0.1, "ci": [-0.4, 0.2], "status": "not settled"}]}
    table = headline(agg, [], family)
    assert table["source"] == "primary" and [r["model"] for r in table["rows"]] == ["mono_ffn"]
    assert [c["key"] for c in table["columns"]] == ["hotflip.success_rate vs base", "uat.success_rate vs base"]
    cells = table["rows"][0]["cells"]
    assert cells["hotflip.success_rate vs base"]["text"] == "-50.0% [-70.0%, -30.0%]"
    assert "-> MET" in "\n".join(headline_text(table)) and "-> NOT SETTLED" in "\n".join(headline_text(table))
    # Without endpoints: the indicators (gap, then each attack, never its control).
    fallback = headline(agg, build_report(run).results["indicators"], {"endpoints": []})
    assert fallback["source"] == "indicators" and "random_hotflip" not in [c["key"] for c in fallback["columns"]]

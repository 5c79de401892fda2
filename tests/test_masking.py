"""Gradient-masking checks: a model whose gradients are zero (a stop-gradient wrapper around the tiny model, same
function) triggers the named warnings; the shipped tiny model does not. Also the two attacks the checks need: the
replay of the baseline's edits (``edit_transfer``) and the continuous relaxation (soft prompt, ``edit: context``
unbounded, with restarts and its loss curve)."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from harness import LoadedModel, StageContext, hookimpl
from harness._engine.plugins import Registry, make_plugin_manager
from harness._engine.report import build_report
from harness._engine.runner import Runner
from harness._engine.suite import load_suite
from harness_plugins.models.pythia_tiny import PythiaTiny
from tests.conftest import write_suite


class MaskedTiny(PythiaTiny):
    """The tiny model with its input gradients zeroed: the same outputs, a stop-gradient after the embeddings."""

    name = "masked_tiny"

    def load(self, ctx: StageContext) -> LoadedModel:
        loaded = super().load(ctx)

        def stop_gradient(module: Any, inputs: Any, output: Any) -> Any:
            return output.detach() + 0 * output  # the value unchanged, the gradient through it exactly zero

        loaded.model.gpt_neox.emb_dropout.register_forward_hook(stop_gradient)
        return loaded


class MaskedPlugins:
    @hookimpl
    def harness_models(self) -> list[type]:
        return [MaskedTiny]


SUITE = """
name: masking
seeds: [42]
models:
  tiny: {plugin: pythia_tiny}
  masked: {plugin: masked_tiny}
attacks:
  hotflip:
    data: {dataset: json, data_files: @DATA@/test.jsonl, split: test}
    n_examples: 12
    context_tokens: 16
    continuation_tokens: 8
    flips: 3
    beam_width: 8
  random_hotflip: {control_of: hotflip}
  hotflip_transfer: {plugin: edit_transfer, needs: [hotflip], from_model: tiny}
  relaxation:
    plugin: soft_prompt
    data: {dataset: json, data_files: @DATA@/test.jsonl, split: test}
    n_examples: 12
    context_tokens: 16
    continuation_tokens: 8
    edit: context
    epsilon: null
    steps: 10
    restarts: 2
    batch_size: 12
report:
  baseline: tiny
  compare: [masked]
  attack_metric: success_rate
  control_metrics: [success_rate, mean_relative_increase]
  masking: {relaxation: relaxation}
  primary:
    - {model: masked, reference: tiny, entry: hotflip, metric: mean_nll_increase, direction: decrease, min_effect: 0.1}
"""


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("masking")
    registry = Registry(make_plugin_manager([MaskedPlugins()]))
    suite = load_suite(write_suite(tmp, SUITE), registry=registry, output_dir=tmp / "run")
    outcomes = Runner(suite, registry=registry, show_progress=False).run()
    assert all(o.status == "done" for o in outcomes)
    return tmp / "run", build_report(tmp / "run", plugins=registry.plugin_class)


def _records(run, stage: str) -> list[dict]:
    path = run / "stages" / stage / "records.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_zeroed_gradients_trigger_the_warnings_and_the_shipped_model_does_not(masked_run):
    run, report = masked_run
    rows = report.results["masking_checks"]
    assert {(r["model"], r["attack"]) for r in rows} == {("tiny", "hotflip"), ("masked", "hotflip")}
    failed = {(r["model"], r["check"]) for r in rows if r.get("warning")}
    assert not {check for model, check in failed if model == "tiny"}  # the shipped model passes every check
    assert {("masked", "relaxation"), ("masked", "control"), ("masked", "transfer"), ("masked", "budget")} <= failed
    warnings = report.results["warnings"]
    assert any(w.startswith("possible gradient masking: transfer from baseline beats white-box (masked, hotflip)")
               for w in warnings)
    assert any(w.startswith("possible gradient masking: continuous relaxation") for w in warnings)
    assert "possible gradient masking: transfer from baseline beats white-box" in report.summary
    assert "Gradient-masking checks" in (run / "report.html").read_text()
    # Beside the verdict it weakens: masked's hotflip reduction against the baseline.
    [item] = [i for i in report.results["indicators"] if i.get("entry") == "hotflip" and i.get("model") == "masked"]
    assert any("transfer from baseline beats white-box" in w for w in item["masking_warnings"])
    assert "possible gradient masking" in item["detail"]
    # And beside the primary endpoint's verdict in the headline.
    [endpoint] = report.results["primary"]["endpoints"]
    assert any("transfer from baseline beats white-box" in w for w in endpoint["masking_warnings"])
    headline = report.summary.split("Everything below is")[0]
    assert "WARNING possible gradient masking: transfer from baseline beats white-box (masked)" in headline


def test_the_replay_scores_the_baselines_edits_on_the_same_examples(masked_run):
    run, _ = masked_run
    source = {r["id"]: r for r in _records(run, "attacks/hotflip/tiny/s42")}
    # On the baseline itself the replay reproduces the white-box numbers; on the masked model (the same function)
    # too: the same edits give the same NLL.
    for model in ("tiny", "masked"):
        replayed = _records(run, f"attacks/hotflip_transfer/{model}/s42")
        assert [r["id"] for r in replayed] == list(source)
        for r in replayed:
            assert r["source"] == "tiny" and r["positions"] == sorted(source[r["id"]]["positions"])
            assert r["nll_before"] == pytest.approx(source[r["id"]]["nll_before"], rel=1e-5)
            assert r["nll_after"] == pytest.approx(source[r["id"]]["nll_after"], rel=1e-4)


def test_the_relaxation_keeps_its_curve_and_its_restarts(masked_run):
    run, report = masked_run
    records = _records(run, "attacks/relaxation/tiny/s42")
    for r in records:
        assert len(r["loss_curve"]) == 2 and all(len(c) == 11 for c in r["loss_curve"])
        assert r["nll_after"] == pytest.approx(max(max(c) for c in r["loss_curve"]))
        assert r["nll_by_step"][0] == r["nll_before"] and r["nll_by_step"][-1] == pytest.approx(r["nll_after"])
    tiny = [r for r in report.results["masking_checks"] if r["model"] == "tiny" and r["check"] == "relaxation"]
    assert tiny[0]["value"] >= 0.9 and tiny[0]["success_by_step"][-1] == tiny[0]["value"]
    assert tiny[0]["flat_from_step"] < len(tiny[0]["success_by_step"]) - 1  # its success curve flattened
    masked = _records(run, "attacks/relaxation/masked/s42")
    # Zero gradients: restart 0 never moves from the document (restart 1 starts from a random perturbation).
    assert all(max(r["loss_curve"][0]) == pytest.approx(r["nll_before"], rel=1e-5) for r in masked)


def test_a_transfer_advantage_within_the_margin_is_not_flagged(masked_run, tmp_path):
    run, report = masked_run
    [row] = [r for r in report.results["masking_checks"] if (r["model"], r["check"]) == ("masked", "transfer")]
    assert "relative increase" in row["criteria"]  # margin 0: the settled advantage fails the check
    lower = row["ci95"][1][0]
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    resolved = json.loads((copy / "config.resolved.json").read_text())
    resolved["suite"]["report"]["masking"]["transfer_margin"] = lower + 0.01  # just above the interval's lower end
    (copy / "config.resolved.json").write_text(json.dumps(resolved))
    again = build_report(copy, plugins=Registry(make_plugin_manager([MaskedPlugins()])).plugin_class)
    [row2] = [r for r in again.results["masking_checks"] if (r["model"], r["check"]) == ("masked", "transfer")]
    assert row2["ci95"] == row["ci95"] and "relative increase" not in row2["criteria"]
    assert f"(fails above {lower + 0.01:+.3f})" in row2["detail"]
    assert row2["status"] == ("failed" if row2["criteria"] else "ok")


def test_exact_mcnemar_matches_hand_computation():
    from harness._engine.report.masking import mcnemar_exact

    # 4 discordant pairs all one way: two-sided p = 2 * (1/2)^4; none at all: no evidence either way
    assert mcnemar_exact(4, 0) == pytest.approx(0.125)
    assert mcnemar_exact(0, 4) == pytest.approx(0.125)
    assert mcnemar_exact(0, 0) == 1.0
    # 8 vs 1: 2 * (C(9,0) + C(9,1)) / 2^9 = 20/512
    assert mcnemar_exact(8, 1) == pytest.approx(20 / 512)
    assert mcnemar_exact(3, 3) == 1.0

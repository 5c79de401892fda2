"""Attacks: batched scoring, first-order scores, HotFlip/UAT vs the random control, held-out hygiene, resume."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
import torch.nn.functional as F

from harness import DocumentSource, HarnessError
from harness.api import LoadedModel
from harness.context import StageContext
from harness._engine.graph import Stage
from harness._engine.runner import Runner
from harness.scoring import continuation_nll
from harness.store import RecordLog, read_json
from harness._engine.suite import load_suite
from harness import attacks as common
from harness_plugins.attacks import uat
from harness.attacks import ATTACK_METRICS, Scorer, VocabFilter, allowed_tokens, attack_summary
from harness.summary import complete_summary
from harness_plugins.attacks.uat_transfer import UATTransfer, UATTransferConfig
from tests.conftest import DATA, write_suite

TASK = "context_tokens: 24\n    continuation_tokens: 16"
SUITE = f"""
name: attacks_test
seeds: [42]
device: cpu
models:
  tiny: {{plugin: pythia_tiny}}
attacks:
  hotflip: &hotflip
    data: {{dataset: json, data_files: @DATA@/test.jsonl, split: test}}
    n_examples: 8
    {TASK}
    flips: 4
    beam_width: 16
  random_hotflip: {{control_of: hotflip}}
  uat: &uat
    opt_data: {{dataset: json, data_files: @DATA@/valid.jsonl, split: valid}}
    eval_data: {{dataset: json, data_files: @DATA@/test.jsonl, split: test}}
    n_opt: 16
    n_eval: 16
    {TASK}
    trigger_length: 8
    restarts: 2
    iterations: 3
    batch_size: 8
    top_k: 4
    beam_size: 1
  random_uat: {{control_of: uat}}
  uat_transfer: {{needs: [uat]}}
"""
STAGES = {name: f"attacks/{name}/tiny/s42" for name in ("hotflip", "random_hotflip", "uat", "random_uat",
                                                         "uat_transfer")}


def run_suite(tmp_path, text=SUITE, out="run", only=None):
    suite = load_suite(write_suite(tmp_path, text), output_dir=tmp_path / out)
    runner = Runner(suite, show_progress=False, only=only)
    return runner, runner.run()


def result(run_dir, name):
    return read_json(run_dir / "stages" / STAGES[name] / "result.json")


def records(run_dir, name):
    return RecordLog(run_dir / "stages" / STAGES[name] / "records.jsonl").records


@pytest.fixture(scope="module")
def attack_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attacks")
    _, outcomes = run_suite(tmp)
    assert [o.status for o in outcomes] == ["done"] * 5
    return tmp / "run"


# -- scoring ------------------------------------------------------------------------------------------------------

def test_batched_scores_equal_per_candidate_scores_and_a_naive_reference(tiny):
    gen = torch.Generator().manual_seed(0)
    same = torch.randint(2, 4096, (40, 30), generator=gen)
    batched = continuation_nll(tiny.model, same, 12, batch_tokens=300)  # 10 rows per forward pass
    single = torch.cat([continuation_nll(tiny.model, same[i:i + 1], 12) for i in range(len(same))])
    with torch.no_grad():
        logits = tiny.model(input_ids=same).logits[:, -13:-1]
    naive = F.cross_entropy(logits.transpose(1, 2), same[:, -12:], reduction="none").mean(1).double()
    assert torch.allclose(batched, single, rtol=0, atol=1e-5)
    assert torch.allclose(batched, naive, rtol=0, atol=1e-4)

    ragged = [same[i, :10 + i % 17].tolist() for i in range(len(same))]  # right-padded inside each chunk
    counts = [1 + i % 7 for i in range(len(same))]
    batched = continuation_nll(tiny.model, ragged, counts, batch_tokens=120)
    single = torch.cat([continuation_nll(tiny.model, [s], [k]) for s, k in zip(ragged, counts)])
    assert torch.allclose(batched, single, rtol=0, atol=1e-5)
    assert not torch.allclose(batched[:10], batched[10:20])  # really different sequences


def test_first_order_scores_match_finite_differences(tiny):
    model = copy.deepcopy(tiny.model).double()
    scorer = Scorer(LoadedModel("tiny64", model, tiny.tokenizer), 4096)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 4096, (2, 20), generator=gen)
    ids[1, 3:6] = ids[0, 3:6]  # a shared "trigger" at positions 3-5 for the batched (UAT) gradient
    n_scored, positions = 6, [3, 4, 5]
    grad = scorer.token_gradients(ids, n_scored, positions)  # [3, V], averaged over the 2 rows
    emb = scorer.embeddings

    def loss(embeds):
        with torch.no_grad():
            logits = model(inputs_embeds=embeds).logits[:, -n_scored - 1:-1]
        return F.cross_entropy(logits.transpose(1, 2), ids[:, -n_scored:], reduction="none").mean(1).mean()

    base = emb[ids]
    eps = 1e-4
    for p_index, pos in enumerate(positions):
        for token in torch.randint(2, 4096, (4,), generator=gen).tolist():
            direction = torch.zeros_like(base)
            direction[:, pos] = emb[token] - emb[ids[0, pos]]
            finite = (loss(base + eps * direction) - loss(base - eps * direction)) / (2 * eps)
            first_order = grad[p_index, token] - grad[p_index, ids[0, pos]]
            assert abs(float(first_order) - float(finite)) < 1e-4 * max(1.0, abs(float(finite)))


def test_vocabulary_filter(tiny):
    allowed = allowed_tokens(tiny, VocabFilter())
    assert not allowed[tiny.tokenizer.all_special_ids].any()
    texts = tiny.tokenizer.batch_decode([[i] for i in allowed.nonzero()[:, 0].tolist()])
    assert all(t.isascii() for t in texts) and len(texts) > 1000
    only = allowed_tokens(tiny, VocabFilter(allow_list=[" the", " and", "\u00e9"]))
    assert sorted(tiny.tokenizer.decode([i]) for i in only.nonzero()[:, 0].tolist()) == [" and", " the"]


def test_summary_metrics_and_success_curve():
    recs = [common.example_record(str(i), 2.0, 2.0 * (1 + r), 0.15, queries=3)
            for i, r in enumerate([0.0, 0.1, 0.2, 0.5])]
    m = complete_summary(ATTACK_METRICS, recs, attack_summary(recs, 0.15))  # as the runner completes a summary
    assert m["success_rate"] == 0.5 and m["n_examples"] == 4 and m["mean_queries"] == 3
    assert m["mean_relative_increase"] == pytest.approx(0.2) and m["median_relative_increase"] == pytest.approx(0.15)
    curve = m["success_curve"]
    assert curve["success_rate"][0] == 0.75  # strictly above 0: three of four
    assert curve["success_rate"] == sorted(curve["success_rate"], reverse=True)
    assert common.spearman([1, 2, 3, 4], [10, 20, 30, 25]) == pytest.approx(0.8)


# -- attacks end to end ----------------------------------------------------------------------------------------------

def test_attacks_raise_nll_well_above_the_random_control_at_equal_budget(attack_run):
    hot, rnd = result(attack_run, "hotflip")["metrics"], result(attack_run, "random_hotflip")["metrics"]
    for name in ("hotflip", "random_hotflip", "uat", "random_uat", "uat_transfer"):
        metrics = result(attack_run, name)["metrics"]
        assert {"success_rate", "threshold", "mean_relative_increase", "median_relative_increase", "mean_nll_before",
                "mean_nll_after", "n_examples", "mean_queries", "success_curve"} <= set(metrics)
    # Equal budget: per example, the same number of exact candidate evaluations (HotFlip also spends gradients).
    hot_recs, rnd_recs = records(attack_run, "hotflip"), records(attack_run, "random_hotflip")
    assert [r["id"] for r in hot_recs] == [r["id"] for r in rnd_recs]
    assert [r["queries"] - r["gradient_calls"] for r in hot_recs] == [r["queries"] for r in rnd_recs]
    assert all(len(r["positions"]) <= 4 for r in hot_recs + rnd_recs)
    assert hot["mean_relative_increase"] > 1.3 * rnd["mean_relative_increase"] > 0
    wins = sum(h["relative_increase"] > r["relative_increase"] for h, r in zip(hot_recs, rnd_recs))
    assert wins >= 0.75 * len(hot_recs)
    assert -1 <= hot["spearman_mean"] <= 1 and "spearman_mean" not in rnd

    trig, rnd_trig = result(attack_run, "uat")["metrics"], result(attack_run, "random_uat")["metrics"]
    exact = trig["optimisation_queries"] - trig["gradient_calls"]
    assert 0.9 * exact <= rnd_trig["optimisation_queries"] <= exact  # (random candidates may repeat a token)
    assert len(trig["trigger_ids"]) == 8 and trig["n_examples"] == 16 and trig["n_opt"] == 16
    # Held-out (the reported numbers) and on the optimisation split. Same seed: same initial triggers and batches.
    assert trig["mean_relative_increase"] > 1.2 * rnd_trig["mean_relative_increase"] > 0
    assert trig["opt_mean_relative_increase"] > 1.2 * rnd_trig["opt_mean_relative_increase"] > 0
    assert trig["restarts"][0]["trigger_ids"] != rnd_trig["restarts"][0]["trigger_ids"]


def test_transfer_row_diagonal_reproduces_the_uat_held_out_numbers(attack_run):
    row = result(attack_run, "uat_transfer")["metrics"]["transfer"]
    own = result(attack_run, "uat")["metrics"]
    assert set(row) == {"tiny"} and row["tiny"]["retokenized"] is False
    for key in ("mean_relative_increase", "success_rate", "mean_nll_after", "n_examples"):
        assert row["tiny"][key] == own[key]


def test_transfer_retokenises_a_trigger_from_another_vocabulary(attack_run, tiny, tmp_path):
    source = result(attack_run, "uat")
    source["metrics"]["tokenizer_fingerprint"] = "another-vocabulary"
    source["metrics"]["trigger_ids"] = [0] * 3  # meaningless ids: must not be used
    stage = Stage("attacks/uat_transfer/tiny/s42", "attacks", "uat_transfer", "uat_transfer", "tiny", 42, True)
    ctx = StageContext(stage, tmp_path, tmp_path / "stage", 42, "quick", inputs={STAGES["uat"]: source},
                       show_progress=False)
    metrics = UATTransfer(UATTransferConfig(n_eval=4)).attack(tiny, ctx)
    cell = metrics["transfer"]["tiny"]
    assert cell["retokenized"] is True and cell["n_examples"] == 4
    assert cell["trigger_ids"] == tiny.tokenizer(source["metrics"]["trigger_text"],
                                                 add_special_tokens=False)["input_ids"]


# -- held-out hygiene --------------------------------------------------------------------------------------------

def _uat_config(**over):
    base = dict(opt_data=DocumentSource(data_files=[DATA / "valid.jsonl"], split="valid"),
                eval_data=DocumentSource(data_files=[DATA / "test.jsonl"], split="test"),
                n_opt=6, n_eval=4, context_tokens=16, continuation_tokens=8, trigger_length=4, restarts=2,
                iterations=2, batch_size=3, top_k=4, beam_size=2)
    return uat.UATConfig(**{**base, **over})


def _ctx(tmp_path, name="uat"):
    stage = Stage(f"attacks/{name}/tiny/s42", "attacks", name, "uat", "tiny", 42, True)
    return StageContext(stage, tmp_path, tmp_path / name, 42, "quick", show_progress=False)


def test_uat_never_optimises_on_held_out_documents(tiny, tmp_path, monkeypatch):
    cfg = _uat_config()
    seen: list[list[int]] = []
    real_optimise = uat.optimise_trigger

    def spying_optimise(scorer, opt, *args, **kwargs):  # record every sequence the optimisation looks at
        nll, grads = scorer.nll, scorer.token_gradients
        scorer.nll = lambda seqs, k, **kw: (seen.extend(torch.as_tensor(seqs).tolist()), nll(seqs, k, **kw))[1]
        scorer.token_gradients = lambda ids, k, pos: (seen.extend(ids.tolist()), grads(ids, k, pos))[1]
        try:
            return real_optimise(scorer, opt, *args, **kwargs)
        finally:
            scorer.nll, scorer.token_gradients = nll, grads

    monkeypatch.setattr(uat, "optimise_trigger", spying_optimise)
    metrics = uat.run_uat(tiny, _ctx(tmp_path), cfg, lambda a: uat.gradient_candidates(cfg.top_k, a))
    opt, held_out = uat.load_splits(tiny, cfg, "uat")
    tail = 16 + 8
    opt_tails = {tuple(ex.context + ex.continuation) for ex in opt}
    held_tails = {tuple(ex.context + ex.continuation) for ex in held_out}
    assert seen and all(tuple(s[-tail:]) in opt_tails for s in seen)
    assert not {tuple(s[-tail:]) for s in seen} & held_tails
    assert metrics["n_examples"] == 4 and metrics["n_opt"] == 6

    # Another held-out split: the trigger is the same, since it never depended on held-out documents.
    other = _uat_config(eval_data=DocumentSource(data_files=[DATA / "test.jsonl"], split="test", skip=40))
    again = uat.run_uat(tiny, _ctx(tmp_path / "other"), other, lambda a: uat.gradient_candidates(other.top_k, a))
    assert again["trigger_ids"] == metrics["trigger_ids"] and again["restarts"] == metrics["restarts"]
    held = [[r["nll_before"] for r in _ctx(tmp_path / run).records.records] for run in (".", "other")]
    assert len(held[0]) == len(held[1]) == 4 and held[0] != held[1]  # other held-out documents

    overlapping = _uat_config(eval_data=DocumentSource(data_files=[DATA / "valid.jsonl"], split="valid", skip=3))
    with pytest.raises(HarnessError, match="also in opt_data"):
        uat.load_splits(tiny, overlapping, "uat")


def test_uat_seeded_held_out_split_nests_with_the_per_example_attacks_sample(tiny, tmp_path):
    from harness.attacks import make_examples, seeded_order, select_examples
    from harness.data import load_documents

    cfg = _uat_config(eval_sample="seeded", n_eval=12)
    _, held_out = uat.load_splits(tiny, cfg, "uat", seed=42)
    pool = make_examples(load_documents(cfg.eval_data), tiny, cfg)
    # a per-example attack's seeded sample of 6 at the same seed is the held-out split's first 6
    sampled = select_examples(pool, 6, "seeded", _ctx(tmp_path))
    assert [ex.id for ex in held_out][:6] == [ex.id for ex in sampled]
    assert [ex.id for ex in held_out] == [ex.id for ex in seeded_order(pool, 42)][:12]
    assert [ex.id for ex in held_out] != [ex.id for ex in pool][:12]  # not the first documents
    _, other_seed = uat.load_splits(tiny, cfg, "uat", seed=7)
    assert {ex.id for ex in other_seed} != {ex.id for ex in held_out}


# -- resume and determinism ----------------------------------------------------------------------------------------

def _same_results(run_a, run_b, name):
    a, b = result(run_a, name), result(run_b, name)
    assert a["metrics"] == b["metrics"]
    assert records(run_a, name) == records(run_b, name)


def test_interrupted_attacks_resume_with_identical_results(attack_run, tmp_path, monkeypatch):
    # UAT: ask it to stop (as SIGUSR1 would) after its 4th saved state: mid-optimisation, between two restarts.
    saves = {"n": 0}
    real_save = StageContext.save_state

    def save_then_stop(self, name, state):
        real_save(self, name, state)
        saves["n"] += 1
        if saves["n"] == 4:
            self.stop_flag[0] = True

    monkeypatch.setattr(StageContext, "save_state", save_then_stop)
    _, outcomes = run_suite(tmp_path, only=[STAGES["uat"]])
    assert [o.status for o in outcomes] == ["preempted"]
    state = read_json(tmp_path / "run" / "stages" / STAGES["uat"] / "state-uat.json")
    assert (state["restart"], state["iteration"], len(state["finished"])) == (1, 0, 1)  # 3 iterations + restart end
    monkeypatch.setattr(StageContext, "save_state", real_save)

    # HotFlip: stop after its 3rd example.
    monkeypatch.setattr(StageContext, "should_stop", property(lambda self: len(self.records) >= 3))
    _, outcomes = run_suite(tmp_path, only=[STAGES["hotflip"]])
    assert [o.status for o in outcomes] == ["preempted"]
    assert len(records(tmp_path / "run", "hotflip")) == 3
    monkeypatch.undo()

    _, outcomes = run_suite(tmp_path, only=[STAGES["hotflip"], STAGES["uat"]])
    assert [o.status for o in outcomes] == ["done", "done"]
    # Then as a kill -9 would leave them: records cut short (with a torn last line), no completion marker.
    for name, keep in (("hotflip", 5), ("uat", 9)):
        sdir = tmp_path / "run" / "stages" / STAGES[name]
        lines = (sdir / "records.jsonl").read_text().splitlines(keepends=True)
        (sdir / "records.jsonl").write_text("".join(lines[:keep]) + lines[keep][:20])
        (sdir / "done.json").unlink()
    _, outcomes = run_suite(tmp_path, only=[STAGES["hotflip"], STAGES["uat"]])
    assert [o.status for o in outcomes] == ["done", "done"]
    for name in ("uat", "hotflip"):  # identical to the uninterrupted run of the module fixture
        _same_results(attack_run, tmp_path / "run", name)


def test_random_control_is_deterministic_under_a_seed_and_changes_with_it(attack_run, tmp_path):
    _, outcomes = run_suite(tmp_path, only=[STAGES["random_hotflip"]])
    assert [o.status for o in outcomes] == ["done"]
    _same_results(attack_run, tmp_path / "run", "random_hotflip")
    shutil.rmtree(tmp_path / "run")
    other_seed = SUITE.replace("seeds: [42]", "seeds: [43]")
    _, outcomes = run_suite(tmp_path, other_seed, only=[STAGES["random_hotflip"].replace("s42", "s43")])
    changed = RecordLog(tmp_path / "run" / "stages" / "attacks/random_hotflip/tiny/s43" / "records.jsonl").records
    assert [r["new_tokens"] for r in changed] != [r["new_tokens"] for r in records(attack_run, "random_hotflip")]


@pytest.mark.parametrize("control, message", [
    ("{control_of: hotfilp}", "control of no attack entry 'hotfilp'"),
    ("{control_of: random_uat}", "'random_uat' is itself a control"),
    ("{control_of: uat_transfer}", "attack plugin 'uat_transfer' of 'uat_transfer' cannot run as a random control"),
    ("{control_of: hotflip, flips: 2}", "a control runs its attack's plugin and options ('hotflip'), so it takes no "
                                        "`flips`"),
    ("{control_of: random_hotflip}", "an entry cannot be its own control"),
])
def test_a_bad_control_is_one_line_naming_the_key(tmp_path, control, message):
    from harness import ConfigError

    bad = SUITE.replace("random_hotflip: {control_of: hotflip}", f"random_hotflip: {control}")
    assert bad != SUITE
    with pytest.raises(ConfigError) as err:
        load_suite(write_suite(tmp_path, bad))
    assert message in str(err.value) and "attacks.random_hotflip" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("suite_file", ["quick.yaml", "pythia_full.yaml"])
@pytest.mark.parametrize("mode", ["quick", "full"])
def test_shipped_suites_give_each_control_exactly_its_attack_options(suite_file, mode):
    from tests.conftest import ROOT

    suite = load_suite(ROOT / "suites" / suite_file, mode=mode)
    controls = {e.name: e for e in suite.attacks.values() if e.control_of is not None}
    assert {c.control_of for c in controls.values()} >= {"hotflip", "uat", "gcg"}
    for control in controls.values():
        attack = suite.attacks[control.control_of]
        assert control.plugin is attack.plugin and control.config == attack.config
        assert control.models == attack.models and control.build().is_control() and not attack.build().is_control()

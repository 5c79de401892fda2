"""The ``gcg`` attack: against HotFlip and its random control at equal budget, targeted exact match, exact batched
scores, held-out hygiene of the universal string, resume mid-optimisation, one-line config errors."""

from __future__ import annotations

import pytest
import torch

from harness import ConfigError, DocumentSource, HarnessError, StagePreempted
from harness.attacks import Scorer, allowed_tokens, make_examples
from harness.context import StageContext
from harness.summary import run_stage_summary
from harness._engine.graph import Stage
from harness.scoring import continuation_nll
from harness.store import RecordLog
from harness._engine.suite import load_suite
from harness_plugins.attacks import gcg, hotflip
from harness_plugins.attacks.uat_transfer import UATTransfer, UATTransferConfig
from tests.conftest import DATA, run_cli, write_suite

TEST = DocumentSource(data_files=[DATA / "test.jsonl"], split="test")
VALID = DocumentSource(data_files=[DATA / "valid.jsonl"], split="valid")


def _ctx(tmp_path, name, seed=42):
    stage = Stage(f"attacks/{name}/tiny/s{seed}", "attacks", name, name, "tiny", seed, True)
    return StageContext(stage, tmp_path, tmp_path / name, seed, "quick", show_progress=False)


def _records(ctx):
    return RecordLog(ctx.stage_dir / "records.jsonl").records


# -- strength at equal budget ------------------------------------------------------------------------------------

# The quick suite's HotFlip (24-token context, 16-token continuation, 4 flips x 16 swaps): 1 + 4 x 16 exact scores
# + 4 gradient passes = 69 queries per example, GCG's `max_queries`.
UNTARGETED = dict(data=TEST, n_examples=6, context_tokens=24, continuation_tokens=16)
HOTFLIP_BUDGET = 69


def test_untargeted_gcg_at_hotflips_budget_beats_hotflip_and_its_random_control(tiny, tmp_path):
    hot = hotflip.HotFlipAttack(hotflip.HotFlipConfig(**UNTARGETED, flips=4, beam_width=16))
    hot_metrics = run_stage_summary(hot, tiny, _ctx(tmp_path, "hotflip"))
    options = dict(**UNTARGETED, num_steps=100, search_width=8, topk=8, buffer_size=1, max_queries=HOTFLIP_BUDGET)
    runs = {}
    for mode in ("gcg", "random_gcg"):
        attack = gcg.GCGAttack(gcg.GCGConfig(**options))
        attack.control_of = "gcg" if mode == "random_gcg" else None  # as the core builds `control_of: gcg`
        assert attack.is_control() == (mode == "random_gcg")
        ctx = _ctx(tmp_path, mode)
        runs[mode] = (run_stage_summary(attack, tiny, ctx), _records(ctx))
    (ours, ours_recs), (rnd, rnd_recs) = runs["gcg"], runs["random_gcg"]
    hot_recs = _records(_ctx(tmp_path, "hotflip"))
    assert [r["id"] for r in ours_recs] == [r["id"] for r in rnd_recs] == [r["id"] for r in hot_recs]
    # Budget: HotFlip spends exactly 69; GCG at most 69 (filter_ids drops some candidates); the control is charged
    # the gradient passes it skips, so it scores no more candidates than GCG could.
    assert all(r["queries"] == HOTFLIP_BUDGET for r in hot_recs)
    assert all(0 < r["queries"] <= HOTFLIP_BUDGET and r["gradient_calls"] == r["steps"] for r in ours_recs)
    assert all(r["gradient_calls"] == 0 and r["queries"] + r["steps"] <= HOTFLIP_BUDGET for r in rnd_recs)
    assert ours["mean_relative_increase"] > hot_metrics["mean_relative_increase"]
    assert ours["mean_relative_increase"] > rnd["mean_relative_increase"] > 0
    for r in ours_recs:  # the recorded positions are the context tokens that differ from the document's
        ex_ids = r["adversarial_ids"]
        assert len(ex_ids) == 24 and all(0 <= p < 24 for p in r["positions"])


def test_targeted_gcg_makes_the_tiny_model_emit_a_short_target(tiny, tmp_path):
    # Seeds tried: 42 and 43: 3 of the 4 prompts each (early_stop: 8 and 15 median steps to success).
    cfg = gcg.GCGConfig(data=TEST, n_examples=4, context_tokens=16, continuation_tokens=8, edit="suffix", n_tokens=8,
                        objective="targeted", target=" my good lord", num_steps=40, search_width=32, topk=8,
                        buffer_size=1, early_stop=True)
    assert 3 <= len(tiny.tokenizer(cfg.target)["input_ids"]) <= 5
    ctx = _ctx(tmp_path, "targeted")
    metrics = run_stage_summary(gcg.GCGAttack(cfg), tiny, ctx)
    recs = _records(ctx)
    assert metrics["exact_match_rate"] >= 0.75 and metrics["success_rate"] == metrics["exact_match_rate"]
    assert metrics["mean_target_nll"] < metrics["mean_nll_before"]
    target = tiny.tokenizer(cfg.target, add_special_tokens=False)["input_ids"]
    for r in recs:  # success means greedy decoding, run here independently, emits exactly the target
        ex = next(e for e in make_examples(gcg.load_documents(TEST), tiny, cfg) if e.id == r["id"])
        prompt = torch.tensor([[*ex.prefix, *ex.context, *r["adversarial_ids"]]])
        out = tiny.model.generate(prompt, max_new_tokens=len(target), do_sample=False,
                                  pad_token_id=tiny.tokenizer.eos_token_id)[0, prompt.shape[1]:].tolist()
        assert r["exact_match"] == (out == target) == r["success"]
        assert (r["steps_to_success"] is not None) == r["exact_match"]


def test_the_exact_match_check_reads_the_scoring_pass_and_finds_what_a_pass_of_its_own_finds(tiny, monkeypatch):
    cfg = gcg.GCGConfig(data=TEST, context_tokens=16, continuation_tokens=8, edit="suffix", n_tokens=8,
                        objective="targeted", target=" my good lord", num_steps=16, search_width=32, topk=8)
    ex = make_examples(gcg.load_documents(TEST), tiny, cfg)[0]
    target = tuple(tiny.tokenizer(cfg.target, add_special_tokens=False)["input_ids"])
    init = gcg.init_string(tiny.tokenizer, cfg, "test")

    def run() -> tuple[gcg.SearchState, int]:
        scorer = Scorer(tiny, 4096)
        objective = gcg.Objective(scorer, gcg.Problem([ex], [target], "suffix", "targeted"), cfg)
        state = gcg.search(objective, init, allowed_tokens(tiny, cfg.vocab), tiny.tokenizer, cfg,
                           torch.Generator().manual_seed(0), "k", [[0]])
        return state, scorer.queries

    read, read_queries = run()
    monkeypatch.setattr(gcg.Objective, "is_match", lambda self, docs, string: bool(
        self.exact_match(docs, string)[1].all()))  # a pass of its own every step, as before
    passed, passed_queries = run()
    assert read.steps_to_success is not None  # the target is reached, so the check matters
    assert (read.best, read.best_match, read.steps_to_success, read.losses, read.charged) == (
        passed.best, passed.best_match, passed.steps_to_success, passed.losses, passed.charged)
    assert read_queries == passed_queries - cfg.num_steps  # buffer_size 0: the kept string is always just scored


# -- exactness ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, n_docs", [("context", 1), ("suffix", 1), ("suffix", 3), ("prefix", 2)])
def test_batched_candidate_scores_equal_a_per_candidate_loop(tiny, edit, n_docs):
    cfg = gcg.GCGConfig(data=TEST, context_tokens=12, continuation_tokens=6, edit=edit, n_tokens=5, search_width=16,
                        topk=8, n_replace=2)
    examples = make_examples(gcg.load_documents(TEST), tiny, cfg, n=n_docs)
    problem = gcg.Problem(examples, [ex.continuation for ex in examples], edit, "untargeted")
    objective = gcg.Objective(Scorer(tiny, 4096), problem, cfg)
    current = list(examples[0].context) if edit == "context" else [87] * 5
    docs = list(range(n_docs))
    grad = objective.gradient(docs, current)
    candidates = gcg.sample_candidates(torch.tensor(current), grad, allowed_tokens(tiny, cfg.vocab), cfg,
                                       torch.Generator().manual_seed(0))
    batched = objective.losses(docs, current, candidates)
    loop = torch.tensor([-sum(float(continuation_nll(tiny.model, torch.tensor([problem.ids(i, c)]), 6)[0])
                              for i in docs) / n_docs for c in candidates.tolist()], dtype=torch.float64)
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-5)
    assert objective.scorer.queries == len(candidates) * n_docs and objective.scorer.gradient_calls == n_docs


def test_mellowmax_scores_equal_nanogcgs_definition_per_candidate(tiny):
    cfg = gcg.GCGConfig(data=TEST, context_tokens=12, continuation_tokens=6, edit="suffix", n_tokens=5,
                        objective="targeted", target=" my good lord", use_mellowmax=True, mellowmax_alpha=2.0,
                        search_width=8, topk=8)
    ex = make_examples(gcg.load_documents(TEST), tiny, cfg, n=1)[0]
    target = tuple(tiny.tokenizer(cfg.target, add_special_tokens=False)["input_ids"])
    objective = gcg.Objective(Scorer(tiny, 4096), gcg.Problem([ex], [target], "suffix", "targeted"), cfg)
    current = [87] * 5
    candidates = gcg.sample_candidates(torch.tensor(current), objective.gradient([0], current),
                                       allowed_tokens(tiny, cfg.vocab), cfg, torch.Generator().manual_seed(1))
    batched = objective.losses([0], current, candidates)
    k = len(target)
    reference = []
    for c in candidates.tolist():  # nanoGCG: mellowmax(-label_logits, alpha) over the target positions
        with torch.no_grad():
            logits = tiny.model(torch.tensor([[*ex.prefix, *ex.context, *c, *target]])).logits[0, -k - 1:-1]
        t = -logits[torch.arange(k), torch.tensor(target)]
        reference.append(float((torch.logsumexp(2.0 * t, 0) - torch.log(torch.tensor(float(k)))) / 2.0))
    torch.testing.assert_close(batched, torch.tensor(reference, dtype=torch.float64), rtol=1e-5, atol=1e-5)


# -- held-out hygiene --------------------------------------------------------------------------------------------

def _universal(**over):
    base = dict(universal=True, opt_data=VALID, eval_data=TEST, n_opt=6, n_eval=4, context_tokens=16,
                continuation_tokens=8, edit="suffix", n_tokens=4, num_steps=4, search_width=8, topk=8, batch_size=3,
                save_every=2)
    return gcg.GCGConfig(**{**base, **over})


def test_universal_gcg_never_optimises_on_held_out_documents(tiny, tmp_path, monkeypatch):
    cfg = _universal()
    seen: list[list[int]] = []
    real_search = gcg.search

    def spying_search(objective, *args, **kwargs):  # every sequence the optimisation looks at
        scorer = objective.scorer
        nll, swap, grads, scores = scorer.nll, scorer.swap_nll, scorer.token_gradients, scorer.continuation_scores
        scorer.nll = lambda seqs, k, **kw: (seen.extend(torch.as_tensor(seqs).tolist()), nll(seqs, k, **kw))[1]
        scorer.swap_nll = lambda base, c, k, **kw: (seen.extend(c.tolist()), swap(base, c, k, **kw))[1]
        scorer.token_gradients = lambda ids, k, pos, **kw: (seen.extend(ids.tolist()), grads(ids, k, pos, **kw))[1]
        scorer.continuation_scores = lambda s, k, **kw: (seen.extend(s.tolist()), scores(s, k, **kw))[1]
        return real_search(objective, *args, **kwargs)

    monkeypatch.setattr(gcg, "search", spying_search)
    metrics = run_stage_summary(gcg.GCGAttack(cfg), tiny, _ctx(tmp_path, "universal"))
    opt = make_examples(gcg.load_documents(VALID), tiny, cfg, 6)
    held_out = make_examples(gcg.load_documents(TEST), tiny, cfg, 4)
    opt_docs = {(ex.context, ex.continuation) for ex in opt}
    held_docs = {(ex.context, ex.continuation) for ex in held_out}
    looked_at = {(tuple(s[1:17]), tuple(s[-8:])) for s in seen}  # [eos] + context + suffix(4) + continuation
    assert seen and looked_at <= opt_docs and not looked_at & held_docs
    assert metrics["n_examples"] == 4 and metrics["n_opt"] == 6 and len(metrics["trigger_ids"]) == 4
    assert metrics["trigger_placement"] == "suffix" and metrics["optimisation_queries"] > 0

    # The string feeds the transfer matrix like a UAT trigger: its diagonal cell reproduces the held-out numbers.
    sid = "attacks/universal/tiny/s42"
    source = {"metrics": metrics, "config": cfg.model_dump(mode="json"),
              "stage": {"id": sid, "entry": "universal", "model": "tiny"}}
    stage = Stage("attacks/transfer/tiny/s42", "attacks", "transfer", "uat_transfer", "tiny", 42, True)
    ctx = StageContext(stage, tmp_path, tmp_path / "transfer", 42, "quick", inputs={sid: source}, show_progress=False)
    cell = run_stage_summary(UATTransfer(UATTransferConfig()), tiny, ctx)["transfer"]["tiny"]
    for key in ("mean_relative_increase", "success_rate", "mean_nll_after", "n_examples"):
        assert cell[key] == metrics[key]

    # Another held-out split: the same string, since it never depended on held-out documents.
    other = _universal(eval_data=DocumentSource(data_files=[DATA / "test.jsonl"], split="test", skip=40))
    again = run_stage_summary(gcg.GCGAttack(other), tiny, _ctx(tmp_path, "universal_other"))
    assert again["trigger_ids"] == metrics["trigger_ids"] and again["mean_nll_before"] != metrics["mean_nll_before"]

    overlapping = _universal(eval_data=DocumentSource(data_files=[DATA / "valid.jsonl"], split="valid", skip=3))
    with pytest.raises(HarnessError, match="also in opt_data"):
        run_stage_summary(gcg.GCGAttack(overlapping), tiny, _ctx(tmp_path, "overlap"))


# -- per-document targets (GCG-multi) ---------------------------------------------------------------------------

#: Targets of different token lengths, one per document (GCG-multi's per-behaviour targets).
TARGET_TEXTS = [" my lord", " the king is dead", " O", " go with me now", " farewell"]


def _with_targets(tmp_path, source, name):
    """A copy of ``source``'s documents, each with a ``target`` field (cycling through TARGET_TEXTS)."""
    import json

    docs = gcg.load_documents(source)
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"id": d.id, "text": d.text, "target": TARGET_TEXTS[i % len(TARGET_TEXTS)]})
                            + "\n" for i, d in enumerate(docs)))
    return DocumentSource(data_files=[path], split=source.split), {d.id: TARGET_TEXTS[i % len(TARGET_TEXTS)]
                                                                    for i, d in enumerate(docs)}


def test_per_document_targets_of_different_lengths_are_scored_exactly(tiny, tmp_path):
    source, wanted = _with_targets(tmp_path, VALID, "valid_targets")
    cfg = _universal(opt_data=source, objective="targeted", target_field="target")
    examples = make_examples(gcg.load_documents(source), tiny, cfg, n=4)
    tails = gcg.targets(tiny, cfg, source, examples, "gcg")
    assert [tiny.tokenizer.decode(list(t)) for t in tails] == [wanted[ex.id] for ex in examples]
    assert len({len(t) for t in tails}) > 1  # the batch mixes target lengths
    problem = gcg.Problem(examples, tails, "suffix", "targeted")
    objective = gcg.Objective(Scorer(tiny, 4096), problem, cfg)
    docs, current = [0, 1, 2, 3], [87] * 4
    candidates = gcg.sample_candidates(torch.tensor(current), objective.gradient(docs, current),
                                       allowed_tokens(tiny, cfg.vocab), cfg, torch.Generator().manual_seed(0))
    # the batch's loss and gradient are the means of each document's own (computed one document at a time)
    by_hand = torch.stack([objective.losses([i], current, candidates) for i in docs]).mean(0)
    torch.testing.assert_close(objective.losses(docs, current, candidates), by_hand, rtol=1e-6, atol=1e-6)
    grad_by_hand = torch.stack([objective.gradient([i], current) for i in docs]).mean(0)
    torch.testing.assert_close(objective.gradient(docs, current), grad_by_hand, rtol=1e-5, atol=1e-6)
    nll, _ = objective.scores(docs, current)
    for i in docs:
        ids = torch.tensor([problem.ids(i, current)])
        assert float(nll[i]) == pytest.approx(float(continuation_nll(tiny.model, ids, len(tails[i]))[0]), rel=1e-5)


def test_universal_gcg_with_per_document_targets_judges_each_held_out_document_on_its_own(tiny, tmp_path):
    opt, _ = _with_targets(tmp_path, VALID, "valid_targets")
    held, wanted = _with_targets(tmp_path, TEST, "test_targets")
    cfg = _universal(opt_data=opt, eval_data=held, objective="targeted", target_field="target")
    ctx = _ctx(tmp_path, "multi")
    metrics = run_stage_summary(gcg.GCGAttack(cfg), tiny, ctx)
    recs = _records(ctx)
    assert len(recs) == 4 and [r["target_text"] for r in recs] == [wanted[r["id"]] for r in recs]
    assert len({r["target_text"] for r in recs}) > 1
    assert metrics["exact_match_rate"] == sum(r["exact_match"] for r in recs) / 4
    assert metrics["optimisation_queries"] > 0 and len(metrics["adversarial_ids"]) == 4


def test_per_example_gcg_reads_each_documents_target(tiny, tmp_path):
    source, wanted = _with_targets(tmp_path, TEST, "test_targets")
    cfg = gcg.GCGConfig(data=source, n_examples=3, context_tokens=16, continuation_tokens=8, edit="suffix",
                        n_tokens=4, objective="targeted", target_field="target", num_steps=2, search_width=8, topk=8)
    ctx = _ctx(tmp_path, "per_doc")
    run_stage_summary(gcg.GCGAttack(cfg), tiny, ctx)
    recs = _records(ctx)
    assert len(recs) == 3 and [r["target_text"] for r in recs] == [wanted[r["id"]] for r in recs]


# -- resume ------------------------------------------------------------------------------------------------------

def _interrupted(tiny, tmp_path, cfg, name, after_saves):
    """Run with a stop requested (as SIGUSR1 does) right after the ``after_saves``-th saved state, then rerun."""
    ctx = _ctx(tmp_path, name)
    saves = {"n": 0}
    real_save = ctx.save_state

    def save_then_stop(state_name, state):
        real_save(state_name, state)
        saves["n"] += 1
        if saves["n"] == after_saves:
            ctx.stop_flag[0] = True

    ctx.save_state = save_then_stop  # type: ignore[method-assign]
    with pytest.raises(StagePreempted):
        run_stage_summary(gcg.GCGAttack(cfg), tiny, ctx)
    assert saves["n"] == after_saves
    resumed = _ctx(tmp_path, name)  # a fresh process would start like this: the same stage directory
    return run_stage_summary(gcg.GCGAttack(cfg), tiny, resumed), _records(resumed)


@pytest.mark.parametrize("kind", ["examples", "targeted", "universal"])
def test_interrupted_search_resumes_to_identical_numbers(tiny, tmp_path, kind):
    if kind == "universal":
        cfg, stop_after = _universal(num_steps=6), 1  # mid-optimisation, after step 2 of 6
    else:
        extra = dict(edit="suffix", n_tokens=4, objective="targeted", target=" my lord") if kind == "targeted" else {}
        cfg = gcg.GCGConfig(data=TEST, n_examples=2, context_tokens=16, continuation_tokens=8, num_steps=7,
                            search_width=8, topk=8, buffer_size=2, save_every=2, **extra)
        stop_after = 4  # 3 saves per example (steps 2, 4, 6): inside the second example, after its step 2
    straight = run_stage_summary(gcg.GCGAttack(cfg), tiny, _ctx(tmp_path, "straight"))
    straight_recs = _records(_ctx(tmp_path, "straight"))
    resumed, resumed_recs = _interrupted(tiny, tmp_path, cfg, "resumed", stop_after)
    assert resumed == straight and resumed_recs == straight_recs
    if kind != "universal":  # a kill -9 after the first record: the saved state belongs to the finished example
        cut = _ctx(tmp_path, "resumed")
        lines = (cut.stage_dir / "records.jsonl").read_text().splitlines(keepends=True)
        (cut.stage_dir / "records.jsonl").write_text(lines[0] + lines[1][:15])
        assert run_stage_summary(gcg.GCGAttack(cfg), tiny, cut) == straight and _records(cut) == straight_recs


# -- configuration errors ----------------------------------------------------------------------------------------

SUITE = """
name: gcg_bad
seeds: [42]
device: cpu
models:
  tiny: {plugin: pythia_tiny}
attacks:
  gcg:
    data: {dataset: json, data_files: @DATA@/test.jsonl, split: test}
    BAD
"""


@pytest.mark.parametrize("bad, message", [
    ("search_width: 0", "search_width"),
    ("edit: middle", "edit"),
    ("objective: targeted", "target"),
    ("universal: true", "opt_data"),
    ("use_mellowmax: true", "targeted"),
])
def test_bad_configs_are_one_line_errors(tmp_path, bad, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_suite(write_suite(tmp_path, SUITE.replace("BAD", bad)))
    assert len(str(err.value).strip().splitlines()) == 1


def test_harness_validate_rejects_a_bad_gcg_config_in_one_line(tmp_path):
    proc = run_cli("validate", str(write_suite(tmp_path, SUITE.replace("BAD", "search_width: 0"))))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "search_width" in proc.stderr


def test_a_target_longer_than_the_models_context_is_one_line_before_any_query(tiny, tmp_path, monkeypatch):
    cfg = gcg.GCGConfig(data=TEST, n_examples=2, context_tokens=16, continuation_tokens=8, objective="targeted",
                        target=" and" * (tiny.max_length + 1))
    monkeypatch.setattr(Scorer, "__init__", lambda *a, **k: pytest.fail("scored before checking the target"))
    with pytest.raises(HarnessError, match="positions of model 'tiny'") as err:
        run_stage_summary(gcg.GCGAttack(cfg), tiny, _ctx(tmp_path, "long"))
    assert len(str(err.value).splitlines()) == 1

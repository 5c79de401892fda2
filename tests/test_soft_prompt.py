"""soft_prompt: the embedding-space attack beats the token attacks at a small budget, reaches a target, stays in
its ball, resumes to identical numbers, and rejects bad configs in one line."""

from __future__ import annotations

import pytest
import torch

from harness import StagePreempted
from harness.attacks import Scorer, allowed_tokens, make_examples, select_examples
from harness.cli import main
from harness.context import StageContext
from harness.data import load_documents
from harness._engine.graph import Stage
from harness.summary import run_stage_summary
from harness_plugins.attacks import soft_prompt
from harness_plugins.attacks.hotflip import HotFlipAttack, HotFlipConfig
from harness_plugins.attacks.soft_prompt import SoftPromptAttack, SoftPromptConfig
from tests.conftest import DATA, write_suite

TASK = {"data": {"dataset": "json", "data_files": [str(DATA / "test.jsonl")], "split": "test"},
        "n_examples": 6, "context_tokens": 24, "continuation_tokens": 16}


def _ctx(tmp_path, name: str, plugin: str = "soft_prompt") -> StageContext:
    stage = Stage(f"attacks/{name}/tiny/s42", "attacks", name, plugin, "tiny", 42, True)
    (tmp_path / name).mkdir(parents=True, exist_ok=True)
    return StageContext(stage, tmp_path, tmp_path / name, 42, "quick", show_progress=False)


def soft(tiny, tmp_path, name="soft", **options):
    attack = SoftPromptAttack(SoftPromptConfig.model_validate({**TASK, **options}))
    return run_stage_summary(attack, tiny, _ctx(tmp_path, name)), _ctx(tmp_path, name).records.records


def test_soft_suffix_beats_hotflip_and_its_control_at_a_small_budget(tiny, tmp_path):
    flip = {**TASK, "flips": 2, "beam_width": 8}  # 1 + 2 x 8 scores + 2 gradients = 19 queries per example
    hotflip = run_stage_summary(HotFlipAttack(HotFlipConfig.model_validate(flip)), tiny,
                                _ctx(tmp_path, "hotflip", "hotflip"))
    random_control = HotFlipAttack(HotFlipConfig.model_validate(flip))
    random_control.control_of = "hotflip"  # as the core builds `control_of: hotflip`
    control = run_stage_summary(random_control, tiny, _ctx(tmp_path, "random", "hotflip"))
    metrics, records = soft(tiny, tmp_path, edit="suffix", n_tokens=2, steps=10, batch_size=3)
    assert [r["id"] for r in records] == [r["id"] for r in _ctx(tmp_path, "hotflip").records.records]  # same docs
    assert metrics["mean_queries"] <= hotflip["mean_queries"]  # 10 gradient passes + 2 exact scores
    assert metrics["mean_gradient_calls"] == 10 and metrics["mean_flops"] > 0
    best_token_attack = max(hotflip["mean_relative_increase"], control["mean_relative_increase"])
    assert metrics["mean_relative_increase"] > max(0.3, 2 * best_token_attack)
    assert metrics["success_rate"] >= hotflip["success_rate"] and metrics["success_rate"] == 1.0
    assert metrics["mean_nll_before"] == pytest.approx(hotflip["mean_nll_before"], abs=1e-9)  # the same task


def test_targeted_soft_prompt_makes_the_model_emit_the_target(tiny, tmp_path):
    target = " the king is dead"
    metrics, records = soft(tiny, tmp_path, edit="suffix", n_tokens=4, steps=40, objective="targeted",
                            target=target, n_examples=4, batch_size=4, save_every=40)
    assert metrics["exact_match_rate"] >= 0.75
    assert metrics["mean_target_nll"] < 0.5 * metrics["mean_target_nll_before"]
    assert all((r["steps_to_success"] is not None) >= r["exact_match"] for r in records)
    # The exact-match test (teacher-forced argmax) agrees with greedy decoding from the kept embeddings.
    cfg = SoftPromptConfig.model_validate({**TASK, "edit": "suffix", "n_tokens": 4, "objective": "targeted",
                                           "target": target, "n_examples": 4})
    examples = select_examples(make_examples(load_documents(cfg.data), tiny, cfg), 4, "first", None)
    state = torch.load(tmp_path / "soft" / "state-soft_prompt-0.pt", weights_only=True)
    scorer = Scorer(tiny, 4096)
    ids = tiny.tokenizer(target, add_special_tokens=False)["input_ids"]
    embeds = soft_prompt.assemble(scorer, examples, state["best_params"], cfg, ids)[:, :-len(ids)]
    with torch.no_grad():
        out = tiny.model.generate(inputs_embeds=embeds, max_new_tokens=len(ids), do_sample=False,
                                  pad_token_id=tiny.tokenizer.eos_token_id)
    greedy = [row[-len(ids):].tolist() == ids for row in out]
    assert greedy == [r["exact_match"] for r in records]


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_context_perturbation_stays_in_its_ball(tiny, tmp_path, norm):
    epsilon = 0.2
    metrics, records = soft(tiny, tmp_path, edit="context", norm=norm, epsilon=epsilon, optimizer="pgd", lr=0.5,
                            steps=8, n_examples=3)
    scorer = Scorer(tiny, 4096)
    geo = soft_prompt.geometry(scorer, allowed_tokens(tiny, SoftPromptConfig.model_validate(TASK).vocab),
                               SoftPromptConfig.model_validate({**TASK, "norm": norm, "epsilon": epsilon}))
    best = torch.load(tmp_path / "soft" / "state-soft_prompt-0.pt", weights_only=True)["best_params"]
    size = best.norm(dim=-1) if norm == "l2" else best.abs().amax(dim=-1)
    assert float(size.max()) <= geo.radius * (1 + 1e-5) and float(size.max()) > 0.5 * geo.radius
    assert metrics["mean_relative_increase"] > 0  # a bounded perturbation still raises the loss


def test_interrupted_soft_prompt_resumes_to_identical_numbers(tiny, tmp_path, monkeypatch):
    options = dict(edit="suffix", n_tokens=3, steps=12, save_every=5, batch_size=4, optimizer="adam")
    want_metrics, want_records = soft(tiny, tmp_path, "whole", **options)

    saves = {"n": 0}
    real_save = soft_prompt.save_state

    def save_then_stop(path, state):  # a SIGUSR1 after the 2nd save: mid-optimisation of the first chunk
        real_save(path, state)
        saves["n"] += 1
        if saves["n"] == 2:
            ctx.stop_flag[0] = True

    monkeypatch.setattr(soft_prompt, "save_state", save_then_stop)
    attack = SoftPromptAttack(SoftPromptConfig.model_validate({**TASK, **options}))
    ctx = _ctx(tmp_path, "cut")
    with pytest.raises(StagePreempted):
        run_stage_summary(attack, tiny, ctx)
    assert len(ctx.records) == 0
    assert torch.load(tmp_path / "cut" / "state-soft_prompt-0.pt", weights_only=True)["step"] == 10  # not finished
    monkeypatch.undo()
    got, _ = soft(tiny, tmp_path, "cut", **options)
    assert got == want_metrics

    # A crash (kill -9) right after the second chunk's first save (step 5 of 12), its torn record line left behind.
    calls = {"n": 0}

    def save_then_crash(path, state):
        real_save(path, state)
        calls["n"] += 1
        if calls["n"] == 4:  # chunk 0 saved at steps 5, 10 and finished; chunk 1 at step 5
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(soft_prompt, "save_state", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_stage_summary(SoftPromptAttack(SoftPromptConfig.model_validate({**TASK, **options})), tiny,
                          _ctx(tmp_path, "crash"))
    monkeypatch.undo()
    log = tmp_path / "crash" / "records.jsonl"
    assert len(log.read_text().splitlines()) == 4
    log.write_text(log.read_text() + '{"id": "torn')
    assert torch.load(tmp_path / "crash" / "state-soft_prompt-4.pt", weights_only=True)["step"] == 5
    got, records = soft(tiny, tmp_path, "crash", **options)
    assert got == want_metrics and records == want_records


@pytest.mark.parametrize("option,words", [
    ("steps: 0", "must be an integer >= 1, got 0"),
    ("epsilon: 0", "> 0"),
    ("edit: middle", "must be one of 'suffix', 'prefix', 'context', got 'middle'"),
    ("objective: targeted", "needs `target: <text>`"),
    ("optimizer: sgd", "one of 'pgd', 'adam'"),
])
def test_bad_config_is_one_line_at_validate(tmp_path, capsys, option, words):
    path = write_suite(tmp_path, f"""
        models:
          tiny: {{plugin: pythia_tiny}}
        attacks:
          soft:
            plugin: soft_prompt
            data: {{dataset: json, data_files: @DATA@/test.jsonl, split: test}}
            {option}
        """)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert words in err and "attacks.soft" in err and "fix:" in err


def test_soft_suffix_reaches_at_least_what_gcg_reaches_on_the_same_positions(tiny, tmp_path):
    """The continuous bound: free embeddings at the suffix positions GCG optimises as tokens (same examples, same
    suffix length) raise the continuation NLL at least as much as GCG does there."""
    from harness_plugins.attacks.gcg import GCGAttack, GCGConfig

    options = {**TASK, "n_examples": 4, "edit": "suffix", "n_tokens": 4}
    gcg = GCGAttack(GCGConfig.model_validate({**options, "num_steps": 8, "search_width": 16, "topk": 16}))
    gcg_metrics = run_stage_summary(gcg, tiny, _ctx(tmp_path, "gcg", "gcg"))
    metrics, records = soft(tiny, tmp_path, **options, steps=10, batch_size=4)
    assert [r["id"] for r in records] == [r["id"] for r in _ctx(tmp_path, "gcg").records.records]  # same docs
    assert metrics["mean_nll_before"] == pytest.approx(gcg_metrics["mean_nll_before"], abs=1e-9)
    assert metrics["mean_relative_increase"] >= gcg_metrics["mean_relative_increase"] > 0


def test_relaxation_with_restarts_resumes_to_identical_numbers_from_any_save(tiny, tmp_path, monkeypatch):
    """The continuous relaxation (unbounded context edits) with 2 restarts, stopped after each of its saves (inside a
    restart, at the switch to the next, after the last) and resumed, ends with the numbers of an uninterrupted run."""
    options = dict(edit="context", epsilon=None, steps=4, restarts=2, save_every=2, batch_size=6)
    want_metrics, want_records = soft(tiny, tmp_path, "whole", **options)
    assert all(len(r["loss_curve"]) == 2 and len(r["nll_by_step"]) == 1 + 2 * 5 for r in want_records)
    real_save = soft_prompt.save_state
    for stop_after in range(1, 8):
        name = f"stop{stop_after}"
        ctx = _ctx(tmp_path, name)
        saves = {"n": 0}

        def save_then_stop(path, state, ctx=ctx, saves=saves, stop_after=stop_after):
            real_save(path, state)
            saves["n"] += 1
            if saves["n"] == stop_after:
                ctx.stop_flag[0] = True

        monkeypatch.setattr(soft_prompt, "save_state", save_then_stop)
        try:
            SoftPromptAttack(SoftPromptConfig.model_validate({**TASK, **options})).attack(tiny, ctx)
        except StagePreempted:
            pass
        monkeypatch.undo()
        got, records = soft(tiny, tmp_path, name, **options)
        assert got == want_metrics and records == want_records, stop_after

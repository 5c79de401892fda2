"""The lm_eval metric plugin: shipped offline tasks on the in-memory tiny model, lm-eval's pitfalls, clear errors."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch

from harness import HarnessError
from harness.context import StageContext
from harness._engine.graph import Stage
from harness._engine.suite import load_suite
from harness_plugins.metrics.lmeval import LMEval, LMEvalConfig

from .conftest import write_suite


def run_plugin(model, tmp_path, **options):
    stage = Stage("metrics/lm_eval/tiny", "metrics", "lm_eval", "lm_eval", "tiny", 0, False)
    ctx = StageContext(stage=stage, run_dir=tmp_path, stage_dir=tmp_path / "stage", seed=0, mode="quick",
                       device="cpu", show_progress=False)
    config = LMEvalConfig.model_validate(options, context={"base_dir": tmp_path})
    return LMEval(config).evaluate(model, ctx), ctx


def continuation_loglik(model, tok, context: str, continuation: str) -> float:
    """log p(continuation | context), tokenised as lm-eval does (whole string, split at the context's length)."""
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    n_ctx = len(tok(context, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return float(sum(logp[i - 1, whole[i]] for i in range(n_ctx, len(whole))))


def test_local_tasks_offline_all_request_types(tiny, tmp_path):
    metrics, ctx = run_plugin(tiny, tmp_path, tasks=["shakespeare_local"], limit=6, batch_size=4, bootstrap_iters=100)
    # One task per request type: multiple choice, rolling log-likelihood, generation.
    for key in ("shakespeare_next_line/acc", "shakespeare_next_line/acc_norm", "shakespeare_last_word/exact_match"):
        assert 0.0 <= metrics[key] <= 1.0
        assert metrics[f"{key}_stderr"] is not None and metrics[f"{key}_stderr"] >= 0
    assert 1.0 < metrics["shakespeare_rolling/byte_perplexity"] < 256  # a trained byte-level model
    assert metrics["shakespeare_rolling/bits_per_byte"] == pytest.approx(
        math.log2(metrics["shakespeare_rolling/byte_perplexity"]))
    info = metrics["lm_eval"]
    tasks = {"shakespeare_next_line", "shakespeare_rolling", "shakespeare_last_word"}
    assert set(info["versions"]) == tasks and set(info["samples_sha256"]) == tasks
    assert all(info["n_samples"][t]["effective"] == 6 for t in tasks)
    assert "custom_dataset" in info["configs"]["shakespeare_next_line"]

    records = ctx.records.records
    assert len(records) == 18 and len({r["id"] for r in records}) == 18
    assert all(r["doc_hash"] and r["prompt_hash"] for r in records)
    mc = [r for r in records if r["task"] == "shakespeare_next_line"]
    assert sum(r["acc"] for r in mc) / len(mc) == pytest.approx(metrics["shakespeare_next_line/acc"])
    gen = [r for r in records if r["task"] == "shakespeare_last_word"]
    assert all("raw_response" in r for r in gen)

    # The scores are the in-memory model's: recompute the choices' log-likelihoods directly.
    from harness_plugins.metrics.lm_eval_tasks.shakespeare_data import next_line

    docs = next_line()["test"]
    for r in mc[:3]:
        doc = docs[r["doc_id"]]
        direct = [continuation_loglik(tiny.model, tiny.tokenizer, doc["context"], "\n" + c) for c in doc["choices"]]
        assert [resp[0] for resp in r["response"]] == pytest.approx(direct, abs=1e-3)
        assert r["acc"] == float(max(range(4), key=lambda i: direct[i]) == doc["label"])


def test_batch_size_reaches_the_model_and_state_is_restored(tiny, tmp_path):
    model = tiny.model
    seen: list[int] = []
    hook = model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(
        (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[0]), with_kwargs=True)
    model.train()  # lm-eval switches to eval mode; the plugin must put the caller's mode back
    model.gpt_neox.layers[0].eval()  # and a mixed state too
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    vocab, pad = len(tiny.tokenizer), tiny.tokenizer.pad_token
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    try:
        metrics, _ = run_plugin(tiny, tmp_path, tasks=["shakespeare_next_line"], limit=4, batch_size=3,
                                bootstrap_iters=0, num_fewshot=1)
        assert model.training and not model.gpt_neox.layers[0].training and model.gpt_neox.layers[1].training
    finally:
        hook.remove()
        model.eval()
    # simple_evaluate(batch_size=...) is ignored for model objects; the plugin's batch size is HFLM's.
    assert metrics["lm_eval"]["batch_size"] == 3 and metrics["lm_eval"]["n_shot"]["shakespeare_next_line"] == 1
    assert max(seen) == 3 and len(seen) >= 16 / 3  # 4 documents x 4 choices = 16 requests in batches of 3
    assert torch.equal(torch.get_rng_state(), rng)  # lm-eval reseeds the global RNGs; restored
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert len(tiny.tokenizer) == vocab and tiny.tokenizer.pad_token == pad


def test_unknown_task_is_one_line_with_suggestions(tiny, tmp_path):
    with pytest.raises(HarnessError) as err:
        run_plugin(tiny, tmp_path, tasks=["shakespeare_next_line", "hellaswg"])
    message = str(err.value)
    assert "\n" not in message
    assert "unknown task 'hellaswg'" in message and "'hellaswag'" in message and "fix:" in message


def test_hub_dataset_offline_is_one_line_with_the_fix(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "probe.yaml").write_text(textwrap.dedent("""\
        task: offline_probe
        dataset_path: harness-test/not-downloaded
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{q}}"
        doc_to_choice: "{{choices}}"
        doc_to_target: 0
        metric_list:
          - metric: acc
        """))
    with pytest.raises(HarnessError) as err:
        run_plugin(tiny, tmp_path, tasks=["offline_probe"], include_path=["tasks"])
    message = str(err.value)
    assert "\n" not in message and "offline_probe" in message and "pre-download" in message


def test_suite_config_is_validated(tmp_path):
    bad = write_suite(tmp_path, """
        models: {tiny: {plugin: pythia_tiny}}
        metrics:
          lm_eval: {tasks: [shakespeare_local], batchsize: 4}
        """)
    with pytest.raises(HarnessError, match=r"metrics\.lm_eval\.batchsize: unknown key .*did you mean 'batch_size'"):
        load_suite(bad)
    empty = write_suite(tmp_path, """
        models: {tiny: {plugin: pythia_tiny}}
        metrics:
          lm_eval: {tasks: []}
        """, name="empty.yaml")
    with pytest.raises(HarnessError, match=r"metrics\.lm_eval\.tasks"):
        load_suite(empty)

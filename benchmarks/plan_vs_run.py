"""``harness plan`` against a real run on this CPU: estimated vs measured peak memory and time, stage by stage.

    .venv/bin/python benchmarks/plan_vs_run.py [--suite suites/quick.yaml] [--stage ID ...] [--mfu 0.35]
    .venv/bin/python benchmarks/plan_vs_run.py --whole-run      # the plan, then `harness run` of the whole suite

Each stage runs alone in a fresh process (``--child``), so its peak is its own. Memory: the process's peak resident
size above the resident size just before the stage (model loaded, its documents read once, a training stage's
tokens cached), plus the model's weights, which the estimate counts. glibc is told to return freed blocks of 64 kB
and more to the system at once (``MALLOC_MMAP_THRESHOLD_``), so the resident size follows the live tensors instead
of keeping the allocator's high-water mark. Time: the plan's compute time on this CPU (each stage's calls timed
on a random-weight model of its shape, see harness._engine.plan.calibrate) against the time the stage spent in the model
(its forward calls and gradient passes, timed in the child) or, for training, inside the training loop; the stage's
wall time (model loading excluded) is printed beside them: the difference is its own Python work and data reading,
which the plan does not count.

``--whole-run`` checks the plan against a real run of the whole suite (`harness run`, one process, as a user runs
it): every stage's estimated time against its measured ``duration_s``, and the totals.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Stages of the quick suite measured by default: the three kinds of work, on the shipped tiny model.
DEFAULT_STAGES = ["train/baseline/s42", "train/monotonic/s42", "metrics/perplexity/tiny", "metrics/lm_eval/tiny",
                  "attacks/hotflip/tiny/s42", "attacks/uat/tiny/s42"]
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false"}


def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_resident() -> int:
    """The process's peak resident size since the last ``reset_peak_resident`` (Linux's VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def reset_peak_resident() -> bool:
    """Start the peak over from the current resident size, so that a spike before the stage (reading and caching
    its data, loading the model) is not counted as the stage's. Linux >= 4.0; False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class ModelClock:
    """Seconds spent inside the model: its forward calls and the gradient passes (``torch.autograd.grad``) that
    follow them; what the plan's calls estimate, without the stage's own Python work and data loading.

    The scorer may call the transformer body and the vocabulary projection directly (perplexity projects only the
    scored positions, harness.scoring), so those are timed too; a call inside another timed one (the body inside the
    model's forward) is part of the outer call, not counted again."""

    def __init__(self, model) -> None:
        import torch

        self.seconds, self.calls, self._depth = 0.0, 0, 0
        body = getattr(model, getattr(model, "base_model_prefix", ""), None)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        for module in {id(m): m for m in (model, body, head) if isinstance(m, torch.nn.Module)}.values():
            module.forward = self._timed(module.forward, count=True)
        torch.autograd.grad = self._timed(torch.autograd.grad, count=False)

    def _timed(self, fn, count: bool):
        def timed(*args, **kwargs):
            self._depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.perf_counter() - start
                    self.calls += count

        return timed


def override_training(suite, steps: int | None, checkpointing: bool = False) -> None:
    """Shorter training (same shapes, so the same peak): ``steps`` steps, validating and snapshotting halfway; and
    gradient checkpointing on, if asked."""
    update: dict = {"gradient_checkpointing": True} if checkpointing else {}
    if steps is not None:
        half = max(1, steps // 2)
        update.update(steps=steps, val_every=half, checkpoint_every=half)
    for entry in suite.train.values():
        entry.config = entry.config.model_copy(update=update)


def measure_stage(suite_path: str, out: str, stage_id: str, steps: int | None = None,
                  checkpointing: bool = False, estimate: bool = False) -> dict:
    """Run one stage (its dependencies must be done in ``out``) and measure it; the child process's work. With
    ``estimate``, the plan's cpu time of the stage is made here right after it ran, under the same load."""
    import datasets  # noqa: F401  (imported before the baseline: its import is not the stage's memory)

    from harness.data import document_sources, load_documents
    from harness._engine.runner import Runner
    from harness.store import RecordLog
    from harness._engine.suite import load_suite

    suite = load_suite(suite_path, "quick", output_dir=out)
    override_training(suite, steps, checkpointing)
    runner = Runner(suite, show_progress=False)
    stage = runner.graph.by_id()[stage_id]
    entry = suite.section(stage.section)[stage.entry]
    runner.write_run_files()
    loaded = runner.load_model(stage.model, stage.seed)
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    for _, source in document_sources(entry.config, entry.key):
        load_documents(source)  # the datasets cache is built and warm before the baseline
    if stage.section == "train":  # the trainer's token cache, as it would build it, before the baseline
        from harness_plugins.training.data import build_blocks, cached_blocks

        runner.prepare_stage_dir(stage)
        cfg, state = entry.config, runner.stage_dir(stage) / "train_state"
        state.mkdir(parents=True, exist_ok=True)
        cached_blocks(state / "train_blocks.npz", lambda: build_blocks(cfg.data, loaded.tokenizer, cfg.seq_len,
                                                                       cfg.packing), True, lambda: None)
        if cfg.val_data is not None:
            cached_blocks(state / "val_blocks.npz", lambda: build_blocks(cfg.val_data, loaded.tokenizer, cfg.seq_len,
                                                                         True, limit=cfg.val_blocks), True,
                          lambda: None)
    # Evaluation and attacks run on this (cached) model; training times its own loop: its steps (``train_time_s``)
    # and its validation passes (``val_time_s``), both of which the plan counts.
    clock = ModelClock(loaded.model) if stage.section != "train" else None
    del loaded
    gc.collect()
    before_peak = peak_resident()
    reset = reset_peak_resident()
    base = resident()
    outcome = runner.run_stage(stage)
    peak = peak_resident()
    planned = {}
    if estimate:  # right after the stage (the same machine and load), not before (its memory is not the stage's)
        from harness._engine.plan import accelerator, make_plan
        from harness._engine.plan.calibrate import CallTimer

        est = make_plan(suite, accelerator("cpu"), timer=CallTimer(), stages=[stage]).stages[0]
        w = est.workload
        # The counts the time is priced from, beside what the stage did (tests/test_plan.py checks these; the time
        # ratio itself is this benchmark's to print, not a test's to assert).
        planned = {"estimated_s": est.wall_hours * 3600, "time_how": est.time_how, "planned_queries": w.queries,
                   "planned_calls": (w.forward_calls or 0) + (w.gradient_calls or 0),
                   "planned_train_tokens": w.train_tokens}
    metrics = outcome.result["metrics"] or {}
    queries = [r.get("queries") for r in RecordLog(runner.stage_dir(stage) / "records.jsonl")]
    # Queries the per-example records count (HotFlip: all of an example's; UAT: only its held-out scoring).
    done = {"record_queries": sum(queries) if queries and None not in queries else None,
            "train_tokens": metrics.get("tokens") if stage.section == "train" else None}
    return {"stage": stage_id, "peak_bytes": peak - base + weights, "weights": weights,
            "base_bytes": base, "peak_before_stage_bytes": before_peak, "peak_reset": reset,
            "duration_s": outcome.result["duration_s"],
            "loop_time_s": _loop_seconds(metrics),
            "model_time_s": clock.seconds if clock else None, "model_calls": clock.calls if clock else None,
            **done, **planned}


def _loop_seconds(metrics: dict) -> float | None:
    """A training stage's time in its loop: steps plus validation (None for other stages)."""
    if metrics.get("train_time_s") is None:
        return None
    return metrics["train_time_s"] + (metrics.get("val_time_s") or 0.0)


def run_child(suite: str, out: str, stage: str, steps: int | None = None, checkpointing: bool = False) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", suite, out, stage]
    if steps is not None:
        cmd += ["--steps", str(steps)]
    if checkpointing:
        cmd.append("--gradient-checkpointing")
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **CHILD_ENV}, cwd=ROOT,
                          timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{stage} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", nargs=3, metavar=("SUITE", "OUT", "STAGE"), help=argparse.SUPPRESS)
    p.add_argument("--suite", default=str(ROOT / "suites" / "quick.yaml"))
    p.add_argument("--stage", action="append", default=None, help=f"stage ids (default: {DEFAULT_STAGES})")
    p.add_argument("--steps", type=int, default=None, help="shorter training stages (same shapes)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="training stages with checkpointing")
    p.add_argument("--mfu", type=float, default=0.35)
    p.add_argument("--estimate", action="store_true", help=argparse.SUPPRESS)  # child: plan the stage first
    p.add_argument("--whole-run", action="store_true", help="run the whole suite with `harness run` and compare")
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure_stage(*args.child, steps=args.steps, checkpointing=args.gradient_checkpointing,
                                       estimate=args.estimate)))
        return

    from harness._engine.plan import accelerator, make_plan
    from harness._engine.plan.calibrate import CallTimer
    from harness._engine.suite import load_suite

    suite = load_suite(args.suite, "quick")
    override_training(suite, args.steps, args.gradient_checkpointing)
    cpu = accelerator("cpu")
    plan = {e.stage.id: e for e in make_plan(suite, cpu, args.mfu, timer=CallTimer()).stages}
    print(f"plan on this CPU: fp32 matmul peak {cpu.peak_tflops * 1e3:.1f} GFLOP/s (measured now), stage times "
          f"from timed calls; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    if args.whole_run:
        whole_run(args.suite, plan, args.steps)
        return
    # Time: the estimate against the time in the model (evaluation, attacks) or in the training loop (training).
    header = (f"{'stage':<28} {'est. peak':>10} {'measured':>10} {'ratio':>6}  {'est. time':>9} {'stage s':>8} "
              f"{'model s':>8} {'ratio':>6}")
    print(header)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for stage_id in args.stage or DEFAULT_STAGES:
            m = run_child(args.suite, out, stage_id, args.steps, args.gradient_checkpointing)
            est = plan[stage_id]
            mem = est.memory.total if est.memory else float("nan")
            est_s = est.wall_hours * 3600
            spent = m["loop_time_s"] or m["model_time_s"] or m["duration_s"]
            rows.append({**m, "estimated_peak_bytes": mem, "estimated_s": est_s})
            print(f"{stage_id:<28} {mem / 1e6:>8.0f}MB {m['peak_bytes'] / 1e6:>8.0f}MB {mem / m['peak_bytes']:>6.2f}  "
                  f"{est_s:>8.1f}s {m['duration_s']:>8.1f} {spent:>8.1f} {est_s / spent:>6.2f}")
    print(json.dumps(rows))


def whole_run(suite_path: str, plan: dict, steps: int | None) -> None:
    """``harness run`` of the whole suite in a fresh directory; each stage's estimate against its ``duration_s``."""
    if steps is not None:
        raise SystemExit("--whole-run runs the suite as written: drop --steps")
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", suite_path, "--out", out, "--no-progress"],
                              env={**os.environ, **CHILD_ENV}, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"harness run failed:\n{proc.stderr[-3000:]}")
        measured = {sid: json.loads((Path(out) / "stages" / sid / "result.json").read_text())["duration_s"]
                    for sid in plan}
    print(f"{'stage':<44} {'est. s':>8} {'run s':>8} {'ratio':>6}")
    for sid, est in plan.items():
        print(f"{sid:<44} {est.wall_hours * 3600:>8.1f} {measured[sid]:>8.1f} "
              f"{est.wall_hours * 3600 / measured[sid]:>6.2f}")
    est_total, run_total = sum(e.wall_hours for e in plan.values()) * 3600, sum(measured.values())
    print(f"{'total (stages)':<44} {est_total:>8.1f} {run_total:>8.1f} {est_total / run_total:>6.2f}")
    print(f"whole `harness run`: {wall:.1f} s wall (model loading, data reading and reports included, which the "
          f"plan does not count)")
    print(json.dumps({"estimated_s": {k: e.wall_hours * 3600 for k, e in plan.items()}, "measured_s": measured,
                      "wall_s": wall}))


if __name__ == "__main__":
    main()

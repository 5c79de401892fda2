"""Metric plugin ``lm_eval``: lm-evaluation-harness tasks on the stage's in-memory model.

The loaded model is wrapped in lm-eval's ``HFLM`` (never reloaded from disk) and run through ``simple_evaluate``.
Any task lm-eval knows works (``lambada_openai``, ``hellaswag``, ``winogrande``, ``truthfulqa_mc2``...); the small
offline tasks shipped in ``lm_eval_tasks/`` (tag ``shakespeare_local``: multiple choice, rolling log-likelihood,
generation) run without the network, and lm-eval's own task index (≈ 9 s to build) is only read when a suite names
a task that is not local.

Known pitfalls handled here:

- ``simple_evaluate(batch_size=...)`` is ignored when the model is an object; the batch size goes to ``HFLM``.
- ``HFLM`` puts the model in eval mode, ties weights and may add a pad token to the tokenizer; ``simple_evaluate``
  reseeds the global RNGs. The tokenizer is copied and the modules' train/eval flags and the RNG states restored.
- Hub datasets offline: a task whose data is not in the local cache fails with one line saying how to fetch it.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import logging
import os
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, redirect_stderr
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from harness import (Batch, ExistingPath, HarnessError, LoadedModel, MetricPlugin, MetricSpec, NoEstimate, PlanInputs,
                     PluginConfig, StageContext, StagePreempted, Workload, hookimpl)

#: The offline task YAMLs shipped with the plugin (and the script that built their data).
LOCAL_TASKS = Path(__file__).resolve().parent / "lm_eval_tasks"


class LMEvalConfig(PluginConfig):
    limit_fields = ("limit",)  # `harness run --limit N` caps these
    #: Task, group or tag names lm-eval knows, or the shipped local ones (``shakespeare_local`` = all three).
    tasks: list[str] = Field(min_length=1)
    #: Few-shot examples per prompt (default: each task's own setting, 0 when it has none).
    num_fewshot: int | None = Field(default=None, ge=0)
    #: Examples per task (an int) or a fraction of each task (a float < 1); default all.
    limit: int | float | None = Field(default=None, gt=0)
    #: Requests per forward pass (given to ``HFLM``; ``simple_evaluate``'s own batch_size ignores model objects).
    batch_size: int = Field(default=8, ge=1)
    #: Bootstrap resamples for the standard errors of metrics without a closed form (0: none).
    bootstrap_iters: int = Field(default=1000, ge=0)
    #: Seed of the few-shot example sampling (lm-eval's default), so few-shot prompts are reproducible.
    fewshot_seed: int = 1234
    #: Extra directories of task YAMLs (relative to the suite file).
    include_path: list[ExistingPath] = Field(default_factory=list)
    #: Overrides of the generation settings of generate_until tasks (e.g. ``{max_gen_toks: 32}``).
    gen_kwargs: dict[str, Any] | None = None
    #: Allow task directories in ``include_path`` that import Python (``!function`` in a task YAML, or ``.py``
    #: files beside them): lm-eval runs that code. Off unless a suite asks, like ``trust_remote_code``.
    trust_code: bool = Field(default=False, exclude=True)  # permission, not a setting: not in the cache key

    @field_validator("tasks", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _no_code_unless_trusted(self) -> LMEvalConfig:
        if not self.trust_code:
            for directory in self.include_path:
                found = code_in_task_dir(directory)
                if found:
                    raise ValueError(f"include_path {directory}: {found} would make lm-eval run Python from that "
                                     "directory; fix: set `trust_code: true` for this entry if you trust that code")
        return self


def code_in_task_dir(directory: Path) -> str:
    """What in a task directory would import code (a ``!function`` tag in a YAML, a ``.py`` file), or ""."""
    root = Path(directory)
    if root.is_file():
        files = [root]
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file())
    for path in files:
        if path.suffix == ".py":
            return f"{path.name} (Python code)"
        if path.suffix in (".yaml", ".yml"):
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            if "!function" in text:
                return f"{path.name} (a `!function` tag)"
    return ""


# -- cost model (harness plan) ----------------------------------------------------------------------------------------
#: task -> (documents in the evaluated split, requests per document, tokens per request); approximate.
HUB_TASKS = {
    "lambada_openai": (5153, 1, 90), "lambada_standard": (5153, 1, 90), "hellaswag": (10042, 4, 100),
    "winogrande": (1267, 2, 30), "truthfulqa_mc1": (817, 5, 250), "truthfulqa_mc2": (817, 7, 250),
    "arc_easy": (2376, 4, 50), "arc_challenge": (1172, 4, 60), "piqa": (1838, 2, 50), "boolq": (3270, 2, 150),
    "openbookqa": (500, 4, 25), "sciq": (1000, 4, 130), "wikitext": (62, 1, 4000),
}
LOCAL_DATA = LOCAL_TASKS / "data"
LOCAL_TASK_FILES = {"shakespeare_next_line": "next_line.jsonl", "shakespeare_last_word": "last_word.jsonl",
               "shakespeare_rolling": "rolling.jsonl"}
LOCAL_TAGS = {"shakespeare_local": list(LOCAL_TASK_FILES)}


def local_task_size(name: str, chars_per_token: float) -> tuple[int, float, float]:
    """(documents, requests per document, tokens per request) measured from a shipped task's data file."""
    rows = [json.loads(line) for line in (LOCAL_DATA / LOCAL_TASK_FILES[name]).read_text().splitlines() if line.strip()]
    requests = chars = 0.0
    for row in rows:
        base = len(row.get("context", "")) + len(row.get("text", ""))
        choices = row.get("choices") or [row.get("target", "")]
        requests += len(choices)
        chars += sum(base + len(c) for c in choices)
    return len(rows), requests / len(rows), chars / requests / chars_per_token


def lm_eval_workload(cfg: LMEvalConfig, inputs: PlanInputs) -> Workload:
    """Each request is one forward pass over context + continuation. The shipped offline tasks are measured from their
    data files; for common hub tasks :data:`HUB_TASKS` gives approximate sizes; other tasks are listed as not
    estimated. lm-eval's task index is not built."""
    tasks = [t for name in cfg.tasks for t in LOCAL_TAGS.get(name, [name])]
    shots = 1 + (cfg.num_fewshot or 0)  # each few-shot example adds about one request's worth of context
    total = longest = 0.0
    counted, unknown, notes = [], [], []
    for task in tasks:
        if task in LOCAL_TASK_FILES:
            docs, per_doc, length = local_task_size(task, inputs.chars_per_token)
        elif task in HUB_TASKS:
            docs, per_doc, length = HUB_TASKS[task]
        else:
            unknown.append(task)
            continue
        if cfg.limit is not None:
            docs = min(docs, int(cfg.limit)) if cfg.limit >= 1 else max(1, int(docs * cfg.limit))
        length = min(length * shots, inputs.shape.max_length)
        total += docs * per_doc * length
        longest = max(longest, length)
        counted.append(f"{task} {docs:,}x{per_doc:.3g}x{length:,.0f}")
    if not counted:
        raise NoEstimate(f"lm_eval: no size known for task(s) {', '.join(unknown)} (only the shipped tasks and "
                         f"{', '.join(sorted(HUB_TASKS))} are tabled)")
    notes.append("documents x requests x tokens: " + "; ".join(counted) + " (approximate)")
    if unknown:
        notes.append(f"not counted (size unknown): {', '.join(unknown)}")
    return Workload(forward_tokens=total, context=int(longest),
                    batches=[Batch(cfg.batch_size, int(longest), label="requests")],
                    disk_bytes=500 * total / max(longest, 1), disk_note="per-sample records", notes=notes)


class LMEval(MetricPlugin[LMEvalConfig]):
    """lm-evaluation-harness tasks on the in-memory model (hub tasks, or shipped offline ones)."""

    name = "lm_eval"
    seeded = False  # deterministic given the model: greedy generation, fixed few-shot seed
    version = "1"

    def declared_metrics(self) -> list[MetricSpec]:
        """One family per naming of :func:`summarize`: ``task/metric`` (``task/metric,filter`` when a task has
        several filters), the mean of the per-sample ``metric`` over that task's records, and its standard error."""
        return [
            MetricSpec("{task}/{metric},{filter}_stderr", aggregation="none", show=False),
            MetricSpec("{task}/{metric}_stderr", aggregation="none", show=False),
            MetricSpec("{task}/{metric},{filter}", field="{metric}", where={"task": "{task}", "filter": "{filter}"},
                       error="{task}/{metric},{filter}_stderr", digits=3),
            MetricSpec("{task}/{metric}", field="{metric}", where={"task": "{task}"}, error="{task}/{metric}_stderr",
                       digits=3),
        ]

    def evaluate(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        cfg = self.config
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        task_manager = make_task_manager(cfg.tasks, [LOCAL_TASKS, *cfg.include_path])
        ctx.log(f"lm-eval tasks {', '.join(cfg.tasks)} (batch size {cfg.batch_size}, limit {cfg.limit})")
        # lm-eval draws tqdm bars on stderr; without a terminal (or with --no-progress) they are only noise. Its
        # warnings are the command line's to show or not (`harness -v`): when its logger passes
        # them, stderr stays open for them.
        no_bars = ctx.show_progress is False or (ctx.show_progress is None and not sys.stderr.isatty())
        quiet = no_bars and not logging.getLogger("lm_eval").isEnabledFor(logging.WARNING)
        with preserved_state(model), (hidden_stderr() if quiet else nullcontext()):
            # A copy of the tokenizer: HFLM may add a pad token to it, and other stages share the original.
            lm = HFLM(pretrained=model.model, tokenizer=copy.deepcopy(model.tokenizer), batch_size=cfg.batch_size,
                      max_length=model.max_length)
            poll_stop(lm, ctx)
            try:
                out = simple_evaluate(model=lm, tasks=list(cfg.tasks), task_manager=task_manager,
                                      num_fewshot=cfg.num_fewshot, limit=cfg.limit,
                                      bootstrap_iters=cfg.bootstrap_iters, log_samples=True,
                                      fewshot_random_seed=cfg.fewshot_seed, gen_kwargs=cfg.gen_kwargs)
            except Exception as exc:
                error = dataset_error(exc, cfg.tasks)
                if error is None:
                    raise
                raise error from exc
        if out is None:  # only non-zero ranks of a distributed launch get None
            raise HarnessError("lm_eval: simple_evaluate returned no results (non-zero rank); fix: run one process")
        metrics, details = summarize(out)
        metrics["lm_eval"] = {**details, "batch_size": lm.batch_size, "limit": cfg.limit,
                              "num_fewshot": cfg.num_fewshot, "lm_eval_version": out.get("lm_eval_version")}
        write_records(out, ctx)
        return metrics

    def plan(self, inputs: PlanInputs) -> Workload:
        """Requests and tokens of the tasks, from the config (``harness plan``)."""
        return lm_eval_workload(self.config, inputs)


def poll_stop(lm: Any, ctx: StageContext) -> None:
    """Make every batch lm-eval sends to the model check the stop flag first (its results are written only when
    ``simple_evaluate`` returns, so a stopped stage reruns whole)."""
    for name in ("_model_call", "_model_generate"):
        call = getattr(lm, name)

        def polled(*args: Any, _call: Any = call, **kwargs: Any) -> Any:
            if ctx.should_stop:
                raise StagePreempted(ctx.stage.id)
            return _call(*args, **kwargs)

        setattr(lm, name, polled)


def make_task_manager(tasks: list[str], include_path: list[Path]):
    """A TaskManager that knows every name in ``tasks``: local YAMLs only when they suffice (fast, offline),
    lm-eval's whole registry otherwise. Unknown names raise one line with the closest known names."""
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in include_path]
    manager = TaskManager(include_path=paths, include_defaults=False)
    if all(t in manager.all_tasks for t in tasks):
        return manager
    manager = TaskManager(include_path=paths, include_defaults=True)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        close = difflib.get_close_matches(unknown[0], manager.all_tasks, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise HarnessError(f"lm_eval: unknown task '{unknown[0]}'{hint}; fix: use a task name from "
                           "`lm-eval ls tasks`, a shipped one (shakespeare_local, shakespeare_next_line, "
                           "shakespeare_rolling, shakespeare_last_word) or add its YAML directory to `include_path`")
    return manager


def dataset_error(exc: Exception, tasks: list[str]) -> HarnessError | None:
    """lm-eval loads task data inside simple_evaluate; a hub dataset missing offline becomes one line."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    # datasets raises ConnectionError("Couldn't reach ... (OfflineModeIsEnabled)") offline, hub errors otherwise.
    offline = isinstance(exc, ConnectionError) or any(
        s in text for s in ("OfflineModeIsEnabled", "LocalEntryNotFound", "DatasetNotFoundError", "Couldn't reach"))
    if not offline:
        return None
    return HarnessError(
        f"lm_eval: cannot load the data of tasks {', '.join(tasks)}: {text[:200]}; fix: pre-download it where the "
        "hub is reachable (e.g. run `lm-eval run --model hf --model_args pretrained=EleutherAI/pythia-14m --tasks "
        f"{','.join(tasks)} --limit 1` once, or `datasets.load_dataset(<its dataset_path>)`), then set "
        "HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1 here")


@contextmanager
def preserved_state(model: LoadedModel) -> Iterator[None]:
    """Undo lm-eval's side effects on the shared model and the process: module train/eval flags, RNG states."""
    modes = {name: m.training for name, m in model.model.named_modules()}
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        yield
    finally:
        for name, m in model.model.named_modules():
            m.training = modes.get(name, m.training)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])


@contextmanager
def hidden_stderr() -> Iterator[None]:
    with open(os.devnull, "w") as devnull, redirect_stderr(devnull):
        yield


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summarize(out: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flat metrics (``task/metric`` and ``task/metric_stderr``) plus what identifies each task's evaluation."""
    metrics: dict[str, Any] = {}
    for task, values in sorted(out["results"].items()):
        filters = {key.split(",", 1)[1] for key in values if "," in key}
        for key, value in values.items():
            if "," not in key or key.split(",", 1)[0].endswith("_stderr"):
                continue
            metric, filt = key.split(",", 1)
            name = f"{task}/{metric}" + ("" if len(filters) == 1 else f",{filt}")
            metrics[name] = _number(value)
            metrics[f"{name}_stderr"] = _number(values.get(f"{metric}_stderr,{filt}"))
    details = {
        "versions": out.get("versions", {}),
        "n_shot": out.get("n-shot", {}),
        "n_samples": out.get("n-samples", {}),
        "higher_is_better": out.get("higher_is_better", {}),
        "groups": out.get("group_subtasks", {}),
        # lm-eval reports a hash per document, prompt and target; one digest per task identifies the exact data.
        "samples_sha256": {task: _digest(samples) for task, samples in out.get("samples", {}).items()},
        "configs": {task: _jsonable(c) for task, c in out.get("configs", {}).items()},
    }
    return metrics, details


def _digest(samples: list[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: (int(s["doc_id"]), str(s.get("filter")))):
        h.update(f"{s['doc_id']}:{s.get('doc_hash')}:{s.get('prompt_hash')}:{s.get('target_hash')};".encode())
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return repr(obj) if callable(obj) else str(obj)


def _short(value: Any, limit: int = 300) -> Any:
    value = _jsonable(value)
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "..."
    return value


def write_records(out: dict[str, Any], ctx: StageContext) -> None:
    """One record per (task, document, filter): the target, the filtered response, each per-sample metric and
    lm-eval's hashes. A rerun after an interruption skips what was already written (evaluation is deterministic)."""
    done = ctx.records.done()
    for task, samples in sorted(out.get("samples", {}).items()):
        for s in samples:
            rid = f"{task}/{s['doc_id']}/{s.get('filter', 'none')}"
            if rid in done:
                continue
            record = {"id": rid, "task": task, "doc_id": int(s["doc_id"]), "filter": s.get("filter"),
                      "target": _short(s.get("target")), "response": _short(s.get("filtered_resps")),
                      "doc_hash": s.get("doc_hash"), "prompt_hash": s.get("prompt_hash"),
                      "target_hash": s.get("target_hash")}
            if s.get("filter") not in (None, "none"):  # a filter rewrote the output: keep what the model wrote
                record["raw_response"] = _short(s.get("resps"))
            for metric in s.get("metrics", []):
                record[metric] = _jsonable(s.get(metric))
            ctx.records.append(record)


@hookimpl
def harness_metrics() -> list[type]:
    return [LMEval]

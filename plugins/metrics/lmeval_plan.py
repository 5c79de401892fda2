"""What an ``lm_eval`` stage costs (its ``plan``, read by ``harness plan``), without building lm-eval's task index.

Each request is one forward pass over context + continuation. The shipped offline tasks are measured from their
data files; for common hub tasks a small table gives (documents, requests per document, tokens per request),
approximate figures from the tasks' evaluation splits (GPT-NeoX tokens); other tasks are listed as not estimated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from harness import Batch, NoEstimate, PlanInputs, Workload

if TYPE_CHECKING:
    from .lmeval import LMEvalConfig

#: task -> (documents in the evaluated split, requests per document, tokens per request); approximate.
HUB_TASKS = {
    "lambada_openai": (5153, 1, 90), "lambada_standard": (5153, 1, 90), "hellaswag": (10042, 4, 100),
    "winogrande": (1267, 2, 30), "truthfulqa_mc1": (817, 5, 250), "truthfulqa_mc2": (817, 7, 250),
    "arc_easy": (2376, 4, 50), "arc_challenge": (1172, 4, 60), "piqa": (1838, 2, 50), "boolq": (3270, 2, 150),
    "openbookqa": (500, 4, 25), "sciq": (1000, 4, 130), "wikitext": (62, 1, 4000),
}
LOCAL_DATA = Path(__file__).resolve().parent / "lm_eval_tasks" / "data"
LOCAL_TASKS = {"shakespeare_next_line": "next_line.jsonl", "shakespeare_last_word": "last_word.jsonl",
               "shakespeare_rolling": "rolling.jsonl"}
TAGS = {"shakespeare_local": list(LOCAL_TASKS)}


def local_task_size(name: str, chars_per_token: float) -> tuple[int, float, float]:
    """(documents, requests per document, tokens per request) measured from a shipped task's data file."""
    rows = [json.loads(line) for line in (LOCAL_DATA / LOCAL_TASKS[name]).read_text().splitlines() if line.strip()]
    requests = chars = 0.0
    for row in rows:
        base = len(row.get("context", "")) + len(row.get("text", ""))
        choices = row.get("choices") or [row.get("target", "")]
        requests += len(choices)
        chars += sum(base + len(c) for c in choices)
    return len(rows), requests / len(rows), chars / requests / chars_per_token


def lm_eval_workload(cfg: LMEvalConfig, inputs: PlanInputs) -> Workload:
    tasks = [t for name in cfg.tasks for t in TAGS.get(name, [name])]
    shots = 1 + (cfg.num_fewshot or 0)  # each few-shot example adds about one request's worth of context
    total = longest = 0.0
    counted, unknown, notes = [], [], []
    for task in tasks:
        if task in LOCAL_TASKS:
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

"""Build the small offline lm-eval tasks shipped beside this file from the held-out Shakespeare text.

    python plugins/metrics/lm_eval_tasks/make_tasks.py        # rewrites data/*.jsonl (deterministic)

Source: ``data/shakespeare/test.jsonl`` (Hamlet, public domain; the tiny default model never trained on it).
Three tasks, one per lm-eval request type, so the ``lm_eval`` metric plugin and its tests cover all of them:

- ``shakespeare_next_line`` (multiple_choice): a line of a speech, and four candidate next lines: the true one and
  three lines drawn from elsewhere in the play. Metrics: acc, acc_norm.
- ``shakespeare_rolling`` (loglikelihood_rolling): whole passages. Metrics: word/byte perplexity, bits per byte.
- ``shakespeare_last_word`` (generate_until): a line without its last word; the model writes the word
  (LAMBADA-style cloze). Metric: exact match of the first generated word.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[2] / "data" / "shakespeare" / "test.jsonl"
N_NEXT_LINE, N_ROLLING, N_LAST_WORD = 40, 16, 40
ROLLING_CHARS = 1200  # keeps each rolling document to a few hundred tokens


def speech_lines(text: str) -> list[list[str]]:
    """The spoken lines of each paragraph (speaker names and stage directions removed)."""
    speeches = []
    for paragraph in text.split("\n\n"):
        lines = [ln.strip() for ln in paragraph.splitlines()]
        if lines and re.fullmatch(r"[A-Z][\w. ]{0,20}\.", lines[0]):  # "King." / "Ham." / "Cor. and Volt."
            lines = lines[1:]
        lines = [ln for ln in lines if ln and not ln.startswith("[") and not ln.isupper()]
        if lines:
            speeches.append(lines)
    return speeches


def words(line: str) -> int:
    return len(line.split())


def main() -> None:
    rng = random.Random(0)
    docs = [json.loads(line) for line in SOURCE.read_text(encoding="utf-8").splitlines()]
    speeches = [s for d in docs for s in speech_lines(d["text"])]
    verse = [ln for s in speeches for ln in s if 5 <= words(ln) <= 14]

    pairs = [(a, b) for s in speeches for a, b in zip(s, s[1:]) if 5 <= words(a) <= 14 and 5 <= words(b) <= 14]
    next_line = []
    for i, (context, answer) in enumerate(rng.sample(pairs, N_NEXT_LINE)):
        distractors = rng.sample([ln for ln in verse if ln not in (context, answer)], 3)
        label = rng.randrange(4)
        choices = distractors[:label] + [answer] + distractors[label:]
        next_line.append({"id": f"next-{i:03d}", "context": context, "choices": choices, "label": label})

    rolling = [{"id": d["id"], "text": d["text"][:ROLLING_CHARS]} for d in rng.sample(docs, N_ROLLING)]

    cloze = []
    for ln in verse:
        m = re.fullmatch(r"(.*\S)\s+([A-Za-z][a-z']{2,})([.,;:!?]*)", ln)
        if m:
            cloze.append({"context": m.group(1), "target": m.group(2)})
    last_word = [{"id": f"last-{i:03d}", **c} for i, c in enumerate(rng.sample(cloze, N_LAST_WORD))]

    for name, rows in (("next_line", next_line), ("rolling", rolling), ("last_word", last_word)):
        path = HERE / "data" / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{path.relative_to(HERE)}: {len(rows)} rows")


if __name__ == "__main__":
    main()

"""An out-of-tree harness attack plugin: a right-to-left sweep of random token swaps over the context.

Install with ``pip install -e examples/harness-example-attack`` and use it in a suite::

    attacks:
      sweep:
        data: {dataset: json, data_files: ../data/shakespeare/test.jsonl, split: test}
        candidates: 16
"""

from __future__ import annotations

import torch
from pydantic import Field

from harness import LoadedModel, StageContext, hookimpl
from harness.attacks import (Example, ExampleAttack, ExamplesConfig, Scorer, allowed_tokens, example_record,
                             random_allowed)


class SweepConfig(ExamplesConfig):  # the shared task on documents: data, n_examples, context/continuation, threshold...
    candidates: int = Field(default=16, ge=1)  # random tokens tried per position, scored in one batch
    threshold: float = Field(default=0.15, ge=0)  # success: the NLL raised by more than 15% (the core sets no default)


class SweepAttack(ExampleAttack[SweepConfig]):
    """Right-to-left sweep: at each context position keep the best of a few random tokens if it raises the NLL."""

    name = "sweep"

    def setup(self, model: LoadedModel, ctx: StageContext) -> None:
        self.allowed = allowed_tokens(model, self.config.vocab)

    def attack_example(self, ex: Example, scorer: Scorer, rng: torch.Generator) -> dict:
        # The core runs the loop: examples, resume, stop, the budget per example, progress, records, summary.
        ids, k, cfg = torch.tensor(ex.ids()), len(ex.continuation), self.config
        before = best = float(scorer.nll(ids[None], k)[0])
        for pos in reversed(range(len(ex.prefix), len(ex.prefix) + len(ex.context))):
            batch = ids.repeat(cfg.candidates, 1)
            batch[:, pos] = random_allowed(self.allowed, cfg.candidates, rng)  # the same draws for every model
            nll = scorer.swap_nll(ids, batch, k)  # exact, batched, reusing the unchanged prefix
            if float(nll.max()) > best:
                best, ids = float(nll.max()), batch[int(nll.argmax())]
        return example_record(ex.id, before, best, cfg.threshold)


@hookimpl
def harness_attacks() -> list[type]:
    return [SweepAttack]

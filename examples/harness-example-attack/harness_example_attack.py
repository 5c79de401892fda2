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

from harness import (AttackPlugin, DocumentSource, LoadedModel, MetricSpec, StageContext, StagePreempted, hookimpl,
                     load_documents)
from harness.attacks import (ATTACK_METRICS, Scorer, TaskConfig, allowed_tokens, attack_rng, example_record,
                             make_examples, random_allowed, select_examples, summarize)


class SweepConfig(TaskConfig):  # the shared task: context/continuation, vocabulary filter, threshold, batch budget
    data: DocumentSource
    n_examples: int | None = Field(default=None, ge=1)
    candidates: int = Field(default=16, ge=1)  # random tokens tried per position, scored in one batch
    threshold: float = Field(default=0.15, ge=0)  # success: the NLL raised by more than 15% (the core sets no default)


class SweepAttack(AttackPlugin[SweepConfig]):
    """Right-to-left sweep: at each context position keep the best of a few random tokens if it raises the NLL."""

    name = "sweep"

    def declared_metrics(self) -> list[MetricSpec]:
        return ATTACK_METRICS  # the shared summary: success, NLL increase, budget (what the tables show)

    def attack(self, model: LoadedModel, ctx: StageContext) -> dict:
        cfg = self.config
        examples = select_examples(make_examples(load_documents(cfg.data), model, cfg), cfg.n_examples, "first", ctx)
        allowed, scorer, done = allowed_tokens(model, cfg.vocab), Scorer(model, cfg.batch_tokens), ctx.records.done()
        for ex in (ex for ex in examples if ex.id not in done):
            if ctx.should_stop:
                raise StagePreempted(ctx.stage.id)  # records so far are durable: a rerun resumes here
            gen = attack_rng(ctx, "sweep", ex.id)  # the same draws for every model of the suite
            scorer.budget.reset()  # what this example spends: queries, tokens, FLOPs
            ids, k = torch.tensor(ex.ids()), len(ex.continuation)
            before = best = float(scorer.nll(ids[None], k)[0])
            for pos in reversed(range(len(ex.prefix), len(ex.prefix) + len(ex.context))):
                batch = ids.repeat(cfg.candidates, 1)
                batch[:, pos] = random_allowed(allowed, cfg.candidates, gen)
                nll = scorer.swap_nll(ids, batch, k)  # exact, batched, reusing the unchanged prefix
                if float(nll.max()) > best:
                    best, ids = float(nll.max()), batch[int(nll.argmax())]
            ctx.records.append(example_record(ex.id, before, best, cfg.threshold, **scorer.budget.as_record()))
        return summarize(ctx.records.records, cfg.threshold)


@hookimpl
def harness_attacks() -> list[type]:
    return [SweepAttack]

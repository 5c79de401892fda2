"""An out-of-tree harness metric plugin: next-token top-1 accuracy on documents.

Install with ``pip install -e examples/harness-example-metric`` and use it in a suite::

    metrics:
      top1_accuracy:
        data: {dataset: json, data_files: ../data/shakespeare/test.jsonl, split: test}
"""

from __future__ import annotations

import torch
from pydantic import Field

from harness import (Document, DocumentSource, LoadedModel, MetricPlugin, MetricSpec, PluginConfig, StageContext,
                     hookimpl, load_documents)
from harness.loop import run_examples


class Top1AccuracyConfig(PluginConfig):
    data: DocumentSource
    max_length: int = Field(default=256, ge=2)


class Top1Accuracy(MetricPlugin):
    """Fraction of tokens that are the model's most likely next token."""

    name = "top1_accuracy"
    Config = Top1AccuracyConfig
    seeded = False

    def declared_metrics(self) -> list[MetricSpec]:
        # Token-weighted: sum(hits) / sum(tokens) over the records, computed by the core (and intervalled by the report).
        return [MetricSpec("top1_accuracy", "Top-1 accuracy", field="hits", weight="tokens",
                           aggregation="token_weighted", higher_is_better=True),
                MetricSpec("tokens", "Tokens", aggregation="none", digits=0, show=False)]

    @torch.no_grad()
    def evaluate(self, model: LoadedModel, ctx: StageContext) -> dict:
        def score(doc: Document) -> dict:
            ids = model.tokenizer(doc.text, return_tensors="pt")["input_ids"][:, : self.config.max_length]
            logits = model.model(input_ids=ids.to(model.device)).logits[0, :-1]
            return {"id": doc.id, "tokens": ids.shape[1] - 1, "hits": (logits.argmax(-1).cpu() == ids[0, 1:]).sum().item()}

        records = run_examples(ctx, load_documents(self.config.data), score, label="documents")
        return {"tokens": sum(r["tokens"] for r in records)}


@hookimpl
def harness_metrics() -> list[type]:
    return [Top1Accuracy]

"""An out-of-tree harness metric plugin: next-token top-1 accuracy on documents.

Install with ``pip install -e examples/harness-example-metric`` and use it in a suite::

    metrics:
      top1_accuracy:
        data: {dataset: json, data_files: ../data/shakespeare/test.jsonl, split: test}
"""

from __future__ import annotations

import torch
from pydantic import Field

from harness import DocumentSource, LoadedModel, MetricPlugin, PluginConfig, StageContext, hookimpl, load_documents


class Top1AccuracyConfig(PluginConfig):
    data: DocumentSource
    max_length: int = Field(default=256, ge=2)


class Top1Accuracy(MetricPlugin):
    """Fraction of tokens that are the model's most likely next token."""

    name = "top1_accuracy"
    Config = Top1AccuracyConfig
    seeded = False

    @torch.no_grad()
    def evaluate(self, model: LoadedModel, ctx: StageContext) -> dict:
        docs = load_documents(self.config.data)
        done = ctx.records.done()
        with ctx.progress("documents", len(docs)) as bar:
            for doc in docs:
                if doc.id not in done:
                    ids = model.tokenizer(doc.text, return_tensors="pt")["input_ids"][:, : self.config.max_length]
                    logits = model.model(input_ids=ids.to(model.device)).logits[0, :-1]
                    hits = (logits.argmax(-1).cpu() == ids[0, 1:]).sum().item()
                    ctx.records.append({"id": doc.id, "tokens": ids.shape[1] - 1, "hits": hits})
                bar.advance()
        tokens = sum(r["tokens"] for r in ctx.records)
        return {"top1_accuracy": sum(r["hits"] for r in ctx.records) / tokens, "tokens": tokens}


@hookimpl
def harness_metrics() -> list[type]:
    return [Top1Accuracy]

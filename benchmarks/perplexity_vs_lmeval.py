"""Our perplexity metric vs lm-eval's ``loglikelihood_rolling`` on the same model and documents, in one run.

Prints tokens/s of each, their ratio (ours / lm-eval) and the relative difference of the two perplexities, for the
tiny default and for a larger random GPT-NeoX (6 layers x 512). Targets: ratio >= 1.5, relative difference < 1e-3.

    python benchmarks/perplexity_vs_lmeval.py [--docs 60] [--big-docs 20] [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEST_DOCS = ROOT / "data" / "shakespeare" / "test.jsonl"


def lmeval_total_nll(model, tokenizer, texts: list[str], max_length: int, batch_size: int) -> float:
    """Sum over documents of lm-eval's rolling NLL (HFLM on the in-memory model)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
              device=str(next(model.parameters()).device))
    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i)
                for i, t in enumerate(texts)]
    return -sum(lm.loglikelihood_rolling(requests, disable_tqdm=True))


def our_perplexity(loaded, docs_file: Path, limit: int, max_length: int, batch_tokens: int) -> dict:
    """The ``perplexity`` plugin's own code path (evaluate with a real StageContext, the declared metrics computed
    from its records as the core does)."""
    from harness.context import StageContext
    from harness._engine.graph import Stage
    from harness.summary import complete_summary
    from harness_plugins.metrics.perplexity import Perplexity, PerplexityConfig

    config = PerplexityConfig.model_validate({"data": {"dataset": "json", "data_files": [str(docs_file)],
                                                        "split": "test", "limit": limit},
                                              "max_length": max_length, "batch_tokens": batch_tokens})
    with tempfile.TemporaryDirectory() as tmp:
        stage = Stage("bench", "metrics", "perplexity", "perplexity", loaded.name, 0, False)
        ctx = StageContext(stage=stage, run_dir=Path(tmp), stage_dir=Path(tmp), seed=0, mode="quick",
                           show_progress=False)
        plugin = Perplexity(config)
        metrics = plugin.evaluate(loaded, ctx)
        return complete_summary(plugin.declared_metrics(), ctx.records.records, metrics)


def compare(loaded, label: str, limit: int, max_length: int, batch: int, repeats: int) -> None:
    import json

    texts = [json.loads(line)["text"] for line in TEST_DOCS.read_text().splitlines()[:limit]]
    # Warm-up: both sides then time scoring, not the one-off import of `datasets` and its JSON builder.
    our_perplexity(loaded, TEST_DOCS, 2, max_length, batch * max_length)
    lmeval_total_nll(loaded.model, loaded.tokenizer, texts[:2], max_length, batch)
    # Alternating runs, best of each: a shared machine's noise hits both sides alike.
    t_ours = t_theirs = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours = our_perplexity(loaded, TEST_DOCS, limit, max_length, batch * max_length)
        t_ours = min(t_ours, time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs_nll = lmeval_total_nll(loaded.model, loaded.tokenizer, texts, max_length, batch)
        t_theirs = min(t_theirs, time.perf_counter() - t0)
    tokens = ours["tokens"]
    ppl_theirs = math.exp(theirs_nll / tokens)
    rel = abs(ours["perplexity"] - ppl_theirs) / ppl_theirs
    print(f"{label}: {ours['documents']} docs, {tokens} tokens, window {max_length}, batch {batch}, "
          f"best of {repeats}")
    print(f"  ours     {tokens / t_ours:10.0f} tokens/s  perplexity {ours['perplexity']:.6f}")
    print(f"  lm-eval  {tokens / t_theirs:10.0f} tokens/s  perplexity {ppl_theirs:.6f}")
    print(f"  ratio (ours / lm-eval) {t_theirs / t_ours:.2f}x   relative difference {rel:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=60)
    parser.add_argument("--big-docs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="compare on this Hugging Face model directory only (e.g. benchmarks/gpu_check.sh's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-length", type=int, default=512, help="window of --model-dir's comparison")
    args = parser.parse_args()
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from harness.api import LoadedModel
    from harness_plugins.models.pythia_tiny import WEIGHTS_DIR
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    if args.model_dir is not None:
        tok = AutoTokenizer.from_pretrained(args.model_dir)
        model = AutoModelForCausalLM.from_pretrained(args.model_dir).to(args.device).eval()
        print(f"torch {torch.__version__}, device {args.device}, dtype {next(model.parameters()).dtype}")
        compare(LoadedModel(args.model_dir.name, model, tok), args.model_dir.name, args.big_docs, args.max_length,
                args.batch, args.repeats)
        return
    tok = AutoTokenizer.from_pretrained(WEIGHTS_DIR)
    tiny = AutoModelForCausalLM.from_pretrained(WEIGHTS_DIR).eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    compare(LoadedModel("pythia_tiny", tiny, tok), "pythia_tiny (4 x 128)", args.docs, 256, args.batch,
            args.repeats)
    big_cfg = GPTNeoXConfig(vocab_size=len(tok), hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                            intermediate_size=2048, max_position_embeddings=512, bos_token_id=0, eos_token_id=0)
    big = GPTNeoXForCausalLM(big_cfg).eval()
    compare(LoadedModel("random_6x512", big, tok), "random GPT-NeoX (6 x 512)", args.big_docs, 512,
            args.batch, args.repeats)


if __name__ == "__main__":
    main()

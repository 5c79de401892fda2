"""Candidate evaluations per second: batched continuation scoring vs a per-candidate loop, same model and candidates.

The candidates are what a HotFlip step scores: single-token swaps in the context of real documents (held-out
Shakespeare), each scored by its continuation NLL. Both sides run ``harness.scoring.continuation_nll``; the loop
calls it once per candidate (a batch of one), the batched side once for all of them (chunked by ``--batch-tokens``).
Prints both rates, the ratio (target >= 8x on the tiny CPU model) and the largest score difference between the two;
also, for reference, a naive loop (one full forward per candidate, logits at every position, as a plain attack loop
would do it) and the batched scorer's ratio over it.

    python benchmarks/attack_throughput.py [--candidates 256] [--context 24 --continuation 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
TEST_DOCS = ROOT / "data" / "shakespeare" / "test.jsonl"


def make_candidates(loaded, n: int, context: int, continuation: int) -> tuple[torch.Tensor, int]:
    """``n`` single-token swaps in the contexts of real documents (random positions and allowed tokens)."""
    from harness import DocumentSource, load_documents
    from harness_plugins.attacks.common import TaskConfig, VocabFilter, allowed_tokens, make_examples, random_allowed

    task = TaskConfig(context_tokens=context, continuation_tokens=continuation)
    examples = make_examples(load_documents(DocumentSource(data_files=[TEST_DOCS], split="test")), loaded, task, 16)
    allowed = allowed_tokens(loaded, VocabFilter())
    gen = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        ids = examples[i % len(examples)].ids()
        ids[1 + int(torch.randint(context, (1,), generator=gen))] = int(random_allowed(allowed, 1, gen)[0])
        rows.append(ids)
    return torch.tensor(rows), continuation


@torch.no_grad()
def naive_loop(model, cands: torch.Tensor, k: int) -> torch.Tensor:
    """What a straightforward attack loop does: one full forward pass per candidate, logits at every position."""
    out = []
    for row in cands:
        logits = model(input_ids=row[None].to(next(model.parameters()).device)).logits[0, -k - 1:-1]
        out.append(F.cross_entropy(logits.float(), row[-k:].to(logits.device)).double().cpu())
    return torch.stack(out)


def best_of(repeats: int, fns: dict) -> dict[str, tuple[float, torch.Tensor]]:
    """Best time and output of each function, the runs interleaved so that a load change on a shared machine hits
    every contender alike."""
    best: dict[str, tuple[float, torch.Tensor]] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            out = fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            if name not in best or elapsed < best[name][0]:
                best[name] = (elapsed, out)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=256)
    parser.add_argument("--context", type=int, default=24)
    parser.add_argument("--continuation", type=int, default=16)
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.api import LoadedModel
    from harness.scoring import continuation_nll
    from harness_plugins.models.pythia_tiny import WEIGHTS_DIR

    model = AutoModelForCausalLM.from_pretrained(WEIGHTS_DIR).eval().to(args.device)
    loaded = LoadedModel("pythia_tiny", model, AutoTokenizer.from_pretrained(WEIGHTS_DIR))
    cands, k = make_candidates(loaded, args.candidates, args.context, args.continuation)
    pad = loaded.tokenizer.pad_token_id or 0
    continuation_nll(model, cands[:8], k, args.batch_tokens, pad)  # warm-up

    runs = best_of(args.repeats, {
        "batched": lambda: continuation_nll(model, cands, k, args.batch_tokens, pad),
        "per-candidate": lambda: torch.cat(
            [continuation_nll(model, cands[i:i + 1], k, args.batch_tokens, pad) for i in range(len(cands))]),
        "naive": lambda: naive_loop(model, cands, k),
    })
    (t_batch, batched), (t_loop, looped), (t_naive, naive) = runs["batched"], runs["per-candidate"], runs["naive"]

    n = len(cands)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{platform.processor() or 'cpu'}"
    print(f"model: pythia_tiny on {args.device} ({device}; {torch.get_num_threads()} threads, load {load:.1f})")
    print(f"candidates: {n} sequences of {cands.shape[1]} tokens, continuation {k} tokens, best of {args.repeats}")
    print(f"batched        : {n / t_batch:10.1f} candidate evaluations/s")
    print(f"per-candidate  : {n / t_loop:10.1f} candidate evaluations/s")
    print(f"naive loop     : {n / t_naive:10.1f} candidate evaluations/s   (one forward per candidate, all logits)")
    print(f"ratio          : {t_loop / t_batch:10.1f}x   batched / per-candidate (target >= 8x on the tiny CPU model)")
    print(f"ratio (naive)  : {t_naive / t_batch:10.1f}x   batched / naive loop")
    print(f"max |batched - per-candidate| score: {float((batched - looped).abs().max()):.2e}, "
          f"vs naive: {float((batched - naive).abs().max()):.2e}")


if __name__ == "__main__":
    main()

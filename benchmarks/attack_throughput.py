"""Candidate evaluations per second: batched continuation scoring vs a per-candidate loop, same model and candidates.

Two workloads, each scored by every contender in one run (interleaved, best of ``--repeats``), on the tiny model:

1. random swaps: ``--candidates`` single-token swaps at random context positions of real documents (held-out
   Shakespeare), all scored in one call: the batched scorer (``harness.scoring.continuation_nll``), the same with
   prefix reuse (``harness.scoring.swap_nll``: tokens before a candidate's swap come from a cached pass of its
   document), a per-candidate loop (``continuation_nll`` on one candidate at a time) and, for reference, a naive
   loop (one full forward per candidate, logits at every position, as a plain attack loop would do it);
2. HotFlip steps: the candidates of real HotFlip steps (the gradient's top ``beam_width`` swaps, the greedy loop run
   on held-out documents with suites/quick.yaml's HotFlip options: context, continuation, beam_width, flips,
   n_examples), scored step by step as the attack does: (a) the per-candidate loop, (b) batched plain, one call per
   step, (c) batched with prefix reuse, one call per step (keeping the last base's and best candidate's keys and
   values between calls, as HotFlip's scorer does); and, for reference, all steps' candidates in one call (what
   scoring many examples' steps together would give). Also prints where the candidates sit (their swap
   positions, and each step's earliest one): prefix reuse saves the positions before a step's earliest swap.

Prints each rate, its ratio over the per-candidate loop (target >= 8x on the tiny CPU model) and the largest score
difference from the loop, with the load average (the numbers are noisy on a shared machine).

    python benchmarks/attack_throughput.py [--candidates 256] [--context 24 --continuation 16] [--device cpu]
        [--hotflip-examples N] [--repeats 5]
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
QUICK_SUITE = ROOT / "suites" / "quick.yaml"


def make_candidates(loaded, n: int, context: int, continuation: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``n`` single-token swaps in the contexts of real documents (random positions and allowed tokens), and each
    one's unedited document."""
    from harness import DocumentSource, load_documents
    from harness.attacks import TaskConfig, VocabFilter, allowed_tokens, make_examples, random_allowed

    task = TaskConfig(context_tokens=context, continuation_tokens=continuation, threshold=0.0)
    examples = make_examples(load_documents(DocumentSource(data_files=[TEST_DOCS], split="test")), loaded, task, 16)
    allowed = allowed_tokens(loaded, VocabFilter())
    gen = torch.Generator().manual_seed(0)
    rows, bases = [], []
    for i in range(n):
        ids = examples[i % len(examples)].ids()
        bases.append(list(ids))
        ids[1 + int(torch.randint(context, (1,), generator=gen))] = int(random_allowed(allowed, 1, gen)[0])
        rows.append(ids)
    return torch.tensor(rows), torch.tensor(bases), continuation


def hotflip_steps(loaded, n_examples: int | None) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int, dict]:
    """The (current sequence, candidates) of every step of HotFlip run with the quick suite's options (``n_examples``
    overrides its example count) on held-out documents; the continuation length; the options used."""
    import yaml

    from harness import DocumentSource, load_documents
    from harness.attacks import Scorer, allowed_tokens, make_examples
    from harness_plugins.attacks.hotflip import HotFlipConfig, flip_search, gradient_proposer, n_flips

    entry = dict(yaml.safe_load(QUICK_SUITE.read_text())["attacks"]["hotflip"])
    entry.pop("data")
    if n_examples is not None:
        entry["n_examples"] = n_examples
    cfg = HotFlipConfig(data=DocumentSource(data_files=[TEST_DOCS], split="test"), **entry)
    examples = make_examples(load_documents(cfg.data), loaded, cfg, cfg.n_examples)
    allowed = allowed_tokens(loaded, cfg.vocab)
    scorer = Scorer(loaded, cfg.batch_tokens)
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []
    for ex in examples:
        propose = gradient_proposer(scorer, allowed, len(ex.continuation), cfg.beam_width)

        def recording(ids, editable, tried, step, propose=propose):
            swaps, estimates = propose(ids, editable, tried, step)
            if swaps:  # the batch flip_search scores for these swaps
                batch = torch.tensor([ids] * len(swaps))
                batch[torch.arange(len(swaps)), torch.tensor([p for p, _ in swaps])] = torch.tensor([t for _, t in swaps])
                steps.append((torch.tensor(ids), batch))
            return swaps, estimates

        flip_search(scorer, ex, n_flips(cfg.flips, len(ex.context)), recording)
    return steps, cfg.continuation_tokens, entry


def position_summary(steps: list[tuple[torch.Tensor, torch.Tensor]]) -> list[str]:
    """Where the swaps sit (sequence positions; 0 is the end-of-text token, the context starts at 1)."""
    firsts = [int((batch != base).int().argmax(1).min()) for base, batch in steps]
    positions = torch.cat([(batch != base).int().argmax(1) for base, batch in steps])
    hist = torch.bincount(positions, minlength=int(positions.max()) + 1)
    q = torch.quantile(positions.double(), torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.double)).tolist()
    f = torch.quantile(torch.tensor(firsts, dtype=torch.double),
                       torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.double)).tolist()
    return [f"swap positions (count per position {1}..{len(hist) - 1}): {hist[1:].tolist()}",
            "swap position quantiles 10/25/50/75/90%: " + " / ".join(f"{x:.0f}" for x in q),
            "earliest swap of each step, quantiles 10/25/50/75/90%: " + " / ".join(f"{x:.0f}" for x in f)]


def prefix_steps(model, steps: list[tuple[torch.Tensor, torch.Tensor]], k: int, budget: int) -> torch.Tensor:
    """Every step's candidates scored from their base's cached prefix, one call per step in the attack's order, the
    keys and values of the last base and of its best candidate kept between calls as HotFlip's scorer keeps them."""
    from harness.scoring import swap_nll

    memo: dict = {}
    return torch.cat([swap_nll(model, base, batch, k, budget, memo=memo) for base, batch in steps])


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


def report(runs: dict[str, tuple[float, torch.Tensor]], n: int, loop: str, notes: dict[str, str]) -> None:
    """One line per contender: rate, ratio over the per-candidate loop, largest score difference from it."""
    t_loop, ref = runs[loop]
    for name, (elapsed, out) in runs.items():
        ratio = "" if name == loop else f"{t_loop / elapsed:6.1f}x vs loop, "
        diff = "" if name == loop else f"max |diff| {float((out - ref).abs().max()):.1e}"
        print(f"  {name:<22}: {n / elapsed:8.1f} candidate evaluations/s  {ratio}{diff}  {notes.get(name, '')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=256)
    parser.add_argument("--context", type=int, default=24)
    parser.add_argument("--continuation", type=int, default=16)
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hotflip-examples", type=int, default=None, help="default: the quick suite's n_examples")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.api import LoadedModel
    from harness.scoring import continuation_nll, swap_nll
    from harness_plugins.models.pythia_tiny import WEIGHTS_DIR

    model = AutoModelForCausalLM.from_pretrained(WEIGHTS_DIR).eval().to(args.device)
    loaded = LoadedModel("pythia_tiny", model, AutoTokenizer.from_pretrained(WEIGHTS_DIR))
    budget = args.batch_tokens
    cands, bases, k = make_candidates(loaded, args.candidates, args.context, args.continuation)
    continuation_nll(model, cands[:8], k, budget)  # warm-up
    swap_nll(model, bases[:8], cands[:8], k, budget)

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{platform.processor() or 'cpu'}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"model: pythia_tiny on {args.device} ({device}; {torch.get_num_threads()} threads, load {load:.1f} "
          f"before the runs)")
    print(f"\n1. random swaps: {len(cands)} sequences of {cands.shape[1]} tokens, continuation {k} tokens, one call, "
          f"best of {args.repeats}")
    runs = best_of(args.repeats, {
        "per-candidate loop": lambda: torch.cat(
            [continuation_nll(model, cands[i:i + 1], k, budget) for i in range(len(cands))]),
        "batched": lambda: continuation_nll(model, cands, k, budget),
        "batched, prefix reuse": lambda: swap_nll(model, bases, cands, k, budget),
        "naive loop": lambda: naive_loop(model, cands, k),
    })
    report(runs, len(cands), "per-candidate loop", {"naive loop": "(one forward per candidate, all logits)"})

    steps, k, entry = hotflip_steps(loaded, args.hotflip_examples)
    flat = torch.cat([batch for _, batch in steps])
    flat_bases = torch.cat([base.expand(len(batch), -1) for base, batch in steps])
    options = ", ".join(f"{key} {entry[key]}" for key in ("n_examples", "context_tokens", "continuation_tokens",
                                                            "flips", "beam_width"))
    print(f"\n2. HotFlip steps (suites/quick.yaml: {options}): {len(steps)} steps, {len(flat)} candidates of "
          f"{flat.shape[1]} tokens, best of {args.repeats}")
    for line in position_summary(steps):
        print(f"  {line}")
    runs = best_of(args.repeats, {
        "(a) per-candidate loop": lambda: torch.cat([continuation_nll(model, batch[i:i + 1], k, budget)
                                                      for _, batch in steps for i in range(len(batch))]),
        "(b) batched plain": lambda: torch.cat([continuation_nll(model, batch, k, budget) for _, batch in steps]),
        "(c) batched, prefix": lambda: prefix_steps(model, steps, k, budget),
        "all steps, plain": lambda: continuation_nll(model, flat, k, budget),
        "all steps, prefix": lambda: swap_nll(model, flat_bases, flat, k, budget),
    })
    report(runs, len(flat), "(a) per-candidate loop", {
        "(b) batched plain": "(one call per step, as HotFlip scores)",
        "(c) batched, prefix": "(one call per step, as HotFlip scores)",
        "all steps, plain": "(reference: every step's candidates in one call)",
        "all steps, prefix": "(reference: every step's candidates in one call)"})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload after the runs: {load:.1f}; target: >= 8x over the per-candidate loop on the tiny CPU model")


if __name__ == "__main__":
    main()

"""How often the probe-sampling screen's choice differs from the exact best over all candidates (issue 24, item 3).

Runs targeted GCG (the ``gcg_vs_nanogcg`` setting: prompt + 20-token suffix + target, search_width 64, topk 64) with
``screen: {audit: true}``: every step the screen chooses as usual, then every candidate is also scored exactly, and
the step counts a miss when the screen's choice scores worse than the exact best. Prints per prompt and in total the
misses, the mean regret (loss of the choice minus the exact best's, nats), the share of candidates scored exactly and
the probe agreement. The searches follow the screen's choices (what a screened run does).

    python benchmarks/screen_audit.py --model-dir DIR [--prompts 3] [--num-steps 8] [--draft-layers 8]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from gcg_vs_nanogcg import TARGETS, TEST_DOCS, prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a Hugging Face model directory")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--context", type=int, default=24)
    parser.add_argument("--num-steps", type=int, default=8)
    parser.add_argument("--search-width", type=int, default=64)
    parser.add_argument("--topk", type=int, default=64)
    parser.add_argument("--draft-layers", type=int, default=8)
    parser.add_argument("--draft-dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                        help="the screen's draft (auto: bfloat16 where this machine computes it natively, else "
                             "float32; the screen refuses an emulated bfloat16)")
    parser.add_argument("--probe-factor", type=int, default=16)
    parser.add_argument("--r", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness import DocumentSource
    from harness.api import LoadedModel
    from harness.attacks import Example, Scorer, allowed_tokens
    from harness_plugins.attacks import gcg

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    if args.draft_dtype == "auto":
        from harness import native_bf16

        args.draft_dtype = "bfloat16" if native_bf16("cpu") else "float32"
    hf = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    model = LoadedModel("audit", hf, tok)
    screen = {"draft_layers": args.draft_layers, "dtype": args.draft_dtype, "probe_factor": args.probe_factor,
              "r": args.r, "audit": True}
    print(f"model {args.model_dir.name}, {args.prompts} prompts x {args.num_steps} steps, search_width "
          f"{args.search_width}, topk {args.topk}, screen {screen}; load average {os.getloadavg()[0]:.1f}", flush=True)
    totals = {"screen_choices": 0, "screen_misses": 0, "regret": 0.0}
    for i, text in enumerate(prompts(tok, args.prompts, args.context)):
        cfg = gcg.GCGConfig(data=DocumentSource(data_files=[TEST_DOCS]), prefix_eos=False, edit="suffix",
                            n_tokens=20, objective="targeted", target=TARGETS[i % len(TARGETS)],
                            num_steps=args.num_steps, search_width=args.search_width, topk=args.topk, screen=screen)
        init = gcg.init_string(tok, cfg, "audit")
        ex = Example("prompt", (), tuple(tok(text, add_special_tokens=False)["input_ids"]), ())
        problem = gcg.Problem([ex], [tuple(tok(cfg.target, add_special_tokens=False)["input_ids"])], "suffix",
                              "targeted")
        scorer = Scorer(model, cfg.batch_tokens, cfg.screen)
        start = time.perf_counter()
        state = gcg.search(gcg.Objective(scorer, problem, cfg), init, allowed_tokens(model, cfg.vocab), tok, cfg,
                           torch.Generator().manual_seed(0), "prompt", [[0]])
        record = scorer.screen_record()
        totals["screen_choices"] += record["screen_choices"]
        totals["screen_misses"] += record["screen_misses"]
        totals["regret"] += record["screen_regret"] * record["screen_choices"]
        print(f"prompt {i}: {record} final loss {min(state.losses):.4f} ({time.perf_counter() - start:.0f} s)",
              flush=True)
    n = max(1, totals["screen_choices"])
    print(f"screen choices differing from the exact best: {totals['screen_misses']} of {totals['screen_choices']} "
          f"({100 * totals['screen_misses'] / n:.0f}%), mean regret {totals['regret'] / n:.4f} nats per choice")


if __name__ == "__main__":
    main()

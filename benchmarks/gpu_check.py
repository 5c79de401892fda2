"""The steps of ``benchmarks/gpu_check.sh`` (see there); each step's output is kept in the work directory, its ratio
lines are printed and collected into ``--out``. A step that fails is reported as failed and the others still run."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def quick_suite(work: Path, device: str, dtype: str, dry_run: bool) -> Path:
    """suites/quick.yaml on ``device`` with every model in ``dtype`` (data paths made absolute); a dry run keeps
    only the tiny model's perplexity on two documents."""
    suite = yaml.safe_load((ROOT / "suites" / "quick.yaml").read_text())
    suite["device"] = device

    def absolute(node: object) -> object:
        if isinstance(node, dict):
            return {k: ([str((ROOT / "suites" / f).resolve()) for f in v] if k == "data_files" and isinstance(v, list)
                        else str((ROOT / "suites" / v).resolve()) if k == "data_files" and isinstance(v, str)
                        else absolute(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [absolute(v) for v in node]
        return node

    suite = absolute(suite)
    for model in suite["models"].values():
        model["dtype"] = dtype
    if dry_run:
        suite = {k: v for k, v in suite.items() if k not in ("train", "attacks", "report")}
        suite["models"] = {"tiny": suite["models"]["tiny"]}
        suite["metrics"] = {"perplexity": {**suite["metrics"]["perplexity"], "models": ["tiny"]}}
        suite["metrics"]["perplexity"]["data"]["limit"] = 2
    path = work / "quick_gpu.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def random_pythia_410m(work: Path, dry_run: bool) -> Path:
    """A random-weight GPT-NeoX of Pythia-410M's shape (24 x 1024, 16 heads) with the tiny model's tokenizer (its
    vocabulary, so every id decodes); a dry run: 2 x 64."""
    import torch
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    from harness_plugins.models.pythia_tiny import WEIGHTS_DIR

    tok = AutoTokenizer.from_pretrained(WEIGHTS_DIR)
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256) if dry_run else \
        dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=len(tok), max_position_embeddings=2048, rotary_pct=0.25,
                        use_parallel_residual=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        **shape)
    dest = work / "pythia_410m_shape"
    GPTNeoXForCausalLM(cfg).save_pretrained(dest)
    tok.save_pretrained(dest)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gcg_vs_nanogcg import legacy_names  # nanoGCG's transformers 4.47 reads the directory too

    return legacy_names(dest)


def main() -> None:
    parser = argparse.ArgumentParser(description="the GPU check's steps (benchmarks/gpu_check.sh)")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, miniature sizes")
    parser.add_argument("--out", type=Path, default=Path("gpu_check_results.txt"))
    parser.add_argument("--work", type=Path, default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    device, dtype = ("cpu", "float32") if args.dry_run else ("cuda", "bfloat16")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = random_pythia_410m(work, args.dry_run)
    nanogcg = ROOT / ".venv-nanogcg" / "bin" / "python"
    small = args.dry_run
    steps = {
        "quick suite": [PY, "-m", "harness.cli", "run", str(quick_suite(work, device, dtype, small)), "--out",
                        str(work / "quick_run"), "--no-progress"],
        "gcg vs nanogcg": [PY, "benchmarks/gcg_vs_nanogcg.py", "--model-dir", str(model_dir), "--device", device,
                           "--dtype", dtype, "--prompts", "1" if small else "3", "--num-steps", "1" if small else "8",
                           "--search-width", "8" if small else "512", "--topk", "8" if small else "256",
                           "--draft-layers", "1" if small else "8"],
        "perplexity vs lm-eval": [PY, "benchmarks/perplexity_vs_lmeval.py", "--model-dir", str(model_dir),
                                  "--device", device, "--big-docs", "2" if small else "20", "--repeats",
                                  "1" if small else "2", "--max-length", "64" if small else "2048"],
        "trainer tokens/s and MFU": [PY, "benchmarks/train_throughput.py", "--device", device, "--steps",
                                     "3" if small else "30", "--skip", "1" if small else "5", "--repeats", "1"],
    }
    lines = [f"gpu_check ({'dry run, cpu' if small else 'cuda, bf16'}), work directory {work}"]
    print(lines[0], flush=True)
    for name, command in steps.items():
        if name == "gcg vs nanogcg" and not nanogcg.exists():
            lines.append(f"{name}: skipped: no .venv-nanogcg (fix: bash scripts/setup_nanogcg.sh)")
            print(lines[-1], flush=True)
            continue
        start = time.perf_counter()
        log = work / (name.replace(" ", "_").replace("/", "_") + ".log")
        with open(log, "w") as out:
            rc = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode
        seconds = time.perf_counter() - start
        found = [line.strip() for line in log.read_text().splitlines()
                 if "ratio" in line.lower() or "mfu" in line.lower() or "tokens/s" in line]
        status = "ok" if rc == 0 else f"FAILED (exit {rc}; log {log})"
        lines.append(f"{name}: {status}, {seconds:.0f} s")
        lines += [f"  {line}" for line in found]
        print("\n".join(lines[-1 - len(found):]), flush=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()

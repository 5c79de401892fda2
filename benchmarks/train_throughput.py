"""Training throughput: our trainer vs Hugging Face ``Trainer``, and packed vs padded blocks.

    .venv/bin/python benchmarks/train_throughput.py [--steps 30] [--seq-len 128] [--micro-batch 8]

1. Our ``baseline`` trainer and ``transformers.Trainer`` train the same model (the tiny default) on the same packed
   Shakespeare blocks with the same batch, optimiser (AdamW, clipping at 1.0) and precision, in alternating runs;
   tokens/s counts trained (target) tokens per second of wall time between the ends of step ``--skip`` and the last.
2. Our trainer with packed blocks vs one document per padded row, on documents whose lengths follow a heavy-tailed
   (log-normal) distribution like web text; what counts is non-pad tokens per second.
3. With a GPU: model FLOPs utilisation of a Pythia-410m-shaped model (random weights) in bf16.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import LoadedModel  # noqa: E402
from harness.context import StageContext  # noqa: E402
from harness._engine.graph import Stage  # noqa: E402
from harness_plugins.models.pythia_tiny import WEIGHTS_DIR  # noqa: E402
from harness_plugins.training.data import build_blocks  # noqa: E402
from harness_plugins.training.trainer import BaselineConfig, RecoveryTrainer  # noqa: E402

DATA = ROOT / "data" / "shakespeare" / "train.jsonl"
H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM


def our_trainer(model, tokenizer, data_file: Path, args, packing: bool, work: Path, tag: str) -> dict:
    """Run the ``baseline`` trainer plugin once; trained tokens per second of wall time after step ``args.skip``."""
    cfg = BaselineConfig.model_validate({
        "data": {"dataset": "json", "data_files": [str(data_file)], "split": "train"}, "seq_len": args.seq_len,
        "packing": packing, "micro_batch": args.micro_batch, "grad_accum": 1, "steps": args.steps, "lr": 1e-4,
        "warmup_ratio": 0.0, "weight_decay": 0.0, "checkpoint_every": args.steps, "keep_checkpoints": 1})
    stage = Stage(f"train/{tag}/s0", "train", tag, "baseline", "m", 0, True)
    ctx = StageContext(stage=stage, run_dir=work, stage_dir=work / tag, seed=0, mode="quick", device=args.device,
                       show_progress=False)
    ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    RecoveryTrainer(cfg).train(LoadedModel(tag, model, tokenizer), ctx)
    # Wall time between the ends of steps (logging included), measured the same way as for HF's Trainer below.
    rows = ctx.records.records
    first = next(r for r in rows if r["step"] == args.skip)
    tokens = rows[-1]["tokens_seen"] - first["tokens_seen"]
    seconds = rows[-1]["time"] - first["time"]
    return {"tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds}


def hf_trainer(model, blocks, args, work: Path) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(blocks)

        def __getitem__(self, i):
            ids = torch.from_numpy(blocks.ids[i].astype(np.int64))
            return {"input_ids": ids, "labels": ids.clone()}

    times: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, *a, **k):
            times.append(time.perf_counter())

    cuda = args.device != "cpu" and torch.cuda.is_available()
    targs = TrainingArguments(output_dir=str(work / "hf"), per_device_train_batch_size=args.micro_batch,
                              max_steps=args.steps, learning_rate=1e-4, lr_scheduler_type="cosine", warmup_steps=0,
                              weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", save_strategy="no",
                              logging_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0,
                              dataloader_pin_memory=False, use_cpu=not cuda, bf16=cuda, seed=0)
    Trainer(model=model, args=targs, train_dataset=Rows(), callbacks=[StepTimes()]).train()
    steps_timed = len(times) - 1 - (args.skip - 1)
    seconds = times[-1] - times[args.skip - 1]
    tokens = steps_timed * args.micro_batch * (args.seq_len - 1)
    return {"tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds}


def heavy_tailed_documents(path: Path, seq_len: int, n_docs: int, seed: int = 0) -> float:
    """Cut the Shakespeare text into documents of log-normal length (median a quarter of a block, long tail).
    Returns the mean length in characters."""
    text = "\n".join(json.loads(line)["text"] for line in open(DATA))
    rng = np.random.default_rng(seed)
    chars_per_token = 3.1
    lengths = np.clip(rng.lognormal(math.log(seq_len / 4), 1.0, n_docs) * chars_per_token, 20, None).astype(int)
    pos, rows = 0, []
    for i, n in enumerate(lengths):
        if pos + n > len(text):
            pos = 0
        rows.append({"id": f"doc-{i}", "text": text[pos:pos + n]})
        pos += n
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return float(lengths.mean())


def mfu(args) -> str:
    """bf16 training-step MFU of a Pythia-410m-shaped GPT-NeoX (random weights) on the GPU."""
    if not torch.cuda.is_available():
        return "MFU (Pythia-410m shape, bf16): skipped, no GPU here"
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                        vocab_size=50304, max_position_embeddings=2048, rotary_pct=0.25, use_parallel_residual=True)
    model = GPTNeoXForCausalLM(cfg).cuda()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch, seq = 8, 2048
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0, n = time.perf_counter(), 10
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    tok_s = n * batch * seq / (time.perf_counter() - t0)
    flops_per_token = 6 * n_params + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq  # + attention scores
    return (f"MFU (Pythia-410m shape, bf16, batch {batch} x {seq}): {tok_s:,.0f} tokens/s = "
            f"{tok_s * flops_per_token / H100_BF16_PEAK:.1%} of {H100_BF16_PEAK / 1e12:.0f} TFLOP/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--skip", type=int, default=5, help="first steps left out of the timing (warm-up)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2, help="runs of each, alternating; the best one counts")
    args = p.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(WEIGHTS_DIR)
    base = AutoModelForCausalLM.from_pretrained(WEIGHTS_DIR, dtype=torch.float32)
    n_params = sum(q.numel() for q in base.parameters())
    print(f"device: {args.device} ({torch.get_num_threads()} threads); model: pythia_tiny ({n_params / 1e6:.2f}M "
          f"parameters); batch {args.micro_batch} x {args.seq_len} tokens; {args.steps} steps, first {args.skip} "
          f"not timed; best of {args.repeats} alternating runs each")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from harness import DocumentSource

        blocks = build_blocks(DocumentSource(dataset="json", data_files=[DATA]), tokenizer, args.seq_len, True)
        # Alternate the two (best of --repeats each): a shared machine's load drifts between runs.
        ours_runs, hf_runs = [], []
        for i in range(args.repeats):
            ours_runs.append(our_trainer(copy.deepcopy(base), tokenizer, DATA, args, True, work, f"ours{i}"))
            hf_runs.append(hf_trainer(copy.deepcopy(base).train(), blocks, args, work))
        ours = max(ours_runs, key=lambda r: r["tokens_per_s"])
        hf = max(hf_runs, key=lambda r: r["tokens_per_s"])
        print(f"our trainer:        {ours['tokens_per_s']:10,.0f} tokens/s")
        print(f"HF Trainer:         {hf['tokens_per_s']:10,.0f} tokens/s")
        print(f"ratio ours / HF:    {ours['tokens_per_s'] / hf['tokens_per_s']:10.2f}x  (target >= 1.0)")

        docs = work / "heavy_tailed.jsonl"
        mean_chars = heavy_tailed_documents(docs, args.seq_len, n_docs=2000)
        padded_blocks = build_blocks(DocumentSource(dataset="json", data_files=[docs]), tokenizer, args.seq_len,
                                     False)
        fill = float(padded_blocks.lengths.mean() / args.seq_len)
        packed_runs, padded_runs = [], []
        for i in range(args.repeats):
            packed_runs.append(our_trainer(copy.deepcopy(base), tokenizer, docs, args, True, work, f"packed{i}"))
            padded_runs.append(our_trainer(copy.deepcopy(base), tokenizer, docs, args, False, work, f"padded{i}"))
        packed = max(packed_runs, key=lambda r: r["tokens_per_s"])
        padded = max(padded_runs, key=lambda r: r["tokens_per_s"])
        print(f"documents: log-normal lengths, mean {mean_chars:.0f} characters; padded rows are {fill:.0%} real "
              "tokens")
        print(f"packed blocks:      {packed['tokens_per_s']:10,.0f} non-pad tokens/s")
        print(f"padded rows:        {padded['tokens_per_s']:10,.0f} non-pad tokens/s")
        print(f"ratio packed/padded:{packed['tokens_per_s'] / padded['tokens_per_s']:10.2f}x  (target >= 1.5)")
    print(mfu(args))


if __name__ == "__main__":
    main()

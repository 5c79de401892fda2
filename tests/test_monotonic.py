"""The monotonic transform: variants, inits (``shift`` preserves the tiny GPT-NeoX's logits), the monotone-activation
property, export/reload round trip, and the loader's non-negativity check on a tampered checkpoint."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.nn.utils import parametrize

from harness import HarnessError
from harness_plugins.training.monotonic import (
    GPT_NEOX,
    LLAMA,
    MonotonicSpec,
    make_monotonic,
    merge,
    negative_entries,
)
from tests.conftest import DATA

VARIANTS = list(GPT_NEOX.variants)


@pytest.fixture(scope="module")
def ids(tiny):
    texts = [json.loads(line)["text"] for line in open(DATA / "valid.jsonl")][:3]
    return torch.tensor([tiny.tokenizer(t, add_special_tokens=False)["input_ids"][:96] for t in texts])


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def constrained(model, names):
    params = {n: p for n, p in model.named_parameters()}
    weights = dict(model.named_modules())
    return [weights[n.removesuffix(".weight")].weight for n in names], params


@pytest.mark.parametrize("variant", VARIANTS)
def test_shift_init_preserves_logits_and_makes_weights_positive(tiny, ids, variant):
    model = copy.deepcopy(tiny.model)
    before = logits(model, ids)
    names = make_monotonic(model, MonotonicSpec(variant=variant, init="shift", min_weight=1e-3))
    assert len(names) == len(GPT_NEOX.variants[variant]) * model.config.num_hidden_layers
    weights, _ = constrained(model, names)
    for w in weights:
        assert w.min() >= 1e-3 * (1 - 1e-4)  # the floor, up to the softplus round trip
    # the whole model's logits, fp32: the LayerNorm fold + per-row shift and the rank-one residual shift cancel
    torch.testing.assert_close(logits(model, ids), before, atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_abs_init_is_softplus_of_abs_weights(tiny, ids, variant):
    model = copy.deepcopy(tiny.model)
    originals = {n: p.detach().clone() for n, p in model.named_parameters()}
    before = logits(model, ids)
    names = make_monotonic(model, MonotonicSpec(variant=variant, init="abs", min_weight=1e-6))
    weights, _ = constrained(model, names)
    for name, w in zip(names, weights):
        torch.testing.assert_close(w, originals[name].abs().clamp_min(1e-6), rtol=1e-5, atol=1e-7)
        module = dict(model.named_modules())[name.removesuffix(".weight")]
        assert parametrize.is_parametrized(module, "weight")
    # signs discarded: the function changes (the negative control for the shift test's tolerance)
    assert (logits(model, ids) - before).abs().max() > 1.0


def test_weights_stay_positive_under_large_optimizer_steps(tiny, ids):
    model = copy.deepcopy(tiny.model).train()
    names = make_monotonic(model, MonotonicSpec(variant="mlp_both", init="abs"))
    free = [p for n, p in model.named_parameters() if n.endswith("parametrizations.weight.original")]
    assert len(free) == len(names)
    start = [v.detach().clone() for v in free]
    opt = torch.optim.Adam(free, lr=0.5)  # steps of ~0.5 per entry: far more than most weights' magnitude
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    assert max(float((v.detach() - v0).abs().max()) for v, v0 in zip(free, start)) > 1.0
    merge(model)
    assert not negative_entries(model, names)
    weights, _ = constrained(model, names)
    assert all(bool((w > 0).all()) for w in weights)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


def test_unknown_variant_architecture_and_rmsnorm_shift_are_clear_errors(tiny):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    with pytest.raises(HarnessError, match="unknown variant 'mlp_out'.*mlp_in, mlp_both, mlp_in_attn_out"):
        make_monotonic(copy.deepcopy(tiny.model), MonotonicSpec(variant="mlp_out"))
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(HarnessError, match="architecture 'gpt2' is not supported.*gpt_neox"):
        make_monotonic(gpt2, MonotonicSpec())
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=64))
    with pytest.raises(HarnessError, match="RMSNorm.*init: abs"):
        make_monotonic(copy.deepcopy(llama), MonotonicSpec(variant="gated_all", init="shift"))
    with pytest.raises(HarnessError, match="gated_updown, gated_all"):
        make_monotonic(copy.deepcopy(llama), MonotonicSpec(variant="mlp_both"))
    for variant, suffixes in LLAMA.variants.items():
        model = copy.deepcopy(llama)
        names = make_monotonic(model, MonotonicSpec(variant=variant, init="abs"))
        assert len(names) == 2 * len(suffixes)
        assert all(any(n.endswith(s + ".weight") for s in suffixes) for n in names)
        merge(model)
        assert not negative_entries(model, names)


def test_monotone_activation_makes_the_ffn_monotone(tiny):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, tiny.model.config.hidden_size, generator=gen) * 2
    x_up = x + torch.rand(x.shape, generator=gen) * 0.5  # x_up >= x elementwise

    def violation(model) -> float:
        """Largest amount by which some FFN output goes down when its input goes up."""
        worst = 0.0
        with torch.no_grad():
            for layer in model.gpt_neox.layers:
                worst = max(worst, float((layer.mlp(x) - layer.mlp(x_up)).max()))
        return worst

    mono = copy.deepcopy(tiny.model)
    make_monotonic(mono, MonotonicSpec(variant="mlp_both", init="abs", activation="relu"))
    assert mono.config.hidden_act == "relu"
    assert violation(mono) <= 1e-5
    # GELU dips below zero: the same constrained weights with the original activation are not monotone
    gelu = copy.deepcopy(tiny.model)
    make_monotonic(gelu, MonotonicSpec(variant="mlp_both", init="abs"))
    assert violation(gelu) > 1e-3


def test_export_reload_round_trip_and_tampered_checkpoint_fails(tiny, ids, tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from harness.context import StageContext
    from harness._engine.graph import Stage
    from harness_plugins.models.hf_causal_lm import HFCausalLMConfig, load_hf_causal_lm
    from harness_plugins.training.trainer import export_checkpoint

    model = copy.deepcopy(tiny.model)
    names = make_monotonic(model, MonotonicSpec(variant="mlp_in_attn_out", init="shift", activation="relu"))
    expected = logits(model, ids)
    out = tmp_path / "ckpt"
    export_checkpoint(model, tiny.tokenizer, out, {"monotonic": True, "variant": "mlp_in_attn_out",
                                                   "constrained_weights": names}, "float32")
    assert (out / "model.safetensors").exists() and (out / "harness.json").exists()

    plain = AutoModelForCausalLM.from_pretrained(out)  # an ordinary Hugging Face directory
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert plain.config.hidden_act == "relu"
    torch.testing.assert_close(logits(plain, ids), expected, atol=1e-5, rtol=1e-5)

    ctx = StageContext(stage=Stage("models/m", "models", "m", "hf_causal_lm", "m", 0, False), run_dir=tmp_path,
                       stage_dir=tmp_path / "s", seed=0, mode="quick", device="cpu")
    loaded = load_hf_causal_lm(HFCausalLMConfig(path=str(out)), ctx, "mono")
    assert loaded.info["monotonic_verified"] == len(names)
    torch.testing.assert_close(logits(loaded.model, ids), expected, atol=1e-5, rtol=1e-5)

    weights = load_file(out / "model.safetensors")
    target = names[3]
    weights[target][0, 0] = -0.25
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(HarnessError, match=f"{target.replace('.', '[.]')} has 1 negative"):
        load_hf_causal_lm(HFCausalLMConfig(path=str(out)), ctx, "mono")

"""How the trainer keeps (or drops) the constraint: ``constraint: project`` keeps every constrained weight >= the floor
and moves the FFN about as much as an unconstrained run at the same learning rate (softplus moves it far less);
``constraint: none`` is the unconstrained control; ``ffn_noise`` damages the baseline, seeded; every training stage
records ``weight_change`` per parameter group; a Llama trained with ``init: shift`` starts at its base perplexity
and exports an OLMo checkpoint; a constrained FFN with a monotone activation is monotone as a map on R^d after projected
steps, but on LayerNorm outputs its input weights' signs are not a property of its function (a recentred copy computes
the same map), while on an RMSNorm model non-negativity is a real restriction and the FFN is monotone on its orthant."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.cli import main
from harness_plugins.training.monotonic import MonotonicSpec, make_monotonic, project_
from harness_plugins.training.weight_change import parameter_group
from tests.test_training import STAGE, write_config

FLOOR = 1e-4
FLOOR32 = float(torch.tensor(FLOOR))
LR = 1e-3
STEPS = 8


def train(tmp_path, trainer: str, name: str, **options) -> tuple[dict, dict, dict[str, torch.Tensor], Path]:
    """(result metrics, harness.json, exported weights, stage directory) of one short training run."""
    cfg = write_config(tmp_path / f"{name}.yaml", **{"steps": STEPS, "lr": LR, "checkpoint_every": STEPS,
                                                     "val_every": 0, **options})
    assert main(["train", trainer, "--config", str(cfg), "--out", str(tmp_path / name), "--no-progress"]) == 0
    stage = tmp_path / name / STAGE / trainer / "s42"
    metrics = json.loads((stage / "result.json").read_text())["metrics"]
    provenance = json.loads((stage / "checkpoint" / "harness.json").read_text())
    return metrics, provenance, load_file(stage / "checkpoint" / "model.safetensors"), stage


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("constraint")
    shift = {"init": "shift", "variant": "mlp_both", "min_weight": FLOOR}
    return {"baseline": train(d, "baseline", "baseline"),
            "project": train(d, "monotonic", "project", constraint="project", **shift),
            "softplus": train(d, "monotonic", "softplus", constraint="softplus", **shift),
            "none": train(d, "monotonic", "none", constraint="none", init="abs", variant="mlp_both")}


def test_projected_training_keeps_the_floor_and_trains_the_ffn_like_the_baseline(runs, tiny):
    metrics, provenance, weights, _ = runs["project"]
    assert provenance["monotonic"] and provenance["constraint"] == "project"
    assert len(provenance["constrained_weights"]) == 8
    assert min(float(weights[n].min()) for n in provenance["constrained_weights"]) >= FLOOR32
    # some weights sit on the floor: the projection was active, not a no-op
    assert sum(int((weights[n] == FLOOR32).sum()) for n in provenance["constrained_weights"]) > 0
    assert set(runs["baseline"][0]["weight_change"]) == {"ffn", "attention", "embeddings", "other"}
    # ||W - W0|| of the FFN (absolute: the shift init lifts W0, so relative changes of the arms differ by their
    # ||W0|| too). Measured (8 steps at lr 1e-3, AdamW): project / baseline = 1.006, softplus / baseline =
    # 0.116. Asserted: project within a factor 2 of the unconstrained baseline, softplus below a third of project.
    moved = {k: runs[k][0]["weight_change_norm"]["ffn"] for k in ("baseline", "project", "softplus")}
    assert 0.5 < moved["project"] / moved["baseline"] < 2.0, moved
    assert moved["softplus"] < moved["project"] / 3, moved
    # the relative number is the absolute one over ||W0||, W0 = the weights right after the shift init
    start = copy.deepcopy(tiny.model)
    make_monotonic(start, MonotonicSpec(variant="mlp_both", init="shift", constraint="project", min_weight=FLOOR))
    ffn0 = sum(float(p.detach().double().pow(2).sum()) for k, p in start.named_parameters()
               if parameter_group(k) == "ffn") ** 0.5
    assert metrics["weight_change"]["ffn"] == pytest.approx(moved["project"] / ffn0, rel=1e-6)


def test_the_report_shows_how_much_each_parameter_group_moved(runs):
    """weight_change is a mapping per group; the report shows each entry as a declared metric of the stage."""
    from harness._engine.plugins import load_registry
    from harness._engine.report import build_report

    metrics, _, _, stage = runs["project"]
    run_dir = stage.parents[3]  # <run>/stages/train/<entry>/s42
    results = build_report(run_dir, plugins=load_registry().plugin_class).results
    group = next(g for g in results["results"] if g["section"] == "train")
    for name in ("ffn", "attention", "embeddings", "other"):
        shown = group["across_seeds"][f"weight_change/{name}"]
        assert shown["mean"] == pytest.approx(metrics["weight_change"][name])
    assert not any("weight_change" in note for note in results["notes"])  # declared, not an undeclared number
    assert "weight_change/ffn" in (run_dir / "summary_details.txt").read_text()


def test_unconstrained_control_is_not_marked_monotonic_and_goes_negative(runs):
    metrics, provenance, weights, _ = runs["none"]
    assert not provenance["monotonic"] and provenance["constraint"] == "none"
    assert "constrained_weights" not in provenance and len(provenance["initialised_weights"]) == 8
    # the |W0| start is free to train: some of its near-zero entries cross zero
    assert sum(int((weights[n] < 0).sum()) for n in provenance["initialised_weights"]) > 0
    assert metrics["weight_change"]["ffn"] > 0


def test_ffn_noise_damages_the_baseline_reproducibly(tmp_path, runs):
    clean = runs["baseline"][0]
    noisy, provenance, weights, _ = train(tmp_path, "baseline", "noisy", ffn_noise=2.0, steps=1)
    assert provenance["ffn_noise"] == 2.0
    assert noisy["initial_val_perplexity"] > clean["initial_val_perplexity"] * 2
    again, _, weights_again, _ = train(tmp_path, "baseline", "noisy_again", ffn_noise=2.0, steps=1)
    assert again["initial_val_perplexity"] == noisy["initial_val_perplexity"]
    assert all(torch.equal(weights[k], weights_again[k]) for k in weights)


def test_parameter_groups():
    assert parameter_group("gpt_neox.layers.0.mlp.dense_h_to_4h.weight") == "ffn"
    assert parameter_group("model.layers.3.self_attn.o_proj.weight") == "attention"
    assert parameter_group("gpt_neox.layers.0.attention.query_key_value.bias") == "attention"
    assert parameter_group("gpt_neox.embed_in.weight") == parameter_group("embed_out.weight") == "embeddings"
    assert parameter_group("lm_head.weight") == "embeddings"
    assert parameter_group("model.layers.0.input_layernorm.weight") == "other"


def small_llama() -> torch.nn.Module:
    """A random 2-layer Llama (RMSNorm, gated FFN) on the tiny model's 4,096-token vocabulary, its norm gains drawn
    away from 1 (so a fold or shift that mishandled them would show)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=4096,
                                         max_position_embeddings=256, bos_token_id=0, eos_token_id=0,
                                         pad_token_id=1))
    with torch.no_grad():
        for name, p in llama.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return llama.eval()


def small_llama_checkpoint(directory: Path) -> dict:
    """:func:`small_llama` saved with the tiny model's tokenizer; the suite's model entry that loads it."""
    from harness_plugins.models.pythia_tiny import WEIGHTS_DIR

    base = directory / "llama"
    small_llama().save_pretrained(base)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(WEIGHTS_DIR / f, base / f)
    return {"plugin": "hf_causal_lm", "path": str(base)}


def test_llama_shift_training_starts_at_the_base_perplexity_and_exports_olmo(tmp_path):
    from transformers import AutoModelForCausalLM

    model = small_llama_checkpoint(tmp_path)
    plain, _, _, _ = train(tmp_path, "baseline", "llama_base", model=model, steps=1)
    metrics, provenance, weights, _ = train(tmp_path, "monotonic", "llama_shift", model=model, init="shift",
                                         variant="gated_all", constraint="project", min_weight=FLOOR, steps=2)
    assert provenance["architecture"] == "olmo" and provenance["converted_from"] == "llama"
    assert metrics["initial_val_perplexity"] == pytest.approx(plain["initial_val_perplexity"], rel=1e-5)
    assert min(float(weights[n].min()) for n in provenance["constrained_weights"]) >= FLOOR32
    olmo = AutoModelForCausalLM.from_pretrained(tmp_path / "llama_shift" / STAGE / "monotonic/s42/checkpoint")
    assert type(olmo).__name__ == "OlmoForCausalLM" and olmo.config.hidden_size == 65


def test_projected_ffn_with_monotone_activation_is_monotone(tiny):
    """As a map on R^d (the parametrisation): Jacobian of every layer's FFN non-negative at random inputs, and no
    output goes down along random single-coordinate and random non-negative directions; after projected optimiser
    steps that pushed weights below 0. (On LayerNorm outputs this is not a property of the function: see below.)"""
    model = copy.deepcopy(tiny.model).train()
    names = make_monotonic(model, MonotonicSpec(variant="mlp_both", init="shift", constraint="project",
                                                activation="relu", min_weight=FLOOR))
    params = dict(model.named_parameters())
    constrained = [params[n] for n in names]
    opt = torch.optim.SGD(constrained, lr=1.0)
    ids = torch.randint(0, 4096, (2, 32), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        assert min(float(w.detach().min()) for w in constrained) < 0  # the step left the feasible set ...
        project_(constrained, FLOOR)  # ... and the projection brings it back
    assert min(float(w.detach().min()) for w in constrained) >= FLOOR32
    gen = torch.Generator().manual_seed(1)
    width = model.config.hidden_size
    for layer in model.gpt_neox.layers:
        for _ in range(4):
            x = torch.randn(width, generator=gen) * 2
            assert float(torch.autograd.functional.jacobian(layer.mlp, x).min()) >= 0
        with torch.no_grad():
            x = torch.randn(512, width, generator=gen) * 2
            coords = torch.randint(0, width, (512,), generator=gen)
            step = torch.zeros_like(x)
            step[torch.arange(512), coords] = torch.rand(512, generator=gen) * 3
            for direction in (step, torch.rand(x.shape, generator=gen)):
                assert float((layer.mlp(x) - layer.mlp(x + direction)).max()) <= 1e-5


def test_projection_under_two_process_fsdp_matches_one_process(tmp_path):
    """constraint: project on FSDP's shards (each process clamps its own shard after the step) = one process."""
    from transformers import AutoModelForCausalLM

    from tests.test_training import records, torchrun_train

    options = {"init": "shift", "constraint": "project", "min_weight": FLOOR, "micro_batch": 1, "steps": 4,
               "checkpoint_every": 4, "val_every": 0, "val_blocks": 2, "lr": LR}
    torchrun_train(write_config(tmp_path / "dist.yaml", grad_accum=2, **options), tmp_path / "dist",
                   HARNESS_PARALLEL="fsdp")
    assert main(["train", "monotonic", "--config", str(write_config(tmp_path / "single.yaml", grad_accum=4,
                                                                    **options)),
                 "--out", str(tmp_path / "single"), "--no-progress"]) == 0
    stage = tmp_path / "dist" / STAGE / "monotonic/s42"
    assert json.loads((stage / "result.json").read_text())["metrics"]["parallel"] == "fsdp"
    weights = load_file(stage / "checkpoint" / "model.safetensors")
    names = json.loads((stage / "checkpoint" / "harness.json").read_text())["constrained_weights"]
    assert min(float(weights[n].min()) for n in names) >= FLOOR32
    assert sum(int((weights[n] == FLOOR32).sum()) for n in names) > 0
    # The same training up to the order of floating-point sums: the losses agree closely, the logits within 1e-3
    # (measured: 1 of 393,216 logits 1.1e-4 apart, all others within 1e-4).
    for a, b in zip(records(tmp_path / "dist", "monotonic"), records(tmp_path / "single", "monotonic")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    ids = torch.randint(2, 4000, (2, 48), generator=torch.Generator().manual_seed(0))
    outputs = []
    for run in ("dist", "single"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / run / STAGE / "monotonic/s42/checkpoint").eval()
        with torch.no_grad():
            outputs.append(model(input_ids=ids).logits)
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-3, rtol=1e-3)


def _recentred(w: torch.Tensor) -> torch.Tensor:
    """``W - c 1ᵀ`` with ``c`` each row's mean: the same map on zero-mean inputs, about half its entries negative."""
    return w - w.mean(dim=1, keepdim=True)


def test_on_layernorm_outputs_the_sign_of_an_input_weight_is_not_a_property_of_the_function(tiny):
    """Where monotonicity is not defined. A GPT-NeoX FFN after the ``shift`` init with every weight >= the floor and
    a monotone activation reads a LayerNorm output ``n`` (gain and bias folded into the linear), and ``1ᵀn = 0``:
    the recentred copy ``W - c 1ᵀ`` computes the same pre-activations on every such input although about half its
    entries are negative, so "non-negative input weights" names a parametrisation, not the function; and the map
    from the residual stream, x -> mlp(LN(x)), is not monotone (its Jacobian has negative entries). On these models
    the "monotone" arm is an activation change."""
    model = copy.deepcopy(tiny.model).eval()
    make_monotonic(model, MonotonicSpec(variant="mlp_both", init="shift", constraint="project", activation="relu",
                                        min_weight=FLOOR))
    gen = torch.Generator().manual_seed(0)
    width = model.config.hidden_size
    for layer in model.gpt_neox.layers:
        norm, w = layer.post_attention_layernorm, layer.mlp.dense_h_to_4h.weight.detach()
        assert float(w.min()) >= FLOOR32
        with torch.no_grad():
            n = norm(torch.randn(256, width, generator=gen) * 3)
            assert float(n.sum(dim=1).abs().max()) < 1e-4  # the folded norm's output is zero-mean
            recentred = _recentred(w)
            assert float((recentred < 0).float().mean()) > 0.3  # non-negativity fails for the recentred copy ...
            same = (n @ recentred.T - n @ w.T).abs().max() / (n @ w.T).abs().max()
            assert float(same) < 1e-5  # ... which computes the same pre-activations on every LayerNorm output
        jac = torch.autograd.functional.jacobian(lambda x: layer.mlp(norm(x)), torch.randn(width, generator=gen))
        assert float((jac < 0).float().mean()) > 0.1


def test_on_an_rmsnorm_model_non_negativity_is_a_restriction_and_the_ffn_is_monotone_on_its_orthant():
    """Where monotonicity is defined. RMSNorm does not remove the mean, so recentring a constrained input weight
    changes the FFN's output (the signs are part of the function: a real constraint), and a gated FFN whose three
    weights are non-negative is monotone on the non-negative orthant (SiLU is non-negative and increasing there)."""
    llama = small_llama()
    names = make_monotonic(llama, MonotonicSpec(variant="gated_all", init="abs", constraint="project",
                                                min_weight=FLOOR))
    params = dict(llama.named_parameters())
    assert len(names) == 6 and min(float(params[n].detach().min()) for n in names) >= FLOOR32
    gen = torch.Generator().manual_seed(1)
    for layer in llama.model.layers:
        norm, mlp = layer.post_attention_layernorm, layer.mlp
        with torch.no_grad():
            n = norm(torch.randn(256, 64, generator=gen) * 3)
            recentred = copy.deepcopy(mlp)
            recentred.up_proj.weight.copy_(_recentred(mlp.up_proj.weight))
            change = (recentred(n) - mlp(n)).abs().max() / mlp(n).abs().max()
            assert float(change) > 0.1
        for _ in range(4):
            x = torch.rand(64, generator=gen) * 3
            assert float(torch.autograd.functional.jacobian(mlp, x).min()) >= 0


def test_a_real_constraint_on_a_small_llama_keeps_every_ffn_weight_at_its_floor(tmp_path):
    """``init: abs`` + ``constraint: project`` on a random Llama: no conversion (the architecture stays Llama), and
    every constrained weight is >= the floor after training."""
    _, provenance, weights, _ = train(tmp_path, "monotonic", "llama_abs", model=small_llama_checkpoint(tmp_path),
                                      init="abs", variant="gated_all", constraint="project", min_weight=FLOOR,
                                      steps=2, lr=1e-2)
    assert provenance["architecture"] == "llama" and "converted_from" not in provenance
    assert len(provenance["constrained_weights"]) == 6
    assert min(float(weights[n].min()) for n in provenance["constrained_weights"]) >= FLOOR32

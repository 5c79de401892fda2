"""The monotonic transform: constrain feed-forward weights to be non-negative by reparametrisation.

A constrained ``nn.Linear`` keeps a free parameter ``V`` and computes its weight as ``W = softplus(V)``
(``torch.nn.utils.parametrize``), so every optimiser step leaves ``W`` strictly positive; biases stay free.
Which linears are constrained is a *variant* (named module suffixes per architecture); how ``V`` starts is an
*init*:

``abs``
    The published method: ``V = softplus⁻¹(|W0|)``. Signs are discarded, so the function changes a lot and
    recovery training has to repair it.
``shift``
    Function-preserving for LayerNorm models (GPT-NeoX/Pythia). The input of ``dense_h_to_4h`` is a LayerNorm
    output ``γ ⊙ n + β`` whose normalised part ``n`` has zero mean over the hidden units. Folding ``γ`` and
    ``β`` into the linear layer (``W' = W diag(γ)``, ``b' = b + Wβ``, LayerNorm made plain) leaves ``W' n`` as the
    only weight-dependent term, and adding a per-row constant ``c 1ᵀ`` changes it by ``c (1ᵀ n) = 0``. The output
    projections (``dense_4h_to_h``, ``attention.dense``) write into the residual stream, and every reader of that
    stream is a LayerNorm (the next layers' two norms and the final norm), which subtracts the mean over hidden
    units: adding a rank-one ``1 uᵀ`` adds the same number to every hidden unit of a token and is removed again.
    The constants are chosen so that every constrained entry is at least ``min_weight``. RMSNorm (Llama family)
    does not subtract the mean, so the trick does not hold there directly: :func:`transform_model` first rewrites a
    Llama model exactly as an OLMo model (parameter-free LayerNorm on a zero-mean stream, :mod:`.llama_shift`) and
    shifts that.

How the constraint is kept during training is the *constraint*: ``softplus`` (``W = softplus(V)``, the published
method), ``project`` (``W`` itself is the parameter; the trainer clamps it to ``>= min_weight`` after every
optimiser step: projected gradient, so ``W`` moves at the optimiser's rate, not multiplicatively) or ``none`` (the
init only, then unconstrained training: the control that separates the constraint from the damage of the init).

``activation: monotone`` also swaps the FFN's GELU/SiLU (non-monotone: both dip below zero) for a monotone one,
so that an FFN whose weights are all constrained (``mlp_both``) is monotone as a map on R^d. That is a statement
about the parametrisation, not always about the model. Under a mean-subtracting norm the FFN only ever sees inputs
with ``1ᵀn = 0``, on which ``W`` and ``W - c 1ᵀ`` compute the same map: the recentred copy is the same function with
about half its input weights negative, and x -> mlp(LN(x)) is not monotone in the residual stream. So on LayerNorm
models (GPT-NeoX, and RMSNorm models after the exact OLMo conversion, which changes the architecture) the
``shift`` arms constrain nothing about the function, and ``activation: monotone`` there is an activation change
(ReLU for GELU). Only where no reader removes the mean (RMSNorm models with ``init: abs``: a real restriction)
does non-negativity constrain the function; there a gated FFN with all three weights non-negative is monotone on
the non-negative orthant. ``tests/test_constraint.py`` checks both.

:func:`merge` bakes ``softplus(V)`` into plain weights for export; :func:`constrained_weight_names` lists the
parameters a loader must find non-negative.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from harness import HarnessError

#: Monotone non-decreasing activations that transformers can rebuild from ``config.hidden_act`` on reload.
MonotoneActivation = Literal["relu", "leaky_relu", "relu2", "relu6", "sigmoid", "tanh"]
MONOTONE_ACTIVATIONS: tuple[str, ...] = get_args(MonotoneActivation)


@dataclass(frozen=True)
class Architecture:
    """Where the constrained linears and the norms live in one family of Hugging Face models."""

    name: str
    #: variant name -> module-name suffixes (relative to a decoder layer) of the linears it constrains.
    variants: dict[str, tuple[str, ...]]
    #: attribute of the MLP module that holds its activation function
    mlp_activation: str
    #: whether the norms subtract the mean (LayerNorm); the ``shift`` init needs it
    mean_centred_norms: bool
    #: linear suffix -> the norm (relative to the layer) whose output is that linear's only input
    input_norm: dict[str, str] = field(default_factory=dict)
    #: linear suffixes that write into the residual stream (read only by norms)
    residual_writers: tuple[str, ...] = ()
    #: whether the FFN is gated (``down(act(gate x) * up x)``): such an FFN is not monotone in ``x`` even with
    #: non-negative weights and a monotone ``act``, because ``up x`` takes both signs
    gated: bool = False


GPT_NEOX = Architecture(
    name="gpt_neox",
    variants={
        "mlp_in": ("mlp.dense_h_to_4h",),
        "mlp_both": ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
        "mlp_in_attn_out": ("mlp.dense_h_to_4h", "attention.dense"),
    },
    mlp_activation="act",
    mean_centred_norms=True,
    input_norm={"mlp.dense_h_to_4h": "post_attention_layernorm"},
    residual_writers=("mlp.dense_4h_to_h", "attention.dense"),
)
GATED_VARIANTS = {
    "gated_updown": ("mlp.up_proj", "mlp.down_proj"),
    "gated_all": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    "gated_all_attn_out": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "self_attn.o_proj"),
}
LLAMA = Architecture(name="llama", variants=GATED_VARIANTS, mlp_activation="act_fn", mean_centred_norms=False,
                     gated=True)
#: OLMo: the Llama block with parameter-free LayerNorms (what :mod:`.llama_shift` converts Llama models to).
OLMO = Architecture(
    name="olmo",
    variants=GATED_VARIANTS,
    mlp_activation="act_fn",
    mean_centred_norms=True,
    input_norm={"mlp.gate_proj": "post_attention_layernorm", "mlp.up_proj": "post_attention_layernorm"},
    residual_writers=("mlp.down_proj", "self_attn.o_proj"),
    gated=True,
)
#: Hugging Face ``model_type`` -> architecture family.
MODEL_TYPES = {"gpt_neox": GPT_NEOX, "llama": LLAMA, "mistral": LLAMA, "qwen2": LLAMA, "qwen3": LLAMA, "olmo": OLMO}
INITS = ("abs", "shift")
CONSTRAINTS = ("softplus", "project", "none")


def architecture_of(model: nn.Module) -> Architecture:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in MODEL_TYPES:
        raise HarnessError(f"monotonic: architecture '{model_type}' is not supported; fix: use a model of type "
                           f"{', '.join(sorted(MODEL_TYPES))} (or add its module names to MODEL_TYPES in "
                           "plugins/training/monotonic.py)")
    return MODEL_TYPES[model_type]


def variant_suffixes(arch: Architecture, variant: str) -> tuple[str, ...]:
    if variant not in arch.variants:
        raise HarnessError(f"monotonic: unknown variant '{variant}' for {arch.name} models; fix: use one of "
                           f"{', '.join(arch.variants)}")
    return arch.variants[variant]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    base = getattr(model, model.base_model_prefix, model)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise HarnessError(f"monotonic: cannot find the decoder layers of {type(model).__name__}")
    return layers


def _get(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


# -- the reparametrisation ------------------------------------------------------------------------------------------
def inverse_softplus(w: torch.Tensor) -> torch.Tensor:
    """``V`` with ``softplus(V) == w`` for ``w > 0`` (written stably: ``w + log(1 - exp(-w))``)."""
    return w + torch.log(-torch.expm1(-w))


class Softplus(nn.Module):
    """The parametrisation ``W = softplus(V)``; ``right_inverse`` lets ``module.weight = W`` set ``V``."""

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return F.softplus(v)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        if (w <= 0).any():
            raise ValueError("softplus parametrisation needs strictly positive weights")
        return inverse_softplus(w)


# -- inits -----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def _fold_norm_into_linear(norm: nn.LayerNorm, linear: nn.Linear) -> None:
    """``linear(norm(x))`` unchanged, with the norm's gain and bias moved into the linear layer."""
    if getattr(norm, "weight", None) is None and getattr(norm, "bias", None) is None:
        return  # a parameter-free LayerNorm (OLMo): nothing to fold
    gain = norm.weight.detach().clone() if norm.weight is not None else torch.ones(linear.in_features)
    shift = norm.bias.detach().clone() if norm.bias is not None else torch.zeros(linear.in_features)
    w = linear.weight.detach().double()
    extra = w @ shift.double()
    if linear.bias is None:
        raise HarnessError("monotonic: the shift init needs a bias on the linear after the LayerNorm")
    linear.bias.copy_((linear.bias.double() + extra).to(linear.bias.dtype))
    linear.weight.copy_((w * gain.double()[None, :]).to(linear.weight.dtype))
    if norm.weight is not None:
        norm.weight.fill_(1.0)
    if norm.bias is not None:
        norm.bias.zero_()


def _shift_rows(w: torch.Tensor, floor: float) -> torch.Tensor:
    """Add to each row the constant that lifts its smallest entry to ``floor`` (rows already above stay)."""
    lift = (floor - w.min(dim=1, keepdim=True).values).clamp_min(0)
    return w + lift


def _shift_columns(w: torch.Tensor, floor: float) -> torch.Tensor:
    """Add ``1 uᵀ``: each column lifted so that its smallest entry is ``floor``."""
    lift = (floor - w.min(dim=0, keepdim=True).values).clamp_min(0)
    return w + lift


@torch.no_grad()
def shifted_weights(model: nn.Module, arch: Architecture, suffixes: tuple[str, ...], floor: float) -> None:
    """Make every constrained weight ≥ ``floor`` without changing the model's function (LayerNorm models)."""
    if not arch.mean_centred_norms:
        raise HarnessError(f"monotonic: init 'shift' is function-preserving only when every reader of the changed "
                           f"activations is a LayerNorm (it subtracts the mean); {arch.name} models use RMSNorm, "
                           "which does not; fix: use `init: abs`, or convert the model first "
                           "(transform_model does: llama_shift.llama_to_olmo)")
    for layer in decoder_layers(model):
        for suffix in suffixes:
            linear = _get(layer, suffix)
            if suffix in arch.input_norm:
                _fold_norm_into_linear(_get(layer, arch.input_norm[suffix]), linear)
                linear.weight.copy_(_shift_rows(linear.weight.double(), floor).to(linear.weight.dtype))
            elif suffix in arch.residual_writers:
                linear.weight.copy_(_shift_columns(linear.weight.double(), floor).to(linear.weight.dtype))
            else:
                raise HarnessError(f"monotonic: no function-preserving shift is known for '{suffix}'; fix: use "
                                   "`init: abs`")


# -- the transform ---------------------------------------------------------------------------------------------------
@dataclass
class MonotonicSpec:
    variant: str = "mlp_both"
    init: str = "abs"
    #: smallest value of a constrained weight after the init (``abs`` clamps |W0| to it; ``shift`` lifts to it)
    min_weight: float = 1e-4
    #: ``original`` keeps GELU/SiLU; otherwise a name from :data:`MONOTONE_ACTIVATIONS`
    activation: str = "original"
    #: how training keeps the weights non-negative: one of :data:`CONSTRAINTS`
    constraint: str = "softplus"
    #: width of the converted stream for ``shift`` on RMSNorm models (None: hidden_size + 1)
    stream_width: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"variant": self.variant, "init": self.init, "min_weight": self.min_weight,
               "activation": self.activation, "constraint": self.constraint}
        if self.stream_width is not None:
            out["stream_width"] = self.stream_width
        return out


def constrained_linears(model: nn.Module, arch: Architecture, suffixes: tuple[str, ...]) -> dict[str, nn.Linear]:
    """Full module name -> linear, for every constrained linear of every layer."""
    found: dict[str, nn.Linear] = {}
    base_name = model.base_model_prefix
    for i, layer in enumerate(decoder_layers(model)):
        for suffix in suffixes:
            try:
                module = _get(layer, suffix)
            except AttributeError:
                raise HarnessError(f"monotonic: layer {i} of {type(model).__name__} has no '{suffix}'; fix: choose a "
                                   f"variant whose modules exist ({', '.join(arch.variants)})") from None
            if not isinstance(module, nn.Linear):
                raise HarnessError(f"monotonic: '{suffix}' is a {type(module).__name__}, not a Linear")
            found[f"{base_name}.layers.{i}.{suffix}"] = module
    return found


def set_activation(model: nn.Module, arch: Architecture, name: str) -> None:
    """Replace the FFN activation of every layer; ``config.hidden_act`` follows so a reload builds the same."""
    from transformers.activations import ACT2FN

    for layer in decoder_layers(model):
        setattr(layer.mlp, arch.mlp_activation, ACT2FN[name])
    model.config.hidden_act = name


def make_monotonic(model: nn.Module, spec: MonotonicSpec) -> list[str]:
    """Apply the init and (``softplus``) the reparametrisation in place; returns the constrained weight names.

    ``project`` and ``none`` leave plain weights (the trainer projects after every step under ``project``)."""
    arch = architecture_of(model)
    suffixes = variant_suffixes(arch, spec.variant)
    if spec.init not in INITS:
        raise HarnessError(f"monotonic: unknown init '{spec.init}'; fix: use one of {', '.join(INITS)}")
    if spec.constraint not in CONSTRAINTS:
        raise HarnessError(f"monotonic: unknown constraint '{spec.constraint}'; fix: use one of "
                           f"{', '.join(CONSTRAINTS)}")
    if not spec.min_weight > 0:
        raise HarnessError("monotonic: min_weight must be > 0 (softplus never reaches 0)")
    if spec.activation != "original" and spec.activation not in MONOTONE_ACTIVATIONS:
        raise HarnessError(f"monotonic: activation '{spec.activation}' is not a known monotone activation; fix: use "
                           f"original or one of {', '.join(MONOTONE_ACTIVATIONS)}")
    if spec.activation != "original" and arch.gated:
        raise HarnessError(f"monotonic: a monotone activation does not make the gated FFN of {arch.name} models "
                           "monotone: in down(act(gate x) * up x) the factor up x takes both signs (its input is a "
                           "normalised, zero-mean vector), so raising an input can lower an output whatever the "
                           "weights' signs; fix: use `activation: original` here (monotone FFNs: GPT-NeoX, mlp_both)")
    linears = constrained_linears(model, arch, suffixes)
    if spec.init == "shift":
        shifted_weights(model, arch, suffixes, spec.min_weight)
    for linear in linears.values():
        with torch.no_grad():
            if spec.init == "abs":
                linear.weight.copy_(linear.weight.abs().clamp_min(spec.min_weight))
            else:  # shift: rounding may leave an entry a hair below the floor
                linear.weight.clamp_(min=spec.min_weight)
        if spec.constraint == "softplus":
            # Registration calls Softplus.right_inverse on the current weight: V = softplus⁻¹(W).
            parametrize.register_parametrization(linear, "weight", Softplus())
    if spec.activation != "original":
        set_activation(model, arch, spec.activation)
    return [f"{name}.weight" for name in linears]


def transform_model(model: nn.Module, spec: MonotonicSpec) -> tuple[nn.Module, list[str]]:
    """:func:`make_monotonic`, after converting an RMSNorm model to OLMo when the init is ``shift``.

    Returns the model to train (``model`` itself, or the converted OLMo model) and the constrained weight names."""
    if spec.init == "shift" and not architecture_of(model).mean_centred_norms:
        from .llama_shift import llama_to_olmo

        model = llama_to_olmo(model, spec.stream_width)
    return model, make_monotonic(model, spec)


@torch.no_grad()
def project_(weights: list[torch.Tensor], floor: float) -> None:
    """The projection step of projected gradient descent: clamp every listed weight to ``>= floor`` in place.

    Works on plain tensors and on FSDP's DTensor shards (a pointwise op on each process's shard)."""
    for w in weights:
        w.clamp_(min=floor)


def merge(model: nn.Module) -> None:
    """Replace every ``softplus(V)`` parametrisation by its current value: a plain Hugging Face model again."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def negative_entries(model: nn.Module, names: list[str]) -> dict[str, tuple[int, float]]:
    """name -> (count of entries < 0, smallest entry) for every listed weight that is not non-negative."""
    params = dict(model.named_parameters())
    bad = {}
    for name in names:
        if name not in params:
            raise HarnessError(f"monotonic: weight '{name}' not found in the model")
        w = params[name].detach()
        n_neg = int((w < 0).sum())
        if n_neg or not torch.isfinite(w).all():
            bad[name] = (n_neg, float(w.min()))
    return bad

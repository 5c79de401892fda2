"""Exact non-negative conversion of Llama-family models (RMSNorm, SwiGLU): what ``init: shift`` does for them.

The GPT-NeoX ``shift`` (:mod:`.monotonic`) needs every reader of the residual stream to subtract its mean (a
LayerNorm). RMSNorm does not, so a Llama model is first rewritten, exactly, as an OLMo model (``OlmoForCausalLM``:
the Llama block with a parameter-free LayerNorm, ``F.layer_norm(x, eps=1e-5)``), on whose stream the shift holds.

With ``d`` the Llama width and ``D > d`` the new one, let ``P`` (D x d) have orthonormal columns (``PᵀP = I``) that
are orthogonal to the all-ones vector (``Pᵀ1 = 0``), and let the new stream be ``h' = κ P h``. It has zero mean over
its D units, so LayerNorm(h') = h' / sqrt(mean(h'²) + ε') = κ P h / sqrt(κ² |h|²/D + ε')
= s P h / sqrt(|h|²/d + ε' D / (κ² d)) with ``s = sqrt(D/d)``: RMSNorm(h) (its ``ε``) mapped by ``s P`` when
``κ² = ε' D / (ε d)`` (the eps is rescaled by the choice of κ). So, for every Llama norm gain ``g``:

* a reader of a normed stream (q/k/v, gate/up, lm_head), ``W diag(g) n``, becomes ``W diag(g) Pᵀ / s``;
* a writer into the stream (o_proj, down_proj, the embedding rows) ``y`` becomes ``κ P y``;
* the embeddings are untied (the input side is a writer, the output side a reader).

On that model the GPT-NeoX shift applies unchanged (:func:`.monotonic.shifted_weights` with :data:`OLMO`): a
constant added to each row of gate/up is multiplied by ``1ᵀ LN(h') = 0``, and a rank-one ``1 uᵀ`` added to
down_proj/o_proj adds the same number to every unit of the stream, which every later LayerNorm removes (the stream is
then no longer zero-mean, but it is only ever read through a LayerNorm). Attention, RoPE and the head layout are
untouched (``config.head_dim`` is set as an attribute, so D need not be a multiple of the head count).

Doubling the intermediate layer with a negated copy keeps the Llama architecture and is exact on paper, but errors
along the all-ones direction then grow from layer to layer in floating point; this conversion stays isometric.
All arithmetic is float64; the result is cast to the source model's dtype.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from harness import HarnessError

#: OLMo's LayerNorm has a fixed eps (transformers' ``OlmoLayerNorm``).
OLMO_LAYERNORM_EPS = 1e-5
#: Llama-family model types this conversion reads (same block: RMSNorm, SwiGLU MLP, RoPE attention).
CONVERTIBLE = ("llama",)


def zero_sum_basis(d: int, width: int) -> torch.Tensor:
    """``P`` (width x d, float64): orthonormal columns, each orthogonal to the all-ones vector."""
    if width <= d:
        raise HarnessError(f"llama shift: the converted stream must be wider than the model ({width} <= {d}); fix: "
                           "set `stream_width` above hidden_size (or leave it unset for hidden_size + 1)")
    ones = torch.ones(width, 1, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.cat([ones, torch.eye(width, d, dtype=torch.float64)], dim=1))
    return q[:, 1:].contiguous()


def _check_convertible(model: nn.Module) -> None:
    cfg = model.config
    kind = getattr(cfg, "model_type", None)
    if kind not in CONVERTIBLE:
        raise HarnessError(f"llama shift: model type '{kind}' has no exact conversion to OLMo here (only "
                           f"{', '.join(CONVERTIBLE)}); fix: use `init: abs`")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(cfg, flag, False):
            raise HarnessError(f"llama shift: the model has {flag}=True, which the OLMo block does not carry; fix: use "
                               "`init: abs`")


def _olmo_config(src, width: int):
    from transformers import OlmoConfig

    heads = src.num_attention_heads
    rope = ({"rope_parameters": src.rope_parameters} if getattr(src, "rope_parameters", None) is not None
            else {"rope_theta": getattr(src, "rope_theta", 10000.0), "rope_scaling": getattr(src, "rope_scaling", None)})
    config = OlmoConfig(vocab_size=src.vocab_size, hidden_size=width, intermediate_size=src.intermediate_size,
                        num_hidden_layers=src.num_hidden_layers, num_attention_heads=heads,
                        num_key_value_heads=getattr(src, "num_key_value_heads", None) or heads,
                        hidden_act=src.hidden_act, max_position_embeddings=src.max_position_embeddings,
                        pad_token_id=src.pad_token_id, bos_token_id=src.bos_token_id, eos_token_id=src.eos_token_id,
                        tie_word_embeddings=False, attention_bias=False,
                        attention_dropout=getattr(src, "attention_dropout", 0.0), clip_qkv=None, **rope)
    # OlmoConfig takes no head_dim argument, but its attention and rotary embedding read the attribute: the heads
    # keep their width while the stream is wider than heads x head_dim.
    config.head_dim = getattr(src, "head_dim", None) or src.hidden_size // heads
    return config


@torch.no_grad()
def llama_to_olmo(model: nn.Module, width: int | None = None) -> nn.Module:
    """The same function as ``model`` (a Llama causal LM) as an ``OlmoForCausalLM`` whose stream is zero-mean."""
    from transformers import OlmoForCausalLM

    _check_convertible(model)
    src = model.config
    d = src.hidden_size
    width = width or d + 1
    p = zero_sum_basis(d, width)
    kappa = math.sqrt(OLMO_LAYERNORM_EPS * width / (src.rms_norm_eps * d))
    s = math.sqrt(width / d)
    dtype = next(model.parameters()).dtype

    def reader(w: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:  # W diag(g) Pᵀ / s
        return (w.double() * gain.double()[None, :]) @ p.T / s

    def writer(w: torch.Tensor) -> torch.Tensor:  # κ P W
        return kappa * (p @ w.double())

    new = OlmoForCausalLM(_olmo_config(src, width)).to(dtype)
    new.generation_config = model.generation_config
    base, out = model.model, new.model
    out.embed_tokens.weight.copy_(writer(base.embed_tokens.weight.T).T)
    for old, layer in zip(base.layers, out.layers):
        g_attn, g_mlp = old.input_layernorm.weight, old.post_attention_layernorm.weight
        for name in ("q_proj", "k_proj", "v_proj"):
            getattr(layer.self_attn, name).weight.copy_(reader(getattr(old.self_attn, name).weight, g_attn))
        layer.self_attn.o_proj.weight.copy_(writer(old.self_attn.o_proj.weight))
        for name in ("gate_proj", "up_proj"):
            getattr(layer.mlp, name).weight.copy_(reader(getattr(old.mlp, name).weight, g_mlp))
        layer.mlp.down_proj.weight.copy_(writer(old.mlp.down_proj.weight))
    new.lm_head.weight.copy_(reader(model.lm_head.weight, base.norm.weight))
    return new

"""Measurements behind the reviewers' questions, on a trained :class:`energylib.modules.GPT`.

All of them are **our construction** (the paper's own measurements are not available):

(a) per layer, the Helmholtz energy of each token under the layer's own tied energy
    (:meth:`energylib.modules.Attention.energy`: bilinear local energies :math:`-s\\,q_t\\cdot k_i`,
    :math:`\\beta W := s W_Q^\\top W_K` per head, T = 1, pre-LN input, context frozen) before the
    layer, :math:`F^{(\\ell)}(\\mathrm{LN}_1(z^{(\\ell)}))`, and after its attention sublayer moved the
    token, :math:`F^{(\\ell)}(\\mathrm{LN}_1(z^{(\\ell)} + \\Delta^{(\\ell)}))` (same context); and the
    cosine between the attention output and :math:`-\\nabla_z F^{(\\ell)}` (through the LayerNorm).
(b) the norm condition: how unequal the key norms :math:`\\lVert W_K^h x_i\\rVert` and the input norms
    :math:`\\lVert \\mathrm{LN}(z_i)\\rVert` are (coefficient of variation over tokens), and
    :math:`\\lVert z\\rVert / \\lVert \\mathrm{Attn}\\rVert`, the size of the gap :math:`\\eta z` per unit
    :math:`\\eta` relative to the update.
(c) for :class:`energylib.modules.NewtonMHA`: :math:`\\rho(\\gamma\\Sigma_p)` per token and head (the
    one-term Neumann series needs it below 1).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from ..modules import GPT, LayerTrace, NewtonMHA


def _cv(norms: Tensor) -> float:
    """Mean over rows of std/mean along the token axis (-1)."""
    return (norms.std(-1) / norms.mean(-1).clamp_min(1e-12)).mean().item()


@contextmanager
def _traced(gpt: GPT, idx: Tensor) -> Iterator[list[tuple[Any, LayerTrace]]]:
    """(block, its input trace) per layer of one forward pass over ``idx`` (B, N); the model stays
    in eval mode inside the block and gets its mode back after."""
    was_training = gpt.training
    gpt.eval()
    try:
        trace: list[LayerTrace] = []
        with torch.no_grad():
            gpt.features(idx, trace)
        yield list(zip(gpt.decoder.blocks, trace, strict=True))
    finally:
        gpt.train(was_training)


def layer_diagnostics(gpt: GPT, idx: Tensor) -> list[dict[str, float]]:
    """Questions (a) and (b), one dict per layer, averaged over the tokens of ``idx`` (B, N)."""
    with _traced(gpt, idx) as layers:
        return [_layer_row(block, tr) for block, tr in layers]


def _layer_row(block: Any, tr: LayerTrace) -> dict[str, float]:
    attn = block.attn
    with torch.no_grad():
        a = attn(tr.x)                                      # the attention (gradient-step) output
        f_before = attn.energy(tr.x, tr.x)
        f_after = attn.energy(block.ln1(tr.z + tr.increment), tr.x)
        k = attn.heads(tr.x)[1]                             # (B, H, N, d_h)
    with torch.enable_grad():
        z = tr.z.clone().requires_grad_(True)
        F = attn.energy(attn.attention_input(z, tr.velocity, block.ln1), tr.x).sum()
        (g,) = torch.autograd.grad(F, z)
    cos = torch.nn.functional.cosine_similarity(a, -g, dim=-1)
    return {
        "energy_before": f_before.mean().item(),
        "energy_after": f_after.mean().item(),
        "energy_change": (f_after - f_before).mean().item(),
        "frac_tokens_decreased": (f_after < f_before).double().mean().item(),
        "cos_attention_vs_neg_grad": cos.mean().item(),
        "key_norm_cv": _cv(k.norm(dim=-1)),
        "input_norm_cv": _cv(tr.x.norm(dim=-1)),
        "residual_to_update_ratio": (tr.z.norm(dim=-1) / a.norm(dim=-1).clamp_min(1e-12)).median().item(),
    }


def newton_radius(gpt: GPT, idx: Tensor) -> dict[str, Any]:
    """Question (c): statistics of :math:`\\rho(\\gamma\\Sigma_p)` over tokens and heads, per layer."""
    rows = []
    with _traced(gpt, idx) as layers:
        for block, tr in layers:
            if not isinstance(block.attn, NewtonMHA):
                continue
            rho = block.attn.neumann_radius(tr.x).flatten().double()
            rows.append({
                "gamma": block.attn.gamma.item(), "mean": rho.mean().item(), "median": rho.median().item(),
                "p90": torch.quantile(rho, 0.9).item(), "max": rho.max().item(),
                "frac_below_1": (rho < 1).double().mean().item(),
            })
    return {"layers": rows}

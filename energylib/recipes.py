r"""Recipes: local energy x global energy x optimizer -> attention, with the tying maps.

Each recipe builds the energy ``F`` of the queries ``z`` given a frozen context ``h`` (the
Jacobi-style view of self-attention: pass ``h = x.detach()`` and ``z = x``), takes one gradient
step on ``F`` **by autograd**, and returns it beside ``z + attention(q, k, v)`` computed with the
tied weights. The identities the book proves say the two agree (or differ by a known gap).

Shapes: queries ``z (..., N, d)``, context ``h (..., M, d_in)``, anchor map ``W (d, d_in)``
(anchors ``a_i = W h_i``). Matrices act on column vectors (``q = W_Q z``).

- :func:`softmax_recipe`: elastic energy under the norm condition, Helmholtz global energy,
  tying :math:`W_Q^\top W_K = \beta W`, :math:`W_V = \eta W`;
- :func:`linear_recipe`: squared bilinear energy, plain sum, :math:`W_Q^\top W_K = W`, :math:`W_V = \eta W`;
- :func:`gated_linear_recipe`: squared bilinear energy, gated sum, tied as the linear recipe;
- :func:`multi_head_recipe`: elastic energy in each head's subspace, sum of Helmholtz energies,
  tied per head.

The softmax recipe is the paper's; the linear recipes are our reconstruction (chapter notes say so).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from . import _checks
from .attention import gated_linear_attention, linear_attention, multi_head_attention, softmax_attention
from .energies import elastic, gate_matrix, helmholtz, norm_conditioned_elastic, squared_bilinear
from .optimizers import Energy, gd_step


@dataclass(frozen=True)
class TiedWeights:
    """Attention weights tied to an energy. Single head: W_Q (d_k, d), W_K (d_k, d_in),
    W_V (d, d_in). Multi-head: W_Q, W_K (H, d_h, ·), W_V (H, d_h, d_in), W_O (H, d, d_h)."""

    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    W_O: Tensor | None = None

    def qkv(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Single head: :math:`q = W_Q z`, :math:`k_i = W_K h_i`, :math:`v_i = W_V h_i` (rows)."""
        return z @ self.W_Q.T, h @ self.W_K.T, h @ self.W_V.T


@dataclass(frozen=True)
class RecipeResult:
    """One GD step on the energy (autograd) beside the attention update with tied weights.

    gd_step, attention_step: (..., N, d); energy: F(z) per query, (..., N).
    """

    gd_step: Tensor
    attention_step: Tensor
    energy: Tensor
    weights: TiedWeights

    @property
    def gap(self) -> Tensor:
        """gd_step - attention_step: zero when the recipe's identity holds."""
        return self.gd_step - self.attention_step


def _setup(z: Tensor, h: Tensor, W: Tensor) -> Tensor:
    _checks.tensor("z", z, 2)
    _checks.tensor("h", h, 2)
    _checks.tensor("W", W, 2)
    if W.dim() != 2:
        raise ValueError(f"W must be a matrix (d, d_in), got shape {tuple(W.shape)}")
    if W.shape[1] != h.shape[-1]:
        raise ValueError(f"W takes d_in={W.shape[1]} but h has d={h.shape[-1]}")
    if W.shape[0] != z.shape[-1]:
        raise ValueError(f"W gives d={W.shape[0]} but z has d={z.shape[-1]}")
    return (h @ W.T).unsqueeze(-3)  # anchors a_i = W h_i, (..., 1, M, d) against (..., N, d)


def _causal_mask(n: int, m: int, device: torch.device) -> Tensor:
    if n != m:
        raise ValueError(f"causal recipes need as many queries as context tokens, got {n} and {m}")
    return torch.ones(n, m, dtype=torch.bool, device=device).triu(1)


def _tie_product(product: Tensor, W_Q: Tensor | None) -> tuple[Tensor, Tensor]:
    """Factor W_Q^T W_K = product; by default W_Q = I; else W_K = W_Q^{-T} product."""
    if W_Q is None:
        return torch.eye(product.shape[0], dtype=product.dtype, device=product.device), product
    _checks.tensor("W_Q", W_Q, 2)
    if W_Q.shape != (product.shape[0], product.shape[0]):
        raise ValueError(f"W_Q must be square ({product.shape[0]}, {product.shape[0]}), "
                         f"got {tuple(W_Q.shape)}")
    return W_Q, torch.linalg.solve(W_Q.T, product)


def tie_softmax(W: Tensor, beta: float, eta: float, W_Q: Tensor | None = None) -> TiedWeights:
    r"""Tying map of softmax attention: :math:`W_Q^\top W_K = \beta W`, :math:`W_V = \eta W`.

    Any invertible ``W_Q`` works (:math:`W_K = \beta W_Q^{-\top} W`): only the product is fixed.
    See chapter :doc:`Softmax attention </book/softmax>`.
    """
    beta = _checks.positive("beta", beta)
    eta = _checks.positive("eta", eta)
    W_Q, W_K = _tie_product(beta * W, W_Q)
    return TiedWeights(W_Q, W_K, eta * W)


def tie_linear(W: Tensor, eta: float, W_Q: Tensor | None = None) -> TiedWeights:
    r"""Tying map of (gated) linear attention: :math:`W_Q^\top W_K = W`, :math:`W_V = \eta W`.

    See chapter :doc:`Unnormalized linear attention </book/linear>`.
    """
    eta = _checks.positive("eta", eta)
    W_Q, W_K = _tie_product(W, W_Q)
    return TiedWeights(W_Q, W_K, eta * W)


def softmax_energy(
    h: Tensor, W: Tensor, beta: float, causal: bool = False, norm_condition: bool = True
) -> Energy:
    r"""The Helmholtz energy of queries ``z`` against anchors :math:`a_i = W h_i`:
    :math:`F^*(z) = -\tfrac1\beta \log \sum_i e^{-\beta E_i(z)}`.

    ``norm_condition=True``: :math:`E_i = r^2 - z^\top a_i`
    (:func:`energylib.energies.norm_conditioned_elastic`); else the full elastic energy
    :math:`\tfrac12\lVert z - a_i\rVert^2`. Returns ``z (..., N, d) -> (..., N)``.
    """
    beta = _checks.positive("beta", beta)
    local = norm_conditioned_elastic if norm_condition else elastic

    def energy(z: Tensor) -> Tensor:
        a = _setup(z, h, W)
        E = local(z, a)
        if causal:
            E = E.masked_fill(_causal_mask(z.shape[-2], a.shape[-2], z.device), torch.inf)
        return helmholtz(E, beta)

    return energy


def softmax_recipe(
    z: Tensor, h: Tensor, W: Tensor, beta: float, eta: float,
    causal: bool = False, norm_condition: bool = True,
) -> RecipeResult:
    r"""Softmax attention = one GD step on the Helmholtz free energy (the paper's recipe).

    With the norm condition, :math:`z - \eta\nabla F^* = z + \sum_i \mathrm{softmax}_i(q^\top k_i) v_i`
    exactly. Without it (full elastic energy) the GD step is
    :math:`(1-\eta) z + \eta \sum_i p^*_i a_i`, where the Boltzmann weights carry the extra key bias
    :math:`-\tfrac\beta2 \lVert a_i\rVert^2`; when all :math:`\lVert a_i\rVert` are equal the
    ``gap`` is exactly :math:`-\eta z`. See chapter :doc:`Softmax attention </book/softmax>`.
    """
    _setup(z, h, W)
    tied = tie_softmax(W, beta, eta)
    energy = softmax_energy(h, W, beta, causal, norm_condition)
    q, k, v = tied.qkv(z, h)
    attn = softmax_attention(q, k, v, causal=causal, scale=1.0)
    return RecipeResult(gd_step(energy, z, eta), z + attn, energy(z).detach(), tied)


def linear_energy(h: Tensor, W: Tensor, causal: bool = False) -> Energy:
    r""":math:`F(z) = \sum_{i (\le t)} -\tfrac12 (z^\top W h_i)^2`. Returns ``z (..., N, d) -> (..., N)``."""

    def energy(z: Tensor) -> Tensor:
        E = squared_bilinear(z, _setup(z, h, W))
        if causal:
            E = E.masked_fill(_causal_mask(z.shape[-2], E.shape[-1], z.device), 0.0)
        return E.sum(-1)

    return energy


def linear_recipe(z: Tensor, h: Tensor, W: Tensor, eta: float, causal: bool = False) -> RecipeResult:
    r"""Unnormalized linear attention = one GD step on :math:`\sum_i -\tfrac12 (z^\top W h_i)^2`
    (our reconstruction): :math:`z - \eta\nabla F = z + \sum_i (q^\top k_i) v_i`.

    See chapter :doc:`Unnormalized linear attention </book/linear>`.
    """
    _setup(z, h, W)
    tied = tie_linear(W, eta)
    energy = linear_energy(h, W, causal)
    q, k, v = tied.qkv(z, h)
    return RecipeResult(gd_step(energy, z, eta), z + linear_attention(q, k, v, causal=causal),
                        energy(z).detach(), tied)


def gated_linear_energy(h: Tensor, W: Tensor, alpha: Tensor) -> Energy:
    r""":math:`F_t(z) = \sum_{i \le t} \gamma_{t,i} \big(-\tfrac12 (z^\top W h_i)^2\big)`,
    :math:`\gamma_{t,i} = \prod_{j=i+1}^t \alpha_j`. Returns ``z (..., N, d) -> (..., N)``."""
    gamma = gate_matrix(alpha)

    def energy(z: Tensor) -> Tensor:
        E = squared_bilinear(z, _setup(z, h, W))
        _causal_mask(z.shape[-2], E.shape[-1], z.device)
        return (gamma * E).sum(-1)

    return energy


def gated_linear_recipe(z: Tensor, h: Tensor, W: Tensor, eta: float, alpha: Tensor) -> RecipeResult:
    r"""Gated linear attention = one GD step on the gated sum (our reconstruction):
    :math:`z_t - \eta\nabla F_t = z_t + S_t q_t`, :math:`S_t = \alpha_t S_{t-1} + v_t k_t^\top`.

    alpha: (..., N) in (0, 1]. See chapter :doc:`Gated linear attention </book/gated>`.
    """
    _setup(z, h, W)
    tied = tie_linear(W, eta)
    energy = gated_linear_energy(h, W, alpha)
    q, k, v = tied.qkv(z, h)
    return RecipeResult(gd_step(energy, z, eta), z + gated_linear_attention(q, k, v, alpha),
                        energy(z).detach(), tied)


def _betas(beta: float | Sequence[float], heads: int) -> list[float]:
    betas = [beta] * heads if isinstance(beta, (int, float)) else list(beta)
    if len(betas) != heads:
        raise ValueError(f"beta must be a number or one value per head ({heads}), got {len(betas)}")
    return [_checks.positive("beta", b) for b in betas]


def tie_multi_head(P: Tensor, Wh: Tensor, beta: float | Sequence[float], eta: float) -> TiedWeights:
    r"""Per-head tying: :math:`W_Q^{h\top} W_K^h = \beta_h P_h^\top W_h`,
    :math:`W_O^h W_V^h = \eta P_h^\top W_h`; here :math:`W_Q^h = \sqrt{\beta_h} P_h`,
    :math:`W_K^h = \sqrt{\beta_h} W_h`, :math:`W_V^h = \eta W_h`, :math:`W_O^h = P_h^\top`.

    P: (H, d_h, d) projections of z, Wh: (H, d_h, d_in) anchor maps.
    See chapter :doc:`Multi-head attention </book/multihead>`.
    """
    _checks.tensor("P", P, 3)
    _checks.tensor("Wh", Wh, 3)
    if P.dim() != 3 or Wh.dim() != 3 or P.shape[:2] != Wh.shape[:2]:
        raise ValueError(f"P (H, d_h, d) and Wh (H, d_h, d_in) must agree in H and d_h, got "
                         f"{tuple(P.shape)} and {tuple(Wh.shape)}")
    eta = _checks.positive("eta", eta)
    root = torch.tensor([math.sqrt(b) for b in _betas(beta, P.shape[0])], dtype=P.dtype)[:, None, None]
    return TiedWeights(root * P, root * Wh, eta * Wh, P.transpose(-1, -2))


def multi_head_energy(
    h: Tensor, P: Tensor, Wh: Tensor, beta: float | Sequence[float],
    causal: bool = False, norm_condition: bool = True,
) -> Energy:
    r""":math:`F^*_{MH}(z) = \sum_h -\tfrac1{\beta_h} \log \sum_i e^{-\beta_h E^{(h)}_i(z)}`,
    :math:`E^{(h)}_i = \tfrac12 \lVert P_h z - W_h h_i \rVert^2` (or its norm-conditioned form).

    Returns ``z (..., N, d) -> (..., N)``. See chapter :doc:`Multi-head attention </book/multihead>`.
    """
    betas = _betas(beta, P.shape[0])
    local = norm_conditioned_elastic if norm_condition else elastic
    anchors = torch.einsum("...md,hed->...hme", h, Wh).unsqueeze(-3)  # (..., H, 1, M, d_h)

    def energy(z: Tensor) -> Tensor:
        if z.shape[-1] != P.shape[-1]:
            raise ValueError(f"P acts on d={P.shape[-1]} but z has d={z.shape[-1]}")
        zh = torch.einsum("...nd,hed->...hne", z, P)                  # (..., H, N, d_h)
        E = local(zh, anchors)                                        # (..., H, N, M)
        if causal:
            E = E.masked_fill(_causal_mask(z.shape[-2], E.shape[-1], z.device), torch.inf)
        return sum(helmholtz(E[..., j, :, :], b) for j, b in enumerate(betas))

    return energy


def multi_head_recipe(
    z: Tensor, h: Tensor, P: Tensor, Wh: Tensor, beta: float | Sequence[float], eta: float,
    causal: bool = False, norm_condition: bool = True,
) -> RecipeResult:
    r"""Multi-head attention = one GD step on a sum of Helmholtz energies over head subspaces.

    With the per-head norm condition, :math:`z - \eta\nabla F^*_{MH} = z + \mathrm{MHA}(z)`; without
    it the gap is :math:`-\eta \sum_h P_h^\top P_h z` when each head's anchors have equal norms.
    See chapter :doc:`Multi-head attention </book/multihead>`.
    """
    _checks.tensor("z", z, 2)
    _checks.tensor("h", h, 2)
    tied = tie_multi_head(P, Wh, beta, eta)
    if Wh.shape[-1] != h.shape[-1]:
        raise ValueError(f"Wh takes d_in={Wh.shape[-1]} but h has d={h.shape[-1]}")
    energy = multi_head_energy(h, P, Wh, beta, causal, norm_condition)
    mha = multi_head_attention(z, tied.W_Q, tied.W_K, tied.W_V, tied.W_O, context=h,
                               causal=causal, scale=1.0)
    return RecipeResult(gd_step(energy, z, eta), z + mha, energy(z).detach(), tied)

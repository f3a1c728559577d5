"""Local energies, global energies and the Helmholtz free energy.

A *local energy* ``E_i(z)`` says how context token ``i`` pulls on the token ``z`` being updated; a
*global energy* combines ``E_1..E_N`` into one scalar. See the chapter :doc:`Energies </book/energies>`.

Shapes: ``z (..., d)``, anchors ``a (..., N, d)`` (usually ``a_i = W h_i``), energies ``E (..., N)``,
Boltzmann weights ``p (..., N)``. Leading dimensions broadcast.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _checks


def _pair(z: Tensor, anchors: Tensor) -> None:
    _checks.tensor("z", z, 1)
    _checks.tensor("anchors", anchors, 2)
    _checks.same_dim("z", z, "anchors", anchors)


def elastic(z: Tensor, anchors: Tensor) -> Tensor:
    r"""Elastic (spring) energy :math:`E_i(z) = \tfrac12 \lVert z - a_i \rVert^2`.

    z: (..., d), anchors: (..., N, d) -> (..., N). See chapter :doc:`Energies </book/energies>`.
    """
    _pair(z, anchors)
    return 0.5 * (z.unsqueeze(-2) - anchors).pow(2).sum(-1)


def bilinear(z: Tensor, anchors: Tensor) -> Tensor:
    r"""Bilinear (modern-Hopfield) energy :math:`E_i(z) = -z^\top a_i`.

    z: (..., d), anchors: (..., N, d) -> (..., N). See chapter :doc:`Softmax attention </book/softmax>`.
    """
    _pair(z, anchors)
    return -(anchors @ z.unsqueeze(-1)).squeeze(-1)


def squared_bilinear(z: Tensor, anchors: Tensor) -> Tensor:
    r"""Squared bilinear energy :math:`E_i(z) = -\tfrac12 (z^\top a_i)^2`.

    z: (..., d), anchors: (..., N, d) -> (..., N).
    See chapter :doc:`Unnormalized linear attention </book/linear>`.
    """
    return -0.5 * bilinear(z, anchors).pow(2)


def norm_conditioned_elastic(z: Tensor, anchors: Tensor) -> Tensor:
    r"""The elastic energy as it reads under the norm condition :math:`\lVert z\rVert = \lVert a_i\rVert = r`:
    :math:`E_i(z) = r^2 - z^\top a_i`, with :math:`r^2 = \lVert z \rVert^2` held constant.

    Its value equals :func:`elastic` whenever the norm condition holds; its gradient is
    :math:`-a_i`, the direction softmax attention moves along. z: (..., d), anchors: (..., N, d)
    -> (..., N). See chapter :doc:`Softmax attention </book/softmax>`.
    """
    r2 = z.detach().pow(2).sum(-1, keepdim=True)
    return r2 + bilinear(z, anchors)


def _beta(beta: float) -> float:
    return _checks.positive("beta", beta)


def helmholtz(E: Tensor, beta: float) -> Tensor:
    r"""Helmholtz free energy :math:`F^* = -\tfrac1\beta \log \sum_i e^{-\beta E_i}`.

    Computed with log-sum-exp, so it stays finite for large ``beta`` (1e4 and beyond).
    Entries ``E_i = +inf`` are states that do not exist (e.g. future tokens under a causal mask).
    E: (..., N) -> (...). See chapter :doc:`Energies </book/energies>`.
    """
    if not isinstance(E, Tensor):
        raise TypeError(f"E must be a torch.Tensor, got {type(E).__name__}")
    b = _beta(beta)
    if E.dim() < 1 or E.shape[-1] == 0:
        raise ValueError(f"E must have a non-empty last dimension, got shape {tuple(E.shape)}")
    if bool(torch.isnan(E).any()) or bool((E == -torch.inf).any()):
        raise ValueError("E has NaN or -inf entries")
    if bool(torch.isinf(E).all(-1).any()):
        raise ValueError("E has a row in which every state has energy +inf")
    return -torch.logsumexp(-b * E, dim=-1) / b


def boltzmann(E: Tensor, beta: float) -> Tensor:
    r"""Boltzmann (Gibbs) weights :math:`p^*_i = e^{-\beta E_i} / \sum_j e^{-\beta E_j}`.

    The minimiser of :func:`free_energy` over the simplex. E: (..., N) -> (..., N).
    See chapter :doc:`Energies </book/energies>`.
    """
    helmholtz(E, beta)  # same checks
    return torch.softmax(-float(beta) * E, dim=-1)


def entropy(p: Tensor) -> Tensor:
    r"""Shannon entropy :math:`S(p) = -\sum_i p_i \log p_i` with :math:`0 \log 0 = 0`.

    p: (..., N) -> (...). See chapter :doc:`Energies </book/energies>`.
    """
    _simplex("p", p)
    return -torch.special.xlogy(p, p).sum(-1)


def _simplex(name: str, p: Tensor, atol: float = 1e-6) -> None:
    _checks.tensor(name, p, 1)
    if bool((p < 0).any()):
        raise ValueError(f"{name} must be non-negative")
    total = p.sum(-1)
    if not torch.allclose(total, torch.ones_like(total), atol=atol, rtol=0):
        raise ValueError(f"{name} must sum to 1 over its last dimension, got sums up to "
                         f"{(total - 1).abs().max().item():.3g} away from 1")


def free_energy(p: Tensor, E: Tensor, beta: float) -> Tensor:
    r"""Free energy of a distribution :math:`F(p) = \sum_i p_i E_i - T S(p)`, :math:`T = 1/\beta`.

    :math:`= \sum_i p_i E_i + \tfrac1\beta \sum_i p_i \log p_i` with :math:`0 \log 0 = 0`.
    p, E: (..., N) -> (...). See chapter :doc:`Energies </book/energies>` (the free-energy lemma).
    """
    b = _beta(beta)
    _simplex("p", p)
    _checks.tensor("E", E, 1)
    if p.shape[-1] != E.shape[-1]:
        raise ValueError(f"p has N={p.shape[-1]} states but E has N={E.shape[-1]}")
    return (p * E).sum(-1) - entropy(p) / b


def kl_divergence(p: Tensor, q: Tensor) -> Tensor:
    r""":math:`\mathrm{KL}(p \Vert q) = \sum_i p_i \log (p_i / q_i)`, with :math:`0 \log 0 = 0`.

    p, q: (..., N) -> (...). See chapter :doc:`Energies </book/energies>`.
    """
    _simplex("p", p)
    _simplex("q", q)
    if bool(((q == 0) & (p > 0)).any()):
        raise ValueError("KL(p||q) is infinite: q has a zero where p is positive")
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(-1)


def total(E: Tensor, gates: Tensor | None = None) -> Tensor:
    r"""Sum of local energies :math:`F = \sum_i \gamma_i E_i` (:math:`\gamma_i = 1` without gates).

    gates: (..., N) in (0, 1]. E: (..., N) -> (...).
    See chapters :doc:`Unnormalized linear attention </book/linear>`
    and *Gated linear attention*.
    """
    _checks.tensor("E", E, 1)
    if gates is None:
        return E.sum(-1)
    _checks.gates("gates", gates)
    if gates.shape[-1] != E.shape[-1]:
        raise ValueError(f"gates has N={gates.shape[-1]} but E has N={E.shape[-1]}")
    return (gates * E).sum(-1)


def gate_matrix(alpha: Tensor) -> Tensor:
    r"""Decay weights :math:`\gamma_{t,i} = \prod_{j=i+1}^{t} \alpha_j` for :math:`i \le t`, 0 above.

    Computed from cumulative log-gates, so long sequences do not underflow to NaN.
    alpha: (..., N) in (0, 1] -> (..., N, N), lower triangular with unit diagonal.
    See chapter :doc:`Gated linear attention </book/gated>`.
    """
    _checks.gates("alpha", alpha)
    if alpha.dim() < 1:
        raise ValueError("alpha must have a sequence dimension")
    logcum = torch.cumsum(torch.log(alpha), dim=-1)
    diff = logcum.unsqueeze(-1) - logcum.unsqueeze(-2)  # B_t - B_i
    n = alpha.shape[-1]
    lower = torch.ones(n, n, dtype=torch.bool, device=alpha.device).tril()
    return torch.exp(diff.masked_fill(~lower, -torch.inf))


def weighted_mean(p: Tensor, x: Tensor) -> Tensor:
    r""":math:`m = \sum_i p_i x_i`. p: (..., N), x: (..., N, d) -> (..., d)."""
    return (p.unsqueeze(-2) @ x).squeeze(-2)


def weighted_covariance(p: Tensor, x: Tensor) -> Tensor:
    r"""Attention-weighted covariance :math:`\Sigma_p = \sum_i p_i (x_i - m)(x_i - m)^\top`.

    p: (..., N), x: (..., N, d) -> (..., d, d). See chapter :doc:`Newton attention </book/newton>`.
    """
    _simplex("p", p)
    _checks.tensor("x", x, 2)
    c = x - weighted_mean(p, x).unsqueeze(-2)
    return (c * p.unsqueeze(-1)).transpose(-1, -2) @ c


def helmholtz_elastic(z: Tensor, anchors: Tensor, beta: float) -> Tensor:
    r""":math:`F^*(z) = -\tfrac1\beta \log \sum_i e^{-\beta \frac12 \lVert z - a_i\rVert^2}`.

    z: (..., d), anchors: (..., N, d) -> (...). See chapter :doc:`Softmax attention </book/softmax>`.
    """
    return helmholtz(elastic(z, anchors), beta)


def helmholtz_elastic_grad(z: Tensor, anchors: Tensor, beta: float) -> Tensor:
    r"""Closed-form gradient :math:`\nabla F^*(z) = z - \sum_i p^*_i a_i` (envelope theorem).

    z: (..., d), anchors: (..., N, d) -> (..., d). See chapter :doc:`Softmax attention </book/softmax>`.
    """
    p = boltzmann(elastic(z, anchors), beta)
    return z - weighted_mean(p, anchors)


def helmholtz_elastic_hessian(z: Tensor, anchors: Tensor, beta: float) -> Tensor:
    r"""Closed-form Hessian :math:`\nabla^2 F^*(z) = I - \beta \Sigma_p`.

    :math:`\Sigma_p` is the Boltzmann-weighted covariance of the anchors (:func:`weighted_covariance`).
    z: (..., d), anchors: (..., N, d) -> (..., d, d). See chapter :doc:`Newton attention </book/newton>`.
    """
    p = boltzmann(elastic(z, anchors), beta)
    eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
    return eye - float(beta) * weighted_covariance(p, anchors)


def project_to_sphere(u: Tensor, radius: float) -> Tensor:
    r"""Radial projection :math:`N_r(u) = r\, u / \lVert u \rVert` onto the sphere of radius ``r``.

    What a LayerNorm without its affine part does to a centred token (``r = sqrt(d)``).
    u: (..., d) -> (..., d). See chapter :doc:`Softmax attention </book/softmax>`.
    """
    _checks.tensor("u", u, 1)
    r = _checks.positive("radius", radius)
    norm = u.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError("u has a zero row: it cannot be projected onto a sphere")
    return r * u / norm

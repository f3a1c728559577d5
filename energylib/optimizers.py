"""Optimizers on an energy ``z -> F(z)``: GD, heavy ball, Nesterov, Newton, one-term Neumann Newton.

An *energy* is any function mapping ``z (..., d)`` to ``F (...)`` whose leading entries are
independent problems (a batch of queries). Gradients and Hessians come from autograd, so every
optimizer works on every energy of :mod:`energylib.energies`. See chapter *Inference as
optimization*; the attention layers each optimizer induces are in chapters 7-9.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from . import _checks

Energy = Callable[[Tensor], Tensor]
Method = Literal["gd", "heavy_ball", "nesterov", "newton", "neumann"]
METHODS: tuple[str, ...] = ("gd", "heavy_ball", "nesterov", "newton", "neumann")


def _value(energy: Energy, z: Tensor) -> Tensor:
    F = energy(z)
    if not isinstance(F, Tensor) or F.shape != z.shape[:-1]:
        shape = tuple(F.shape) if isinstance(F, Tensor) else type(F).__name__
        raise ValueError(f"energy must map z {tuple(z.shape)} to shape {tuple(z.shape[:-1])}, "
                         f"got {shape}")
    return F


def gradient(energy: Energy, z: Tensor, create_graph: bool = False) -> Tensor:
    r""":math:`\nabla F(z)` by autograd. z: (..., d) -> (..., d)."""
    with torch.enable_grad():
        x = z if create_graph and z.requires_grad else z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(_value(energy, x).sum(), x, create_graph=create_graph)
    return g


def hessian(energy: Energy, z: Tensor) -> Tensor:
    r""":math:`\nabla^2 F(z)` by autograd, one row per backward pass. z: (..., d) -> (..., d, d)."""
    with torch.enable_grad():
        x = z.detach().requires_grad_(True)
        g = gradient(energy, x, create_graph=True)
        if not g.requires_grad:  # the gradient is constant: the energy is affine
            return torch.zeros(*z.shape, z.shape[-1], dtype=z.dtype, device=z.device)
        rows = [torch.autograd.grad(g[..., j].sum(), x, retain_graph=True)[0]
                for j in range(z.shape[-1])]
    return torch.stack(rows, dim=-2)


def hessian_vector(energy: Energy, z: Tensor, v: Tensor) -> Tensor:
    r""":math:`\nabla^2 F(z)\, v` without forming the Hessian (double backward). -> (..., d)."""
    with torch.enable_grad():
        x = z.detach().requires_grad_(True)
        g = gradient(energy, x, create_graph=True)
        if not g.requires_grad:
            return torch.zeros_like(z)
        (hv,) = torch.autograd.grad((g * v.detach()).sum(), x)
    return hv


@dataclass(frozen=True)
class Step:
    """One optimizer update: the new iterate and the new velocity (zeros for memoryless methods)."""

    z: Tensor
    velocity: Tensor


def gd_step(energy: Energy, z: Tensor, eta: float) -> Tensor:
    r"""Gradient descent :math:`z^+ = z - \eta \nabla F(z)`."""
    return z - eta * gradient(energy, z)


def heavy_ball_step(energy: Energy, z: Tensor, m: Tensor, eta: float, mu: float) -> Step:
    r"""Heavy ball (Polyak): :math:`m^+ = \mu m - \eta \nabla F(z)`, :math:`z^+ = z + m^+`."""
    m_new = mu * m - eta * gradient(energy, z)
    return Step(z + m_new, m_new)


def nesterov_step(energy: Energy, z: Tensor, m: Tensor, eta: float, mu: float) -> Step:
    r"""Nesterov: :math:`m^+ = \mu m - \eta \nabla F(z + \mu m)`, :math:`z^+ = z + m^+`."""
    m_new = mu * m - eta * gradient(energy, z + mu * m)
    return Step(z + m_new, m_new)


def newton_step(energy: Energy, z: Tensor, eta: float, damping: float = 0.0) -> Tensor:
    r"""Damped Newton :math:`z^+ = z - \eta (\nabla^2 F + \lambda I)^{-1} \nabla F`.

    ``damping`` :math:`\lambda \ge 0` keeps the step defined where the energy is not convex;
    raises if :math:`\nabla^2 F + \lambda I` is singular.
    """
    H = hessian(energy, z)
    H = H + damping * torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
    solved, info = torch.linalg.solve_ex(H, gradient(energy, z).unsqueeze(-1))
    if bool((info != 0).any()) or not bool(torch.isfinite(solved).all()):
        raise ValueError("the damped Hessian is singular; increase damping")
    return z - eta * solved.squeeze(-1)


def neumann_step(energy: Energy, z: Tensor, eta: float) -> Tensor:
    r"""One-term Neumann Newton: :math:`H^{-1} \approx I + (I - H)`, so
    :math:`z^+ = z - \eta (2 \nabla F - \nabla^2 F \, \nabla F)`.

    For the Helmholtz energy :math:`H = I - \beta\Sigma_p` this is :math:`(I + \beta\Sigma_p)`,
    valid while :math:`\rho(\beta \Sigma_p) < 1`. Uses a Hessian-vector product, never a d x d
    matrix. See chapter :doc:`Newton attention </book/newton>`.
    """
    g = gradient(energy, z)
    return z - eta * (2 * g - hessian_vector(energy, z, g))


def nesterov_schedule(k: int) -> float:
    r"""The classic momentum schedule :math:`\mu_k = (k - 1)/(k + 2)` for step ``k = 1, 2, ...``."""
    return (k - 1) / (k + 2)


@dataclass(frozen=True)
class Trajectory:
    """What :func:`descend` returns.

    z: (steps + 1, ..., d) iterates, energy: (steps + 1, ...) values ``F(z_k)``, diverged: whether
    the run stopped early at a non-finite iterate (then it holds the finite prefix).
    """

    z: Tensor
    energy: Tensor
    method: str
    diverged: bool = False


def descend(
    energy: Energy,
    z0: Tensor,
    method: Method = "gd",
    steps: int = 10,
    eta: float = 0.1,
    mu: float | Callable[[int], float] = 0.9,
    damping: float = 0.0,
    on_divergence: Literal["raise", "stop"] = "raise",
) -> Trajectory:
    r"""Run ``steps`` updates of ``method`` on ``energy`` from ``z0``.

    method: one of ``"gd"``, ``"heavy_ball"``, ``"nesterov"``, ``"newton"``, ``"neumann"``.
    mu: a constant in [0, 1) or a schedule ``k -> mu_k`` (e.g. :func:`nesterov_schedule`).
    on_divergence: ``"raise"`` a ValueError at the first non-finite iterate, or ``"stop"`` and
    return the finite prefix with ``diverged=True`` (the explorers draw that).
    z0: (..., d). See chapter :doc:`Inference as optimization </book/inference>`.
    """
    _checks.tensor("z0", z0, 1)
    eta = _checks.positive("eta", eta)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not callable(mu):
        _checks.in_range("mu", mu, 0.0, 1.0, closed_low=True)
        if mu == 1.0:
            raise ValueError("mu must be < 1, got 1.0")
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    if on_divergence not in ("raise", "stop"):
        raise ValueError(f"on_divergence must be 'raise' or 'stop', got {on_divergence!r}")

    z, m = z0.detach(), torch.zeros_like(z0)
    zs, Fs = [z], [_value(energy, z).detach()]
    for k in range(1, steps + 1):
        mu_k = mu(k) if callable(mu) else mu
        if method == "gd":
            z = gd_step(energy, z, eta)
        elif method == "heavy_ball":
            z, m = _unpack(heavy_ball_step(energy, z, m, eta, mu_k))
        elif method == "nesterov":
            z, m = _unpack(nesterov_step(energy, z, m, eta, mu_k))
        elif method == "newton":
            z = newton_step(energy, z, eta, damping)
        else:
            z = neumann_step(energy, z, eta)
        F = _value(energy, z).detach()
        if not (bool(torch.isfinite(z).all()) and bool(torch.isfinite(F).all())):
            if on_divergence == "raise":
                raise ValueError(f"{method} diverged at step {k} (eta={eta}); lower eta")
            return Trajectory(torch.stack(zs), torch.stack(Fs), method, diverged=True)
        zs.append(z.detach())
        Fs.append(F)
    return Trajectory(torch.stack(zs), torch.stack(Fs), method)


def _unpack(step: Step) -> tuple[Tensor, Tensor]:
    return step.z, step.velocity

"""Optimizers: autograd derivatives, one-step formulas, descend's trajectories and guards."""

from __future__ import annotations

import pytest
import torch
from conftest import TOL, batches, dims, etas, randn, seeds
from hypothesis import given
from hypothesis import strategies as st

from energylib import optimizers as op
from energylib.energies import helmholtz_elastic


def quadratic(seed, d):
    """F(z) = 1/2 z^T A z - b^T z with A symmetric positive definite."""
    M = randn(seed, d, d)
    A = M @ M.T + d * torch.eye(d)
    b = randn(seed + 1, d)
    return A, b, lambda z: 0.5 * ((z @ A) * z).sum(-1) - z @ b


@given(seeds, batches, dims)
def test_autograd_derivatives_of_a_quadratic(seed, batch, d):
    A, b, F = quadratic(seed, d)
    z, v = randn(seed + 2, *batch, d), randn(seed + 3, *batch, d)
    torch.testing.assert_close(op.gradient(F, z), z @ A - b, **TOL)
    torch.testing.assert_close(op.hessian(F, z), A.expand(*batch, d, d), **TOL)
    torch.testing.assert_close(op.hessian_vector(F, z, v), v @ A, **TOL)


@given(seeds, batches, dims, etas, st.floats(0.0, 0.95))
def test_one_step_formulas(seed, batch, d, eta, mu):
    A, b, F = quadratic(seed, d)
    z, m = randn(seed + 2, *batch, d), randn(seed + 3, *batch, d)
    g = z @ A - b
    torch.testing.assert_close(op.gd_step(F, z, eta), z - eta * g, **TOL)
    hb = op.heavy_ball_step(F, z, m, eta, mu)
    torch.testing.assert_close(hb.velocity, mu * m - eta * g, **TOL)
    torch.testing.assert_close(hb.z, z + hb.velocity, **TOL)
    ne = op.nesterov_step(F, z, m, eta, mu)
    torch.testing.assert_close(ne.velocity, mu * m - eta * ((z + mu * m) @ A - b), **TOL)
    torch.testing.assert_close(ne.z, z + ne.velocity, **TOL)
    newton = op.newton_step(F, z, eta)
    torch.testing.assert_close(newton, z - eta * torch.linalg.solve(A, g.unsqueeze(-1)).squeeze(-1),
                               **TOL)
    torch.testing.assert_close(op.neumann_step(F, z, eta), z - eta * (2 * g - g @ A), **TOL)


@given(seeds, dims)
def test_newton_solves_a_quadratic_in_one_step(seed, d):
    A, b, F = quadratic(seed, d)
    z1 = op.newton_step(F, randn(seed + 2, d), 1.0)
    torch.testing.assert_close(z1, torch.linalg.solve(A, b), **TOL)


@given(seeds, st.sampled_from(op.METHODS), st.integers(0, 6))
def test_descend_replays_the_step_functions(seed, method, steps):
    anchors = randn(seed, 5, 3)

    def F(z):
        return helmholtz_elastic(z, anchors, 0.7)

    z0 = randn(seed + 1, 2, 3)
    traj = op.descend(F, z0, method, steps=steps, eta=0.3, mu=0.5, damping=2.0)
    assert traj.z.shape == (steps + 1, 2, 3) and traj.energy.shape == (steps + 1, 2)
    z, m = z0, torch.zeros_like(z0)
    for k in range(steps):
        if method == "gd":
            z = op.gd_step(F, z, 0.3)
        elif method == "heavy_ball":
            s = op.heavy_ball_step(F, z, m, 0.3, 0.5)
            z, m = s.z, s.velocity
        elif method == "nesterov":
            s = op.nesterov_step(F, z, m, 0.3, 0.5)
            z, m = s.z, s.velocity
        elif method == "newton":
            z = op.newton_step(F, z, 0.3, damping=2.0)
        else:
            z = op.neumann_step(F, z, 0.3)
        torch.testing.assert_close(traj.z[k + 1], z, **TOL)
        torch.testing.assert_close(traj.energy[k + 1], F(z), **TOL)


@given(seeds, st.floats(0.05, 1.0))
def test_gd_energy_history_is_non_increasing(seed, eta):
    anchors = 3 * randn(seed, 6, 2)
    traj = op.descend(lambda z: helmholtz_elastic(z, anchors, 2.0), randn(seed + 1, 4, 2), "gd",
                      steps=20, eta=eta)
    assert bool((traj.energy.diff(dim=0) <= 1e-12).all())


def test_nesterov_schedule():
    assert [op.nesterov_schedule(k) for k in (1, 2, 3)] == [0.0, 0.25, 0.4]
    traj = op.descend(lambda z: (z**2).sum(-1), torch.ones(2), "nesterov", steps=3,
                      mu=op.nesterov_schedule)
    assert traj.z.shape == (4, 2)


def test_divergence_raises_or_stops():
    def F(z):
        return -(z**4).sum(-1)  # unbounded below: GD runs away

    with pytest.raises(ValueError, match="diverged"):
        op.descend(F, torch.ones(2), "gd", steps=50, eta=1.0)
    traj = op.descend(F, torch.ones(2), "gd", steps=50, eta=1.0, on_divergence="stop")
    assert traj.diverged and torch.isfinite(traj.z).all() and len(traj.z) < 51

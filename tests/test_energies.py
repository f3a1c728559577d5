"""Energies: closed forms, the free-energy lemma, temperature limits, gradient and Hessian."""

from __future__ import annotations

import math

import torch
from conftest import TOL, batches, betas, dims, lengths, rand, randn, seeds, simplex
from hypothesis import given
from hypothesis import strategies as st

from energylib import energies as en
from energylib.optimizers import gradient, hessian


@given(seeds, batches, lengths, dims)
def test_local_energies_match_their_formulas(seed, batch, n, d):
    z, a = randn(seed, *batch, d), randn(seed + 1, *batch, n, d)
    for i in range(n):
        ai = a[..., i, :]
        torch.testing.assert_close(en.elastic(z, a)[..., i], 0.5 * ((z - ai) ** 2).sum(-1), **TOL)
        torch.testing.assert_close(en.bilinear(z, a)[..., i], -(z * ai).sum(-1), **TOL)
        torch.testing.assert_close(en.squared_bilinear(z, a)[..., i], -0.5 * (z * ai).sum(-1) ** 2,
                                   **TOL)


@given(seeds, lengths, dims)
def test_norm_conditioned_elastic_equals_elastic_on_the_sphere(seed, n, d):
    r = 1.0 + rand(seed, 1).item()
    z, a = randn(seed, d), randn(seed + 1, n, d)
    z, a = r * z / z.norm(), r * a / a.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(en.norm_conditioned_elastic(z, a), en.elastic(z, a), **TOL)
    # and its gradient is -a_i: the direction softmax attention moves along
    g = gradient(lambda x: en.norm_conditioned_elastic(x, a)[..., 0], z)
    torch.testing.assert_close(g, -a[0], **TOL)


@given(seeds, batches, lengths, betas)
def test_helmholtz_and_boltzmann_closed_forms(seed, batch, n, beta):
    E = randn(seed, *batch, n)
    F = en.helmholtz(E, beta)
    torch.testing.assert_close(F, -torch.log(torch.exp(-beta * E).sum(-1)) / beta, **TOL)
    p = en.boltzmann(E, beta)
    torch.testing.assert_close(p, torch.exp(-beta * (E - F.unsqueeze(-1))), **TOL)
    torch.testing.assert_close(p.sum(-1), torch.ones(batch), **TOL)
    # dF*/dE_i = p*_i
    g = gradient(lambda e: en.helmholtz(e, beta), E)
    torch.testing.assert_close(g, p, **TOL)


@given(seeds, batches, lengths, betas)
def test_free_energy_lemma(seed, batch, n, beta):
    """F(p) = F* + T KL(p || p*): p* is the unique minimiser and F* the minimum."""
    E, p = randn(seed, *batch, n), simplex(seed + 1, *batch, n)
    F_star, p_star = en.helmholtz(E, beta), en.boltzmann(E, beta)
    lhs = en.free_energy(p, E, beta)
    torch.testing.assert_close(lhs, F_star + en.kl_divergence(p, p_star) / beta, **TOL)
    torch.testing.assert_close(en.free_energy(p_star, E, beta), F_star, **TOL)
    assert bool((lhs >= F_star - 1e-12).all())


@given(seeds, batches, lengths)
def test_kl_is_zero_only_at_equality(seed, batch, n):
    p, q = simplex(seed, *batch, n), simplex(seed + 1, *batch, n)
    q = 0.5 * q + 0.5 / n  # strictly positive
    assert bool((en.kl_divergence(p, q) >= -1e-14).all())
    torch.testing.assert_close(en.kl_divergence(q, q), torch.zeros(batch), **TOL)


@given(seeds, lengths, st.floats(0.1, 1e4))
def test_cold_limit_bounds(seed, n, beta):
    """min E - (log N)/beta <= F* <= min E: hard attention as beta -> infinity."""
    E = 10 * randn(seed, n)
    F = en.helmholtz(E, beta)
    assert math.isfinite(F.item())
    assert E.min() - math.log(n) / beta - 1e-9 <= F <= E.min() + 1e-9


@given(seeds, st.integers(2, 9), st.floats(1e-6, 1.0))
def test_hot_limit_bounds(seed, n, beta):
    """0 <= mean E - T log N - F* <= beta (max E - min E)^2 / 8 (Hoeffding's lemma)."""
    E = randn(seed, n)
    gap = E.mean() - math.log(n) / beta - en.helmholtz(E, beta)
    assert -1e-9 * (1 + 1 / beta) <= gap <= beta * (E.max() - E.min()) ** 2 / 8 + 1e-9 * (1 + 1 / beta)


def test_large_beta_is_finite_and_tends_to_min():
    E = torch.tensor([3.0, 1.0, 2.0, 1.5]) * 100
    for beta in (1e2, 1e3, 1e4, 1e6):
        F, p = en.helmholtz(E, beta), en.boltzmann(E, beta)
        assert torch.isfinite(F) and torch.isfinite(p).all()
    torch.testing.assert_close(en.boltzmann(E, 1e4), torch.tensor([0.0, 1.0, 0.0, 0.0]))


def test_masked_states_have_zero_weight():
    E = torch.tensor([[1.0, torch.inf, 2.0]])
    p = en.boltzmann(E, 1.0)
    assert p[0, 1] == 0
    torch.testing.assert_close(en.helmholtz(E, 1.0), en.helmholtz(E[:, [0, 2]], 1.0), **TOL)


@given(seeds, batches, lengths, dims, betas)
def test_helmholtz_elastic_gradient_and_hessian(seed, batch, n, d, beta):
    z, a = randn(seed, *batch, d), randn(seed + 1, *batch, n, d)

    def F(x):
        return en.helmholtz_elastic(x, a, beta)

    torch.testing.assert_close(en.helmholtz_elastic_grad(z, a, beta), gradient(F, z), **TOL)
    torch.testing.assert_close(en.helmholtz_elastic_hessian(z, a, beta), hessian(F, z), **TOL)


@given(seeds, batches, lengths, dims)
def test_weighted_covariance(seed, batch, n, d):
    p, x = simplex(seed, *batch, n), randn(seed + 1, *batch, n, d)
    m = (p.unsqueeze(-1) * x).sum(-2)
    expect = sum(p[..., i, None, None] * torch.einsum("...a,...b->...ab", x[..., i, :] - m,
                                                      x[..., i, :] - m) for i in range(n))
    torch.testing.assert_close(en.weighted_covariance(p, x), expect, **TOL)
    torch.testing.assert_close(en.weighted_mean(p, x), m, **TOL)


@given(seeds, batches, lengths)
def test_gate_matrix_is_the_product_of_gates(seed, batch, n):
    alpha = rand(seed, *batch, n, low=0.05, high=1.0)
    gamma = en.gate_matrix(alpha)
    for t in range(n):
        for i in range(n):
            expect = torch.prod(alpha[..., i + 1:t + 1], dim=-1) if i <= t else torch.zeros(batch)
            torch.testing.assert_close(gamma[..., t, i], expect, **TOL)


def test_gate_matrix_long_sequence_stays_finite():
    gamma = en.gate_matrix(torch.full((3000,), 0.01))
    assert torch.isfinite(gamma).all() and gamma.diagonal().eq(1).all()


@given(seeds, batches, lengths)
def test_total_with_and_without_gates(seed, batch, n):
    E, g = randn(seed, *batch, n), rand(seed + 1, *batch, n, low=0.01)
    torch.testing.assert_close(en.total(E), sum(E[..., i] for i in range(n)), **TOL)
    torch.testing.assert_close(en.total(E, g), sum(g[..., i] * E[..., i] for i in range(n)), **TOL)


@given(seeds, lengths, dims)
def test_entropy_and_zero_log_zero(seed, n, d):
    p = simplex(seed, n)
    expect = -sum(p[i] * math.log(p[i]) for i in range(n) if p[i] > 0)
    torch.testing.assert_close(en.entropy(p), torch.tensor(float(expect)), **TOL)


@given(seeds, batches, dims, st.floats(0.1, 10.0))
def test_project_to_sphere(seed, batch, d, r):
    u = randn(seed, *batch, d) + 0.1
    x = en.project_to_sphere(u, r)
    torch.testing.assert_close(x.norm(dim=-1), torch.full(batch, r), **TOL)
    torch.testing.assert_close(en.project_to_sphere(x, r), x, **TOL)  # a projection
    torch.testing.assert_close(x * u.norm(dim=-1, keepdim=True), r * u, **TOL)  # radial

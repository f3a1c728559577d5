"""Identities stated in the chapters *Momentum attention*, *Nesterov attention* and *Newton
attention* that the module tests do not already cover (those are in test_optimizers,
test_attention, test_energies and test_modules)."""

from __future__ import annotations

import math

import torch
from conftest import TOL, betas, dims, etas, lengths, randn, seeds, simplex
from hypothesis import assume, given
from hypothesis import strategies as st

from energylib import attention as at
from energylib import energies as en
from energylib import optimizers as op
from energylib import recipes

mus = st.floats(0.0, 0.95)


def _attn(z, h, W, beta, eta):
    """A tied softmax layer's attention output Attn(z) (= -eta grad F*, chapter Momentum)."""
    return recipes.softmax_recipe(z, h, W, beta, eta).attention_step - z


def _context(seed, n, m, d):
    return randn(seed, n, d), randn(seed + 1, m, d), randn(seed + 2, d, d) / 2


def _spd(seed, d, lam_min, lam_max):
    """A random symmetric matrix with eigenvalues spread over [lam_min, lam_max], both included."""
    Q, _ = torch.linalg.qr(randn(seed, d, d))
    lam = torch.linspace(lam_min, lam_max, d) if d > 1 else torch.tensor([lam_max])
    return (Q * lam) @ Q.T, lam


def _iteration_matrix(A, eta, mu):
    """Matrix of the heavy-ball map (z, m) -> (z+, m+) on F = z^T A z / 2, read off heavy_ball_step."""
    d = A.shape[0]
    basis = torch.eye(2 * d)
    step = op.heavy_ball_step(lambda z: 0.5 * ((z @ A) * z).sum(-1), basis[:, :d], basis[:, d:], eta, mu)
    return torch.cat([step.z, step.velocity], dim=-1).T


# --- chapter Momentum attention ------------------------------------------------------------------

@given(seeds, lengths, lengths, dims, betas, etas, mus, st.integers(0, 6))
def test_momentum_stack_on_a_frozen_context_is_heavy_ball(seed, n, m, d, beta, eta, mu, layers):
    """thm-momentum-stack (1): m = mu m + Attn(z), z = z + m equals descend(..., 'heavy_ball')."""
    z, h, W = _context(seed, n, m, d)
    z_l, m_l = z, torch.zeros_like(z)
    for _ in range(layers):
        m_l = mu * m_l + _attn(z_l, h, W, beta, eta)
        z_l = z_l + m_l
    traj = op.descend(recipes.softmax_energy(h, W, beta), z, "heavy_ball", steps=layers, eta=eta, mu=mu)
    torch.testing.assert_close(z_l, traj.z[-1], **TOL)


@given(seeds, lengths, dims, betas, etas, mus, st.integers(1, 8), st.booleans())
def test_unrolled_momentum_stack(seed, n, d, beta, eta, mu, layers, causal):
    """prop-momentum-unrolled: z^(L+1) = z^(1) + sum_l (1 - mu^(L-l+1)) / (1 - mu) g^(l),
    with g^(l) the outputs of a self-attention stack (context = the stream)."""
    x, W = randn(seed, n, d), randn(seed + 1, d, d) / 2
    z, m, outputs = x, torch.zeros_like(x), []
    for _ in range(layers):
        g = recipes.softmax_recipe(z, z.detach(), W, beta, eta, causal=causal).attention_step - z
        m = mu * m + g
        z = z + m
        outputs.append(g)
    coeff = [(1 - mu ** (layers - ell + 1)) / (1 - mu) for ell in range(1, layers + 1)]
    torch.testing.assert_close(z, x + sum(c * g for c, g in zip(coeff, outputs, strict=True)), **TOL)


@given(seeds, lengths, dims, betas, etas, st.floats(0.2, 3.0))
def test_equal_norm_anchors_give_the_shrunk_residual_layer(seed, n, d, beta, eta, r):
    """Chapter Momentum: with ||a_i|| = r, -eta grad F*_elastic(z) = Attn(z) - eta z."""
    a = randn(seed, n, d)
    a = r * a / a.norm(dim=-1, keepdim=True)
    z = randn(seed + 1, 4, d)
    attn = torch.softmax(beta * z @ a.T, dim=-1) @ (eta * a)
    torch.testing.assert_close(attn - eta * z, -eta * en.helmholtz_elastic_grad(z, a, beta), **TOL)


@given(seeds, st.integers(2, 6), st.floats(0.01, 0.5), st.floats(0.9, 0.999))
def test_heavy_ball_rates_on_the_quadratic_model(seed, d, lam_min, slack):
    """thm-momentum-rate. Spectrum inside [lam_min, 1] (L = 1, eta = 1); with mu built from a
    slightly smaller lam_min all roots are simple complex pairs, so eigvals are exact."""
    A, lam = _spd(seed, d, lam_min, 1.0)
    # (1) gradient descent, eta = 1: radius 1 - lam_min
    gd = torch.linalg.eigvalsh(torch.eye(d) - A).abs().max()
    assert math.isclose(gd, 1 - lam_min, rel_tol=1e-10)
    # (2) heavy ball, same eta, mu = (1 - sqrt(eta m'))^2, m' = slack * lam_min: every |root| = sqrt(mu)
    mu = (1 - math.sqrt(slack * lam_min)) ** 2
    moduli = torch.linalg.eigvals(_iteration_matrix(A, 1.0, mu)).abs()
    torch.testing.assert_close(moduli, torch.full_like(moduli, math.sqrt(mu)), **TOL)
    # (3) Polyak's tuning with bounds m' < lam_min, L' > 1: every |root| = (sqrt k - 1)/(sqrt k + 1)
    lo, hi = slack * lam_min, 1.0 / slack
    eta = 4 / (math.sqrt(hi) + math.sqrt(lo)) ** 2
    kappa = hi / lo
    mu = ((math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1)) ** 2
    moduli = torch.linalg.eigvals(_iteration_matrix(A, eta, mu)).abs()
    torch.testing.assert_close(moduli, torch.full_like(moduli, math.sqrt(mu)), **TOL)


@given(st.floats(0.01, 4.5), st.floats(0.0, 0.95))
def test_heavy_ball_stability_condition(etalam, mu):
    """prop-momentum-stability: converges iff 0 < eta lambda < 2 (1 + mu); complex roots (of
    modulus sqrt(mu)) iff (1 - sqrt(mu))^2 < eta lambda < (1 + sqrt(mu))^2."""
    assume(abs(etalam - 2 * (1 + mu)) > 1e-6)
    b = 1 + mu - etalam
    disc = b * b - 4 * mu
    assume(abs(disc) > 1e-9)
    roots = torch.linalg.eigvals(torch.tensor([[b, -mu], [1.0, 0.0]]))
    assert (roots.abs().max() < 1) == (etalam < 2 * (1 + mu))
    complex_pair = bool((roots.imag.abs() > 0).all())
    assert complex_pair == ((1 - math.sqrt(mu)) ** 2 < etalam < (1 + math.sqrt(mu)) ** 2)
    if complex_pair:
        torch.testing.assert_close(roots.abs(), torch.full((2,), math.sqrt(mu)), **TOL)


# --- chapter Nesterov attention ------------------------------------------------------------------

@given(seeds, lengths, lengths, dims, betas, etas, mus, st.integers(0, 6), st.booleans())
def test_nesterov_stack_on_a_frozen_context_is_nesterov(seed, n, m, d, beta, eta, mu, layers, scheduled):
    """thm-nesterov-stack (1): m = mu_l m + Attn(z + mu_l m), z = z + m equals descend(..., 'nesterov')."""
    z, h, W = _context(seed, n, m, d)
    schedule = op.nesterov_schedule if scheduled else (lambda ell: mu)
    z_l, m_l = z, torch.zeros_like(z)
    for ell in range(1, layers + 1):
        mu_l = schedule(ell)
        m_l = mu_l * m_l + _attn(z_l + mu_l * m_l, h, W, beta, eta)
        z_l = z_l + m_l
    traj = op.descend(recipes.softmax_energy(h, W, beta), z, "nesterov", steps=layers, eta=eta,
                      mu=op.nesterov_schedule if scheduled else mu)
    torch.testing.assert_close(z_l, traj.z[-1], **TOL)


@given(seeds, lengths, dims, betas, etas, mus, st.integers(1, 7), st.booleans())
def test_nesterov_is_a_plain_layer_at_an_extrapolation(seed, n, d, beta, eta, mu, layers, scheduled):
    """prop-nesterov-extrapolation: z_k = y_k - eta grad F(y_k), y_k = z_{k-1} + mu_k (z_{k-1} - z_{k-2})."""
    anchors = randn(seed, n, d)

    def F(z):
        return en.helmholtz_elastic(z, anchors, beta)

    schedule = op.nesterov_schedule if scheduled else (lambda ell: mu)
    traj = op.descend(F, randn(seed + 1, 3, d), "nesterov", steps=layers, eta=eta,
                      mu=op.nesterov_schedule if scheduled else mu)
    zs = traj.z
    for k in range(1, layers + 1):
        previous = zs[k - 2] if k >= 2 else zs[0]
        y = zs[k - 1] + schedule(k) * (zs[k - 1] - previous)
        torch.testing.assert_close(zs[k], op.gd_step(F, y, eta), **TOL)


@given(seeds, st.integers(1, 8), st.integers(0, 4), st.floats(0.2, 1.0))
def test_convex_rate_bounds(seed, d, null, eta_scale):
    """thm-nesterov-rate on a convex quadratic (possibly singular, minimiser not unique):
    GD: F(z_k) - F* <= R^2 / (2 eta k); Nesterov with mu_l = (l-1)/(l+2):
    F(z_k) - F* <= (4 (F(z_0) - F*) + 2 R^2 / eta) / (k + 2)^2 <= 4 R^2 / (eta (k + 2)^2)."""
    null = min(null, d - 1)
    Q, _ = torch.linalg.qr(randn(seed, d, d))
    lam = torch.rand(d, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    lam[:null] = 0.0                                  # flat directions: convex, not strongly
    A = (Q * lam) @ Q.T
    z_star = randn(seed + 2, d)                       # one minimiser among many
    b = A @ z_star

    def F(z):
        return 0.5 * ((z @ A) * z).sum(-1) - z @ b

    L = max(float(lam.max()), 1e-3)
    eta = eta_scale / L
    z0 = z_star + randn(seed + 3, d)
    F_star, R2 = F(z_star), float((z0 - z_star).pow(2).sum())
    k = torch.arange(41, dtype=torch.float64)
    gd = op.descend(F, z0, "gd", steps=40, eta=eta).energy - F_star
    ne = op.descend(F, z0, "nesterov", steps=40, eta=eta, mu=op.nesterov_schedule).energy - F_star
    slack = 1e-10 * (1 + R2 / eta)
    assert bool((gd[1:] <= R2 / (2 * eta * k[1:]) + slack).all())
    assert bool((ne <= (4 * ne[0] + 2 * R2 / eta) / (k + 2) ** 2 + slack).all())
    assert bool((ne <= 4 * R2 / (eta * (k + 2) ** 2) + slack).all())


@given(seeds, st.integers(2, 7), dims, betas, etas, mus, st.integers(1, 5), st.booleans())
def test_causal_momentum_and_nesterov_stacks_do_not_look_ahead(seed, n, d, beta, eta, mu, layers, nesterov):
    """thm-momentum-stack, thm-nesterov-stack: with a causal mask, changing the last token leaves
    every other token of the output of a tied self-attention stack unchanged, bit for bit."""
    W = randn(seed, d, d) / 2

    def stack(z):
        m = torch.zeros_like(z)
        for _ in range(layers):
            x = z + mu * m if nesterov else z
            m = mu * m + recipes.softmax_recipe(x, x.detach(), W, beta, eta, causal=True).attention_step - x
            z = z + m
        return z

    x = randn(seed + 1, n, d)
    changed = x.clone()
    changed[-1] = randn(seed + 2, d)
    assert torch.equal(stack(x)[:-1], stack(changed)[:-1])


@given(seeds, lengths, dims, betas, etas, mus)
def test_queries_only_look_ahead_is_nesterov_on_the_current_context(seed, n, d, beta, eta, mu):
    """ex-nesterov-2: queries from y = z + mu m, keys and values from z: the new velocity is a
    Nesterov step on the energy whose (frozen) context is z."""
    z, m, W = randn(seed, n, d), randn(seed + 1, n, d), randn(seed + 2, d, d) / 2
    y = z + mu * m
    velocity = mu * m + recipes.softmax_recipe(y, z.detach(), W, beta, eta).attention_step - y
    step = op.nesterov_step(recipes.softmax_energy(z.detach(), W, beta), z, m, eta, mu)
    torch.testing.assert_close(velocity, step.velocity, **TOL)


# --- chapter Newton attention --------------------------------------------------------------------

def _helmholtz_point(seed, n, d, beta):
    a, z = randn(seed, n, d), randn(seed + 1, d)
    p = en.boltzmann(en.elastic(z, a), beta)
    return a, z, p, en.weighted_mean(p, a), en.weighted_covariance(p, a)


@given(seeds, lengths, dims, betas, etas, st.floats(0.0, 2.0))
def test_damped_newton_step_closed_form(seed, n, d, beta, eta, extra):
    """z+ = z - eta ((1 + lambda) I - beta Sigma_p)^{-1} (z - m), lambda past the non-convexity."""
    a, z, _, m, Sigma = _helmholtz_point(seed, n, d, beta)
    damping = beta * float(a.pow(2).sum(-1).max()) + extra  # >= beta lambda_max(Sigma_p)
    H = (1 + damping) * torch.eye(d) - beta * Sigma
    expect = z - eta * torch.linalg.solve(H, z - m)
    got = op.newton_step(lambda x: en.helmholtz_elastic(x, a, beta), z, eta, damping=damping)
    torch.testing.assert_close(got, expect, **TOL)


@given(seeds, lengths, dims, betas, etas)
def test_neumann_step_is_preconditioned_gd_and_always_descends(seed, n, d, beta, eta):
    """prop-newton-neumann (3): neumann_step = z - eta (I + beta Sigma_p) grad F*, and
    grad^T (I + beta Sigma_p) grad >= |grad|^2 everywhere (also where F* is not convex)."""
    a, z, _, m, Sigma = _helmholtz_point(seed, n, d, beta)
    P = torch.eye(d) + beta * Sigma
    g = z - m
    got = op.neumann_step(lambda x: en.helmholtz_elastic(x, a, beta), z, eta)
    torch.testing.assert_close(got, z - eta * P @ g, **TOL)
    assert float(g @ P @ g) >= float(g @ g) - 1e-12


@given(seeds, lengths, dims, st.floats(0.05, 20.0), st.integers(1, 4))
def test_neumann_truncation_error_is_exact(seed, n, d, beta, K):
    """prop-newton-neumann (1, 2), ex-newton-3: valid iff F* is locally strictly convex; the K-term
    error has spectral norm rho^(K+1) / (1 - rho); |d_N - d_1| <= rho^2 |d_N|."""
    a, z, _, m, Sigma = _helmholtz_point(seed, n, d, beta)
    B = beta * Sigma
    rho = float(torch.linalg.eigvalsh(B)[-1])
    H = en.helmholtz_elastic_hessian(z, a, beta)
    assert (rho < 1) == bool(torch.linalg.eigvalsh(H)[0] > 0) or abs(rho - 1) < 1e-12
    assume(rho < 0.95)
    exact = torch.linalg.inv(torch.eye(d) - B)
    partial_sum = sum(torch.linalg.matrix_power(B, j) for j in range(K + 1))
    err = torch.linalg.matrix_norm(exact - partial_sum, ord=2)
    assert math.isclose(err, rho ** (K + 1) / (1 - rho), rel_tol=1e-9, abs_tol=1e-12)
    g = z - m
    d_newton, d_one = exact @ g, (torch.eye(d) + B) @ g
    assert float((d_newton - d_one).norm()) <= rho ** 2 * float(d_newton.norm()) + 1e-12


@given(seeds, lengths, dims)
def test_covariance_is_at_most_a_quarter_diameter_squared(seed, n, d):
    """ex-newton-2 (Popoviciu): lambda_max(Sigma_p) <= D^2 / 4 for any weights p."""
    x, p = randn(seed, n, d), simplex(seed + 1, n)
    lam = float(torch.linalg.eigvalsh(en.weighted_covariance(p, x))[-1])
    assert lam <= float(torch.cdist(x, x).max()) ** 2 / 4 + 1e-12


@given(seeds, lengths, dims, betas, etas, st.floats(0.2, 3.0))
def test_neumann_step_is_second_order_attention_minus_a_shrink(seed, n, d, beta, eta, r):
    """Chapter Newton, equal-norm anchors: neumann_step on the elastic F* equals
    z + Att2nd1st(z) - eta (I + beta Sigma_p) z with gamma = beta / eta^2."""
    a = randn(seed, n, d)
    a = r * a / a.norm(dim=-1, keepdim=True)
    z = randn(seed + 1, 3, d)
    step = op.neumann_step(lambda x: en.helmholtz_elastic(x, a, beta), z, eta)
    delta = at.second_order_attention(beta * z, a, eta * a, beta / eta ** 2, scale=1.0)
    p = torch.softmax(beta * z @ a.T, dim=-1)
    Sigma = en.weighted_covariance(p, a.expand(3, n, d))
    shrink = eta * ((torch.eye(d) + beta * Sigma) @ z.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(step, z + delta - shrink, **TOL)

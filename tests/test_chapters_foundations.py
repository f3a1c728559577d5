"""Identities stated in the chapters *Inference as optimization*, *Unnormalized linear attention*
and *Gated linear attention* that the module tests do not already cover."""

from __future__ import annotations

import math

import torch
from conftest import TOL, batches, betas, dims, etas, lengths, rand, randn, seeds
from hypothesis import given
from hypothesis import strategies as st

from energylib import attention, energies, optimizers, recipes


def spd(seed, d):
    M = randn(seed, d, d)
    return M @ M.T / d + 0.1 * torch.eye(d)


# --- Inference as optimization -------------------------------------------------------------


@given(seeds, batches, lengths, dims, st.floats(0.05, 10.0), st.floats(0.01, 1.99))
def test_descent_lemma_on_the_elastic_helmholtz_energy(seed, batch, n, d, beta, eta):
    """Hessian <= I, so F*(z - eta g) <= F*(z) - eta (1 - eta/2) |g|^2 for all eta in (0, 2)."""
    a, z = 2 * randn(seed, *batch, n, d), 3 * randn(seed + 1, *batch, d)
    F = energies.helmholtz_elastic(z, a, beta)
    g = energies.helmholtz_elastic_grad(z, a, beta)
    H = energies.helmholtz_elastic_hessian(z, a, beta)
    assert bool((torch.linalg.eigvalsh(H)[..., -1] <= 1 + 1e-10).all())
    after = energies.helmholtz_elastic(z - eta * g, a, beta)
    bound = F - eta * (1 - eta / 2) * (g * g).sum(-1)
    assert bool((after <= bound + 1e-10 * (1 + F.abs())).all())


@given(seeds, lengths, dims, st.floats(0.05, 10.0), st.floats(2.05, 4.0))
def test_gd_past_two_runs_away_on_the_elastic_helmholtz_energy(seed, n, d, beta, eta):
    """|z_{k+1}| >= (eta - 1)|z_k| - eta R, so from |z_0| > eta R/(eta - 2) the iterates grow."""
    a = randn(seed, n, d)
    R = a.norm(dim=-1).max()
    u = randn(seed + 1, d)
    z0 = (eta * R / (eta - 2) + 1.0) * u / u.norm()
    traj = optimizers.descend(lambda z: energies.helmholtz_elastic(z, a, beta), z0, "gd",
                              steps=6, eta=eta)
    norms = traj.z.norm(dim=-1)
    assert bool((norms[1:] >= (eta - 1) * norms[:-1] - eta * R - 1e-10 * norms[1:]).all())
    assert bool((norms.diff() > 0).all())
    assert bool((traj.energy.diff() > 0).all())


@given(seeds, dims, st.floats(0.01, 3.0), st.integers(0, 8))
def test_gd_on_a_quadratic_is_a_matrix_power(seed, d, eta, steps):
    """z_k = (I - eta A)^k z_0 for F = 1/2 z^T A z, whatever eta (stable or not)."""
    A = spd(seed, d)
    z0 = randn(seed + 1, d)
    traj = optimizers.descend(lambda z: 0.5 * ((z @ A) * z).sum(-1), z0, "gd", steps=steps,
                              eta=eta)
    M = torch.eye(d) - eta * A
    for k in range(steps + 1):
        torch.testing.assert_close(traj.z[k], torch.linalg.matrix_power(M, k) @ z0, **TOL)


@given(seeds, batches, lengths, dims, betas, etas, st.booleans(), st.integers(0, 5))
def test_a_tied_softmax_stack_is_gd_on_one_energy(seed, batch, n, d, beta, eta, causal, layers):
    """L tied softmax layers over a frozen context = L GD steps on recipes.softmax_energy."""
    x, W = randn(seed, *batch, n, d), randn(seed + 1, d, d) / 2
    h = x.detach().clone()
    z, stack = x, [x]
    for _ in range(layers):
        z = recipes.softmax_recipe(z, h, W, beta, eta, causal=causal).attention_step
        stack.append(z)
    traj = optimizers.descend(recipes.softmax_energy(h, W, beta, causal=causal), x, "gd",
                              steps=layers, eta=eta)
    torch.testing.assert_close(traj.z, torch.stack(stack), **TOL)


@given(seeds, batches, lengths, dims, betas)
def test_norm_conditioned_energy_is_the_hopfield_energy_plus_the_norm(seed, batch, n, d, beta):
    """softmax_energy(z) - |z|^2 = -1/beta log sum_i exp(beta z.a_i): the energy the stack lowers."""
    z, h, W = randn(seed, *batch, n, d), randn(seed + 1, *batch, n, d), randn(seed + 2, d, d)
    a = h @ W.T
    F = recipes.softmax_energy(h, W, beta)(z)
    hopfield = energies.helmholtz(energies.bilinear(z, a.unsqueeze(-3)), beta)
    torch.testing.assert_close(F - (z * z).sum(-1), hopfield, **TOL)
    g = optimizers.gradient(lambda x: energies.helmholtz(energies.bilinear(x, a.unsqueeze(-3)),
                                                         beta), z)
    torch.testing.assert_close(optimizers.gradient(recipes.softmax_energy(h, W, beta), z), g, **TOL)


@given(seeds, st.integers(2, 7), dims, st.floats(0.1, 5.0), st.floats(0.05, 1.95),
       st.integers(1, 20))
def test_gd_finds_stationary_points(seed, n, d, beta, eta, K):
    """min_k |grad F*(z_k)|^2 <= (F*(z_0) - F_low) / (K eta (1 - eta/2)), F_low = -T log N."""
    a, z0 = 2 * randn(seed, n, d), 3 * randn(seed + 1, 3, d)
    traj = optimizers.descend(lambda z: energies.helmholtz_elastic(z, a, beta), z0, "gd",
                              steps=K, eta=eta)
    grad_sq = (energies.helmholtz_elastic_grad(traj.z[:K], a, beta) ** 2).sum(-1)
    bound = (traj.energy[0] + math.log(n) / beta) / (K * eta * (1 - eta / 2))
    assert bool((grad_sq.min(dim=0).values <= bound + 1e-10).all())


# --- Unnormalized linear attention ---------------------------------------------------------


@given(seeds, batches, lengths, lengths, dims, dims, etas)
def test_linear_step_is_a_linear_map(seed, batch, n, m, d, din, eta):
    """z - eta grad F = (I + eta A) z with A = sum_i a_i a_i^T."""
    z, h, W = randn(seed, *batch, n, d), randn(seed + 1, *batch, m, din), randn(seed + 2, d, din)
    a = h @ W.T
    A = a.transpose(-1, -2) @ a
    r = recipes.linear_recipe(z, h, W, eta)
    torch.testing.assert_close(r.gd_step, z + eta * z @ A, **TOL)


@given(seeds, lengths, dims, dims, etas)
def test_linear_tying_fixes_only_the_product(seed, n, d, din, eta):
    """Any invertible W_Q gives the same layer, and S W_Q = eta A for S = sum_i v_i k_i^T."""
    z, h, W = randn(seed, n, d), randn(seed + 1, n, din), randn(seed + 2, d, din)
    W_Q = randn(seed + 3, d, d) + 3 * torch.eye(d)
    T = recipes.tie_linear(W, eta, W_Q=W_Q)
    torch.testing.assert_close(T.W_Q.T @ T.W_K, W, **TOL)
    out = z + attention.linear_attention(z @ T.W_Q.T, h @ T.W_K.T, h @ T.W_V.T)
    torch.testing.assert_close(out, recipes.linear_recipe(z, h, W, eta).attention_step, **TOL)
    a = h @ W.T
    S = (h @ T.W_V.T).T @ (h @ T.W_K.T)
    torch.testing.assert_close(S @ T.W_Q, eta * a.T @ a, **TOL)


@given(seeds, lengths, dims, st.floats(0.01, 0.5), st.integers(0, 6))
def test_gd_on_the_linear_energy_descends_and_diverges(seed, n, d, eta, steps):
    """z_k = (I + eta A)^k z_0: the concave energy falls at every step while |z_k| grows."""
    h = randn(seed, n, d)
    A = h.T @ h
    z0 = randn(seed + 1, 1, d)
    traj = optimizers.descend(recipes.linear_energy(h, torch.eye(d)), z0, "gd", steps=steps, eta=eta)
    M = torch.eye(d) + eta * A
    for k in range(steps + 1):
        torch.testing.assert_close(traj.z[k, 0], torch.linalg.matrix_power(M, k) @ z0[0], **TOL)
    assert bool((traj.energy.diff(dim=0) <= 1e-12 * (1 + traj.energy[1:].abs())).all())
    assert bool((traj.z.norm(dim=-1).diff(dim=0) >= -1e-12).all())


def _hot_quantities(seed, n, d):
    a, z = randn(seed, n, d), randn(seed + 1, d)
    a_bar = a.mean(0)
    C = (a - a_bar).T @ (a - a_bar) / n
    s = a @ z
    return a, z, a_bar, C, (s.max() - s.min()).item(), torch.cdist(a, a).max().item()


@given(seeds, st.integers(1, 9), dims, st.floats(1e-3, 1.0))
def test_hot_limit_of_the_bilinear_helmholtz_energy(seed, n, d, beta):
    """F*_H = -T log N - z.a_bar + beta/N sum_i -1/2 (z.(a_i - a_bar))^2 + R, |R| <= beta^2 D^3/24;
    sum_i p_i a_i = a_bar + beta C z + R', |R'| <= beta^2 Delta^2 D / 2."""
    a, z, a_bar, C, Delta, D = _hot_quantities(seed, n, d)
    F = energies.helmholtz(energies.bilinear(z, a), beta)
    quad = energies.total(energies.squared_bilinear(z, a - a_bar)) * beta / n
    expansion = -math.log(n) / beta - z @ a_bar + quad
    assert abs((F - expansion).item()) <= beta**2 * Delta**3 / 24 + 1e-12 * (1 + math.log(n) / beta)
    p = energies.boltzmann(energies.bilinear(z, a), beta)
    err = (p @ a - a_bar - beta * C @ z).norm().item()
    assert err <= beta**2 * Delta**2 * D / 2 + 1e-12


@given(seeds, st.integers(1, 9), dims, st.floats(1e-3, 1.0), etas)
def test_hot_softmax_step_is_the_linear_recipe_on_centered_anchors(seed, n, d, beta, eta):
    """a_bar = 0: z + eta sum_i p_i a_i = linear_recipe step with eta' = eta beta / N, + O(beta^2)."""
    a, z, _, _, Delta, D = _hot_quantities(seed, n, d)
    a = a - a.mean(0)
    s = a @ z
    Delta, D = (s.max() - s.min()).item(), torch.cdist(a, a).max().item()
    p = energies.boltzmann(energies.bilinear(z, a), beta)
    hot = z + eta * p @ a
    lin = recipes.linear_recipe(z[None], a, torch.eye(d), eta * beta / n).attention_step[0]
    assert (hot - lin).norm().item() <= eta * beta**2 * Delta**2 * D / 2 + 1e-12


@given(seeds, lengths, dims)
def test_anchor_covariance_is_shift_invariant_but_the_second_moment_is_not(seed, n, d):
    a, c = randn(seed, n, d), randn(seed + 1, d)
    b = a + c

    def cov(x):
        return (x - x.mean(0)).T @ (x - x.mean(0)) / len(x)

    torch.testing.assert_close(cov(b), cov(a), **TOL)
    m = a.mean(0)
    expect = a.T @ a + n * (torch.outer(m, c) + torch.outer(c, m) + torch.outer(c, c))
    torch.testing.assert_close(b.T @ b, expect, **TOL)


# --- Gated linear attention ----------------------------------------------------------------


@given(seeds, batches, st.integers(1, 30), dims, dims, st.integers(1, 12))
def test_gated_state_is_the_decayed_sum_of_outer_products(seed, batch, n, d, dv, chunk):
    """S_N = sum_i gamma_{N,i} v_i k_i^T, for the recurrence and the chunked form."""
    q, k, v = randn(seed, *batch, n, d), randn(seed + 1, *batch, n, d), randn(seed + 2, *batch, n, dv)
    alpha = rand(seed + 3, *batch, n, low=0.05)
    gamma = energies.gate_matrix(alpha)[..., -1, :]  # (..., N)
    expect = torch.einsum("...i,...ie,...if->...ef", gamma, v, k)
    _, S_rec = attention.gated_linear_attention_recurrent(q, k, v, alpha, return_state=True)
    _, S_chunk = attention.gated_linear_attention(q, k, v, alpha, chunk_size=chunk, return_state=True)
    torch.testing.assert_close(S_rec, expect, **TOL)
    torch.testing.assert_close(S_chunk, expect, **TOL)


@given(st.integers(1, 60), st.floats(0.05, 0.999))
def test_constant_gate_weights_sum_to_a_geometric_series(n, alpha):
    """sum_{i<=t} gamma_{t,i} = (1 - alpha^t) / (1 - alpha)."""
    g = energies.gate_matrix(torch.full((n,), alpha))
    t = torch.arange(1, n + 1, dtype=torch.float64)
    torch.testing.assert_close(g.sum(-1), (1 - alpha**t) / (1 - alpha), **TOL)


@given(seeds, batches, lengths, dims, etas, st.floats(1e-14, 1e-6))
def test_gated_recipe_limits(seed, batch, n, d, eta, tiny):
    """alpha = 1: the causal linear recipe; alpha -> 0: z_t + (q_t.k_t) v_t, error <= alpha * sum."""
    x, W = randn(seed, *batch, n, d), randn(seed + 1, d, d)
    h = x.detach().clone()
    ones = torch.ones(*batch, n)
    torch.testing.assert_close(recipes.gated_linear_recipe(x, h, W, eta, ones).attention_step,
                               recipes.linear_recipe(x, h, W, eta, causal=True).attention_step, **TOL)
    r = recipes.gated_linear_recipe(x, h, W, eta, torch.full((*batch, n), tiny))
    T = r.weights
    q, k, v = x @ T.W_Q.T, h @ T.W_K.T, h @ T.W_V.T
    self_only = x + (q * k).sum(-1, keepdim=True) * v
    scale = ((q @ k.transpose(-1, -2)).abs() @ v.norm(dim=-1, keepdim=True))  # sum_i |q.k_i| |v_i|
    assert bool(((r.attention_step - self_only).norm(dim=-1, keepdim=True)
                 <= tiny * scale + 1e-10).all())

"""Recipes: one GD step on each energy (autograd) equals the residual attention update."""

from __future__ import annotations

import torch
from conftest import TOL, batches, betas, dims, etas, lengths, rand, randn, seeds
from hypothesis import given
from hypothesis import strategies as st

from energylib import recipes
from energylib.optimizers import gd_step


def _problem(seed, batch, n, d, din, self_attention):
    W = randn(seed + 2, d, din)
    if self_attention:  # z is itself a token: h = z with the context frozen (Jacobi view)
        din = d
        W = randn(seed + 2, d, d)
        z = randn(seed, *batch, n, d)
        return z, z.detach().clone(), W
    return randn(seed, *batch, n, d), randn(seed + 1, *batch, n, din), W


@given(seeds, batches, lengths, dims, dims, betas, etas, st.booleans(), st.booleans())
def test_softmax_recipe(seed, batch, n, d, din, beta, eta, causal, self_attention):
    z, h, W = _problem(seed, batch, n, d, din, self_attention)
    r = recipes.softmax_recipe(z, h, W, beta, eta, causal=causal)
    torch.testing.assert_close(r.gd_step, r.attention_step, **TOL)
    T = r.weights
    torch.testing.assert_close(T.W_Q.T @ T.W_K, beta * W, **TOL)
    torch.testing.assert_close(T.W_V, eta * W, **TOL)


@given(seeds, batches, lengths, dims, dims, betas, etas, st.booleans())
def test_softmax_without_norm_condition_has_the_shrunk_residual(seed, batch, n, d, din, beta, eta,
                                                                causal):
    z, h, W = _problem(seed, batch, n, d, din, False)
    a = h @ W.T
    h = h / a.norm(dim=-1, keepdim=True)  # anchors of equal norm: weights unchanged, gap = -eta z
    r = recipes.softmax_recipe(z, h, W, beta, eta, causal=causal, norm_condition=False)
    torch.testing.assert_close(r.gap, -eta * z, **TOL)
    torch.testing.assert_close(r.gd_step, (1 - eta) * z + (r.attention_step - z), **TOL)


@given(seeds, lengths, dims, betas, etas)
def test_norm_condition_energies_agree_on_the_sphere(seed, n, d, beta, eta):
    z, h, W = randn(seed, n, d), randn(seed + 1, n, d), torch.eye(d)
    z, h = z / z.norm(dim=-1, keepdim=True), h / h.norm(dim=-1, keepdim=True)
    nc = recipes.softmax_energy(h, W, beta, norm_condition=True)(z)
    full = recipes.softmax_energy(h, W, beta, norm_condition=False)(z)
    torch.testing.assert_close(nc, full, **TOL)


@given(seeds, batches, lengths, dims, dims, etas, st.booleans(), st.booleans())
def test_linear_recipe(seed, batch, n, d, din, eta, causal, self_attention):
    z, h, W = _problem(seed, batch, n, d, din, self_attention)
    r = recipes.linear_recipe(z, h, W, eta, causal=causal)
    torch.testing.assert_close(r.gd_step, r.attention_step, **TOL)
    torch.testing.assert_close(r.weights.W_Q.T @ r.weights.W_K, W, **TOL)


@given(seeds, batches, lengths, dims, dims, etas, st.booleans())
def test_gated_linear_recipe(seed, batch, n, d, din, eta, self_attention):
    z, h, W = _problem(seed, batch, n, d, din, self_attention)
    alpha = rand(seed + 5, *batch, n, low=0.05)
    r = recipes.gated_linear_recipe(z, h, W, eta, alpha)
    torch.testing.assert_close(r.gd_step, r.attention_step, **TOL)


@given(seeds, batches, lengths, dims, st.integers(1, 3), st.integers(1, 3), etas, st.booleans(),
       st.lists(betas, min_size=3, max_size=3))
def test_multi_head_recipe(seed, batch, n, d, H, dh, eta, causal, bs):
    din = 3
    z, h = randn(seed, *batch, n, d), randn(seed + 1, *batch, n, din)
    P, Wh = randn(seed + 2, H, dh, d), randn(seed + 3, H, dh, din)
    r = recipes.multi_head_recipe(z, h, P, Wh, bs[:H], eta, causal=causal)
    torch.testing.assert_close(r.gd_step, r.attention_step, **TOL)
    for j in range(H):  # per-head tying maps
        T = r.weights
        torch.testing.assert_close(T.W_Q[j].T @ T.W_K[j], bs[j] * P[j].T @ Wh[j], **TOL)
        torch.testing.assert_close(T.W_O[j] @ T.W_V[j], eta * P[j].T @ Wh[j], **TOL)


@given(seeds, lengths, dims, st.integers(1, 3), betas, etas)
def test_multi_head_gap_without_norm_condition(seed, n, d, H, beta, eta):
    """Equal-norm anchors in every head: the gap is -eta sum_h P_h^T P_h z."""
    z, P = randn(seed, n, d), randn(seed + 1, H, 1, d)
    Wh = torch.ones(H, 1, 1)
    h = torch.where(rand(seed + 2, n, 1) < 0.5, -1.0, 1.0)  # |W_h h_i| = 1 for all i
    r = recipes.multi_head_recipe(z, h, P, Wh, beta, eta, norm_condition=False)
    PtP = sum(P[j].T @ P[j] for j in range(H))
    torch.testing.assert_close(r.gap, -eta * z @ PtP.T, **TOL)


@given(seeds, dims, betas, etas)
def test_tying_only_fixes_the_product(seed, d, beta, eta):
    W = randn(seed, d, d)
    W_Q = randn(seed + 1, d, d) + 3 * torch.eye(d)
    T = recipes.tie_softmax(W, beta, eta, W_Q=W_Q)
    torch.testing.assert_close(T.W_Q.T @ T.W_K, beta * W, **TOL)
    z, h = randn(seed + 2, 4, d), randn(seed + 3, 4, d)
    r = recipes.softmax_recipe(z, h, W, beta, eta)
    from energylib.attention import softmax_attention
    other = z + softmax_attention(z @ T.W_Q.T, h @ T.W_K.T, h @ T.W_V.T, scale=1.0)
    torch.testing.assert_close(other, r.attention_step, **TOL)


@given(seeds, lengths, dims, betas, st.floats(0.01, 1.99))
def test_gd_never_increases_the_elastic_helmholtz_energy(seed, n, d, beta, eta):
    """H = I - beta Sigma_p <= I: the energy is 1-smooth, so any eta in (0, 2) descends,
    convex or not."""
    z, h = randn(seed, 3, d), 2 * randn(seed + 1, n, d)
    F = recipes.softmax_energy(h, torch.eye(d), beta, norm_condition=False)
    assert bool((F(gd_step(F, z, eta)) <= F(z) + 1e-12).all())

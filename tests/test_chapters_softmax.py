"""Identities stated in the chapters *Softmax attention* and *Multi-head attention* that the
module tests (test_recipes, test_attention, test_energies) do not already cover."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from conftest import TOL, batches, betas, dims, etas, lengths, rand, randn, seeds
from hypothesis import given
from hypothesis import strategies as st

from energylib import attention, energies, optimizers, recipes


def _sphere(x: torch.Tensor, radius: float | torch.Tensor = 1.0) -> torch.Tensor:
    return radius * x / x.norm(dim=-1, keepdim=True)


# --- Softmax attention ----------------------------------------------------------------------------

@given(seeds, batches, lengths, lengths, dims, dims, betas, etas)
def test_elastic_step_is_attention_with_a_key_bias(seed, batch, n, m, d, din, beta, eta):
    """prop-softmax-gap: (1 - eta) z + attention with q' = (z, 1), k'_i = (beta a_i, -beta|a_i|^2/2)."""
    z, h, W = randn(seed, *batch, n, d), randn(seed + 1, *batch, m, din), randn(seed + 2, d, din)
    r = recipes.softmax_recipe(z, h, W, beta, eta, norm_condition=False)
    a = h @ W.T
    q = torch.cat([z, torch.ones_like(z[..., :1])], dim=-1)
    k = torch.cat([beta * a, -beta / 2 * (a * a).sum(-1, keepdim=True)], dim=-1)
    augmented = attention.softmax_attention(q, k, eta * a, scale=1.0)
    torch.testing.assert_close(r.gd_step, (1 - eta) * z + augmented, **TOL)
    # and the weights are softmax(beta z.a_i - beta |a_i|^2 / 2)
    p = torch.softmax(beta * z @ a.transpose(-1, -2) - beta / 2 * (a * a).sum(-1).unsqueeze(-2), -1)
    torch.testing.assert_close(r.gd_step, (1 - eta) * z + eta * p @ a, **TOL)


@given(seeds, batches, lengths, lengths, dims, dims, betas, etas)
def test_bilinear_energy_gives_attention_without_norm_condition(seed, batch, n, m, d, din, beta, eta):
    """The modern-Hopfield road: GD on F* of E_i = -z.a_i is z + Attn(z) for every z; with
    + |z|^2/2 (Ramsauer et al.'s energy) a unit step is the retrieval sum_i p_i a_i."""
    z, h, W = randn(seed, *batch, n, d), randn(seed + 1, *batch, m, din), randn(seed + 2, d, din)
    a = (h @ W.T).unsqueeze(-3)

    def bil(x):
        return energies.helmholtz(energies.bilinear(x, a), beta)

    r = recipes.softmax_recipe(z, h, W, beta, eta)
    torch.testing.assert_close(optimizers.gd_step(bil, z, eta), r.attention_step, **TOL)
    p = torch.softmax(beta * (a @ z.unsqueeze(-1)).squeeze(-1), -1)
    retrieval = energies.weighted_mean(p, a)
    torch.testing.assert_close(optimizers.gd_step(lambda x: bil(x) + 0.5 * (x * x).sum(-1), z, 1.0),
                               retrieval, **TOL)


@given(seeds, dims, st.floats(0.01, 0.99), st.floats(0.1, 5.0))
def test_renormalisation_absorbs_the_shrinkage(seed, d, eta, radius):
    """prop-softmax-renormalise: N_r((1-eta) z + eta m) = N_r(z + eta/(1-eta) m)."""
    z, m = randn(seed, 5, d), randn(seed + 1, 5, d)
    torch.testing.assert_close(_sphere((1 - eta) * z + eta * m, radius),
                               _sphere(z + eta / (1 - eta) * m, radius), **TOL)


@given(seeds, lengths, dims, betas, st.floats(0.01, 10.0), st.floats(0.1, 3.0), st.floats(0.1, 3.0))
def test_renormalised_attention_step_never_raises_the_elastic_energy(seed, n, d, beta, eta, rho, r):
    """prop-softmax-sphere-descent: equal anchor norms, |z| = r: F*(N_r(z + eta m)) <= F*(z)."""
    a = _sphere(randn(seed, n, d), rho)
    z = _sphere(randn(seed + 1, 4, d), r)
    m = energies.weighted_mean(torch.softmax(beta * z @ a.T, -1), a.expand(4, n, d))
    y = _sphere(z + eta * m, r)
    F_z = energies.helmholtz_elastic(z, a.expand(4, n, d), beta)
    F_y = energies.helmholtz_elastic(y, a.expand(4, n, d), beta)
    assert bool((F_y <= F_z + 1e-10 * (1 + F_z.abs())).all())


def test_raw_attention_step_can_raise_the_elastic_energy():
    """The contrast the chapter draws: without renormalisation the descent claim is false."""
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z = torch.tensor([0.8, 0.6])
    m = energies.weighted_mean(torch.softmax(2.0 * a @ z, -1), a)
    F = energies.helmholtz_elastic
    assert F(z + 1.0 * m, a, 2.0) > F(z, a, 2.0)


@given(seeds, lengths, dims, betas, etas, st.booleans())
def test_self_attention_layer_is_a_jacobi_sweep(seed, n, d, beta, eta, causal):
    """One layer = every token's GD step against the context frozen at the old values."""
    x, W = randn(seed, n, d), randn(seed + 1, d, d)
    layer = recipes.softmax_recipe(x, x.detach(), W, beta, eta, causal=causal).attention_step
    energy = recipes.softmax_energy(x.detach().clone(), W, beta, causal=causal)
    for t in range(n):
        def F_t(zt, t=t):  # token t's energy, everyone else frozen
            xs = x.detach().clone()
            xs = torch.cat([xs[:t], zt.unsqueeze(0), xs[t + 1:]])
            return energy(xs)[t]
        g = optimizers.gradient(F_t, x[t].detach())
        torch.testing.assert_close(layer[t], x[t] - eta * g, **TOL)


@given(seeds, batches, lengths, lengths, dims, dims, etas)
def test_inverse_sqrt_d_scale_is_the_recipe_at_that_beta(seed, batch, n, m, d, din, eta):
    z, h, W = randn(seed, *batch, n, d), randn(seed + 1, *batch, m, din), randn(seed + 2, d, din)
    a = h @ W.T
    standard = z + attention.softmax_attention(z, a, eta * a)  # scale=None: 1/sqrt(d)
    torch.testing.assert_close(standard, recipes.softmax_recipe(z, h, W, 1 / math.sqrt(d), eta).gd_step,
                               **TOL)


@given(seeds, batches, lengths, lengths, dims, dims, etas)
def test_hot_limit_is_the_mean_of_the_values(seed, batch, n, m, d, din, eta):
    z, h, W = randn(seed, *batch, n, d), randn(seed + 1, *batch, m, din), randn(seed + 2, d, din)
    a = h @ W.T
    r = recipes.softmax_recipe(z, h, W, 1e-13, eta)
    torch.testing.assert_close(r.attention_step - z, eta * a.mean(-2, keepdim=True).expand_as(z), **TOL)


@given(seeds, lengths, st.integers(2, 9), dims, etas)
def test_cold_limit_is_hard_attention_and_finite(seed, n, m, d, eta):
    z, a = randn(seed, n, d), randn(seed + 1, m, d)
    s = z @ a.T
    top2 = s.topk(2, dim=-1).values
    if bool((top2[:, 0] - top2[:, 1] < 1e-2).any()):  # a near tie: the limit is not one-hot yet
        return
    r = recipes.softmax_recipe(z, a, torch.eye(d), 1e4, eta)
    assert bool(torch.isfinite(r.attention_step).all())
    torch.testing.assert_close(r.attention_step - z, eta * a[s.argmax(-1)], **TOL)
    torch.testing.assert_close(r.gd_step, r.attention_step, **TOL)


@given(seeds, lengths, dims, betas, st.booleans())
def test_causal_free_energy_is_over_the_prefix(seed, n, d, beta, norm_condition):
    x, W = randn(seed, n, d), randn(seed + 1, d, d)
    F = recipes.softmax_energy(x, W, beta, causal=True, norm_condition=norm_condition)(x)
    a = x @ W.T
    local = energies.norm_conditioned_elastic if norm_condition else energies.elastic
    for t in range(n):
        torch.testing.assert_close(F[t], energies.helmholtz(local(x[t], a[: t + 1]), beta), **TOL)


@given(seeds, lengths, dims, etas)
def test_first_order_hot_limit_is_centred_linear_attention(seed, n, d, eta):
    """Exercise ex-softmax-2: d Attn / d beta at beta = 0 is eta C z, C the anchors' covariance."""
    a, z = randn(seed, n, d), randn(seed + 1, d)

    def attn(beta):
        return eta * torch.softmax(beta * a @ z, -1) @ a

    slope = torch.autograd.functional.jacobian(attn, torch.tensor(0.0))
    c = a - a.mean(0)
    torch.testing.assert_close(slope, eta * (c.T @ c / n) @ z, **TOL)


@given(seeds, st.integers(1, 9), st.integers(2, 16))
def test_layer_norm_puts_tokens_on_the_sqrt_d_sphere(seed, n, d):
    """Without its affine part (eps = 0), |LN(x)| = sqrt(d); an orthogonal W keeps the anchors there,
    so the norm condition |z| = |W h_i| holds exactly and the key bias vanishes."""
    x = 3 * randn(seed, n, d) + 1
    x_hat = F.layer_norm(x, (d,), eps=0.0)
    torch.testing.assert_close(x_hat.norm(dim=-1), torch.full((n,), math.sqrt(d)), **TOL)
    Q, _ = torch.linalg.qr(randn(seed + 1, d, d))
    torch.testing.assert_close((x_hat @ Q.T).norm(dim=-1), torch.full((n,), math.sqrt(d)), **TOL)
    r = recipes.softmax_recipe(x_hat, x_hat, Q, 0.3, 0.5, norm_condition=False)
    torch.testing.assert_close(r.gap, -0.5 * x_hat, **TOL)


# --- Multi-head attention ---------------------------------------------------------------------------

@given(seeds, batches, lengths, lengths, dims, st.integers(1, 3), st.integers(1, 3),
       st.lists(betas, min_size=3, max_size=3))
def test_multi_head_gradient_closed_form(seed, batch, n, m, d, H, dh, bs):
    """prop-multihead-gradient: grad F*_MH = sum_h P_h^T (P_h z - m_h)."""
    din = 3
    z, h = randn(seed, *batch, n, d), randn(seed + 1, *batch, m, din)
    P, Wh = randn(seed + 2, H, dh, d), randn(seed + 3, H, dh, din)
    energy = recipes.multi_head_energy(h, P, Wh, bs[:H], norm_condition=False)
    closed = 0
    for j in range(H):
        a = (h @ Wh[j].T).unsqueeze(-3)                       # (..., 1, m, dh)
        closed = closed + energies.helmholtz_elastic_grad(z @ P[j].T, a, bs[j]) @ P[j]
    torch.testing.assert_close(optimizers.gradient(energy, z), closed, **TOL)
    # and F*_MH is the sum of the heads' single-head energies
    total = sum(energies.helmholtz_elastic(z @ P[j].T, (h @ Wh[j].T).unsqueeze(-3), bs[j]) for j in range(H))
    torch.testing.assert_close(energy(z), total, **TOL)


@given(seeds, lengths, lengths, dims, st.integers(1, 3), st.integers(1, 3), betas, etas)
def test_multi_head_concat_form_and_free_factors(seed, n, m, d, H, dh, beta, eta):
    """Sum over heads = concat + one output matrix; any invertible per-head mixings A_h, B_h of the
    factors leave the tied layer unchanged (only the products are tied)."""
    din = 3
    z, h = randn(seed, n, d), randn(seed + 1, m, din)
    P, Wh = randn(seed + 2, H, dh, d), randn(seed + 3, H, dh, din)
    r = recipes.multi_head_recipe(z, h, P, Wh, beta, eta)
    T = r.weights
    heads = [attention.softmax_attention(z @ T.W_Q[j].T, h @ T.W_K[j].T, h @ T.W_V[j].T, scale=1.0)
             for j in range(H)]
    concat = z + torch.cat(heads, -1) @ torch.cat(list(T.W_O), -1).T
    torch.testing.assert_close(concat, r.gd_step, **TOL)
    A = randn(seed + 4, H, dh, dh) + 3 * torch.eye(dh)
    B = randn(seed + 5, H, dh, dh) + 3 * torch.eye(dh)
    mha = attention.multi_head_attention(z, A @ T.W_Q, torch.linalg.inv(A).transpose(-1, -2) @ T.W_K,
                                         B @ T.W_V, T.W_O @ torch.linalg.inv(B), context=h, scale=1.0)
    torch.testing.assert_close(z + mha, r.gd_step, **TOL)


@given(seeds, lengths, st.integers(1, 3), st.integers(1, 3), betas, etas, st.booleans())
def test_multi_head_gap_with_equal_norms_per_head(seed, n, H, dh, beta, eta, orthogonal):
    """Gap = -eta sum_h P_h^T P_h z with equal anchor norms per head; = -eta z for an orthogonal
    split of R^d."""
    d = H * dh
    Wsel = torch.eye(d).reshape(H, dh, d)
    rho = rand(seed, H, low=0.3, high=2.0)
    blocks = randn(seed + 1, n, H, dh)
    h = (rho[:, None] * blocks / blocks.norm(dim=-1, keepdim=True)).reshape(n, d)
    z = randn(seed + 2, 3, d)
    if orthogonal:
        P = torch.linalg.qr(randn(seed + 3, d, d))[0].reshape(H, dh, d)
    else:
        P = randn(seed + 3, H, dh, d)
    gap = recipes.multi_head_recipe(z, h, P, Wsel, beta, eta, norm_condition=False).gap
    S = sum(P[j].T @ P[j] for j in range(H))
    torch.testing.assert_close(gap, -eta * z @ S.T, **TOL)
    if orthogonal:
        torch.testing.assert_close(gap, -eta * z, **TOL)


@given(seeds, lengths, dims, dims, st.integers(1, 4), betas, etas)
def test_identical_heads_are_one_head_with_a_longer_step(seed, n, d, dh, H, beta, eta):
    """Exercise ex-multihead-2: H copies of a head = that head with step H eta and energy H F*;
    one head with P = I is the softmax recipe."""
    din = 3
    z, h = randn(seed, n, d), randn(seed + 1, n, din)
    P, Wh = randn(seed + 2, 1, dh, d), randn(seed + 3, 1, dh, din)
    copies = recipes.multi_head_recipe(z, h, P.expand(H, -1, -1), Wh.expand(H, -1, -1), beta, eta)
    single = recipes.multi_head_recipe(z, h, P, Wh, beta, H * eta)
    torch.testing.assert_close(copies.gd_step, single.gd_step, **TOL)
    torch.testing.assert_close(copies.energy, H * single.energy, **TOL)
    W = randn(seed + 4, d, din)
    one = recipes.multi_head_recipe(z, h, torch.eye(d)[None], W[None], beta, eta)
    torch.testing.assert_close(one.gd_step, recipes.softmax_recipe(z, h, W, beta, eta).gd_step, **TOL)

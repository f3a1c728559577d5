"""Attention forms: fast vs naive paths, causal masks, chunked = recurrent, multi-head, Newton."""

from __future__ import annotations

import torch
from conftest import TOL, batches, dims, lengths, rand, randn, seeds
from hypothesis import given
from hypothesis import strategies as st

from energylib import attention as at
from energylib.energies import weighted_covariance, weighted_mean

scales = st.one_of(st.none(), st.floats(0.05, 3.0))


def explicit_softmax(q, k, v, causal, s):
    n = q.shape[-2]
    out = torch.zeros(*q.shape[:-1], v.shape[-1])
    for t in range(n):
        keys = range(t + 1) if causal else range(k.shape[-2])
        sc = torch.stack([s * (q[..., t, :] * k[..., i, :]).sum(-1) for i in keys], -1)
        w = torch.softmax(sc, -1)
        out[..., t, :] = sum(w[..., j, None] * v[..., i, :] for j, i in enumerate(keys))
    return out


@given(seeds, batches, lengths, dims, dims, st.booleans(), scales)
def test_softmax_fast_and_naive_match_the_formula(seed, batch, n, d, dv, causal, scale):
    q, k, v = randn(seed, *batch, n, d), randn(seed + 1, *batch, n, d), randn(seed + 2, *batch, n, dv)
    s = d ** -0.5 if scale is None else scale
    expect = explicit_softmax(q, k, v, causal, s)
    fast = at.softmax_attention(q, k, v, causal=causal, scale=scale)
    naive, w = at.softmax_attention_weights(q, k, v, causal=causal, scale=scale)
    torch.testing.assert_close(fast, expect, **TOL)
    torch.testing.assert_close(naive, expect, **TOL)
    torch.testing.assert_close(w.sum(-1), torch.ones(*batch, n), **TOL)
    if causal:
        assert (w.triu(1) == 0).all()


@given(seeds, st.integers(2, 9), dims, st.sampled_from(["softmax", "linear", "gated"]))
def test_causal_forms_do_not_look_ahead(seed, n, d, form):
    q, k, v = randn(seed, n, d), randn(seed + 1, n, d), randn(seed + 2, n, d)
    alpha = rand(seed + 3, n, low=0.1)
    s = int(rand(seed + 4, 1).item() * (n - 1))  # outputs up to s must not see tokens after s

    def run(k, v):
        if form == "softmax":
            return at.softmax_attention(q, k, v, causal=True)
        if form == "linear":
            return at.linear_attention(q, k, v, causal=True)
        return at.gated_linear_attention(q, k, v, alpha, chunk_size=3)

    k2, v2 = k.clone(), v.clone()
    k2[s + 1:] += 5.0
    v2[s + 1:] -= 3.0
    torch.testing.assert_close(run(k, v)[: s + 1], run(k2, v2)[: s + 1], **TOL)
    assert not torch.allclose(run(k, v)[s + 1:], run(k2, v2)[s + 1:])


@given(seeds, batches, lengths, dims, dims)
def test_linear_attention_forms(seed, batch, n, d, dv):
    q, k, v = randn(seed, *batch, n, d), randn(seed + 1, *batch, n, d), randn(seed + 2, *batch, n, dv)
    dots = q @ k.transpose(-1, -2)
    full = sum(dots[..., :, i, None] * v[..., i, None, :] for i in range(n))
    torch.testing.assert_close(at.linear_attention(q, k, v), full, **TOL)
    causal = torch.stack([sum(dots[..., t, i, None] * v[..., i, :] for i in range(t + 1))
                          for t in range(n)], -2)
    torch.testing.assert_close(at.linear_attention(q, k, v, causal=True), causal, **TOL)
    torch.testing.assert_close(at.linear_attention_recurrent(q, k, v), causal, **TOL)


@given(seeds, batches, st.integers(1, 40), dims, dims, st.integers(1, 45))
def test_gated_chunked_equals_recurrent(seed, batch, n, d, dv, chunk):
    q, k, v = randn(seed, *batch, n, d), randn(seed + 1, *batch, n, d), randn(seed + 2, *batch, n, dv)
    alpha = rand(seed + 3, *batch, n, low=0.02)
    ref, S_ref = at.gated_linear_attention_recurrent(q, k, v, alpha, return_state=True)
    out, S = at.gated_linear_attention(q, k, v, alpha, chunk_size=chunk, return_state=True)
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(S, S_ref, **TOL)
    torch.testing.assert_close(at.gated_linear_attention(q, k, v, alpha), ref, **TOL)


@given(seeds, st.integers(1, 40), dims, st.integers(1, 45), st.booleans())
def test_chunked_forms_have_the_recurrent_gradients(seed, n, d, chunk, gated):
    """Training backpropagates through the chunked form: its gradients must be the recurrence's."""
    q, k, v = (randn(seed + j, 2, n, d).requires_grad_() for j in range(3))
    alpha = rand(seed + 3, 2, n, low=0.02).requires_grad_(gated)
    w = randn(seed + 4, 2, n, d)
    if gated:
        outs = (at.gated_linear_attention(q, k, v, alpha, chunk_size=chunk),
                at.gated_linear_attention_recurrent(q, k, v, alpha))
        inputs = (q, k, v, alpha)
    else:
        outs = (at.linear_attention(q, k, v, causal=True), at.linear_attention_recurrent(q, k, v))
        inputs = (q, k, v)
    grads = [torch.autograd.grad((o * w).sum(), inputs) for o in outs]
    for g_chunked, g_loop in zip(*grads, strict=True):
        assert torch.isfinite(g_chunked).all()
        torch.testing.assert_close(g_chunked, g_loop, **TOL)


@given(seeds, st.integers(1, 8), dims)
def test_gated_recurrence_is_the_decayed_sum(seed, n, d):
    """o_t = sum_{i<=t} prod_{j=i+1..t} alpha_j (q_t.k_i) v_i."""
    q, k, v = randn(seed, n, d), randn(seed + 1, n, d), randn(seed + 2, n, d)
    alpha = rand(seed + 3, n, low=0.05)
    expect = torch.stack([sum(torch.prod(alpha[i + 1:t + 1]) * (q[t] @ k[i]) * v[i]
                              for i in range(t + 1)) for t in range(n)])
    torch.testing.assert_close(at.gated_linear_attention_recurrent(q, k, v, alpha), expect, **TOL)
    ones = torch.ones(n)
    torch.testing.assert_close(at.gated_linear_attention(q, k, v, ones),
                               at.linear_attention(q, k, v, causal=True), **TOL)


def test_gated_long_sequence_with_strong_decay_stays_finite():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 4096, 8, generator=g).unbind(0)
    alpha = torch.full((4096,), 1e-3)
    out = at.gated_linear_attention(q, k, v, alpha, chunk_size=256)
    assert torch.isfinite(out).all()
    # with alpha -> 0 only the current token survives: o_t = (q_t.k_t) v_t
    torch.testing.assert_close(out, (q * k).sum(-1, keepdim=True) * v, rtol=1e-2, atol=1e-1)


def test_softmax_stays_finite_at_large_inverse_temperature():
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(3, 64, 16, generator=g).unbind(0)
    out, w = at.softmax_attention_weights(q, k, v, scale=1e4)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, at.softmax_attention(q, k, v, scale=1e4), **TOL)
    torch.testing.assert_close(w.max(-1).values, torch.ones(64), rtol=0, atol=1e-6)  # hard attention


@given(seeds, batches, lengths, lengths, st.integers(1, 3), dims, dims, st.booleans())
def test_multi_head_is_a_sum_over_heads(seed, batch, n, m, H, dh, dv, causal):
    d, dout = 5, 4
    if causal:
        m = n
    x, ctx = randn(seed, *batch, n, d), randn(seed + 1, *batch, m, d)
    Wq, Wk = randn(seed + 2, H, dh, d), randn(seed + 3, H, dh, d)
    Wv, Wo = randn(seed + 4, H, dv, d), randn(seed + 5, H, dout, dv)
    out = at.multi_head_attention(x, Wq, Wk, Wv, Wo, context=ctx, causal=causal)
    expect = sum(at.softmax_attention(x @ Wq[h].T, ctx @ Wk[h].T, ctx @ Wv[h].T, causal=causal)
                 @ Wo[h].T for h in range(H))
    torch.testing.assert_close(out, expect, **TOL)


@given(seeds, batches, lengths, dims, st.floats(-2, 2), st.booleans())
def test_second_order_attention_is_a_covariance_correction(seed, batch, n, d, gamma, causal):
    q, k, v = randn(seed, *batch, n, d), randn(seed + 1, *batch, n, d), randn(seed + 2, *batch, n, d)
    o, p = at.softmax_attention_weights(q, k, v, causal=causal)
    cov = weighted_covariance(p, v.unsqueeze(-3).expand(*p.shape, d))  # (..., N, d, d)
    expect = o + gamma * (cov @ o.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(at.second_order_attention(q, k, v, gamma, causal=causal), expect, **TOL)


@given(seeds, lengths, dims, st.floats(0.05, 2.0), st.floats(0.05, 1.0))
def test_second_order_attention_is_the_neumann_newton_step(seed, n, d, beta, eta):
    """Tied (q.k_i = beta z.a_i, v_i = eta a_i, gamma = beta/eta^2): eta (I + beta Sigma_p) m."""
    z, a = randn(seed, 1, d), randn(seed + 1, n, d)
    out = at.second_order_attention(beta * z, a, eta * a, beta / eta**2, scale=1.0)
    p = torch.softmax(beta * (a @ z[0]), -1)
    m, cov = weighted_mean(p, a), weighted_covariance(p, a)
    expect = eta * (torch.eye(d) + beta * cov) @ m
    torch.testing.assert_close(out[0], expect, **TOL)

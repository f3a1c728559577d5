"""Modules: shapes, causality, the recipe identities on tied weights, gradient flow, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import TOL, betas, etas, randn, seeds
from hypothesis import given, settings
from hypothesis import strategies as st

from energylib import modules as md
from energylib import recipes
from energylib.attention import second_order_attention
from energylib.energies import weighted_covariance
from energylib.optimizers import gradient, heavy_ball_step, nesterov_schedule, nesterov_step

VARIANTS = tuple(md.ATTENTIONS)
NON_CAUSAL = tuple(v for v in VARIANTS if v != "gated")


def _attn(name: str, d: int, heads: int, causal: bool = True, seed: int = 0, **kw) -> md.Attention:
    torch.manual_seed(seed)
    m = md.make_attention(name, d, heads, causal, layer=2, **kw)
    if name == "newton":
        with torch.no_grad():
            m.gamma.fill_(0.7)  # the default 0 would make the Newton term invisible
    return m


# --- shapes and causality ----------------------------------------------------------------------

@settings(max_examples=25)
@given(seeds, st.sampled_from(VARIANTS), st.lists(st.integers(1, 3), max_size=2).map(tuple),
       st.integers(1, 9), st.integers(1, 3), st.integers(1, 4), st.booleans())
def test_shapes(seed, name, batch, n, heads, dh, causal):
    causal = causal or name == "gated"
    m = _attn(name, heads * dh, heads, causal, seed)
    x = randn(seed, *batch, n, heads * dh)
    assert m(x).shape == x.shape
    inc, vel = m.step(x, None, None)
    assert inc.shape == x.shape
    assert m.energy(x).shape == x.shape[:-1]


@pytest.mark.parametrize("name", VARIANTS)
def test_future_tokens_cannot_change_the_past(name):
    m = _attn(name, 8, 2, True)
    x = randn(1, 2, 7, 8)
    y = x.clone()
    y[:, 4:] = randn(2, 2, 3, 8)
    torch.testing.assert_close(m(x)[:, :4], m(y)[:, :4], **TOL)
    torch.testing.assert_close(m.energy(x)[:, :4], m.energy(y)[:, :4], **TOL)
    assert not torch.allclose(m(x)[:, 4:], m(y)[:, 4:])
    torch.manual_seed(0)
    gpt = md.GPT(11, 8, 2, 2, 9, attention=name, learn_mu=name == "momentum")
    idx = torch.randint(0, 11, (2, 9))
    idx2 = idx.clone()
    idx2[:, 5:] = (idx2[:, 5:] + 1) % 11
    torch.testing.assert_close(gpt(idx)[:, :5], gpt(idx2)[:, :5], **TOL)


@pytest.mark.parametrize("name", NON_CAUSAL)
def test_non_causal_modules_see_the_future(name):  # the causality test above can fail
    m = _attn(name, 8, 2, False)
    x = randn(1, 6, 8)
    y = x.clone()
    y[4:] = randn(2, 2, 8)
    assert not torch.allclose(m(x)[:4], m(y)[:4])


# --- the recipe identities on tied weights (float64) ---------------------------------------------

def _z_and_W(seed: int, n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    return 0.5 * randn(seed, 2, n, d), randn(seed + 1, d, d) / d ** 0.5


@given(seeds, st.integers(1, 8), st.integers(1, 5), betas, etas, st.booleans())
def test_mha_tied_is_the_softmax_recipe(seed, n, d, beta, eta, causal):
    z, W = _z_and_W(seed, n, d)
    m = md.MHA(d, 1, causal, scale=1.0).tie_(recipes.tie_softmax(W, beta, eta))
    r = recipes.softmax_recipe(z, z.detach(), W, beta, eta, causal=causal)
    torch.testing.assert_close(m(z), r.attention_step - z, **TOL)
    torch.testing.assert_close(m(z), r.gd_step - z, **TOL)   # = -eta grad F*


@settings(max_examples=25)
@given(seeds, st.integers(1, 6), st.integers(1, 3), st.integers(1, 3), betas, etas, st.booleans())
def test_multi_head_tied_is_the_multi_head_recipe(seed, n, heads, dh, beta, eta, causal):
    d = heads * dh
    z = 0.5 * randn(seed, n, d)
    P, Wh = randn(seed + 1, heads, dh, d) / d ** 0.5, randn(seed + 2, heads, dh, d) / d ** 0.5
    m = md.MHA(d, heads, causal, scale=1.0).tie_(recipes.tie_multi_head(P, Wh, beta, eta))
    r = recipes.multi_head_recipe(z, z.detach(), P, Wh, beta, eta, causal=causal)
    torch.testing.assert_close(m(z), r.gd_step - z, **TOL)


@given(seeds, st.integers(1, 8), st.integers(1, 5), etas, st.booleans())
def test_linear_tied_is_the_linear_recipe(seed, n, d, eta, causal):
    z, W = _z_and_W(seed, n, d)
    m = md.LinearAttention(d, 1, causal, scale=1.0).tie_(recipes.tie_linear(W, eta))
    r = recipes.linear_recipe(z, z.detach(), W, eta, causal=causal)
    torch.testing.assert_close(m(z), r.gd_step - z, **TOL)


@given(seeds, st.integers(1, 8), st.integers(1, 5), etas)
def test_gated_tied_is_the_gated_recipe(seed, n, d, eta):
    z, W = _z_and_W(seed, n, d)
    m = md.GatedLinearAttention(d, 1, scale=1.0).tie_(recipes.tie_linear(W, eta))
    with torch.no_grad():
        m.gate.weight.copy_(randn(seed + 3, 1, d))
    alpha = m.gates(z)[..., 0, :]
    r = recipes.gated_linear_recipe(z, z.detach(), W, eta, alpha)
    torch.testing.assert_close(m(z), r.gd_step - z, **TOL)


@given(seeds, st.integers(1, 8), st.integers(1, 5), betas, etas, st.booleans())
def test_newton_tied_is_the_one_term_neumann_step(seed, n, d, beta, eta, causal):
    """Delta = -eta (I + beta Sigma_p) grad F* with gamma = beta / eta^2: the MHA2nd1st identity."""
    z, W = _z_and_W(seed, n, d)
    gamma = beta / eta ** 2
    m = md.NewtonMHA(d, 1, causal, scale=1.0, gamma=gamma).tie_(recipes.tie_softmax(W, beta, eta))
    h = z.detach()
    g = gradient(recipes.softmax_energy(h, W, beta, causal), z)         # -sum_i p_i a_i
    anchors = h @ W.T
    scores = beta * z @ anchors.transpose(-1, -2)
    if causal:
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -torch.inf)
    p = torch.softmax(scores, -1)
    Sigma = weighted_covariance(p, anchors.unsqueeze(-3).expand(*p.shape, d))
    expected = -eta * (g + beta * (Sigma @ g.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(m(z), expected, **TOL)
    q, k, v = (t[..., 0, :, :] for t in m.heads(z))                   # the one head; W_O = I
    torch.testing.assert_close(m(z), second_order_attention(q, k, v, gamma, causal=causal, scale=1.0),
                               **TOL)
    rho = torch.linalg.eigvalsh(beta * Sigma).abs().amax(-1)            # rho(beta Sigma_p)
    torch.testing.assert_close(m.neumann_radius(z)[..., 0, :], rho, **TOL)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("chunk", [1, 3, 128])
def test_newton_chunked_backward_is_autograd_of_the_formula(causal, chunk):
    """The hand-written, recomputing backward of NewtonMHA equals autograd of the plain formula."""
    q, k, v = (randn(s, 2, 7, 3).requires_grad_(True) for s in (1, 2, 3))
    gamma = torch.tensor(0.8, requires_grad=True)
    fn = lambda q, k, v, g: md._NewtonMix.apply(q, k, v, g, 0.7, causal, chunk)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, gamma))
    m = md.NewtonMHA(6, 2, causal, chunk_size=chunk, gamma=0.8)
    x = randn(4, 2, 7, 6).requires_grad_(True)
    out = m(x)
    ref = m.merge(m.mix_reference(*m.heads(x)))
    torch.testing.assert_close(out, ref, **TOL)
    g = randn(5, 2, 7, 6)
    grads = torch.autograd.grad(out, [x, *m.parameters()], g)
    grads_ref = torch.autograd.grad(ref, [x, *m.parameters()], g)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, **TOL)


@given(seeds, st.integers(1, 8), st.integers(1, 5), betas, etas, st.booleans())
def test_energy_gradient_step_is_the_tied_layer(seed, n, d, beta, eta, causal):
    """-(eta/beta) grad of MHA.energy (context frozen) is the tied layer's output."""
    z, W = _z_and_W(seed, n, d)
    m = md.MHA(d, 1, causal, scale=1.0).tie_(recipes.tie_softmax(W, beta, eta))
    torch.testing.assert_close(-(eta / beta) * gradient(m.energy, z), m(z), **TOL)
    lin = md.LinearAttention(d, 1, causal, scale=1.0).tie_(recipes.tie_linear(W, eta))
    torch.testing.assert_close(-eta * gradient(lin.energy, z), lin(z), **TOL)
    gated = md.GatedLinearAttention(d, 1, scale=1.0).tie_(recipes.tie_linear(W, eta))
    torch.testing.assert_close(-eta * gradient(gated.energy, z), gated(z), **TOL)


# --- momentum and Nesterov across layers ---------------------------------------------------------

def _tied_stack(name: str, W, beta, eta, layers, causal, **kw) -> md.Decoder:
    dec = md.Decoder(W.shape[0], layers, 1, name, causal, layer_norm=False, mlp=False, scale=1.0, **kw)
    for block in dec.blocks:
        block.attn.tie_(recipes.tie_softmax(W, beta, eta))
    return dec


@settings(max_examples=30)
@given(seeds, st.integers(1, 6), st.integers(1, 4), st.integers(1, 4), betas, etas,
       st.floats(0.0, 0.95), st.booleans(), st.sampled_from(["momentum", "nesterov"]), st.booleans())
def test_momentum_stack_is_heavy_ball_on_the_tied_energy(seed, n, d, layers, beta, eta, mu, causal,
                                                          name, scheduled):
    """Tied weights, no LN/MLP: layer l takes one heavy-ball / Nesterov step of energylib.optimizers
    on the Helmholtz energy of its own context (the look-ahead point for Nesterov, frozen)."""
    z0, W = _z_and_W(seed, n, d)
    kw = {"schedule": "nesterov"} if scheduled else {"mu": mu}
    dec = _tied_stack(name, W, beta, eta, layers, causal, **kw)
    trace: list[md.LayerTrace] = []
    out = dec(z0, trace)
    z, m = z0, torch.zeros_like(z0)
    for layer in range(1, layers + 1):
        mu_l = nesterov_schedule(layer) if scheduled else mu
        torch.testing.assert_close(trace[layer - 1].z, z, **TOL)
        if name == "momentum":
            step = heavy_ball_step(recipes.softmax_energy(z.detach(), W, beta, causal), z, m, eta, mu_l)
        else:
            ctx = (z + mu_l * m).detach()
            step = nesterov_step(recipes.softmax_energy(ctx, W, beta, causal), z, m, eta, mu_l)
        z, m = step.z, step.velocity
    torch.testing.assert_close(out, z, **TOL)


@pytest.mark.parametrize("name", ["momentum", "nesterov"])
def test_momentum_with_mu_zero_is_the_plain_stack(name):
    torch.manual_seed(0)
    plain = md.GPT(13, 8, 3, 2, 10, attention="softmax")
    mom = md.GPT(13, 8, 3, 2, 10, attention=name, mu=0.0)
    mom.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 13, (2, 10))
    torch.testing.assert_close(mom(idx), plain(idx), **TOL)
    mom2 = md.GPT(13, 8, 3, 2, 10, attention=name, mu=0.5)
    mom2.load_state_dict(plain.state_dict())
    assert not torch.allclose(mom2(idx), plain(idx))


def test_learnable_mu_and_velocity_threading():
    m = md.MomentumMHA(4, 1, mu=0.3, learn_mu=True, layer=2)
    assert isinstance(m.mu, torch.Tensor) and abs(m.mu.item() - 0.3) < 1e-12
    z, v = randn(0, 5, 4), randn(1, 5, 4)
    inc, vel = m.step(z, v)
    torch.testing.assert_close(inc, 0.3 * v + m(z), **TOL)
    inc.sum().backward()
    assert m.mu_logit.grad is not None and m.mu_logit.grad.abs() > 0
    nag = md.NesterovMHA(4, 1, mu=0.3, layer=2)
    nag.load_state_dict(md.MHA(4, 1).state_dict())
    torch.testing.assert_close(nag.step(z, v)[0], 0.3 * v + nag(z + 0.3 * v), **TOL)
    assert md.MomentumMHA(4, 1, schedule="nesterov", layer=4).mu == nesterov_schedule(4)


# --- gradient flow ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
def test_every_parameter_gets_a_finite_nonzero_gradient(name):
    torch.manual_seed(0)
    gpt = md.GPT(17, 8, 3, 2, 12, attention=name, learn_mu=True)
    idx = torch.randint(0, 17, (3, 12))
    loss = torch.nn.functional.cross_entropy(gpt(idx).flatten(0, 1), torch.roll(idx, -1, 1).flatten())
    loss.backward()
    for pname, p in gpt.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().max() > 0, pname
    if name in ("momentum", "nesterov"):
        assert sum(1 for n, _ in gpt.named_parameters() if n.endswith("mu_logit")) == 2  # layers 2, 3


def test_float32_gpt_runs():
    torch.manual_seed(0)
    gpt = md.GPT(7, 8, 1, 2, 5, attention="newton").float()
    assert gpt(torch.randint(0, 7, (1, 5))).dtype == torch.float32


# --- bad input ----------------------------------------------------------------------------------

x8 = torch.randn(2, 5, 8)
BAD = [
    (lambda: md.MHA(8, 3), ValueError, "divisible by n_heads"),
    (lambda: md.MHA(0, 1), ValueError, "d_model must be >= 1"),
    (lambda: md.MHA(8.0, 1), TypeError, "d_model must be an int"),
    (lambda: md.MHA(8, 2, causal=1), TypeError, "causal must be a bool"),
    (lambda: md.MHA(8, 2, scale=-1.0), ValueError, "scale"),
    (lambda: md.MHA(8, 2)(torch.randn(2, 5, 4)), ValueError, "x has d=4"),
    (lambda: md.MHA(8, 2)(x8.numpy()), TypeError, "x must be a torch.Tensor"),
    (lambda: md.MHA(8, 2)(torch.ones(5, 8, dtype=torch.long)), TypeError, "floating-point"),
    (lambda: md.MHA(8, 2)(x8.float()), TypeError, "dtype"),
    (lambda: md.MHA(8, 2)(torch.full((5, 8), float("nan"))), ValueError, "x has non-finite"),
    (lambda: md.MHA(8, 2)(torch.randn(8)), ValueError, "x must have at least 2"),
    (lambda: md.GatedLinearAttention(8, 2, causal=False), ValueError, "causal must be True"),
    (lambda: md.NewtonMHA(8, 2, gamma=float("nan")), ValueError, "gamma"),
    (lambda: md.NewtonMHA(8, 2, chunk_size=0), ValueError, "chunk_size must be >= 1"),
    (lambda: md.MomentumMHA(8, 2, mu=1.0), ValueError, "mu"),
    (lambda: md.MomentumMHA(8, 2, mu=-0.1), ValueError, "mu"),
    (lambda: md.MomentumMHA(8, 2, mu=0.0, learn_mu=True), ValueError, "mu must be > 0"),
    (lambda: md.MomentumMHA(8, 2, schedule="cosine"), ValueError, "schedule"),
    (lambda: md.MomentumMHA(8, 2, schedule="nesterov", learn_mu=True), ValueError, "learn_mu"),
    (lambda: md.MomentumMHA(8, 2, layer=0), ValueError, "layer must be >= 1"),
    (lambda: md.MomentumMHA(8, 2).step(x8, torch.randn(2, 4, 8)), ValueError, "velocity must have"),
    (lambda: md.make_attention("relu", 8, 2), ValueError, "attention must be one of"),
    (lambda: md.GPT(10, 8, 1, 2, 4)(torch.zeros(1, 5, dtype=torch.long)), ValueError, "N=5"),
    (lambda: md.GPT(10, 8, 1, 2, 4)(torch.full((1, 3), 10)), ValueError, "outside"),
    (lambda: md.GPT(10, 8, 1, 2, 4)(torch.zeros(1, 3)), ValueError, "idx must be an integer"),
    (lambda: md.GPT(10, 8, 1, 2, 4)([[1, 2]]), TypeError, "idx must be a torch.Tensor"),
    (lambda: md.GPT(10, 8, 0, 2, 4), ValueError, "n_layers"),
    (lambda: md.MHA(8, 2).tie_(recipes.tie_softmax(torch.eye(4), 1.0, 1.0)), ValueError, "W_Q must"),
]


@pytest.mark.parametrize("call,exc,msg", BAD, ids=[c[2] for c in BAD])
def test_bad_input_raises(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()

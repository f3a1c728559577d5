"""Explorers: the compute side agrees with energylib, frames are small PNGs, widgets are wired.

The frame-stack widget's behaviour in a browser is tested in tests/browser (needs a built site).
"""

from __future__ import annotations

import io
import math
from functools import partial

import ipywidgets as widgets
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ipywidgets.embed import dependency_state
from matplotlib.figure import Figure
from PIL import Image

from energylib import energies, explorers, frames, optimizers, recipes
from energylib.frames import Explorer, Param

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- the frame-stack core -----------------------------------------------------------------------

def _square(k: float, name: str = "a") -> Figure:
    fig = Figure(figsize=(2, 1.5), dpi=50)
    ax = fig.subplots()
    ax.plot([0, 1], [0, k])
    ax.set_title(f"{name} {k:g}")
    return fig


def test_param_grids():
    p = Param.log("beta", 0.1, 10.0, 5, "β")
    assert p.values[0] == pytest.approx(0.1) and p.values[-1] == pytest.approx(10.0)
    assert p.values[2] == pytest.approx(1.0)
    assert p.default == 2 and p.log_scale and not p.is_choice
    assert Param.integers("layers", 0, 4).values == (0, 1, 2, 3, 4)
    assert Param.choice("g", ["x", "y"]).is_choice
    assert Param.linear("a", 0.0, 1.0, 2).default == 0  # never starts on the last value


@pytest.mark.parametrize("make, match", [
    (lambda: Param("not a name", (1,), "x"), "identifier"),
    (lambda: Param("x", (), "x"), "at least one"),
    (lambda: Param("x", (1, 2), "x", default=2), "default index"),
    (lambda: Param("x", (1, 2), "x", labels=("a",)), "labels"),
    (lambda: Param("x", (1.0, 1.0001), "x"), "distinct"),
    (lambda: Param.log("x", 0.0, 1.0, 3), "0 < low"),
])
def test_param_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_figure_png_is_a_quantised_png():
    fig = _square(1.0)
    full = frames.figure_png(fig, colors=None)
    small = frames.figure_png(_square(1.0), colors=16)
    assert full.startswith(PNG_MAGIC) and small.startswith(PNG_MAGIC)
    img = Image.open(io.BytesIO(small))
    assert img.mode == "P" and len(img.getcolors()) <= 16
    assert img.size == (100, 75)
    with pytest.raises(ValueError, match="colors"):
        frames.figure_png(_square(1.0), colors=1)


def test_render_frames_grid_and_dedupe():
    ps = (Param.grid("k", [1.0, 2.0, 3.0], "k"), Param.choice("name", ["a", "b"]))
    f = frames.render_frames(_square, ps)
    assert f.shape == (3, 2) and f.count == 6 and len(f.index) == 6
    assert len(set(f.pngs)) == 6
    assert f.nbytes == sum(map(len, f.pngs)) and f.seconds > 0
    # a key that ignores k for "b": 3 frames for "a" + 1 shared by every "b"
    g = frames.render_frames(_square, ps, key=lambda k, name: (k if name == "a" else None, name))
    assert g.count == 4
    assert g.png(0, 1) == g.png(2, 1) != g.png(0, 0)


def _stacks(w: widgets.Widget) -> list[widgets.Stack]:
    out = [w] if isinstance(w, widgets.Stack) else []
    for c in getattr(w, "children", ()):
        out += _stacks(c)
    return out


def _links(box: widgets.Widget) -> set[frozenset[str]]:
    """Pairs of model ids joined by a front-end link in the state a page would embed."""
    state = dependency_state(box, drop_defaults=False)
    return {frozenset(v["state"][end][0].removeprefix("IPY_MODEL_") for end in ("source", "target"))
            for v in state.values() if v["model_name"] == "LinkModel"}


def test_stack_widget_nests_one_stack_level_per_slider():
    ps = (Param.grid("k", [1.0, 2.0, 3.0], "k", default=1), Param.choice("name", ["a", "b"]))
    f = frames.render_frames(_square, ps)
    box = frames.stack_widget(f, play=True)
    assert frames.EXPLORER_CLASS in box._dom_classes
    (player, s1), s2, outer = box.children[0].children, box.children[1], box.children[2]
    assert isinstance(player, widgets.Play) and isinstance(s1, widgets.SelectionSlider)
    assert s1.options == ("1", "2", "3") and s1.index == 1 and s2.index == 0
    assert isinstance(outer, widgets.Stack) and outer.selected_index == 1
    inner = outer.children
    assert len(inner) == 3 and all(isinstance(s, widgets.Stack) for s in inner)
    # grid point (i, j) is child j of inner stack i: the links compute "i * n2 + j" in the browser
    links = _links(box)
    for i, stack in enumerate(inner):
        assert [im.value for im in stack.children] == [f.png(i, j) for j in range(2)]
        assert frozenset((s2.model_id, stack.model_id)) in links
    assert frozenset((s1.model_id, outer.model_id)) in links
    assert frozenset((player.model_id, s1.model_id)) in links
    assert len(links) == 1 + 3 + 1  # slider 1, slider 2 (one per inner stack), play
    assert len(_stacks(box)) == 4
    assert player.max == 2 and player.value == 1


def test_identical_frames_share_one_image_model():
    ps = (Param.grid("k", [1.0, 2.0], "k"), Param.choice("name", ["a", "b"]))
    f = frames.render_frames(_square, ps, key=lambda k, name: (k if name == "a" else 0, name))
    box = frames.stack_widget(f)
    outer = box.children[-1]
    assert outer.children[0].children[1] is outer.children[1].children[1]
    assert frames.embedded_bytes(box) > 4 / 3 * f.nbytes  # base64 frames + the models


def test_explorer_figure_data_live_and_errors():
    ex = Explorer(compute=lambda k, name: (k, name), draw=lambda d: _square(*d),
                  params=(Param.grid("k", [1.0, 2.0], "k"), Param.choice("name", ["a", "b"])))
    assert ex.defaults == {"k": 1.0, "name": "a"}
    assert ex.data(k=2.0) == (2.0, "a")
    assert isinstance(ex.figure(name="b"), Figure)
    with pytest.raises(ValueError, match="unknown parameter"):
        ex.figure(beta=1.0)
    assert "Explorer(" in repr(ex) and "k[2]" in repr(ex)
    assert "application/vnd.jupyter.widget-view+json" in ex._repr_mimebundle_()
    assert ex.widget() is ex.widget()  # built once
    live = ex.live()
    assert frames.LIVE_CLASS in live._dom_classes
    slider, choice, image = live.children
    assert isinstance(slider, widgets.FloatSlider) and isinstance(choice, widgets.Dropdown)
    before = bytes(image.value)
    slider.value = 1.5  # off the grid: the kernel callback renders it
    assert bytes(image.value) != before and bytes(image.value).startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="distinct"):
        Explorer(compute=lambda k: k, draw=_square, params=(Param.grid("k", [1.0], "k"),) * 2)


def test_live_controls_match_param_kinds():
    ex = explorers.layers_explorer()
    layers, mu, _ = ex.live().children
    assert isinstance(layers, widgets.IntSlider) and (layers.min, layers.max) == (0, 10)
    assert isinstance(mu, widgets.FloatSlider)
    beta, _ = explorers.temperature_explorer().live().children
    assert isinstance(beta, widgets.FloatLogSlider)
    alpha, _ = explorers.gate_explorer().live().children
    assert type(alpha) is widgets.FloatSlider and (alpha.min, alpha.max) == (0.3, 1.0)
    assert not Param.linear("a", 0.0, 1.0, 3).log_scale
    assert beta.value == pytest.approx(explorers.temperature_explorer().defaults["beta"])


def test_single_thread_restores_the_thread_count():
    n = torch.get_num_threads()
    with frames.single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == n


# --- budgets: every explorer of the book ----------------------------------------------------------

@pytest.fixture(scope="module", params=sorted(explorers.EXPLORERS))
def rendered(request):
    ex = explorers.EXPLORERS[request.param]()
    return request.param, ex, ex.frames, ex.widget()


def test_frames_are_pngs_within_budget(rendered):
    name, ex, f, box = rendered
    assert all(b.startswith(PNG_MAGIC) for b in f.pngs)
    assert all(Image.open(io.BytesIO(b)).mode == "P" for b in f.pngs)  # quantised
    assert len(f.index) == math.prod(f.shape)
    assert len(set(f.pngs)) == f.count, f"{name}: two distinct keys rendered identical frames"
    state = frames.embedded_bytes(box)
    assert state <= frames.STATE_BUDGET_BYTES, f"{name}: {state} bytes of widget state"
    assert f.cpu_seconds <= frames.RENDER_BUDGET_S, f"{name}: {f.cpu_seconds:.1f} s to render"


def test_first_slider_changes_the_frame(rendered):
    """What the browser test checks by keyboard: one step of slider 1 shows another image."""
    name, ex, f, _ = rendered
    d = [p.default for p in ex.params]
    nxt = [d[0] + 1, *d[1:]]
    assert f.png(*d) != f.png(*nxt), name


# --- 1. energy landscape -------------------------------------------------------------------------

@pytest.mark.parametrize("name", explorers.GLOBAL_ENERGIES)
def test_landscape_weights_are_dG_dE_and_the_step_lands_on_the_weighted_mean(name):
    beta, alpha = 1.7, 0.6
    d = explorers.landscape_data(beta, name, alpha=alpha, n=11)
    a, z = explorers.ANCHORS, explorers.QUERY
    E = energies.elastic(z, a).requires_grad_(True)
    G = explorers.global_energy(name, beta, explorers.last_token_gates(len(a), alpha))
    (dG,) = torch.autograd.grad(G(E), E)
    assert torch.allclose(d.weights, dG, rtol=1e-12, atol=1e-12)
    assert torch.allclose(d.target, (d.weights @ a) / d.weights.sum(), rtol=1e-10, atol=1e-12)
    k = (5, 7)
    zk = torch.stack([d.grid.x[k[1]], d.grid.y[k[0]]])
    assert torch.allclose(d.grid.values[k], G(energies.elastic(zk, a)))


def test_landscape_gates_and_beta_independence():
    g = explorers.last_token_gates(5, 0.5)
    assert torch.allclose(g, torch.tensor([0.5**4, 0.5**3, 0.25, 0.5, 1.0], dtype=torch.float64))
    s1, s2 = explorers.landscape_data(0.3, "sum", n=11), explorers.landscape_data(9.0, "sum", n=11)
    assert torch.equal(s1.grid.values, s2.grid.values)
    ex = explorers.landscape_explorer()  # the frame key shares the β-free frames: 17 + 1 + 1
    beta, glob = ex.params
    assert len({ex.key(beta=b, global_name=g) for b in beta.values for g in glob.values}) == 17 + 2
    with pytest.raises(ValueError, match="global energy"):
        explorers.landscape_data(1.0, "max")
    with pytest.raises(ValueError, match="beta"):
        explorers.landscape_data(-1.0)


# --- 2. optimizer race ---------------------------------------------------------------------------

def test_race_trajectories_are_energylib_descend():
    d = explorers.race_data(0.5, 0.8, 2.0, steps=8, n=11)
    energy = partial(energies.helmholtz_elastic, anchors=explorers.ANCHORS, beta=2.0)
    assert set(d.trajectories) == set(optimizers.METHODS)
    for m, t in d.trajectories.items():
        ref = optimizers.descend(energy, d.start, m, steps=8, eta=0.5, mu=0.8, damping=0.5,
                                 on_divergence="stop")
        assert torch.equal(t.z, ref.z) and torch.equal(t.energy, ref.energy), m
        assert torch.allclose(t.energy, energy(t.z))


@settings(max_examples=25)
@given(eta=st.floats(0.01, 1.95), beta=st.floats(0.1, 8.0),
       x=st.floats(-3, 3), y=st.floats(-3, 3))
def test_race_gd_energy_never_increases(eta, beta, x, y):
    """∇²F* = I − βΣ_p ≼ I: F* is 1-smooth, so GD with η < 2 cannot increase it."""
    d = explorers.race_data(eta, 0.5, beta, start=(x, y), steps=10, n=3)
    F = d.trajectories["gd"].energy
    assert bool((F[1:] <= F[:-1] + 1e-12).all())


@settings(max_examples=25)
@given(beta=st.floats(0.1, 8.0), x=st.floats(-3, 3), y=st.floats(-3, 3))
def test_race_neumann_energy_never_increases_with_a_safe_step(beta, x, y):
    """Direction (I + βΣ_p)∇F, with ‖βΣ_p‖ ≤ β·diam²/4: η ≤ 2/(1 + β·diam²/4)² is a descent step."""
    diam2 = torch.cdist(explorers.ANCHORS, explorers.ANCHORS).max().item() ** 2
    eta = 1.0 / (1 + beta * diam2 / 4) ** 2
    F = explorers.race_data(eta, 0.5, beta, start=(x, y), steps=10, n=3).trajectories["neumann"].energy
    assert bool((F[1:] <= F[:-1] + 1e-12).all())


def test_race_singular_newton_keeps_the_defined_prefix():
    # F* of two anchors at ±1 with beta = 2: at z = 0 the Hessian is I - 2 diag(1, 0) = diag(-1, 1);
    # damping 1 makes it singular there, so Newton stops at once and is marked diverged.
    a = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    d = explorers.race_data(1.0, 0.5, 2.0, anchors=a, start=(0.0, 0.0), damping=1.0, n=3)
    t = d.trajectories["newton"]
    assert t.diverged and t.z.shape == (1, 2)


# --- 3. attention against temperature ------------------------------------------------------------

def test_temperature_rows_are_boltzmann_weights_and_entropy_falls():
    x = explorers.sequence_tokens()
    for beta in (0.05, 1.0, 30.0):
        d = explorers.temperature_data(beta, query=2)
        for t in range(x.shape[0]):
            p = energies.boltzmann(energies.elastic(x[t], x), beta)  # norm condition: equal
            assert torch.allclose(d.weights[t], p, rtol=1e-10, atol=1e-12)
    S, N = d.entropy, x.shape[0]
    assert bool((S[1:] <= S[:-1] + 1e-12).all())        # dS/dβ = −β Var_p(E) ≤ 0
    assert S[0] == pytest.approx(math.log(N), abs=0.01)  # hot: uniform (the linear limit)
    assert int(torch.argmax(d.weights[2])) == int(torch.argmin(d.energies))  # cold: arg-min
    causal = explorers.temperature_data(1.0, query=2, causal=True)
    assert torch.allclose(causal.weights[2, 3:], torch.zeros(N - 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="query"):
        explorers.temperature_data(1.0, query=8)


# --- 4. gate decay -------------------------------------------------------------------------------

def test_gate_data_matches_gate_matrix_and_the_gated_linear_step():
    alpha = 0.7
    d = explorers.gate_data(alpha, eta=0.25, n=11)
    a, z, N = explorers.GATE_ANCHORS, d.query, explorers.GATE_ANCHORS.shape[0]
    t, i = torch.meshgrid(torch.arange(N), torch.arange(N), indexing="ij")
    expected = torch.where(i <= t, alpha ** (t - i).double(), torch.zeros((), dtype=torch.float64))
    assert torch.allclose(d.gamma, expected, rtol=1e-12, atol=1e-14)
    # −∇F_N = Σ_i γ_N,i (z·a_i) a_i: the gated linear attention output for the last token
    step = z + 0.25 * ((d.gamma[-1] * (a @ z)) @ a)
    assert torch.allclose(d.target, step, rtol=1e-12, atol=1e-12)
    # the same energy as the gated linear recipe's, for the last query
    F = recipes.gated_linear_energy(a, torch.eye(2, dtype=torch.float64),
                                    torch.full((N,), alpha, dtype=torch.float64))
    zs = z.expand(N, 2)
    assert torch.allclose(F(zs)[-1], energies.total(energies.squared_bilinear(z, a), d.gamma[-1]))
    with pytest.raises(ValueError, match="alpha"):
        explorers.gate_data(0.0)
    with pytest.raises(ValueError, match="local"):
        explorers.gate_data(0.5, local="cosine")


# --- 5. layers as iterations ---------------------------------------------------------------------

def test_tied_stack_is_gd_heavy_ball_and_nesterov_on_F_star():
    beta, eta, mu, L = 2.0, 0.3, 0.6, 12
    d = explorers.layers_data(5, mu=mu, beta=beta, eta=eta, max_layers=L, n=11)
    energy = partial(energies.helmholtz_elastic, anchors=d.anchors, beta=beta)
    z0 = d.positions["plain"][0]
    for name, method in (("plain", "gd"), ("momentum", "heavy_ball"), ("nesterov", "nesterov")):
        ref = optimizers.descend(energy, z0, method, steps=L, eta=eta, mu=mu)
        assert torch.allclose(d.positions[name], ref.z, rtol=1e-10, atol=1e-12), name
        assert torch.allclose(d.energy[name], ref.energy.mean(-1), rtol=1e-10, atol=1e-12)
    F = d.energy["plain"]
    assert bool((F[1:] <= F[:-1] + 1e-12).all())  # GD with η < 2 on a 1-smooth energy
    h, W = explorers.stack_context()
    tied = recipes.tie_softmax(W, beta, eta)
    assert torch.allclose(d.weights.W_Q.T @ d.weights.W_K, beta * W)
    assert torch.allclose(tied.W_V, d.weights.W_V)


def test_tied_stack_requires_equal_anchor_norms():
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="equal norms"):
        explorers.layers_data(3, h=h, W=torch.eye(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="layers"):
        explorers.layers_data(13)


# --- 6. Newton's validity ------------------------------------------------------------------------

def test_validity_rho_is_beta_times_the_top_covariance_eigenvalue():
    beta = 2.0
    d = explorers.validity_data(beta, n=9)
    a = explorers.ANCHORS
    Y, X = torch.meshgrid(d.y, d.x, indexing="ij")
    z = torch.stack([X, Y], -1)
    p = energies.boltzmann(energies.elastic(z, a), beta)
    lam = torch.linalg.eigvalsh(energies.weighted_covariance(p, a.expand(*p.shape, 2)))[..., -1]
    assert torch.allclose(d.rho, beta * lam, rtol=1e-9, atol=1e-12)
    # the Neumann truncation holds exactly where the Hessian is positive definite
    H = energies.helmholtz_elastic_hessian(z, a, beta)
    assert torch.equal(d.rho < 1, torch.linalg.eigvalsh(H)[..., 0] > 0)
    assert 0 < d.valid_fraction < 1
    assert explorers.validity_data(0.05, n=9).valid_fraction == 1.0  # hot: convex everywhere

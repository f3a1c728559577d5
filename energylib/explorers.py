"""The book's explorers: each is pure compute (energylib calls) plus a drawing, on a small grid.

Every ``*_explorer`` function returns an :class:`energylib.frames.Explorer`; displayed as the
last expression of a cell it is a frame-stack widget that works live, under nbval and on the
static site with no kernel (see :mod:`energylib.frames`). ``explorer.live()`` gives continuous
sliders with a kernel; ``explorer.data(**values)`` returns the computed quantities.

- :func:`landscape_explorer`: :func:`landscape_data` (:class:`LandscapeData`); sliders β, global energy
- :func:`race_explorer`: :func:`race_data` (:class:`RaceData`); sliders η, μ, β
- :func:`temperature_explorer`: :func:`temperature_data` (:class:`TemperatureData`); slider β
- :func:`gate_explorer`: :func:`gate_data` (:class:`GateData`); slider α
- :func:`layers_explorer`: :func:`layers_data` (:class:`LayersData`); sliders layers, μ
- :func:`validity_explorer`: :func:`validity_data` (:class:`ValidityData`); slider β

See the page :doc:`How to use the explorers </book/explorers>` and the chapters each explorer belongs to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from . import _checks, attention, energies, optimizers, recipes, viz
from .frames import Explorer, Param

#: The five anchors and the query of the chapter *Energies*' landscape figure.
ANCHORS = torch.tensor([[-1.8, -0.8], [-0.6, 1.6], [1.5, 1.2], [1.2, -1.4], [0.2, -0.1]],
                       dtype=torch.float64)
QUERY = torch.tensor([1.1, 0.6], dtype=torch.float64)
LIM = (-3.0, 3.0)
GLOBAL_ENERGIES = ("Helmholtz", "sum", "gated sum")
METHOD_LABELS = {"gd": "GD", "heavy_ball": "heavy ball", "nesterov": "Nesterov",
                 "newton": "Newton (damped)", "neumann": "Neumann–Newton"}
STACK_METHODS = {"plain": "plain (GD)", "momentum": "momentum", "nesterov": "Nesterov"}
_COLORS = {"gd": "#1f77b4", "heavy_ball": "#ff7f0e", "nesterov": "#2ca02c", "newton": "#d62728",
           "neumann": "#9467bd", "plain": "#1f77b4", "momentum": "#ff7f0e"}
_SUB = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def _label(i: int) -> str:
    """Unicode ``a₁`` (mathtext would cost ~4 ms per label per frame)."""
    return "a" + str(i + 1).translate(_SUB)


def _anchors2d(anchors: Tensor) -> Tensor:
    _checks.tensor("anchors", anchors, 2)
    if anchors.dim() != 2 or anchors.shape[-1] != 2:
        raise ValueError(f"anchors must have shape (N, 2) (points in the plane), got "
                         f"{tuple(anchors.shape)}")
    return anchors.to(torch.float64)


def _point(name: str, z: Tensor | Sequence[float]) -> Tensor:
    z = torch.as_tensor(z, dtype=torch.float64)
    if z.shape != (2,):
        raise ValueError(f"{name} must be a point of the plane, shape (2,), got {tuple(z.shape)}")
    _checks.finite(name, z)
    return z


# ---------------------------------------------------------------------------------------------
# 1. Energy landscape: local elastic energies combined by each global energy
# ---------------------------------------------------------------------------------------------

class LandscapeData(NamedTuple):
    """grid: F on the plane; weights (N,) = ∂G/∂E_i at the query; target (2,) = the query after
    one GD step with η = 1/Σ_i w_i, i.e. Σ_i w_i a_i / Σ_i w_i."""

    grid: viz.Grid
    anchors: Tensor
    query: Tensor
    weights: Tensor
    target: Tensor
    global_energy: str
    beta: float


def global_energy(name: str, beta: float, gates: Tensor | None = None):
    r"""The global energy ``G: E (..., N) -> (...)`` called ``name``:
    ``"Helmholtz"`` :math:`-\tfrac1\beta\log\sum_i e^{-\beta E_i}`, ``"sum"`` :math:`\sum_i E_i`,
    ``"gated sum"`` :math:`\sum_i \gamma_i E_i` (``gates`` γ: (N,)).
    See chapter :doc:`Energies </book/energies>`."""
    if name == "Helmholtz":
        return partial(energies.helmholtz, beta=beta)
    if name == "sum":
        return energies.total
    if name == "gated sum":
        if gates is None:
            raise ValueError("the gated sum needs gates")
        return partial(energies.total, gates=gates)
    raise ValueError(f"global energy must be one of {GLOBAL_ENERGIES}, got {name!r}")


def last_token_gates(n: int, alpha: float) -> Tensor:
    r""":math:`\gamma_{N,i} = \alpha^{N-i}`: the last row of :func:`energylib.energies.gate_matrix`
    for a constant gate α. -> (n,)."""
    _checks.in_range("alpha", alpha, 0.0, 1.0, closed_low=False)
    return energies.gate_matrix(torch.full((n,), float(alpha), dtype=torch.float64))[-1]


def landscape_data(
    beta: float, global_name: str = "Helmholtz", anchors: Tensor = ANCHORS,
    query: Tensor | Sequence[float] = QUERY, alpha: float = 0.6, n: int = 61,
) -> LandscapeData:
    r"""Elastic local energies :math:`E_i(z) = \tfrac12\lVert z - a_i\rVert^2` combined by a global
    energy G, on an n x n grid of the plane; the weights :math:`w_i = \partial G/\partial E_i` at the
    query (Boltzmann weights for Helmholtz, 1 for the sum, γ for the gated sum) and one GD step.

    The gated sum treats the anchors as a sequence and the query as its last token (constant
    gate α). anchors: (N, 2), query: (2,). See chapter :doc:`Energies </book/energies>`.
    """
    a, z = _anchors2d(anchors), _point("query", query)
    beta = _checks.positive("beta", beta)
    gates = last_token_gates(a.shape[0], alpha) if global_name == "gated sum" else None
    G = global_energy(global_name, beta, gates)

    def energy(x: Tensor) -> Tensor:
        return G(energies.elastic(x, a))

    E = energies.elastic(z, a)
    if global_name == "Helmholtz":
        w = energies.boltzmann(E, beta)
    elif global_name == "sum":
        w = torch.ones_like(E)
    else:
        w = gates
    target = z - optimizers.gradient(energy, z) / w.sum()
    grid = viz.energy_on_grid(energy, LIM, LIM, n=n)
    return LandscapeData(grid, a, z, w, target, global_name, beta)


def _map(ax: Axes, grid: viz.Grid, levels: int = 14, cmap: str = "viridis"):
    filled = ax.contourf(grid.x.numpy(), grid.y.numpy(), grid.values.numpy(), levels=levels,
                         cmap=cmap)
    ax.set_xlim(*LIM)
    ax.set_ylim(*LIM)
    ax.set_aspect("equal")
    ax.set_xticks([-2, 0, 2])
    ax.set_yticks([-2, 0, 2])
    return filled


def _anchors(ax: Axes, a: Tensor, sizes: Sequence[float] | None = None, labels: bool = True) -> None:
    pts = a.numpy()
    s = 36 if sizes is None else np.asarray(sizes)
    ax.scatter(pts[:, 0], pts[:, 1], s=s, c="white", edgecolors="black", zorder=3)
    if labels:
        for i, (u, v) in enumerate(pts):
            ax.annotate(_label(i), (u, v), xytext=(4, 4), textcoords="offset points",
                        color="white", fontweight="bold", zorder=4)


def _arrow(ax: Axes, start: Tensor, end: Tensor, color: str = "red") -> None:
    ax.annotate("", xy=tuple(end.tolist()), xytext=tuple(start.tolist()), zorder=5,
                arrowprops=dict(arrowstyle="->", color=color, lw=1.8))
    ax.plot(*start.tolist(), marker="*", markersize=11, color=color, markeredgecolor="white",
            zorder=6)


def draw_landscape(d: LandscapeData) -> Figure:
    """Landscape of F with the anchors, the query (star) and its GD step; the weights as bars."""
    fig = Figure(figsize=(7.2, 3.1), dpi=80)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.13, top=0.88, wspace=0.3)
    ax, bx = fig.subplots(1, 2, width_ratios=[1.15, 1])
    _map(ax, d.grid)
    _anchors(ax, d.anchors)
    _arrow(ax, d.query, d.target)
    temp = f", β = {d.beta:.3g}" if d.global_energy == "Helmholtz" else " (β does not enter)"
    ax.set_title(f"{d.global_energy} of elastic energies{temp}")
    n = d.weights.shape[0]
    bx.bar(np.arange(n), d.weights.numpy(), color="#4c72b0")
    bx.set_xticks(np.arange(n), [_label(i) for i in range(n)])
    bx.set_ylim(0, 1.08)
    if d.global_energy == "Helmholtz":
        bx.axhline(1 / n, color="gray", ls="--", lw=1)
        bx.set_title("Boltzmann weights p*ᵢ at the query")
    else:
        bx.set_title(f"weights ∂G/∂Eᵢ at the query ({d.global_energy})")
    bx.set_ylabel("weight")
    return fig


def landscape_explorer(
    betas: Param | None = None, anchors: Tensor = ANCHORS, query: Tensor | Sequence[float] = QUERY,
    alpha: float = 0.6,
) -> Explorer:
    """Explorer 1, the energy landscape: sliders β (17 values, log scale) and the global energy.

    The sum and the gated sum do not depend on β: their frames are rendered once and shared.
    See chapter :doc:`Energies </book/energies>`.
    """
    betas = betas or Param.log("beta", 0.1, 20.0, 17, "β", default=7)
    glob = Param.choice("global_name", GLOBAL_ENERGIES, "global")
    return Explorer(
        compute=partial(landscape_data, anchors=anchors, query=query, alpha=alpha),
        draw=draw_landscape, params=(betas, glob), title="energy landscape",
        key=lambda beta, global_name: (beta if global_name == "Helmholtz" else None, global_name),
    )


# ---------------------------------------------------------------------------------------------
# 2. Optimizer race on the Helmholtz landscape
# ---------------------------------------------------------------------------------------------

class RaceData(NamedTuple):
    """trajectories[method]: :class:`energylib.optimizers.Trajectory` (z: (steps+1, 2))."""

    grid: viz.Grid
    anchors: Tensor
    start: Tensor
    trajectories: dict[str, optimizers.Trajectory]
    eta: float
    mu: float
    beta: float


def race_data(
    eta: float, mu: float, beta: float, anchors: Tensor = ANCHORS,
    start: Tensor | Sequence[float] = (-0.3, -2.7), steps: int = 12, damping: float = 0.5,
    n: int = 61,
) -> RaceData:
    r"""GD, heavy ball, Nesterov, damped Newton and one-term Neumann Newton, from the same start on
    :math:`F^*(z) = -\tfrac1\beta\log\sum_i e^{-\beta\frac12\lVert z-a_i\rVert^2}`, all with
    :func:`energylib.optimizers.descend` (``on_divergence="stop"``).

    A Newton step whose damped Hessian is singular ends that trajectory (marked diverged).
    See chapter :doc:`Inference as optimization </book/inference>`.
    """
    a, z0 = _anchors2d(anchors), _point("start", start)
    beta = _checks.positive("beta", beta)
    energy = partial(energies.helmholtz_elastic, anchors=a, beta=beta)
    runs = {m: _descend(energy, z0, m, steps, eta, mu, damping) for m in optimizers.METHODS}
    return RaceData(viz.energy_on_grid(energy, LIM, LIM, n=n), a, z0, runs, eta, mu, beta)


def _descend(energy, z0: Tensor, method: str, steps: int, eta: float, mu: float,
             damping: float) -> optimizers.Trajectory:
    kw = dict(method=method, eta=eta, mu=mu, damping=damping, on_divergence="stop")
    try:
        return optimizers.descend(energy, z0, steps=steps, **kw)
    except ValueError as err:  # a singular damped Hessian: keep the steps that were defined
        if "singular" not in str(err):
            raise
        for k in range(steps - 1, -1, -1):
            try:
                t = optimizers.descend(energy, z0, steps=k, **kw)
            except ValueError:
                continue
            return optimizers.Trajectory(t.z, t.energy, t.method, diverged=True)
        raise


def draw_race(d: RaceData) -> Figure:
    """Trajectories on the landscape (left) and F(z_k) against the step k (right)."""
    fig = Figure(figsize=(7.2, 3.1), dpi=80)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.14, top=0.88, wspace=0.25)
    ax, bx = fig.subplots(1, 2, width_ratios=[1.0, 1.1])
    _map(ax, d.grid, levels=12)
    _anchors(ax, d.anchors, labels=False)
    lo = float(d.grid.values.min())
    hi = float(d.trajectories["gd"].energy[0])
    for m, t in d.trajectories.items():
        z = t.z.numpy()
        ax.plot(z[:, 0], z[:, 1], "-o", color=_COLORS[m], ms=2.5, lw=1.3)
        label = METHOD_LABELS[m] + (" ×" if t.diverged else "")
        bx.plot(np.arange(len(t.energy)), t.energy.numpy(), "-", color=_COLORS[m], lw=1.5,
                label=label)
        lo = min(lo, float(t.energy.min()))
    ax.plot(*d.start.tolist(), marker="*", ms=11, color="red", markeredgecolor="white", zorder=6)
    ax.set_title(f"η = {d.eta:.3g}, μ = {d.mu:.3g}, β = {d.beta:.3g}")
    pad = 0.05 * (hi - lo)
    bx.set_ylim(lo - pad, hi + 4 * pad)
    bx.set_xlim(0, len(d.trajectories["gd"].energy) - 1)
    bx.set_xlabel("step k")
    bx.set_title("F*(z_k)")
    bx.legend(loc="upper right", frameon=False)
    return fig


def race_explorer(
    etas: Param | None = None, mus: Param | None = None, betas: Param | None = None,
    anchors: Tensor = ANCHORS, start: Sequence[float] = (-0.3, -2.7), steps: int = 12,
    damping: float = 0.5,
) -> Explorer:
    """Explorer 2, the optimizer race: sliders η (4), μ (3), β (2) = 24 frames.

    See chapters :doc:`Inference as optimization </book/inference>` and
    :doc:`Newton attention </book/newton>`.
    """
    etas = etas or Param.grid("eta", [0.2, 0.5, 1.0, 1.6], "η", default=0)
    mus = mus or Param.grid("mu", [0.0, 0.5, 0.85], "μ", default=2)
    betas = betas or Param.grid("beta", [1.0, 4.0], "β", default=0, log=True)
    return Explorer(
        compute=partial(race_data, anchors=anchors, start=start, steps=steps, damping=damping),
        draw=draw_race, params=(etas, mus, betas), title="optimizer race",
    )


# ---------------------------------------------------------------------------------------------
# 3. Attention weights against the temperature
# ---------------------------------------------------------------------------------------------

class TemperatureData(NamedTuple):
    """weights (N, N): softmax(β x_t·x_i); energies (N,): E_i(x_query) elastic;
    entropy_curve: (betas (K,), S(p_query) (K,))."""

    weights: Tensor
    energies: Tensor
    query: int
    beta: float
    entropy_betas: Tensor
    entropy: Tensor


def sequence_tokens(n: int = 8, d: int = 3, seed: int = 3) -> Tensor:
    """n tokens on the unit sphere of R^d (the norm condition holds), seeded. -> (n, d)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def temperature_data(beta: float, tokens: Tensor | None = None, query: int = 2,
                     causal: bool = False) -> TemperatureData:
    r"""Self-attention weights :math:`P = \mathrm{softmax}(\beta X X^\top)` of unit-norm tokens
    (:func:`energylib.attention.softmax_attention_weights` with scale β), the elastic energies of
    the query row (its Boltzmann weights are row ``query`` of P) and the entropy of that row
    over a range of β: log N when hot (uniform, the linear limit), 0 when cold (arg-min).
    See chapter :doc:`Softmax attention </book/softmax>`.
    """
    x = sequence_tokens() if tokens is None else tokens
    _checks.tensor("tokens", x, 2)
    beta = _checks.positive("beta", beta)
    if not 0 <= query < x.shape[0]:
        raise ValueError(f"query must index a token in 0..{x.shape[0] - 1}, got {query}")
    _, P = attention.softmax_attention_weights(x, x, x, causal=causal, scale=beta)
    E = energies.elastic(x[query], x[: query + 1] if causal else x)
    bs = torch.logspace(-2, 2, 60, dtype=torch.float64)
    S = energies.entropy(torch.stack([energies.boltzmann(E, float(b)) for b in bs]))
    return TemperatureData(P, E, query, beta, bs, S)


def _log_ticks(ax: Axes, ticks: Sequence[float]) -> None:
    """Plain tick labels on a log x-axis (the default 10^k labels are mathtext: slow)."""
    from matplotlib.ticker import NullLocator

    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())


def draw_temperature(d: TemperatureData) -> Figure:
    """Attention matrix | the query's weights with the hot and cold limits | entropy against β."""
    fig = Figure(figsize=(7.6, 2.6), dpi=80)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.17, top=0.86, wspace=0.35)
    ax, bx, cx = fig.subplots(1, 3, width_ratios=[1, 1.2, 1.1])
    n = d.weights.shape[-1]
    ax.imshow(d.weights.numpy(), vmin=0, vmax=1, cmap="Blues")
    ax.axhline(d.query, color="red", lw=0.8)
    ax.set_xticks([0, n - 1], ["1", str(n)])
    ax.set_yticks([0, n - 1], ["1", str(n)])
    ax.set_title(f"P = softmax(β XXᵀ), β = {d.beta:.3g}")
    row = d.weights[d.query, : d.energies.shape[0]].numpy()
    k = np.arange(row.shape[0])
    bx.bar(k, row, color="#4c72b0")
    bx.axhline(1 / row.shape[0], color="gray", ls="--", lw=1)
    best = int(torch.argmin(d.energies))
    bx.plot([best], [1.04], "v", color="red", ms=6)
    bx.set_ylim(0, 1.1)
    bx.set_xticks(k, [str(i + 1) for i in k])
    bx.set_title(f"query {d.query + 1}: -- hot 1/N, ▼ cold arg-min")
    cx.semilogx(d.entropy_betas.numpy(), d.entropy.numpy(), color="#4c72b0")
    _log_ticks(cx, [0.01, 0.1, 1, 10, 100])
    cx.axhline(math.log(row.shape[0]), color="gray", ls="--", lw=1)
    S_now = energies.entropy(energies.boltzmann(d.energies, d.beta))
    cx.plot([d.beta], [float(S_now)], "o", color="red")
    cx.set_ylim(-0.05, math.log(row.shape[0]) * 1.1)
    cx.set_xlabel("β")
    cx.set_title("entropy S(p) of the row")
    return fig


def temperature_explorer(betas: Param | None = None, tokens: Tensor | None = None,
                         query: int = 2, causal: bool = False) -> Explorer:
    """Explorer 3, attention weights against the temperature: slider β (19 values, log), Play.

    See chapter :doc:`Softmax attention </book/softmax>`.
    """
    betas = betas or Param.log("beta", 0.05, 30.0, 19, "β", default=6)
    return Explorer(
        compute=partial(temperature_data, tokens=tokens, query=query, causal=causal),
        draw=draw_temperature, params=(betas,), title="attention vs temperature", play=True,
    )


# ---------------------------------------------------------------------------------------------
# 4. Gate decay
# ---------------------------------------------------------------------------------------------

#: A sequence of six 2-D anchors for the gate explorer (token 6 is the newest).
GATE_ANCHORS = torch.tensor([[-1.6, 0.9], [-0.4, 1.7], [1.3, 1.3], [1.7, -0.2], [0.6, -1.5],
                             [-1.1, -1.2]], dtype=torch.float64)


class GateData(NamedTuple):
    """gamma (N, N) = gate_matrix(α); grid: the gated energy of the last token on the plane;
    target (2,): the query after one GD step of size ``eta``."""

    gamma: Tensor
    grid: viz.Grid
    anchors: Tensor
    query: Tensor
    target: Tensor
    alpha: float
    local: str


LOCAL_ENERGIES = {"squared bilinear": energies.squared_bilinear, "elastic": energies.elastic}


def gate_data(
    alpha: float, anchors: Tensor = GATE_ANCHORS, query: Sequence[float] = (0.9, 0.5),
    local: str = "squared bilinear", eta: float = 0.25, n: int = 61,
) -> GateData:
    r"""Decay weights :math:`\gamma_{t,i} = \alpha^{t-i}` (:func:`energylib.energies.gate_matrix`,
    constant gate α) and the gated energy of the last token
    :math:`F_N(z) = \sum_i \gamma_{N,i} E_i(z)` on the plane (``local``: ``"squared bilinear"``,
    the gated linear recipe, or ``"elastic"``), with one GD step from the query.
    See chapter :doc:`Gated linear attention </book/gated>`.
    """
    a, z = _anchors2d(anchors), _point("query", query)
    if local not in LOCAL_ENERGIES:
        raise ValueError(f"local must be one of {tuple(LOCAL_ENERGIES)}, got {local!r}")
    _checks.in_range("alpha", alpha, 0.0, 1.0, closed_low=False)
    gamma = energies.gate_matrix(torch.full((a.shape[0],), float(alpha), dtype=torch.float64))
    E = LOCAL_ENERGIES[local]

    def energy(x: Tensor) -> Tensor:
        return energies.total(E(x, a), gamma[-1])

    target = optimizers.gd_step(energy, z, eta)
    return GateData(gamma, viz.energy_on_grid(energy, LIM, LIM, n=n), a, z, target, float(alpha),
                    local)


def draw_gate(d: GateData) -> Figure:
    """γ matrix (left); the gated landscape of the last token, anchors sized by γ (right)."""
    fig = Figure(figsize=(7.0, 3.1), dpi=80)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.12, top=0.88, wspace=0.25)
    ax, bx = fig.subplots(1, 2, width_ratios=[1, 1.1])
    n = d.gamma.shape[-1]
    ax.imshow(d.gamma.numpy(), vmin=0, vmax=1, cmap="Blues")
    ticks = np.arange(n)
    ax.set_xticks(ticks, [str(i + 1) for i in ticks])
    ax.set_yticks(ticks, [str(i + 1) for i in ticks])
    ax.set_xlabel("token i")
    ax.set_ylabel("query t")
    ax.set_title(f"γ_t,i = α^(t−i),  α = {d.alpha:.2f}")
    _map(bx, d.grid, levels=14, cmap="viridis")
    _anchors(bx, d.anchors, sizes=(12 + 60 * d.gamma[-1]).numpy())
    _arrow(bx, d.query, d.target)
    bx.set_title(f"F_N(z) = Σᵢ γ_N,i Eᵢ(z), {d.local}")
    return fig


def gate_explorer(alphas: Param | None = None, anchors: Tensor = GATE_ANCHORS,
                  local: str = "squared bilinear") -> Explorer:
    """Explorer 4, gate decay: slider α (15 values in [0.3, 1]), Play.

    See chapter :doc:`Gated linear attention </book/gated>`.
    """
    alphas = alphas or Param.linear("alpha", 0.3, 1.0, 15, "α", default=7)
    return Explorer(compute=partial(gate_data, anchors=anchors, local=local), draw=draw_gate,
                    params=(alphas,), title="gate decay", play=True)


# ---------------------------------------------------------------------------------------------
# 5. Layers as iterations: a tied Transformer stack
# ---------------------------------------------------------------------------------------------

def stack_context(m: int = 4, radius: float = 2.0) -> tuple[Tensor, Tensor]:
    """Context tokens h (m, 2) and an anchor map W (2, 2) (rotation x scale) whose anchors
    a_i = W h_i all have norm ``radius`` — so the elastic weights are exactly softmax(β q·k)."""
    angles = torch.tensor([0.35 + 2 * math.pi * i / m for i in range(m)], dtype=torch.float64)
    h = torch.stack([angles.cos(), angles.sin()], dim=-1)
    c, s = math.cos(0.5), math.sin(0.5)
    W = radius * torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    return h, W


def stack_queries(n: int = 6, seed: int = 1) -> Tensor:
    """n query tokens spread in [-1.2, 1.2]² (seeded). -> (n, 2)."""
    g = torch.Generator().manual_seed(seed)
    return 2.4 * torch.rand(n, 2, generator=g, dtype=torch.float64) - 1.2


class LayersData(NamedTuple):
    """positions[method]: (L+1, N, 2) token positions after each layer; energy[method]: (L+1,)
    mean of F*(z_t) over the tokens; ``layers``: how many are shown."""

    grid: viz.Grid
    anchors: Tensor
    positions: dict[str, Tensor]
    energy: dict[str, Tensor]
    layers: int
    mu: float
    weights: recipes.TiedWeights


def tied_attention_update(z: Tensor, h: Tensor, tied: recipes.TiedWeights, eta: float) -> Tensor:
    r"""One tied layer's update :math:`g(z) = \mathrm{Attn}(z) - \eta z = -\eta\nabla F^*(z)`.

    Attention with the tied weights of :func:`energylib.recipes.tie_softmax` (scale 1); the
    :math:`-\eta z` is the norm-condition gap of the full elastic energy (chapter *Softmax
    attention*), exact when the anchors have equal norms. z: (..., N, d), h: (M, d_in).
    """
    return attention.softmax_attention(*tied.qkv(z, h), scale=1.0) - eta * z


def layers_data(
    layers: int, mu: float = 0.6, beta: float = 2.0, eta: float = 0.3, max_layers: int = 12,
    h: Tensor | None = None, W: Tensor | None = None, queries: Tensor | None = None, n: int = 61,
) -> LayersData:
    r"""A tied Transformer stack on a fixed context: ``max_layers`` layers of

    - plain: :math:`z^{(\ell+1)} = z^{(\ell)} + g(z^{(\ell)})` (GD),
    - momentum: :math:`m^{(\ell)} = \mu m^{(\ell-1)} + g(z^{(\ell)})`,
      :math:`z^{(\ell+1)} = z^{(\ell)} + m^{(\ell)}`,
    - Nesterov: as momentum with :math:`g` at the look-ahead :math:`z^{(\ell)} + \mu m^{(\ell-1)}`,

    with :math:`g` = :func:`tied_attention_update`, and :math:`F^*` per layer (mean over tokens).
    See chapters :doc:`Momentum attention </book/momentum>` and :doc:`Nesterov attention </book/nesterov>`.
    """
    if h is None or W is None:
        h, W = stack_context()
    z0 = stack_queries() if queries is None else queries
    a = h @ W.T
    norms = a.norm(dim=-1)
    if not torch.allclose(norms, norms[0].expand_as(norms), rtol=1e-9, atol=1e-12):
        raise ValueError("the anchors W h_i must have equal norms for the tied stack to be GD "
                         f"on F*, got norms {norms.tolist()}")
    if isinstance(layers, bool) or not 0 <= int(layers) <= max_layers:
        raise ValueError(f"layers must be an int in 0..{max_layers}, got {layers!r}")
    _checks.in_range("mu", mu, 0.0, 1.0, closed_low=True)
    tied = recipes.tie_softmax(W, beta, eta)
    energy = partial(energies.helmholtz_elastic, anchors=a, beta=beta)
    positions: dict[str, Tensor] = {}
    for method in STACK_METHODS:
        z, m = z0.clone(), torch.zeros_like(z0)
        zs = [z]
        for _ in range(max_layers):
            if method == "plain":
                z = z + tied_attention_update(z, h, tied, eta)
            else:
                look = z + mu * m if method == "nesterov" else z
                m = mu * m + tied_attention_update(look, h, tied, eta)
                z = z + m
            zs.append(z)
        positions[method] = torch.stack(zs)
    F = {k: energy(p).mean(-1) for k, p in positions.items()}
    return LayersData(viz.energy_on_grid(energy, LIM, LIM, n=n), a, positions, F, int(layers),
                      float(mu), tied)


def draw_layers(d: LayersData) -> Figure:
    """Token paths through the first ``layers`` layers for each stack, and F* against layer."""
    fig = Figure(figsize=(8.4, 2.5), dpi=80)
    fig.subplots_adjust(left=0.03, right=0.99, bottom=0.16, top=0.86, wspace=0.22)
    axes = fig.subplots(1, 4, width_ratios=[1, 1, 1, 1.25])
    L = d.layers
    for ax, (method, name) in zip(axes[:3], STACK_METHODS.items(), strict=True):
        _map(ax, d.grid, levels=10)
        ax.set_xticks([])
        ax.set_yticks([])
        _anchors(ax, d.anchors, labels=False)
        p = d.positions[method][: L + 1].numpy()
        for t in range(p.shape[1]):
            ax.plot(p[:, t, 0], p[:, t, 1], "-", color="white", lw=1)
        ax.plot(p[-1, :, 0], p[-1, :, 1], "o", color=_COLORS[method], ms=4,
                markeredgecolor="white")
        ax.set_title(name)
    bx = axes[3]
    total = len(next(iter(d.energy.values())))
    for method, name in STACK_METHODS.items():
        e = d.energy[method].numpy()
        bx.plot(np.arange(total), e, color=_COLORS[method], lw=0.8, alpha=0.25)
        bx.plot(np.arange(L + 1), e[: L + 1], "-o", color=_COLORS[method], ms=2.5, lw=1.5,
                label=name)
    bx.set_xlabel("layer ℓ")
    bx.set_title(f"mean F*, {L} layer{'s' if L != 1 else ''}, μ = {d.mu:.2g}")
    bx.legend(loc="upper right", frameon=False, fontsize=7)
    return fig


def layers_explorer(layers: Param | None = None, mus: Param | None = None, beta: float = 2.0,
                    eta: float = 0.3) -> Explorer:
    """Explorer 5, layers as iterations: sliders layers (0..10), μ (2 values), Play on layers.

    See chapters :doc:`Momentum attention </book/momentum>` and :doc:`Nesterov attention </book/nesterov>`.
    """
    layers = layers or Param.integers("layers", 0, 10, "layers", default=0)
    mus = mus or Param.grid("mu", [0.3, 0.7], "μ", default=1)
    return Explorer(compute=partial(layers_data, beta=beta, eta=eta, max_layers=layers.values[-1]),
                    draw=draw_layers, params=(layers, mus), title="layers as iterations",
                    play=True)


# ---------------------------------------------------------------------------------------------
# 6. Newton's validity: the spectrum of I - beta Sigma_p
# ---------------------------------------------------------------------------------------------

class ValidityData(NamedTuple):
    r"""rho (n, n): :math:`\rho(\beta\Sigma_p) = 1 - \lambda_{\min}(I - \beta\Sigma_p)` over the plane;
    cut_eigenvalues (n, 2): eigenvalues of :math:`I - \beta\Sigma_p` along y = ``cut_y``."""

    x: Tensor
    y: Tensor
    rho: Tensor
    cut_eigenvalues: Tensor
    cut_y: float
    anchors: Tensor
    beta: float

    @property
    def valid_fraction(self) -> float:
        """Share of the plotted plane where the Neumann truncation holds, ρ(βΣ_p) < 1."""
        return float((self.rho < 1).double().mean())


def validity_data(beta: float, anchors: Tensor = ANCHORS, n: int = 81,
                  cut_y: float = 0.2) -> ValidityData:
    r"""Eigenvalues of the Hessian :math:`\nabla^2 F^* = I - \beta\Sigma_p`
    (:func:`energylib.energies.helmholtz_elastic_hessian`) over the query plane. Since
    :math:`\Sigma_p \succeq 0`, :math:`\rho(\beta\Sigma_p) = 1 - \lambda_{\min}`: the one-term
    Neumann series holds (:math:`\rho < 1`) exactly where :math:`F^*` is locally convex.
    See chapter :doc:`Newton attention </book/newton>`.
    """
    a = _anchors2d(anchors)
    beta = _checks.positive("beta", beta)
    x = torch.linspace(*LIM, n, dtype=torch.float64)
    Y, X = torch.meshgrid(x, x, indexing="ij")
    H = energies.helmholtz_elastic_hessian(torch.stack([X, Y], -1), a, beta)  # (n, n, 2, 2)
    rho = 1 - torch.linalg.eigvalsh(H)[..., 0]
    cut = torch.stack([x, torch.full_like(x, cut_y)], -1)
    lam = torch.linalg.eigvalsh(energies.helmholtz_elastic_hessian(cut, a, beta))
    return ValidityData(x, x, rho, lam, float(cut_y), a, beta)


def draw_validity(d: ValidityData) -> Figure:
    """ρ(βΣ_p) over the plane with the line ρ = 1 (left); the eigenvalues along a cut (right)."""
    fig = Figure(figsize=(7.2, 3.1), dpi=80)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.14, top=0.88, wspace=0.28)
    ax, bx = fig.subplots(1, 2, width_ratios=[1.1, 1])
    x, y = d.x.numpy(), d.y.numpy()
    ax.imshow(d.rho.clamp(max=2.0).numpy(), origin="lower", extent=(*LIM, *LIM), vmin=0, vmax=2,
              cmap="RdBu_r", interpolation="nearest")
    if float(d.rho.min()) < 1 < float(d.rho.max()):
        ax.contour(x, y, d.rho.numpy(), levels=[1.0], colors="black", linewidths=1.2)
    ax.axhline(d.cut_y, color="black", ls=":", lw=1)
    _anchors(ax, d.anchors, labels=False)
    ax.set_xticks([-2, 0, 2])
    ax.set_yticks([-2, 0, 2])
    ax.set_title(f"ρ(βΣ_p), β = {d.beta:.3g}: valid (<1) on {100 * d.valid_fraction:.0f}%")
    lam = d.cut_eigenvalues.numpy()
    bad = lam[:, 0] <= 0
    bx.fill_between(x, -4, 1.2, where=bad, color="#d62728", alpha=0.15, lw=0,
                    label="ρ ≥ 1: Neumann fails")
    bx.plot(x, lam[:, 0], color="#1f77b4", label="λ_min")
    bx.plot(x, lam[:, 1], color="#ff7f0e", label="λ_max")
    bx.axhline(0, color="black", lw=0.8)
    bx.set_ylim(-4, 1.2)
    bx.set_xlim(*LIM)
    bx.set_xlabel(f"z₁ (z₂ = {d.cut_y:g})")
    bx.set_title("eigenvalues of I − βΣ_p along the cut")
    bx.legend(loc="lower left", frameon=False, fontsize=7)
    return fig


def validity_explorer(betas: Param | None = None, anchors: Tensor = ANCHORS) -> Explorer:
    """Explorer 6, Newton's validity: slider β (15 values, log scale), Play.

    See chapter :doc:`Newton attention </book/newton>`.
    """
    betas = betas or Param.log("beta", 0.1, 5.0, 15, "β", default=5)
    return Explorer(compute=partial(validity_data, anchors=anchors), draw=draw_validity,
                    params=(betas,), title="Newton's validity", play=True)


EXPLORERS = {
    "landscape": landscape_explorer,
    "race": race_explorer,
    "temperature": temperature_explorer,
    "gate": gate_explorer,
    "layers": layers_explorer,
    "validity": validity_explorer,
}

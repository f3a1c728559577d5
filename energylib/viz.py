"""Drawing helpers for the book's figures: energies on a 2-D grid, contour landscapes, weight bars.

Pure drawing with matplotlib's object API: every function draws on an ``Axes`` it is given and
returns the artist it made; the maths lives in :mod:`energylib.energies`.
See chapter :doc:`Energies </book/energies>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.container import BarContainer
from matplotlib.contour import QuadContourSet
from torch import Tensor

from .optimizers import Energy


class Grid(NamedTuple):
    """An energy sampled on a 2-D grid.

    x: (n,), y: (n,), values: (n, n) with ``values[j, k] = F((x[k], y[j]))`` (rows follow y, as
    ``contour`` expects).
    """

    x: Tensor
    y: Tensor
    values: Tensor


def energy_on_grid(
    energy: Energy,
    xlim: tuple[float, float] = (-3.0, 3.0),
    ylim: tuple[float, float] = (-3.0, 3.0),
    n: int = 121,
    dtype: torch.dtype = torch.float64,
) -> Grid:
    """Evaluate ``energy`` (z: (..., 2) -> (...)) on an n x n grid in one batched call.

    E.g. ``energy_on_grid(lambda z: helmholtz_elastic(z, anchors, beta))``.
    See chapter :doc:`Energies </book/energies>`.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    x = torch.linspace(xlim[0], xlim[1], n, dtype=dtype)
    y = torch.linspace(ylim[0], ylim[1], n, dtype=dtype)
    Y, X = torch.meshgrid(y, x, indexing="ij")
    with torch.no_grad():
        values = energy(torch.stack([X, Y], dim=-1))
    if not isinstance(values, Tensor) or values.shape != (n, n):
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"energy must map z (n, n, 2) to shape ({n}, {n}), got {shape}")
    return Grid(x, y, values)


def _np(x: Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def draw_anchors(ax: Axes, anchors: Tensor, labels: Sequence[str] | None = None) -> None:
    """Mark the anchors ``a_i`` (anchors: (N, 2)) with white dots and labels ``a_1 .. a_N``.

    See chapter :doc:`Energies </book/energies>`.
    """
    if anchors.dim() != 2 or anchors.shape[-1] != 2:
        raise ValueError(f"anchors must have shape (N, 2), got {tuple(anchors.shape)}")
    labels = labels or [f"$a_{{{i + 1}}}$" for i in range(anchors.shape[0])]
    a = _np(anchors)
    ax.scatter(a[:, 0], a[:, 1], s=40, c="white", edgecolors="black", zorder=3)
    for (u, v), text in zip(a, labels, strict=True):
        ax.annotate(text, (u, v), xytext=(5, 5), textcoords="offset points", fontsize=11,
                    color="white", fontweight="bold", zorder=4)


def draw_landscape(
    ax: Axes,
    grid: Grid,
    anchors: Tensor | None = None,
    *,
    levels: int = 20,
    cmap: str = "viridis",
    colorbar: str | None = "energy",
) -> QuadContourSet:
    """Filled contours of ``grid.values`` (n, n), thin contour lines, the anchors (N, 2) on top.

    ``colorbar``: its label, or None for no colorbar. Returns the filled contour set.
    See chapter :doc:`Energies </book/energies>`.
    """
    x, y, v = _np(grid.x), _np(grid.y), _np(grid.values)
    filled = ax.contourf(x, y, v, levels=levels, cmap=cmap)
    ax.contour(x, y, v, levels=filled.levels, colors="black", linewidths=0.4, alpha=0.5)
    if anchors is not None:
        draw_anchors(ax, anchors)
    ax.set_aspect("equal")
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    if colorbar is not None:
        ax.figure.colorbar(filled, ax=ax, label=colorbar, shrink=0.8)
    return filled


def draw_weights(
    ax: Axes,
    weights: Tensor,
    series: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
) -> list[BarContainer]:
    """Grouped bars of weights (K, N) -- K series (e.g. temperatures) over N states -- or (N,).

    ``series``: one legend entry per row; ``labels``: one tick per state (default ``a_1 .. a_N``).
    See chapter :doc:`Energies </book/energies>` (the Boltzmann weights).
    """
    if weights.dim() not in (1, 2):
        raise ValueError(f"weights must have shape (N,) or (K, N), got {tuple(weights.shape)}")
    w = _np(weights.reshape(-1, weights.shape[-1]))
    k, n = w.shape
    if series is not None and len(series) != k:
        raise ValueError(f"series has {len(series)} names but weights has {k} rows")
    width = 0.8 / k
    bars = [ax.bar(np.arange(n) + (j - (k - 1) / 2) * width, w[j], width,
                   label=None if series is None else series[j]) for j in range(k)]
    ax.set_xticks(np.arange(n), labels or [f"$a_{{{i + 1}}}$" for i in range(n)])
    ax.set_ylabel("weight")
    ax.set_ylim(0, 1.3 * float(w.max()))  # headroom for the legend
    if series is not None:
        ax.legend(loc="upper left", fontsize="small")
    return bars

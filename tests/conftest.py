"""Shared test setup: float64, a hypothesis profile sized for 2 cores, random-tensor helpers."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

torch.set_default_dtype(torch.float64)
settings.register_profile(
    "energylib", max_examples=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)
settings.load_profile("energylib")

TOL = dict(rtol=1e-10, atol=1e-10)

seeds = st.integers(0, 2**31 - 1)
dims = st.integers(1, 6)
lengths = st.integers(1, 9)
batches = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)
betas = st.floats(0.05, 5.0)
etas = st.floats(0.01, 1.0)


def randn(seed: int, *shape: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def rand(seed: int, *shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(*shape, generator=g, dtype=torch.float64)


def simplex(seed: int, *shape: int) -> torch.Tensor:
    """Random points of the simplex, some with exact zeros (0 log 0 = 0 must hold)."""
    p = rand(seed, *shape)
    p = torch.where(p < 0.2, torch.zeros_like(p), p)
    p[..., 0] += 1e-3  # never an all-zero row
    return p / p.sum(-1, keepdim=True)

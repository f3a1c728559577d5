"""Argument checks shared by every public function: bad input raises, it never becomes NaN."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def tensor(name: str, x: object, min_dim: int = 0) -> Tensor:
    """Require a floating-point tensor with at least ``min_dim`` dimensions and finite entries."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimensions, got shape {tuple(x.shape)}")
    finite(name, x)
    return x


def finite(name: str, x: Tensor) -> None:
    """Raise if ``x`` holds a NaN or an infinity."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} has non-finite entries (NaN or inf)")


def positive(name: str, value: object) -> float:
    """Require a finite real number > 0 (a Python number or a 0-dim tensor)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def in_range(name: str, value: object, low: float, high: float, *, closed_low: bool) -> float:
    """Require ``low < value <= high`` (or ``low <= value``) for a real scalar."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    ok = (low <= value if closed_low else low < value) and value <= high
    if not ok or not math.isfinite(value):
        bracket = "[" if closed_low else "("
        raise ValueError(f"{name} must lie in {bracket}{low}, {high}], got {value}")
    return float(value)


def gates(name: str, g: Tensor) -> Tensor:
    """Require gate values in (0, 1]."""
    tensor(name, g)
    if bool((g <= 0).any()) or bool((g > 1).any()):
        bad = g[(g <= 0) | (g > 1)].flatten()[0].item()
        raise ValueError(f"{name} must lie in (0, 1], found {bad}")
    return g


def same_dim(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """Require the last (feature) dimensions to agree."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"{name_a} has d={a.shape[-1]} but {name_b} has d={b.shape[-1]}")


def same_length(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """Require the sequence dimensions (-2) to agree."""
    if a.shape[-2] != b.shape[-2]:
        raise ValueError(
            f"{name_a} has N={a.shape[-2]} tokens but {name_b} has N={b.shape[-2]}"
        )

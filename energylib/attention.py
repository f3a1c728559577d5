"""The attention forms the energy recipes induce, in closed form (no residual added).

Shapes: ``q (..., N, d)``, ``k (..., M, d)``, ``v (..., M, d_v)`` -> ``(..., N, d_v)``; gates
``alpha (..., N)``. Chapters: *Softmax attention*, *Unnormalized linear attention*, *Gated linear
attention*, *Multi-head attention*, *Newton attention*.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _checks


def _qkv(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() < 2:
            raise ValueError(f"{name} must have shape (..., N, d), got {tuple(x.shape)}")
    _checks.same_dim("q", q, "k", k)
    _checks.same_length("k", k, "v", v)
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal attention needs as many queries as keys, got "
                         f"N={q.shape[-2]} and M={k.shape[-2]}")


def _finite_output(out: Tensor, **inputs: Tensor) -> Tensor:
    """Check the output; only on failure look for the input to blame.

    A NaN or inf anywhere makes the sum non-finite, so one reduction decides the common case; a
    sum that merely overflows falls through to the element-wise check.
    """
    if bool(torch.isfinite(out.sum())) or bool(torch.isfinite(out).all()):
        return out
    for name, x in inputs.items():
        _checks.finite(name, x)
    raise ValueError("attention overflowed: scores too large for the dtype; rescale q or k")


def _scale(scale: float | None, d: int) -> float:
    return 1.0 / math.sqrt(d) if scale is None else _checks.positive("scale", scale)


def softmax_attention(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None
) -> Tensor:
    r""":math:`o_t = \sum_i \mathrm{softmax}_i(s\, q_t^\top k_i)\, v_i`, :math:`s` = ``scale``.

    ``scale=None`` means :math:`1/\sqrt d`, as in ``scaled_dot_product_attention``, which computes
    it (the fast path). In the energy view :math:`s` is the inverse temperature :math:`\beta`.
    See chapter :doc:`Softmax attention </book/softmax>`.
    """
    _qkv(q, k, v, causal)
    s = _scale(scale, q.shape[-1])
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=s)
    return _finite_output(out, q=q, k=k, v=v)


def softmax_attention_weights(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    r"""The explicit (naive) path: returns the output and the weights :math:`P (..., N, M)`.

    :math:`P = \mathrm{softmax}(s\, Q K^\top)` with future keys masked when ``causal``.
    See chapter :doc:`Softmax attention </book/softmax>`.
    """
    _qkv(q, k, v, causal)
    scores = _scale(scale, q.shape[-1]) * (q @ k.transpose(-1, -2))
    if causal:
        n = q.shape[-2]
        future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, -torch.inf)
    weights = torch.softmax(scores, dim=-1)
    out = weights @ v
    return _finite_output(out, q=q, k=k, v=v), weights


def linear_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
    r"""Unnormalized linear attention :math:`o_t = \sum_{i (\le t)} (q_t^\top k_i)\, v_i`.

    Non-causal: :math:`Q (K^\top V)`, O(N d^2). Causal: chunks of 64 tokens, O(N (64 + d) d),
    exact; :func:`linear_attention_recurrent` is the token-by-token RNN form. See chapter *Unnormalized linear
    attention*.
    """
    _qkv(q, k, v, causal)
    out = q @ (k.transpose(-1, -2) @ v) if not causal else _chunked_linear(q, k, v, None, None)[0]
    return _finite_output(out, q=q, k=k, v=v)


def linear_attention_recurrent(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    r"""Causal linear attention as an RNN: :math:`S_t = S_{t-1} + v_t k_t^\top`, :math:`o_t = S_t q_t`.

    State :math:`S_t` is (..., d_v, d): memory does not grow with N. See chapter *Unnormalized
    linear attention*.
    """
    alpha = torch.ones(q.shape[:-1], dtype=q.dtype, device=q.device)
    return gated_linear_attention_recurrent(q, k, v, alpha)


def _gated_inputs(q: Tensor, k: Tensor, v: Tensor, alpha: Tensor) -> None:
    _qkv(q, k, v, causal=True)
    _checks.gates("alpha", alpha)
    if alpha.shape != q.shape[:-1]:
        raise ValueError(f"alpha must have shape {tuple(q.shape[:-1])} (one gate per token), "
                         f"got {tuple(alpha.shape)}")


def gated_linear_attention_recurrent(
    q: Tensor, k: Tensor, v: Tensor, alpha: Tensor, return_state: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Gated linear attention, token by token: :math:`S_t = \alpha_t S_{t-1} + v_t k_t^\top`,
    :math:`o_t = S_t q_t` (:math:`S_0 = 0`).

    q, k: (..., N, d), v: (..., N, d_v), alpha: (..., N) in (0, 1]. The reference the chunked
    form is tested against. See chapter :doc:`Gated linear attention </book/gated>`.
    """
    _gated_inputs(q, k, v, alpha)
    S = q.new_zeros(*q.shape[:-2], v.shape[-1], q.shape[-1])
    outs = []
    for t in range(q.shape[-2]):
        S = alpha[..., t, None, None] * S + v[..., t, :, None] * k[..., t, None, :]
        outs.append((S @ q[..., t, :, None]).squeeze(-1))
    out = _finite_output(torch.stack(outs, dim=-2), q=q, k=k, v=v)
    return (out, S) if return_state else out


def gated_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, alpha: Tensor, chunk_size: int | None = None,
    return_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Gated linear attention in chunked parallel form; equals :func:`gated_linear_attention_recurrent`.

    Inside a chunk, :math:`o_t = \sum_{i \le t} \gamma_{t,i} (q_t^\top k_i) v_i` with the decay
    matrix :math:`\gamma_{t,i} = \prod_{j=i+1}^t \alpha_j` (:func:`energylib.energies.gate_matrix`);
    across chunks the state :math:`S` carries the past, decayed by the chunk's cumulative gate.
    All decays are exponentials of non-positive log-sums, so long sequences stay finite.
    ``chunk_size=None`` uses 64 (or N if shorter). See chapter :doc:`Gated linear attention </book/gated>`.
    """
    _gated_inputs(q, k, v, alpha)
    out, S = _chunked_linear(q, k, v, torch.log(alpha), chunk_size)
    out = _finite_output(out, q=q, k=k, v=v)
    return (out, S) if return_state else out


def _chunked_linear(
    q: Tensor, k: Tensor, v: Tensor, log_alpha: Tensor | None, chunk_size: int | None
) -> tuple[Tensor, Tensor]:
    """Causal (gated) linear attention, all chunks at once, with no loop over tokens or chunks.

    q, k: (..., N, d), v: (..., N, d_v), log_alpha: (..., N) or None (no gates).
    """
    n, d, dv = q.shape[-2], q.shape[-1], v.shape[-1]
    c = min(n, 64) if chunk_size is None else chunk_size
    if isinstance(c, bool) or not isinstance(c, int) or c < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    pad = (-n) % c                                   # padded tokens: k = v = 0, alpha = 1
    lead = q.shape[:-2]
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    q, k, v = (x.reshape(*lead, -1, c, x.shape[-1]) for x in (q, k, v))
    scores = q @ k.transpose(-1, -2)                 # (..., n_chunks, c, c)
    if log_alpha is None:
        intra = scores.tril_() @ v
        U = v.transpose(-1, -2) @ k                  # (..., n_chunks, d_v, d): a chunk's own state
        total = U.cumsum(dim=-3)                     # state after each chunk
        before = total - U                           # state each chunk starts from
        S = total[..., -1, :, :]
        inter = q @ before.transpose(-1, -2)
    else:
        la = F.pad(log_alpha, (0, pad)) if pad else log_alpha
        B = torch.cumsum(la.reshape(*lead, -1, c), dim=-1)      # B_t, log-decay since chunk start
        # gamma_ti = exp(B_t - B_i) <= 1 for i <= t; above the diagonal the exponent is >= 0, so it
        # is clamped to 0 before exp (no inf, whose gradient would be NaN) and then zeroed
        intra = (scores * torch.exp((B.unsqueeze(-1) - B.unsqueeze(-2)).clamp(max=0)).tril()) @ v
        end = B[..., -1:]                                        # log-decay of the whole chunk
        U = v.transpose(-1, -2) @ (k * torch.exp(end - B).unsqueeze(-1))
        # across chunks the same structure again: S_before[c] = sum_{j<c} exp(E_{c-1} - E_j) U_j
        E = torch.cumsum(end.squeeze(-1), dim=-1)                # (..., n_chunks)
        diff = (E - end.squeeze(-1)).unsqueeze(-1) - E.unsqueeze(-2)  # E_{c-1} - E_j
        G = torch.exp(diff.tril(-1)).tril(-1)                    # strictly lower: j < c
        flat = U.flatten(-2)                                     # (..., n_chunks, d_v * d)
        before = (G @ flat).unflatten(-1, (dv, d))
        S = (torch.exp(E[..., -1:] - E).unsqueeze(-2) @ flat).squeeze(-2).unflatten(-1, (dv, d))
        inter = torch.exp(B).unsqueeze(-1) * (q @ before.transpose(-1, -2))
    out = (intra + inter).reshape(*lead, -1, dv)
    if pad:
        out = out[..., :n, :]
    return out, S


def multi_head_attention(
    x: Tensor, W_q: Tensor, W_k: Tensor, W_v: Tensor, W_o: Tensor,
    context: Tensor | None = None, causal: bool = False, scale: float | None = None,
) -> Tensor:
    r"""Multi-head attention as a sum over heads:
    :math:`\mathrm{MHA}(x)_t = \sum_h W_O^h \sum_i \mathrm{softmax}_i(s\, q^h_t \cdot k^h_i)\, v^h_i`.

    x: (..., N, d) queries' tokens, context: (..., M, d) (defaults to x).
    W_q, W_k: (H, d_h, d); W_v: (H, d_v, d); W_o: (H, d_out, d_v) acting on column vectors
    (:math:`q^h = W_Q^h x`). ``scale=None`` means :math:`1/\sqrt{d_h}`.
    See chapter :doc:`Multi-head attention </book/multihead>`.
    """
    ctx = x if context is None else context
    _checks.tensor("x", x, 2)
    _checks.tensor("context", ctx, 2)
    H = W_q.shape[0] if W_q.dim() == 3 else -1
    for name, W in (("W_q", W_q), ("W_k", W_k), ("W_v", W_v), ("W_o", W_o)):
        _checks.tensor(name, W, 3)
        if W.shape[0] != H or W.dim() != 3:
            raise ValueError(f"{name} must have shape (H={H}, rows, cols), got {tuple(W.shape)}")
    for name, W, inp, iname in (("W_q", W_q, x, "x"), ("W_k", W_k, ctx, "context"),
                                ("W_v", W_v, ctx, "context")):
        if W.shape[-1] != inp.shape[-1]:
            raise ValueError(f"{name} acts on d={W.shape[-1]} but {iname} has d={inp.shape[-1]}")
    if W_o.shape[-1] != W_v.shape[-2]:
        raise ValueError(f"W_o takes d_v={W_o.shape[-1]} but W_v gives d_v={W_v.shape[-2]}")
    q = torch.einsum("...nd,hed->...hne", x, W_q)
    k = torch.einsum("...md,hed->...hme", ctx, W_k)
    v = torch.einsum("...md,hed->...hme", ctx, W_v)
    heads = softmax_attention(q, k, v, causal=causal, scale=scale)  # (..., H, N, d_v)
    return torch.einsum("...hne,hfe->...nf", heads, W_o)


def second_order_attention(
    q: Tensor, k: Tensor, v: Tensor, gamma: float, causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    r"""Newton attention with a one-term Neumann series ("Att2nd1st"):

    .. math:: \Delta z_t = o_t + \gamma \Big[\sum_i p_{ti}\, v_i (v_i^\top o_t) - o_t (o_t^\top o_t)\Big]
              = o_t + \gamma \sum_i p_{ti} (v_i - o_t)(v_i - o_t)^\top o_t,

    with :math:`p_t` the softmax weights and :math:`o_t = \sum_i p_{ti} v_i`. Tied,
    :math:`\gamma = \beta/\eta^2`. Cost O(N^2 d): one extra score-like matrix and one extra value
    mix, never a d x d inverse. See chapter :doc:`Newton attention </book/newton>`.
    """
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma):
        raise ValueError(f"gamma must be a finite real number, got {gamma!r}")
    o, p = softmax_attention_weights(q, k, v, causal=causal, scale=scale)
    s = o @ v.transpose(-1, -2)                        # s_ti = v_i . o_t
    second = (p * s) @ v - o * (o * o).sum(-1, keepdim=True)
    return _finite_output(o + gamma * second, q=q, k=k, v=v)

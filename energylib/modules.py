"""``nn.Module`` attention layers built from the energy recipes, and a small GPT-style decoder.

Every attention module maps ``x (..., N, d_model) -> (..., N, d_model)`` (the attention output, no
residual) and shares one interface:

- ``forward(x)``: the attention output :math:`\\Delta` for the (layer-normed) tokens ``x``;
- ``step(z, velocity, norm)``: the residual increment of a pre-LN block and the velocity passed to
  the next layer (unchanged for memoryless variants, see :class:`MomentumMHA`);
- ``energy(x)``: the energy whose gradient step this layer takes when its weights are tied
  (our construction, chapter *Experiments*), one value per query, ``(..., N)``;
- ``tie_(weights)``: load :class:`energylib.recipes.TiedWeights`.

Variants by name (``ATTENTIONS``), each with the optimizer it runs on the energy:

- ``softmax``: :class:`MHA`, GD on the Helmholtz energy;
- ``linear``: :class:`LinearAttention`, GD on the sum of squared bilinear energies;
- ``gated``: :class:`GatedLinearAttention`, GD on the gated sum (data-dependent gate);
- ``momentum``: :class:`MomentumMHA`, heavy ball, velocity carried across layers;
- ``nesterov``: :class:`NesterovMHA`, Nesterov, attention at the look-ahead point;
- ``newton``: :class:`NewtonMHA`, Newton with a one-term Neumann series (MHA2nd1st).

Matrices follow ``nn.Linear``: ``q = W_Q x`` with ``W_Q = self.q.weight`` of shape ``(H d_h, d)``.
See chapters :doc:`Multi-head attention </book/multihead>`, :doc:`Momentum attention </book/momentum>`
and :doc:`Newton attention </book/newton>`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks
from .attention import gated_linear_attention, linear_attention, softmax_attention
from .energies import gate_matrix
from .optimizers import nesterov_schedule
from .recipes import TiedWeights

Norm = Callable[[Tensor], Tensor]


def _int(name: str, value: object, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _identity(x: Tensor) -> Tensor:
    return x


class Attention(nn.Module):
    r"""Shared projections of every variant: :math:`q^h = W_Q^h x`, :math:`k^h = W_K^h x`,
    :math:`v^h = W_V^h x` per head, heads mixed by :meth:`mix`, summed by :math:`W_O`.

    d_model: width d; n_heads: H (d_h = d / H); causal: mask future tokens; scale: the score
    factor s (the inverse temperature :math:`\beta`), ``None`` = :math:`1/\sqrt{d_h}`.
    """

    def __init__(self, d_model: int, n_heads: int = 1, causal: bool = True, scale: float | None = None):
        super().__init__()
        d_model, n_heads = _int("d_model", d_model), _int("n_heads", n_heads)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
        self.d_model, self.n_heads, self.d_head, self.causal = d_model, n_heads, d_model // n_heads, causal
        self.scale = 1.0 / math.sqrt(self.d_head) if scale is None else _checks.positive("scale", scale)
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model, bias=False) for _ in range(4))

    # --- the shared pieces -------------------------------------------------------------------
    def _check(self, name: str, x: Tensor) -> Tensor:
        _checks.tensor(name, x, 2)
        if x.shape[-1] != self.d_model:
            raise ValueError(f"{name} has d={x.shape[-1]} but the module has d_model={self.d_model}")
        if x.dtype != self.q.weight.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but the module's weights are {self.q.weight.dtype}")
        return x

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v per head: x (..., N, d) -> three (..., H, N, d_h)."""
        split = (*x.shape[:-1], self.n_heads, self.d_head)
        return tuple(p(x).view(split).transpose(-2, -3) for p in (self.q, self.k, self.v))

    def merge(self, heads: Tensor) -> Tensor:
        """(..., H, N, d_h) -> :math:`\\sum_h W_O^h \\mathrm{head}_h`, (..., N, d)."""
        out = heads.transpose(-2, -3)
        return self.o(out.reshape(*out.shape[:-2], self.d_model))

    def mix(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
        """The variant's head mixing: (..., H, N, d_h) -> (..., H, N, d_h)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., N, d) -> attention output (..., N, d), no residual."""
        self._check("x", x)
        return self.merge(self.mix(*self.heads(x), x))

    def attention_input(self, z: Tensor, velocity: Tensor | None, norm: Norm | None = None) -> Tensor:
        """The point the attention reads: ``norm(z)`` (the look-ahead point for Nesterov)."""
        return (norm or _identity)(z)

    def step(
        self, z: Tensor, velocity: Tensor | None = None, norm: Norm | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """One layer's residual increment and outgoing velocity: ``(MHA(norm(z)), velocity)``."""
        return self(self.attention_input(z, velocity, norm)), velocity

    def tie_(self, weights: TiedWeights) -> Attention:
        """Load tied weights (single head: W_Q (d_k, d), ...; multi-head: (H, d_h, d), W_O (H, d, d_h)).

        A single-head ``TiedWeights`` with ``W_O=None`` uses :math:`W_O = I`.
        """
        H, dh, d = self.n_heads, self.d_head, self.d_model
        mats = {"W_Q": weights.W_Q, "W_K": weights.W_K, "W_V": weights.W_V}
        with torch.no_grad():
            for (name, W), lin in zip(mats.items(), (self.q, self.k, self.v), strict=True):
                W = W.reshape(-1, W.shape[-1]) if W.dim() == 3 else W
                if W.shape != (H * dh, d):
                    raise ValueError(f"{name} must stack to ({H * dh}, {d}), got {tuple(W.shape)}")
                lin.weight.copy_(W)
            W_O = weights.W_O
            if W_O is None:
                W_O = torch.eye(d, dtype=self.o.weight.dtype)
            elif W_O.dim() == 3:
                W_O = W_O.permute(1, 0, 2).reshape(d, H * dh)
            if W_O.shape != (d, H * dh):
                raise ValueError(f"W_O must stack to ({d}, {H * dh}), got {tuple(W_O.shape)}")
            self.o.weight.copy_(W_O)
        return self

    def _mask(self, n: int, device: torch.device) -> Tensor:
        return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        """:math:`s\\, q_t \\cdot k_i`, future keys at ``-inf`` when causal: (..., H, N, N)."""
        s = self.scale * (q @ k.transpose(-1, -2))
        # in place: a fresh tensor, and neither product nor scaling needs it for backward
        return s.masked_fill_(self._mask(s.shape[-1], s.device), -torch.inf) if self.causal else s

    def energy(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        r"""Helmholtz energy (T = 1, bilinear local energies :math:`E_i = -s\, q_t\cdot k_i`) per query,
        summed over heads, with the context frozen (Jacobi view; default ``x.detach()``):
        :math:`F(x_t) = \sum_h -\log \sum_{i (\le t)} e^{s\, q^h_t \cdot k^h_i}`.
        x, context: (..., N, d) -> (..., N).

        Our construction for trained (untied) layers: :math:`\beta W := s W_Q^\top W_K`; one GD step
        on it moves along :math:`\sum_i p_i W_K^\top k_i`, which the layer's own values match only
        when tied. See chapter *Experiments: the reviewers' questions*.
        """
        q, k = self._query_key(x, context)
        return -torch.logsumexp(self.scores(q, k), dim=-1).sum(-2)

    def _query_key(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        self._check("x", x)
        context = x.detach() if context is None else self._check("context", context).detach()
        if context.shape != x.shape:
            raise ValueError(f"context must have the shape of x {tuple(x.shape)}, got {tuple(context.shape)}")
        return self.heads(x)[0], self.heads(context)[1]


class MHA(Attention):
    r"""Standard multi-head softmax attention
    :math:`\sum_h W_O^h \sum_i \mathrm{softmax}_i(s\, q^h_t\cdot k^h_i) v^h_i`
    on the SDPA fast path (:func:`energylib.attention.softmax_attention`).

    One GD step on the multi-head Helmholtz energy when tied (:func:`energylib.recipes.multi_head_recipe`).
    See chapter :doc:`Multi-head attention </book/multihead>`.
    """

    def mix(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
        return softmax_attention(q, k, v, causal=self.causal, scale=self.scale)


class LinearAttention(Attention):
    r"""Unnormalized linear attention :math:`\sum_{i (\le t)} (s\, q_t\cdot k_i) v_i` per head
    (:func:`energylib.attention.linear_attention`; chunked when causal).

    Energy :math:`F(x_t) = \sum_h \sum_{i (\le t)} -\tfrac{s}{2} (q^h_t\cdot k^h_i)^2`.
    See chapter :doc:`Unnormalized linear attention </book/linear>`.
    """

    def mix(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
        return linear_attention(self.scale * q, k, v, causal=self.causal)

    def _pair_weights(self, context: Tensor) -> Tensor | float:
        n = context.shape[-2]
        return (~self._mask(n, context.device)).to(context.dtype) if self.causal else 1.0

    def energy(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        q, k = self._query_key(x, context)
        E = -0.5 * self.scale * (q @ k.transpose(-1, -2)).pow(2)       # (..., H, N, N)
        return (self._pair_weights(x.detach() if context is None else context.detach()) * E).sum(-1).sum(-2)


class GatedLinearAttention(LinearAttention):
    r"""Gated linear attention with a data-dependent gate per head,
    :math:`\alpha^h_t = \sigma(w_h\cdot x_t + b_h)`: :math:`S_t = \alpha_t S_{t-1} + v_t k_t^\top`,
    :math:`o_t = s\, S_t q_t`, in chunked form (:func:`energylib.attention.gated_linear_attention`).

    Causal only (the gate is a forgetting factor on older tokens). ``gate_bias`` sets the initial
    gate :math:`\sigma(b)` (3.0: about 0.95). See chapter :doc:`Gated linear attention </book/gated>`.
    """

    def __init__(self, d_model: int, n_heads: int = 1, causal: bool = True, scale: float | None = None,
                 gate_bias: float = 3.0, chunk_size: int | None = None):
        if causal is not True:
            raise ValueError("causal must be True: gated linear attention is defined causally")
        super().__init__(d_model, n_heads, causal, scale)
        self.gate = nn.Linear(d_model, n_heads)
        self.chunk_size, self.gate_bias = chunk_size, float(gate_bias)
        with torch.no_grad():
            self.gate.bias.fill_(self.gate_bias)

    def gates(self, x: Tensor) -> Tensor:
        """:math:`\\alpha^h_t \\in (0, 1]`: x (..., N, d) -> (..., H, N)."""
        # floor at 1e-6: float32 sigmoid underflows to 0 for very negative inputs
        return torch.sigmoid(self.gate(x)).clamp_min(1e-6).transpose(-1, -2)

    def mix(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
        return gated_linear_attention(self.scale * q, k, v, self.gates(x), chunk_size=self.chunk_size)

    def _pair_weights(self, context: Tensor) -> Tensor:
        return gate_matrix(self.gates(context))


class _NewtonMix(torch.autograd.Function):
    r"""The MHA2nd1st head mix, query chunk by query chunk, with a hand-written backward that
    recomputes the weights: no N x N tensor is kept for backward, and causal chunks only read the
    keys they can see. Forward per chunk: :math:`P = \mathrm{softmax}(s QK^\top)`, :math:`O = PV`,
    :math:`A = OV^\top`, :math:`R = (P \circ A) V`, out :math:`= O + \gamma (R - O \circ \lVert O\rVert^2)`.

    q, k, v: (..., N, d_h); gamma: 0-dim tensor. Tested against autograd (``gradcheck``).
    """

    @staticmethod
    def _chunk(q, k, v, scale, causal, a, b):
        kk, vv = (k[..., :b, :], v[..., :b, :]) if causal else (k, v)
        S = scale * (q[..., a:b, :] @ kk.transpose(-1, -2))
        if causal:
            rows = torch.arange(a, b, device=q.device).unsqueeze(-1)
            S.masked_fill_(torch.arange(b, device=q.device) > rows, -torch.inf)
        P = torch.softmax(S, dim=-1)
        O = P @ vv
        A = O @ vv.transpose(-1, -2)
        B = P * A
        return kk, vv, P, O, A, B, B @ vv

    @staticmethod
    def forward(ctx, q, k, v, gamma, scale, causal, chunk):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # heads are transposed views
        n = q.shape[-2]
        outs = []
        for a in range(0, n, chunk):
            *_, O, _, _, R = _NewtonMix._chunk(q, k, v, scale, causal, a, min(n, a + chunk))
            outs.append(O + gamma * (R - O * (O * O).sum(-1, keepdim=True)))
        ctx.save_for_backward(q, k, v, gamma)
        ctx.scale, ctx.causal, ctx.chunk = scale, causal, chunk
        return torch.cat(outs, dim=-2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        q, k, v, gamma = ctx.saved_tensors
        grad = grad.contiguous()
        scale, causal, chunk, n = ctx.scale, ctx.causal, ctx.chunk, q.shape[-2]
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dgamma = torch.zeros((), dtype=torch.float64, device=q.device)
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            kk, vv, P, O, A, B, R = _NewtonMix._chunk(q, k, v, scale, causal, a, b)
            G = grad[..., a:b, :]
            norm2 = (O * O).sum(-1, keepdim=True)
            dgamma += (G * (R - O * norm2)).sum().double()
            dR = gamma * G
            dO = G - gamma * (G * norm2 + 2 * O * (G * O).sum(-1, keepdim=True))
            dB = dR @ vv.transpose(-1, -2)
            dA = dB * P
            dO = dO + dA @ vv
            dP = dB * A + dO @ vv.transpose(-1, -2)
            dS = P * (dP - (dP * P).sum(-1, keepdim=True))
            m = vv.shape[-2]
            dv[..., :m, :] += B.transpose(-1, -2) @ dR + dA.transpose(-1, -2) @ O + P.transpose(-1, -2) @ dO
            dq[..., a:b, :] = scale * (dS @ kk)
            dk[..., :m, :] += scale * (dS.transpose(-1, -2) @ q[..., a:b, :])
        return dq, dk, dv, dgamma.to(gamma.dtype), None, None, None


class NewtonMHA(Attention):
    r"""MHA2nd1st: Newton attention with a one-term Neumann series and a learnable :math:`\gamma`,
    per head

    .. math:: \Delta_t = o_t + \gamma \Big[\sum_i p_{ti} v_i (v_i^\top o_t) - o_t (o_t^\top o_t)\Big],
              \quad o_t = \sum_i p_{ti} v_i,

    O(N^2 d): one extra score-like matrix :math:`v_i\cdot o_t` and one extra value mix, never a
    d x d inverse. Tied, :math:`\gamma = \beta/\eta^2` (equals
    :func:`energylib.attention.second_order_attention`). ``gamma=0`` (the default start) is MHA.
    Computed in query chunks of ``chunk_size`` with a recomputing backward (:class:`_NewtonMix`).
    See chapter :doc:`Newton attention </book/newton>`.
    """

    def __init__(self, d_model: int, n_heads: int = 1, causal: bool = True, scale: float | None = None,
                 gamma: float = 0.0, chunk_size: int = 64):
        super().__init__(d_model, n_heads, causal, scale)
        self.chunk_size = _int("chunk_size", chunk_size)
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma):
            raise ValueError(f"gamma must be a finite real number, got {gamma!r}")
        self.gamma = nn.Parameter(torch.tensor(float(gamma)))

    def weights(self, q: Tensor, k: Tensor) -> Tensor:
        """Softmax weights :math:`p_{ti}`: (..., H, N, N)."""
        return torch.softmax(self.scores(q, k), dim=-1)

    def mix(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
        return _NewtonMix.apply(q, k, v, self.gamma.to(q.dtype), self.scale, self.causal, self.chunk_size)

    def mix_reference(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The same mix with plain autograd (the formula, all N x N tensors kept): the tests' reference."""
        p = self.weights(q, k)
        o = p @ v
        s = o @ v.transpose(-1, -2)                          # s_ti = v_i . o_t
        second = (p * s) @ v - o * (o * o).sum(-1, keepdim=True)
        return o + self.gamma.to(o.dtype) * second

    @torch.no_grad()
    def neumann_radius(self, x: Tensor) -> Tensor:
        r""":math:`\rho(\gamma \Sigma_p)` per head and query, (..., H, N): the spectral radius the
        one-term Neumann series needs below 1, with
        :math:`\Sigma_p = \sum_i p_{ti} (v_i - o_t)(v_i - o_t)^\top`
        (tied, :math:`\gamma\Sigma^v_p = \beta\Sigma_p`).
        """
        self._check("x", x)
        q, k, v = self.heads(x)
        p = self.weights(q, k)
        o = p @ v
        second = torch.einsum("...ti,...ia,...ib->...tab", p, v, v) - o.unsqueeze(-1) * o.unsqueeze(-2)
        lam = torch.linalg.eigvalsh(second.double()).abs().amax(-1)
        return (self.gamma.abs().double() * lam).to(x.dtype)


MuSchedule = Literal["constant", "nesterov"]


class MomentumMHA(MHA):
    r"""Heavy-ball attention (MomentumMHA): a velocity per token carried across layers,

    .. math:: m^{(\ell)} = \mu m^{(\ell-1)} + \mathrm{MHA}^{(\ell)}(\mathrm{LN}(z^{(\ell)})),\quad
              z^{(\ell+1/2)} = z^{(\ell)} + m^{(\ell)},\quad m^{(0)} = 0.

    No extra attention call. mu: constant in [0, 1); ``learn_mu`` makes it a parameter
    :math:`\mu = \sigma(\theta)` (then 0 < mu < 1); ``schedule="nesterov"`` uses
    :math:`\mu_\ell = (\ell-1)/(\ell+2)` for this module's ``layer`` (1-based, fixed).
    See chapter :doc:`Momentum attention </book/momentum>`.
    """

    nesterov = False

    def __init__(self, d_model: int, n_heads: int = 1, causal: bool = True, scale: float | None = None,
                 mu: float = 0.5, learn_mu: bool = False, schedule: MuSchedule = "constant", layer: int = 1):
        super().__init__(d_model, n_heads, causal, scale)
        self.layer = _int("layer", layer)
        if schedule not in ("constant", "nesterov"):
            raise ValueError(f"schedule must be 'constant' or 'nesterov', got {schedule!r}")
        if schedule == "nesterov":
            if learn_mu:
                raise ValueError("learn_mu must be False with schedule='nesterov' (the schedule fixes mu)")
            mu = nesterov_schedule(self.layer)
        mu = _checks.in_range("mu", mu, 0.0, 1.0, closed_low=True)
        if mu >= 1.0:
            raise ValueError(f"mu must be < 1, got {mu}")
        self.schedule = schedule
        if learn_mu:
            if mu == 0.0:
                raise ValueError("mu must be > 0 when learn_mu=True (mu = sigmoid(theta))")
            self.mu_logit = nn.Parameter(torch.tensor(math.log(mu / (1.0 - mu))))
        else:
            self.mu_logit = None
            self._mu = mu

    @property
    def mu(self) -> Tensor | float:
        """The momentum :math:`\\mu` of this layer (a tensor when learnable)."""
        return torch.sigmoid(self.mu_logit) if self.mu_logit is not None else self._mu

    def attention_input(self, z: Tensor, velocity: Tensor | None, norm: Norm | None = None) -> Tensor:
        if velocity is None or not self.nesterov:
            return (norm or _identity)(z)
        return (norm or _identity)(z + self.mu * velocity)

    def step(
        self, z: Tensor, velocity: Tensor | None = None, norm: Norm | None = None
    ) -> tuple[Tensor, Tensor]:
        """:math:`m = \\mu m_{prev} + \\mathrm{MHA}(\\mathrm{norm}(\\cdot))`; returns ``(m, m)``."""
        if velocity is not None:
            self._check("velocity", velocity)
            if velocity.shape != z.shape:
                raise ValueError(f"velocity must have the shape of z {tuple(z.shape)}, "
                                 f"got {tuple(velocity.shape)}")
        a = self(self.attention_input(z, velocity, norm))
        m = a if velocity is None else self.mu * velocity + a
        return m, m


class NesterovMHA(MomentumMHA):
    r"""Nesterov attention (NAG-MHA): queries, keys and values all read the look-ahead point,

    .. math:: m^{(\ell)} = \mu m^{(\ell-1)}
              + \mathrm{MHA}^{(\ell)}(\mathrm{LN}(z^{(\ell)} + \mu m^{(\ell-1)})),
              \quad z^{(\ell+1/2)} = z^{(\ell)} + m^{(\ell)}.

    Same arguments as :class:`MomentumMHA`. See chapter :doc:`Momentum attention </book/momentum>`.
    """

    nesterov = True


ATTENTIONS: dict[str, type[Attention]] = {
    "softmax": MHA, "linear": LinearAttention, "gated": GatedLinearAttention,
    "momentum": MomentumMHA, "nesterov": NesterovMHA, "newton": NewtonMHA,
}


def make_attention(name: str, d_model: int, n_heads: int, causal: bool = True, layer: int = 1,
                   **kwargs: object) -> Attention:
    """Build the attention variant ``name`` (a key of ``ATTENTIONS``). ``kwargs`` go to its class;
    ``mu``/``learn_mu``/``schedule`` are accepted (and ignored) by non-momentum variants."""
    if name not in ATTENTIONS:
        raise ValueError(f"attention must be one of {tuple(ATTENTIONS)}, got {name!r}")
    cls = ATTENTIONS[name]
    momentum_keys = ("mu", "learn_mu", "schedule")
    if issubclass(cls, MomentumMHA):
        kwargs = {**kwargs, "layer": layer}
        if layer == 1:  # m^(0) = 0: the first layer's mu multiplies zero, it would never learn
            kwargs["learn_mu"] = False
    else:
        kwargs = {k: v for k, v in kwargs.items() if k not in momentum_keys}
    return cls(d_model, n_heads, causal, **kwargs)


@dataclass(frozen=True)
class LayerTrace:
    """What one block saw, for diagnostics: z (..., N, d) the residual stream entering the layer,
    x the attention's input (LN(z), or LN(z + mu m) for Nesterov), increment the attention
    sublayer's residual increment, velocity the incoming velocity (None without momentum)."""

    z: Tensor
    x: Tensor
    increment: Tensor
    velocity: Tensor | None


class Block(nn.Module):
    """Pre-LN block: ``z += attn.step(z, m, LN1)``, then ``z += MLP(LN2(z))`` (GELU, ``mlp_ratio`` d).

    ``layer_norm=False`` / ``mlp=False`` drop the norms / the MLP sublayer (the bare optimizer).
    """

    def __init__(self, d_model: int, n_heads: int, attention: str = "softmax", causal: bool = True,
                 layer: int = 1, mlp_ratio: int = 4, layer_norm: bool = True, mlp: bool = True,
                 **attention_kwargs: object):
        super().__init__()
        self.attn = make_attention(attention, d_model, n_heads, causal, layer, **attention_kwargs)
        self.ln1 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.ln2 = nn.LayerNorm(d_model) if layer_norm and mlp else nn.Identity()
        hidden = _int("mlp_ratio", mlp_ratio) * d_model
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model)) \
            if mlp else None

    def forward(self, z: Tensor, velocity: Tensor | None = None,
                trace: list[LayerTrace] | None = None) -> tuple[Tensor, Tensor | None]:
        inc, new_velocity = self.attn.step(z, velocity, self.ln1)
        if trace is not None:
            x = self.attn.attention_input(z, velocity, self.ln1)
            trace.append(LayerTrace(z.detach(), x.detach(), inc.detach(),
                                    None if velocity is None else velocity.detach()))
        z = z + inc
        if self.mlp is not None:
            z = z + self.mlp(self.ln2(z))
        return z, new_velocity


class Decoder(nn.Module):
    """A stack of :class:`Block` s threading the velocity (:math:`m^{(0)} = 0`): z (..., N, d) -> z.

    attention: a key of ``ATTENTIONS``; the other arguments go to every block.
    """

    def __init__(self, d_model: int, n_layers: int, n_heads: int, attention: str = "softmax",
                 causal: bool = True, mlp_ratio: int = 4, layer_norm: bool = True, mlp: bool = True,
                 **attention_kwargs: object):
        super().__init__()
        self.attention = attention
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, attention, causal, layer, mlp_ratio, layer_norm, mlp, **attention_kwargs)
            for layer in range(1, _int("n_layers", n_layers) + 1))

    def forward(self, z: Tensor, trace: list[LayerTrace] | None = None) -> Tensor:
        velocity = None
        for block in self.blocks:
            z, velocity = block(z, velocity, trace)
        return z


class GPT(nn.Module):
    """Small GPT-style decoder: token + learned position embeddings, a :class:`Decoder`, a final
    LayerNorm and an LM head tied to the token embedding. The attention variant is one argument.

    idx: (B, N) int64 token ids, N <= max_len -> logits (B, N, vocab_size).
    """

    def __init__(self, vocab_size: int, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                 max_len: int = 128, attention: str = "softmax", causal: bool = True, mlp_ratio: int = 4,
                 **attention_kwargs: object):
        super().__init__()
        self.vocab_size, self.max_len = _int("vocab_size", vocab_size), _int("max_len", max_len)
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.decoder = Decoder(d_model, n_layers, n_heads, attention, causal, mlp_ratio, **attention_kwargs)
        self.ln_f = nn.LayerNorm(d_model)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/sqrt(2L)
            if name.endswith(("attn.o.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, GatedLinearAttention):  # children are initialised first: restore the gate bias
            with torch.no_grad():
                m.gate.bias.fill_(m.gate_bias)

    def features(self, idx: Tensor, trace: list[LayerTrace] | None = None) -> Tensor:
        """Final hidden states LN_f(z^(L+1)): (B, N) -> (B, N, d)."""
        if not isinstance(idx, Tensor):
            raise TypeError(f"idx must be a torch.Tensor, got {type(idx).__name__}")
        if idx.dtype not in (torch.int64, torch.int32) or idx.dim() != 2:
            raise ValueError(f"idx must be an integer tensor of shape (B, N), got {idx.dtype} "
                             f"{tuple(idx.shape)}")
        if idx.shape[1] > self.max_len or idx.shape[1] == 0:
            raise ValueError(f"idx has N={idx.shape[1]} tokens; this model takes 1..{self.max_len}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.vocab_size):
            raise ValueError(f"idx has token ids outside [0, {self.vocab_size})")
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.ln_f(self.decoder(self.tok(idx) + self.pos(pos), trace))

    def forward(self, idx: Tensor) -> Tensor:
        return F.linear(self.features(idx), self.tok.weight)

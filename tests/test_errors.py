"""Bad input raises a clear error naming the argument; nothing returns NaN silently."""

from __future__ import annotations

import pytest
import torch

from energylib import attention as at
from energylib import energies as en
from energylib import optimizers as op
from energylib import recipes as rc

z, a = torch.randn(3), torch.randn(4, 3)
a2 = torch.randn(4, 2)
E, p = torch.randn(4), torch.full((4,), 0.25)
q = k = v = torch.randn(5, 3)
alpha = torch.full((5,), 0.5)
nan3 = torch.tensor([0.0, float("nan"), 1.0])
W = torch.randn(3, 3)
P, Wh = torch.randn(2, 2, 3), torch.randn(2, 2, 3)
Wq = Wk = Wv = torch.randn(2, 2, 3)
Wo = torch.randn(2, 3, 2)


def F(x):
    return en.helmholtz_elastic(x, a, 1.0)


CASES = [
    # (call, exception, message fragment)
    (lambda: en.elastic(z, a2), ValueError, "d=3 but anchors has d=2"),
    (lambda: en.bilinear(nan3, a), ValueError, "z has non-finite"),
    (lambda: en.squared_bilinear(z, torch.randn(3)), ValueError, "anchors must have at least 2"),
    (lambda: en.elastic(z.numpy(), a), TypeError, "z must be a torch.Tensor"),
    (lambda: en.elastic(torch.ones(3, dtype=torch.long), a), TypeError, "floating-point"),
    (lambda: en.norm_conditioned_elastic(z, a2), ValueError, "anchors has d=2"),
    (lambda: en.helmholtz(E, 0.0), ValueError, "beta must be a finite number > 0"),
    (lambda: en.helmholtz(E, -1.0), ValueError, "beta"),
    (lambda: en.helmholtz(E, float("inf")), ValueError, "beta"),
    (lambda: en.helmholtz(E, "1"), TypeError, "beta must be a real number"),
    (lambda: en.helmholtz(torch.tensor([1.0, float("nan")]), 1.0), ValueError, "NaN"),
    (lambda: en.helmholtz(torch.tensor([float("inf")] * 2), 1.0), ValueError, "every state"),
    (lambda: en.helmholtz(torch.zeros(0), 1.0), ValueError, "non-empty"),
    (lambda: en.boltzmann(E, -2), ValueError, "beta"),
    (lambda: en.free_energy(p, E, 0), ValueError, "beta"),
    (lambda: en.free_energy(torch.full((4,), 0.3), E, 1.0), ValueError, "sum to 1"),
    (lambda: en.free_energy(torch.tensor([1.5, -0.5]), E[:2], 1.0), ValueError, "non-negative"),
    (lambda: en.free_energy(p, E[:3], 1.0), ValueError, "p has N=4 states but E has N=3"),
    (lambda: en.entropy(torch.tensor([0.5, 0.6])), ValueError, "sum to 1"),
    (lambda: en.kl_divergence(p, torch.tensor([0.5, 0.5, 0.0, 0.0])), ValueError, "infinite"),
    (lambda: en.total(E, torch.tensor([0.5, 0.0, 1.0, 1.0])), ValueError, r"gates must lie in \(0, 1\]"),
    (lambda: en.total(E, torch.tensor([0.5, 1.2, 1.0, 1.0])), ValueError, "gates"),
    (lambda: en.total(E, torch.ones(3)), ValueError, "gates has N=3"),
    (lambda: en.gate_matrix(torch.tensor([0.5, -0.1])), ValueError, "alpha must lie in"),
    (lambda: en.weighted_covariance(torch.tensor([0.2, 0.2]), a[:2]), ValueError, "sum to 1"),
    (lambda: en.helmholtz_elastic(z, a, 0), ValueError, "beta"),
    (lambda: en.helmholtz_elastic_grad(z, a2, 1.0), ValueError, "d=2"),
    (lambda: en.helmholtz_elastic_hessian(nan3, a, 1.0), ValueError, "non-finite"),
    (lambda: en.project_to_sphere(torch.zeros(2, 3), 1.0), ValueError, "zero row"),
    (lambda: en.project_to_sphere(z, 0.0), ValueError, "radius"),
    (lambda: at.softmax_attention(q, torch.randn(5, 2), v), ValueError, "q has d=3 but k has d=2"),
    (lambda: at.softmax_attention(q, k, torch.randn(4, 3)), ValueError, "k has N=5 tokens but v has N=4"),
    (lambda: at.softmax_attention(torch.randn(3), k, v), ValueError, "q must have shape"),
    (lambda: at.softmax_attention(q, k, v, scale=0.0), ValueError, "scale"),
    (lambda: at.softmax_attention(q.clone().fill_(float("nan")), k, v), ValueError, "q has non-finite"),
    (lambda: at.softmax_attention(torch.randn(2, 3), k, v, causal=True), ValueError, "causal"),
    (lambda: at.softmax_attention_weights(q, k, torch.full((5, 3), float("inf"))), ValueError, "v has"),
    (lambda: at.softmax_attention_weights(q, k[:, :2], v), ValueError, "d=2"),
    (lambda: at.linear_attention(q, k, v[:4]), ValueError, "N=4"),
    (lambda: at.linear_attention(q * 1e300, k * 1e300, v), ValueError, "overflowed"),
    (lambda: at.linear_attention_recurrent(q, k[:, :1], v), ValueError, "d=1"),
    (lambda: at.gated_linear_attention(q, k, v, torch.full((5,), 1.5)), ValueError, "alpha"),
    (lambda: at.gated_linear_attention(q, k, v, torch.zeros(5)), ValueError, "alpha"),
    (lambda: at.gated_linear_attention(q, k, v, alpha[:4]), ValueError, "one gate per token"),
    (lambda: at.gated_linear_attention(q, k, v, alpha, chunk_size=0), ValueError, "chunk_size"),
    (lambda: at.gated_linear_attention_recurrent(q, k, v, alpha.clone().fill_(float("nan"))),
     ValueError, "alpha has non-finite"),
    (lambda: at.multi_head_attention(q, Wq, Wk, Wv, torch.randn(2, 3, 5)), ValueError, "W_o takes"),
    (lambda: at.multi_head_attention(q, Wq, Wk[:1], Wv, Wo), ValueError, "W_k must have shape"),
    (lambda: at.multi_head_attention(q, torch.randn(2, 2, 4), Wk, Wv, Wo), ValueError, "W_q acts on d=4"),
    (lambda: at.second_order_attention(q, k, v, float("nan")), ValueError, "gamma"),
    (lambda: op.descend(F, z, "gd", eta=0.0), ValueError, "eta must be a finite number > 0"),
    (lambda: op.descend(F, z, "gd", eta=-0.1), ValueError, "eta"),
    (lambda: op.descend(F, z, "adam"), ValueError, "method must be one of"),
    (lambda: op.descend(F, z, "heavy_ball", mu=1.0), ValueError, "mu"),
    (lambda: op.descend(F, z, "heavy_ball", mu=-0.1), ValueError, "mu"),
    (lambda: op.descend(F, z, "gd", steps=-1), ValueError, "steps"),
    (lambda: op.descend(F, z, "newton", damping=-1.0), ValueError, "damping"),
    (lambda: op.descend(F, nan3, "gd"), ValueError, "z0 has non-finite"),
    (lambda: op.descend(lambda x: x, z, "gd"), ValueError, "energy must map"),
    (lambda: op.newton_step(lambda x: (x[..., 0] * 0), z, 1.0), ValueError, "singular"),
    (lambda: rc.softmax_recipe(torch.randn(4, 3), torch.randn(4, 2), W, 1.0, 0.1), ValueError,
     "W takes d_in=3 but h has d=2"),
    (lambda: rc.softmax_recipe(torch.randn(4, 2), torch.randn(4, 3), W, 1.0, 0.1), ValueError,
     "W gives d=3 but z has d=2"),
    (lambda: rc.softmax_recipe(q, q, W, 0.0, 0.1), ValueError, "beta"),
    (lambda: rc.softmax_recipe(q, q, W, 1.0, 0.0), ValueError, "eta"),
    (lambda: rc.softmax_recipe(q, q[:4], W, 1.0, 0.1, causal=True), ValueError, "causal"),
    (lambda: rc.linear_recipe(q, q, W, -1.0), ValueError, "eta"),
    (lambda: rc.gated_linear_recipe(q, q, W, 0.1, torch.full((5,), 2.0)), ValueError, "alpha"),
    (lambda: rc.multi_head_recipe(q, q, P, Wh, [1.0], 0.1), ValueError, "one value per head"),
    (lambda: rc.multi_head_recipe(q, q, P, Wh[:, :1], 1.0, 0.1), ValueError, "must agree"),
    (lambda: rc.multi_head_recipe(q, torch.randn(5, 2), P, Wh, 1.0, 0.1), ValueError, "Wh takes"),
    (lambda: rc.tie_softmax(W, 1.0, 1.0, W_Q=torch.randn(2, 3)), ValueError, "W_Q must be square"),
    (lambda: rc.tie_linear(W, 0), ValueError, "eta"),
]


@pytest.mark.parametrize("call, exc, match", CASES, ids=range(len(CASES)))
def test_bad_input_raises_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_every_public_function_has_a_bad_input_case():
    import inspect

    import energylib.attention
    import energylib.energies
    import energylib.optimizers
    import energylib.recipes

    source = inspect.getsource(inspect.getmodule(test_every_public_function_has_a_bad_input_case))
    exempt = {"weighted_mean", "gradient", "hessian", "hessian_vector", "gd_step", "heavy_ball_step",
              "nesterov_step", "neumann_step", "nesterov_schedule", "softmax_energy", "linear_energy",
              "gated_linear_energy", "multi_head_energy", "tie_multi_head"}
    missing = []
    for mod, alias in ((energylib.energies, "en"), (energylib.attention, "at"),
                       (energylib.optimizers, "op"), (energylib.recipes, "rc")):
        for name, fn in vars(mod).items():
            if (inspect.isfunction(fn) and fn.__module__ == mod.__name__ and not name.startswith("_")
                    and name not in exempt and f"{alias}.{name}(" not in source):
                missing.append(f"{mod.__name__}.{name}")
    assert not missing, f"no bad-input case for {missing}"

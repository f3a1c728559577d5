"""Experiments: the paper's tasks and the reviewers' questions, measured on small models.

One command line, ``python -m energylib.experiments {lis,lm,questions,suite}`` (:mod:`.cli`):

- ``lis``: longest increasing subsequence, classification from the final token (:mod:`.data`);
- ``lm``: byte-level language modelling on the standard library's source (offline default) or
  MiniPile (``--corpus minipile``, needs ``datasets`` and the hub);
- ``questions``: (a) does the layer's tied energy decrease, (b) the norm-condition gap,
  (c) :math:`\\rho(\\gamma\\Sigma_p)` of the Newton variant, (d) a learning-rate sweep of the softmax
  baseline (:mod:`.diagnostics`, :mod:`.report`).

Every run writes one JSON (config, git commit, curves, wall time, tokens/s); :mod:`.report`
aggregates them into CSV/PNG. See the chapters *Experiments*.
"""

from .report import (
    compare_to_baseline,
    curves,
    diagnostics_table,
    final_table,
    load_runs,
    lr_sweep_table,
    newton_rho_table,
)
from .train import TASK_DEFAULTS, VARIANTS, RunConfig, train_run

__all__ = ["RunConfig", "TASK_DEFAULTS", "VARIANTS", "compare_to_baseline", "curves", "diagnostics_table",
           "final_table", "load_runs", "lr_sweep_table", "newton_rho_table", "train_run"]

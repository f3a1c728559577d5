"""Experiments: data generators, the CLI end to end (--smoke), resumability, and DDP == one process."""

from __future__ import annotations

import bisect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from energylib.experiments import cli, data, report
from energylib.experiments.train import DistContext, RunConfig, train_run

ROOT = Path(__file__).resolve().parents[1]


def _lis_reference(seq: list[int]) -> int:
    """Patience sorting, O(N log N): an independent algorithm for the DP in data.lis_length."""
    tails: list[int] = []
    for x in seq:
        i = bisect.bisect_left(tails, x)
        tails[i:i + 1] = [x]
    return len(tails)


def test_lis_labels_match_patience_sorting():
    g = torch.Generator().manual_seed(0)
    idx, y = data.lis_batch(g, 300, min_len=1, max_len=20, n_values=8)
    for row, label in zip(idx.tolist(), y.tolist(), strict=True):
        assert label == _lis_reference([v for v in row if v != data.PAD])
    assert idx.shape == (300, 20) and (idx[:, -1] != data.PAD).all()
    assert data.lis_length(torch.tensor([[data.PAD, 3, 1, 2, 2, 5]])).item() == 3


def test_stdlib_corpus_is_deterministic_and_split():
    a, b = data.stdlib_corpus(50_000), data.stdlib_corpus(50_000, 0.1)
    assert a.sha256 == b.sha256 and len(a.train) == 45_000 and len(a.val) == 5_000
    assert int(a.train.max()) < 256 and a.train.dtype == torch.int64
    x, y = data.lm_eval_windows(a.val, 4, 16)
    torch.testing.assert_close(x[:, 1:], y[:, :-1])


def test_minipile_without_datasets_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(RuntimeError, match="needs the 'datasets' package"):
        data.load_corpus("minipile", 10_000)
    with pytest.raises(ValueError, match="corpus must be"):
        data.load_corpus("wiki", 10_000)


def test_bad_arguments_raise():
    with pytest.raises(SystemExit):
        cli.main(["lm", "--variants", "softmax,relu"])
    with pytest.raises(ValueError, match="batch_size=8 must be divisible by the world size 3"):
        train_run(RunConfig(task="lis", batch_size=8), None, DistContext(0, 3))
    with pytest.raises(ValueError, match="min_len"):
        data.lis_batch(torch.Generator(), 2, min_len=5, max_len=4)


def test_smoke_suite_runs_every_variant_and_resumes(tmp_path):
    assert cli.main(["suite", "--smoke", "--seeds", "0", "--quiet", "--out", str(tmp_path)]) == 0
    for task in ("lis", "lm"):
        runs = report.load_runs(tmp_path / task)
        assert sorted(r["config"]["variant"] for r in runs) == sorted(cli.VARIANTS)
        for r in runs:
            assert r["complete"] and r["git_commit"] and r["tokens_per_s"] > 0 and r["wall_time_s"] > 0
            assert r["eval"]["step"][0] == 0 and r["eval"]["step"][-1] == r["config"]["steps"]
            assert len(r["train_loss"]) == r["config"]["steps"]
            assert len(r["diagnostics"]) == r["config"]["n_layers"]
        assert (tmp_path / task / "summary.png").stat().st_size > 0
        assert "variant" in (tmp_path / task / "final.csv").read_text()
    newton = json.loads((tmp_path / "lm" / "newton_lr0.002_seed0.json").read_text())
    assert newton["newton_rho"] and newton["newton_rho"][-1]["layers"][0]["frac_below_1"] >= 0
    q = json.loads((tmp_path / "questions" / "summary.json").read_text())
    assert q["layer_diagnostics"] and q["newton_rho"] and len(q["lr_sweep"]) >= 4
    for name in ("layer_diagnostics.png", "newton_rho.png", "lr_sweep.png", "lr_sweep.csv"):
        assert (tmp_path / "questions" / name).exists()

    # resumable: complete runs with the same config are skipped, changed or broken ones re-run
    done = tmp_path / "lis" / "softmax_lr0.002_seed0.json"
    stamp = done.stat().st_mtime_ns
    broken = tmp_path / "lis" / "linear_lr0.002_seed0.json"
    broken.write_text(json.dumps({**json.loads(broken.read_text()), "complete": False}))
    cli.main(["lis", "--smoke", "--seeds", "0", "--variants", "softmax,linear", "--quiet",
              "--out", str(tmp_path / "lis")])
    assert done.stat().st_mtime_ns == stamp
    assert json.loads(broken.read_text())["complete"]
    cli.main(["lis", "--smoke", "--seeds", "0", "--variants", "softmax", "--steps", "3", "--quiet",
              "--out", str(tmp_path / "lis")])
    assert json.loads(done.read_text())["config"]["steps"] == 3


def test_ddp_two_ranks_equal_one_process(tmp_path):
    """torchrun, 2 CPU ranks (gloo): each rank trains on half of the same global batch."""
    args = ["lis", "--smoke", "--dtype", "float64", "--variants", "momentum", "--seeds", "0", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "energylib.experiments", *args, "--out", str(tmp_path / "ddp")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli.main([*args, "--out", str(tmp_path / "single")])
    ddp = json.loads((tmp_path / "ddp" / "momentum_lr0.002_seed0.json").read_text())
    one = json.loads((tmp_path / "single" / "momentum_lr0.002_seed0.json").read_text())
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    torch.testing.assert_close(torch.tensor(ddp["train_loss"]), torch.tensor(one["train_loss"]),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(ddp["eval"]["loss"]), torch.tensor(one["eval"]["loss"]),
                               rtol=0, atol=1e-6)
    assert ddp["eval"]["accuracy"] == one["eval"]["accuracy"]

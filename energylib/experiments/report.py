"""Summaries of the run JSON files: mean ± std over seeds as CSV, curves as PNG.

:func:`load_runs` reads a results folder; :func:`curves` / :func:`final_table` aggregate it (pure
compute, used by the book's chapters); :func:`write_task_summary` and :func:`write_questions`
write the CSV/PNG/JSON files committed under ``results/``.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

METRIC = {"lis": "accuracy", "lm": "loss"}


def load_runs(folder: str | Path) -> list[dict[str, Any]]:
    """All complete run records in ``folder`` (sorted by file name)."""
    runs = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(rec, dict) and rec.get("complete") and "config" in rec:
            runs.append(rec)
    return runs


def _groups(runs: list[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    out: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        out[(r["config"]["variant"], r["config"]["lr"])].append(r)
    return dict(out)


def curves(runs: list[dict[str, Any]], metric: str) -> dict[tuple[str, float], dict[str, np.ndarray]]:
    """Per (variant, lr): eval steps, mean and std over seeds of the eval ``metric``, n seeds."""
    out = {}
    for key, group in _groups(runs).items():
        steps = group[0]["eval"]["step"]
        vals = np.array([g["eval"][metric] for g in group if g["eval"]["step"] == steps])
        out[key] = {"step": np.array(steps), "mean": vals.mean(0), "std": vals.std(0), "n": len(vals)}
    return out


def final_table(runs: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One row per (variant, lr): final eval metric mean ± std over seeds, tokens/s, parameters."""
    rows = []
    for (variant, lr), group in _groups(runs).items():
        final = np.array([g["final"][metric] for g in group])
        rows.append({
            "variant": variant, "lr": lr, "n_seeds": len(group),
            f"final_{metric}_mean": final.mean(), f"final_{metric}_std": final.std(),
            "tokens_per_s": np.mean([g["tokens_per_s"] for g in group]),
            "wall_time_s": np.mean([g["wall_time_s"] for g in group]), "n_params": group[0]["n_params"],
            "seeds": ",".join(str(g["config"]["seed"]) for g in group)})
    return rows


def compare_to_baseline(table: list[dict[str, Any]], metric: str, baseline: str = "softmax",
                        lower_is_better: bool = False) -> list[dict[str, Any]]:
    r"""Each row of :func:`final_table` against ``baseline``: the difference of the final means and
    whether it exceeds twice its standard error, :math:`2\sqrt{s_a^2 + s_b^2}/\sqrt{n}` (a rough
    screen with few seeds, not a significance test)."""
    base = next(r for r in table if r["variant"] == baseline)
    bm, bs = base[f"final_{metric}_mean"], base[f"final_{metric}_std"]
    out = []
    for r in sorted(table, key=lambda r: r["variant"]):
        m, s = r[f"final_{metric}_mean"], r[f"final_{metric}_std"]
        diff = m - bm
        noise = 2 * float(np.hypot(s, bs)) / np.sqrt(r["n_seeds"])
        better = diff < 0 if lower_is_better else diff > 0
        size = " (beyond 2 s.e.)" if abs(diff) > noise else " (within noise)"
        verdict = "baseline" if r is base else ("better" if better else "worse") + size
        out.append({"variant": r["variant"], "lr": r["lr"], "mean": m, "std": s, "diff": diff,
                    "two_se": noise, "verdict": verdict})
    return out


def lr_sweep_table(lm_dir: str | Path, sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Question (d): final validation loss per (variant, lr) of the sweep plus the softmax, momentum
    and Nesterov runs of ``lm_dir`` at the shared learning rate."""
    shared = ("softmax", "momentum", "nesterov")
    baselines = [r for r in load_runs(lm_dir) if r["config"]["variant"] in shared]
    rows = final_table(load_runs(sweep_dir) + baselines, "loss")
    return sorted(rows, key=lambda r: (r["variant"], r["lr"]))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _plot_curves(path: Path, cv: dict, ylabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (variant, lr), c in sorted(cv.items()):
        label = f"{variant} (lr {lr:g}, n={c['n']})"
        ax.plot(c["step"], c["mean"], label=label)
        ax.fill_between(c["step"], c["mean"] - c["std"], c["mean"] + c["std"], alpha=0.2)
    ax.set(xlabel="training step", ylabel=ylabel, title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_task_summary(folder: str | Path, task: str) -> list[dict[str, Any]]:
    """``summary.csv`` (curves), ``final.csv`` (final mean ± std) and ``summary.png`` in ``folder``."""
    folder = Path(folder)
    runs = load_runs(folder)
    if not runs:
        return []
    metric = METRIC[task]
    cv = curves(runs, metric)
    rows = [{"variant": v, "lr": lr, "step": int(s), f"{metric}_mean": m, f"{metric}_std": sd,
             "n_seeds": c["n"]}
            for (v, lr), c in sorted(cv.items())
            for s, m, sd in zip(c["step"], c["mean"], c["std"], strict=True)]
    _write_csv(folder / "summary.csv", rows)
    table = final_table(runs, metric)
    _write_csv(folder / "final.csv", table)
    ylabel = "validation accuracy" if task == "lis" else "validation loss (nats/byte)"
    _plot_curves(folder / "summary.png", cv, ylabel, f"{task}: mean ± std over seeds")
    return table


def diagnostics_table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Questions (a), (b): per (variant, layer), each diagnostic's mean and std over seeds."""
    rows = []
    for (variant, lr), group in sorted(_groups(runs).items()):
        diags = [g["diagnostics"] for g in group if "diagnostics" in g]
        if not diags:
            continue
        for layer in range(len(diags[0])):
            row: dict[str, Any] = {"variant": variant, "lr": lr, "layer": layer + 1, "n_seeds": len(diags)}
            for key in diags[0][layer]:
                vals = np.array([d[layer][key] for d in diags])
                row[f"{key}_mean"], row[f"{key}_std"] = vals.mean(), vals.std()
            rows.append(row)
    return rows


def newton_rho_table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Question (c): per (seed, eval step, layer) the statistics of rho(gamma Sigma_p)."""
    rows = []
    for r in runs:
        for point in r.get("newton_rho", []):
            for i, layer in enumerate(point["layers"]):
                rows.append({"seed": r["config"]["seed"], "step": point["step"], "layer": i + 1, **layer})
    return rows


def write_questions(lm_dir: str | Path, sweep_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Questions (a)-(d) from the LM runs and the learning-rate sweep: CSVs, PNGs, summary.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lm_runs = load_runs(lm_dir)
    diag = diagnostics_table(lm_runs)
    _write_csv(out / "layer_diagnostics.csv", diag)
    rho = newton_rho_table([r for r in lm_runs if r["config"]["variant"] == "newton"])
    _write_csv(out / "newton_rho.csv", rho)
    sweep_rows = lr_sweep_table(lm_dir, sweep_dir)
    _write_csv(out / "lr_sweep.csv", sweep_rows)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    variants = sorted({r["variant"] for r in diag})
    for v in variants:
        rows = [r for r in diag if r["variant"] == v]
        layers = [r["layer"] for r in rows]
        axes[0].errorbar(layers, [r["energy_change_mean"] for r in rows],
                         [r["energy_change_std"] for r in rows], label=v, capsize=3, marker="o")
        axes[1].plot(layers, [r["key_norm_cv_mean"] for r in rows], marker="o", label=v)
        axes[2].plot(layers, [r["residual_to_update_ratio_mean"] for r in rows], marker="o", label=v)
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].set(xlabel="layer", ylabel="F after - F before (mean over tokens)",
                title="(a) energy change per layer")
    axes[1].set(xlabel="layer", ylabel="CV of key norms", title="(b) unequal |W_K x_i|")
    axes[2].set(xlabel="layer", ylabel="median |z| / |Attn|", title="(b) gap eta|z| per unit eta")
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "layer_diagnostics.png", dpi=110)
    plt.close(fig)

    if rho:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for layer in sorted({r["layer"] for r in rho}):
            steps = sorted({r["step"] for r in rho})
            for key, ax in (("max", axes[0]), ("gamma", axes[1])):
                vals = np.array([[r[key] for r in rho if r["layer"] == layer and r["step"] == s]
                                 for s in steps])
                ax.plot(steps, vals.mean(1), marker=".", label=f"layer {layer}")
        axes[0].axhline(1, color="k", lw=0.5, ls="--")
        axes[0].set(xlabel="training step", ylabel="max rho(gamma Sigma_p)", yscale="log",
                    title="(c) Neumann truncation valid while < 1")
        axes[1].set(xlabel="training step", ylabel="gamma", title="(c) learned gamma")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "newton_rho.png", dpi=110)
        plt.close(fig)

    if sweep_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        for v in sorted({r["variant"] for r in sweep_rows}):
            rows = [r for r in sweep_rows if r["variant"] == v]
            ax.errorbar([r["lr"] for r in rows], [r["final_loss_mean"] for r in rows],
                        [r["final_loss_std"] for r in rows], marker="o", capsize=3, label=v)
        ax.set(xscale="log", xlabel="peak learning rate", ylabel="final validation loss",
               title="(d) learning-rate sweep (mean ± std over seeds)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "lr_sweep.png", dpi=110)
        plt.close(fig)

    summary = {"layer_diagnostics": diag, "newton_rho": rho, "lr_sweep": sweep_rows,
               "lm_dir": str(lm_dir), "sweep_dir": str(sweep_dir)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary

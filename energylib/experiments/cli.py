"""The command line: ``python -m energylib.experiments {lis,lm,questions,suite} ...``.

Examples::

    python -m energylib.experiments lis --variants softmax,momentum --seeds 0,1,2 --out results/lis
    python -m energylib.experiments lm --smoke --out /tmp/lm
    torchrun --standalone --nproc_per_node 2 -m energylib.experiments lm --out results/lm   # DDP, gloo
    python -m energylib.experiments suite --out results     # lis, lm, questions with the defaults

Runs whose JSON exists, is complete and has the same config are skipped (resumable).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import data, report
from .train import (
    SMOKE,
    TASK_DEFAULTS,
    VARIANTS,
    DistContext,
    RunConfig,
    Sweep,
    init_distributed,
    train_run,
    write_json,
)

SWEEP_LRS = (1e-3, 4e-3, 8e-3)   # question (d): the softmax baseline's extra learning rates


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err


def _variants(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in VARIANTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"variants must be among {','.join(VARIANTS)}, got {text!r}")
    return names


def _common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--variants", type=_variants, default=list(VARIANTS), help="comma-separated")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="comma-separated, default 0,1,2")
    p.add_argument("--steps", type=int, help="training steps per run")
    p.add_argument("--lrs", type=_floats, help="comma-separated peak learning rates (a sweep)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--d-model", type=int)
    p.add_argument("--n-layers", type=int)
    p.add_argument("--n-heads", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--mu", type=float, help="momentum of the momentum/nesterov variants")
    p.add_argument("--learn-mu", action="store_true", help="make mu a parameter (layers >= 2)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--corpus", choices=("stdlib", "minipile"), default="stdlib", help="lm: the text")
    p.add_argument("--smoke", action="store_true", help="tiny config: every variant in seconds")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, help="torch threads per process (1 is fastest on a busy machine)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"output folder (default {out}; with --smoke, a folder under the temp dir, so a "
                        f"smoke run never replaces committed results)")
    p.set_defaults(default_out=out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m energylib.experiments", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    _common(sub.add_parser("lis", help="longest increasing subsequence (classification)"), "results/lis")
    _common(sub.add_parser("lm", help="byte-level language modelling"), "results/lm")
    q = sub.add_parser("questions", help="reviewers' questions (a)-(d) from the lm runs + an LR sweep")
    _common(q, "results/questions")
    q.add_argument("--lm-dir", type=Path, default=Path("results/lm"))
    q.set_defaults(variants=["softmax"])
    s = sub.add_parser("suite", help="lis, lm and questions with the defaults into --out")
    _common(s, "results")
    return p


def base_config(task: str, args: argparse.Namespace) -> RunConfig:
    kw: dict[str, Any] = dict(TASK_DEFAULTS[task])
    if args.smoke:
        kw.update(SMOKE)
    for name in ("steps", "batch_size", "d_model", "n_layers", "n_heads", "eval_every", "mu"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    kw.update(learn_mu=args.learn_mu, dtype=args.dtype, corpus=args.corpus)
    return RunConfig(**kw)


def run_sweep(sweep: Sweep, ctx: DistContext, quiet: bool) -> list[Path]:
    """Train every missing run of ``sweep``; returns the JSON paths."""
    todo = [c for c in sweep.configs() if not ctx.agree(ctx.main and sweep.is_done(c))]
    corpus = None
    if todo and sweep.base.task == "lm":
        corpus = data.load_corpus(sweep.base.corpus, sweep.base.corpus_bytes)
    skipped = len(sweep.configs()) - len(todo)
    bar = tqdm(total=sum(c.steps for c in todo), disable=quiet or not ctx.main, unit="step",
               desc=f"{sweep.base.task}: {len(todo)} runs ({skipped} done)")
    for cfg in todo:
        bar.set_postfix_str(cfg.name())
        record = train_run(cfg, corpus, ctx, bar)
        if ctx.main:
            write_json(sweep.path(cfg), record)
        ctx.barrier()
    bar.close()
    return [sweep.path(c) for c in sweep.configs()]


def run_task(task: str, args: argparse.Namespace, ctx: DistContext, out: Path) -> None:
    base = base_config(task, args)
    run_sweep(Sweep(base, args.variants, args.seeds, out, list(args.lrs or [])), ctx, args.quiet)
    if ctx.main:
        report.write_task_summary(out, task)


def run_questions(args: argparse.Namespace, ctx: DistContext, out: Path, lm_dir: Path) -> None:
    base = base_config("lm", args)
    lrs = list(args.lrs or SWEEP_LRS)
    run_sweep(Sweep(base, args.variants, args.seeds, out / "lr_sweep", lrs), ctx, args.quiet)
    if ctx.main:
        report.write_task_summary(out / "lr_sweep", "lm")
        report.write_questions(lm_dir, out / "lr_sweep", out)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.out is None:
        root = Path(tempfile.gettempdir()) / "energylib-smoke" if args.smoke else Path(".")
        args.out = root / args.default_out
    ctx = init_distributed()
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.command in ("lis", "lm"):
        run_task(args.command, args, ctx, args.out)
    elif args.command == "questions":
        run_questions(args, ctx, args.out, args.lm_dir)
    else:
        variants = args.variants
        run_task("lis", args, ctx, args.out / "lis")
        run_task("lm", args, ctx, args.out / "lm")
        args = replace_ns(args, variants=["softmax"] if variants == list(VARIANTS) else variants)
        run_questions(args, ctx, args.out / "questions", args.out / "lm")
    return 0


def replace_ns(ns: argparse.Namespace, **kw: Any) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(ns), **kw})


if __name__ == "__main__":
    sys.exit(main())

"""Training runs: one (task, variant, learning rate, seed) per JSON file, resumable, DDP-aware.

A run is :func:`train_run` on a :class:`RunConfig`. Under ``torchrun`` (``WORLD_SIZE > 1``) every
rank builds the same global batch from the seed and trains on its slice; DistributedDataParallel
averages the gradients, so the updates (and the logged losses, averaged over ranks) equal the
single-process run on the same global batch.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules import GPT
from . import data
from .diagnostics import layer_diagnostics, newton_radius

TASKS = ("lis", "lm")
VARIANTS = ("softmax", "linear", "gated", "momentum", "nesterov", "newton")
LIS_CLASSES = 33  # LIS length 1..32 (0 unused)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run (stored in its JSON; a changed config re-runs)."""

    task: str = "lm"
    variant: str = "softmax"
    seed: int = 0
    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    warmup: int = 30
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    d_model: int = 64
    n_layers: int = 3
    n_heads: int = 4
    mlp_ratio: int = 4
    mu: float = 0.5
    learn_mu: bool = False
    eval_every: int = 50
    eval_size: int = 64
    seq_len: int = 128          # lm
    corpus: str = "stdlib"      # lm
    corpus_bytes: int = 2_000_000
    lis_min_len: int = 16       # lis
    lis_max_len: int = 32
    dtype: str = "float32"

    def name(self) -> str:
        return f"{self.variant}_lr{self.lr:g}_seed{self.seed}"


TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "lis": dict(task="lis", steps=500, batch_size=64, lr=2e-3, warmup=50, d_model=64, n_layers=3,
                n_heads=4, eval_every=50, eval_size=512),
    "lm": dict(task="lm", steps=400, batch_size=16, lr=2e-3, warmup=40, d_model=64, n_layers=3,
               n_heads=4, eval_every=50, eval_size=64, seq_len=128),
}
SMOKE: dict[str, Any] = dict(steps=8, batch_size=8, warmup=2, d_model=16, n_layers=2, n_heads=2,
                             eval_every=4, eval_size=16, seq_len=32, corpus_bytes=100_000)


def git_commit() -> str:
    """``git rev-parse HEAD`` of the checkout this package lives in, ``-dirty`` appended when the
    package's own files have uncommitted changes; ``"unknown"`` outside git."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", str(here.parent)], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0 or not head.stdout.strip():
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


@dataclass
class DistContext:
    """rank / world size; ``world == 1`` without torchrun."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return t.item() / self.world

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision, broadcast to every rank."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)])
        dist.broadcast(t, 0)
        return bool(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed() -> DistContext:
    """Join the process group when launched by ``torchrun`` (gloo: CPU); one thread per rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return DistContext(dist.get_rank(), dist.get_world_size())


class LISModel(nn.Module):
    """The GPT backbone (causal) with a linear readout of the final token: LIS length classes."""

    def __init__(self, cfg: RunConfig):
        super().__init__()
        self.gpt = GPT(data.LIS_VOCAB, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.lis_max_len,
                       attention=cfg.variant, mlp_ratio=cfg.mlp_ratio, mu=cfg.mu, learn_mu=cfg.learn_mu)
        self.head = nn.Linear(cfg.d_model, LIS_CLASSES)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(self.gpt.features(idx)[:, -1])


def build_model(cfg: RunConfig) -> nn.Module:
    """The seeded model; initial weights are drawn in float32 whatever the process default dtype,
    so a float64 run starts from the same weights everywhere."""
    torch.manual_seed(cfg.seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        if cfg.task == "lis":
            model: nn.Module = LISModel(cfg)
        else:
            model = GPT(256, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.seq_len, attention=cfg.variant,
                        mlp_ratio=cfg.mlp_ratio, mu=cfg.mu, learn_mu=cfg.learn_mu)
    finally:
        torch.set_default_dtype(previous)
    return model.to(getattr(torch, cfg.dtype))


def backbone(model: nn.Module) -> GPT:
    return model.gpt if isinstance(model, LISModel) else model


class Task:
    """Batches and losses of one task; the training batch of a step depends on (seed, step) only."""

    def __init__(self, cfg: RunConfig, corpus: data.Corpus | None):
        self.cfg = cfg
        self.corpus = corpus
        g = torch.Generator().manual_seed(1_000_003)  # the evaluation set is the same in every run
        if cfg.task == "lis":
            self.eval_x, self.eval_y = data.lis_batch(g, cfg.eval_size, cfg.lis_min_len, cfg.lis_max_len)
        else:
            assert corpus is not None
            self.eval_x, self.eval_y = data.lm_eval_windows(corpus.val, cfg.eval_size, cfg.seq_len)

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_033 + step)
        if self.cfg.task == "lis":
            return data.lis_batch(g, self.cfg.batch_size, self.cfg.lis_min_len, self.cfg.lis_max_len)
        assert self.corpus is not None
        return data.lm_batch(self.corpus.train, g, self.cfg.batch_size, self.cfg.seq_len)

    def tokens_per_batch(self) -> int:
        return self.cfg.batch_size * (self.cfg.lis_max_len if self.cfg.task == "lis" else self.cfg.seq_len)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mean cross-entropy and the number of correct predictions."""
        logits = model(x)
        if self.cfg.task == "lm":
            logits, y = logits.flatten(0, 1), y.flatten()
        return F.cross_entropy(logits, y), (logits.argmax(-1) == y).sum()


def _shard(x: Tensor, ctx: DistContext) -> Tensor:
    n = x.shape[0] // ctx.world
    return x[ctx.rank * n:(ctx.rank + 1) * n]


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, ctx: DistContext, chunk: int = 64) -> dict[str, float]:
    """Loss and accuracy on the fixed evaluation set, sharded over ranks and summed."""
    model.eval()
    x, y = _shard(task.eval_x, ctx), _shard(task.eval_y, ctx)
    loss_sum = correct = count = 0.0
    for i in range(0, x.shape[0], chunk):
        xb, yb = x[i:i + chunk], y[i:i + chunk]
        loss, right = task.loss(model, xb, yb)
        n = yb.numel()
        loss_sum, correct, count = loss_sum + loss.item() * n, correct + right.item(), count + n
    model.train()
    loss_sum, correct, count = ctx.sum([loss_sum, correct, count])
    return {"loss": loss_sum / count, "accuracy": correct / count}


def lr_at(cfg: RunConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% of ``lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))


def _optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))


def train_run(cfg: RunConfig, corpus: data.Corpus | None, ctx: DistContext | None = None,
              progress: Any = None) -> dict[str, Any]:
    """Train one run and return its record (what the JSON file holds)."""
    ctx = ctx or DistContext()
    if cfg.batch_size % ctx.world:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the world size {ctx.world}")
    task = Task(cfg, corpus)
    model = build_model(cfg)
    net = model
    if ctx.world > 1:
        net = nn.parallel.DistributedDataParallel(model)
    opt = _optimizer(model, cfg)
    record: dict[str, Any] = {
        "config": asdict(cfg), "complete": False, "git_commit": git_commit(),
        "python": platform.python_version(), "torch": torch.__version__, "world_size": ctx.world,
        "threads": torch.get_num_threads(),
        "corpus_sha256": corpus.sha256 if corpus is not None else None,
        "n_params": sum(p.numel() for p in model.parameters()),
        "train_loss": [], "eval": {"step": [], "loss": [], "accuracy": []}, "newton_rho": [],
    }
    start = time.perf_counter()
    train_time = 0.0

    def eval_point(step: int) -> None:
        ev = evaluate(task, model, ctx)
        for key in ("loss", "accuracy"):
            record["eval"][key].append(ev[key])
        record["eval"]["step"].append(step)
        if cfg.variant == "newton" and ctx.main:
            record["newton_rho"].append({"step": step, **newton_radius(backbone(model), task.eval_x[:8])})

    eval_point(0)
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        x, y = task.batch(step)
        loss, _ = task.loss(net, _shard(x, ctx), _shard(y, ctx))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{cfg.name()}: the training loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        train_time += time.perf_counter() - t0
        record["train_loss"].append(ctx.mean(loss.item()))
        if progress is not None:
            progress.update(1)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            eval_point(step + 1)
    if ctx.main:
        record["diagnostics"] = layer_diagnostics(backbone(model), task.eval_x[:16])
    record.update(
        complete=True, wall_time_s=time.perf_counter() - start, train_time_s=train_time,
        tokens_per_s=task.tokens_per_batch() * cfg.steps / max(train_time, 1e-9),
        final={"loss": record["eval"]["loss"][-1], "accuracy": record["eval"]["accuracy"][-1]},
        mu=_mus(backbone(model)),
    )
    return record


def _mus(gpt: GPT) -> list[float] | None:
    mus = [getattr(b.attn, "mu", None) for b in gpt.decoder.blocks]
    if all(m is None for m in mus):
        return None
    return [float(m) for m in mus]


@dataclass
class Sweep:
    """A grid of runs of one task written to ``out``; complete runs with the same config are skipped."""

    base: RunConfig
    variants: list[str]
    seeds: list[int]
    out: Path
    lrs: list[float] = field(default_factory=list)

    def configs(self) -> list[RunConfig]:
        lrs = self.lrs or [self.base.lr]
        return [replace(self.base, variant=v, seed=s, lr=lr) for v in self.variants for lr in lrs
                for s in self.seeds]

    def path(self, cfg: RunConfig) -> Path:
        return self.out / f"{cfg.name()}.json"

    def is_done(self, cfg: RunConfig) -> bool:
        try:
            rec = json.loads(self.path(cfg).read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return bool(rec.get("complete")) and rec.get("config") == asdict(cfg)


def write_json(path: Path, obj: Any) -> None:
    """Atomic write: a crash never leaves a half-written (and so 'complete'-looking) file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)

"""Benchmark of the attention modules: forward+backward time relative to standard MHA, and tokens/s
of a GPT training step per variant.

Run: ``.venv/bin/python benchmarks/modules.py [--quick]``. One table: each row is the median time
(float32, CPU, this machine's threads) of ``step(z, velocity)`` + backward for a variant at
(B, N, d), divided by the same for :class:`energylib.modules.MHA` measured in the same run
(interleaved repeats, so machine load hits both alike). Targets: momentum/Nesterov <= 1.05x MHA,
NewtonMHA <= 2.2x MHA. ``softmax-explicit`` (weights materialised, no SDPA) shows what any layer
that needs the weights matrix pays. Then tokens/s of one AdamW step of the experiments' GPT per variant.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from energylib import modules as md

TARGETS = {"momentum": "<= 1.05", "nesterov": "<= 1.05", "newton": "<= 2.2"}


def interleaved_ms(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median ms of each function, the functions timed in turn within every repeat."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


class ExplicitMHA(md.MHA):
    """MHA with the weights P materialised (no SDPA): the fair reference for NewtonMHA's extra work."""

    def mix(self, q, k, v, x):
        return torch.softmax(self.scores(q, k), dim=-1) @ v


def module_rows(B: int, N: int, d: int, heads: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    z = torch.randn(B, N, d)
    velocity = torch.randn(B, N, d)
    fns = {}
    for name in [*md.ATTENTIONS, "softmax-explicit"]:
        explicit = name == "softmax-explicit"
        m = ExplicitMHA(d, heads) if explicit else md.make_attention(name, d, heads, layer=2)
        norm = torch.nn.LayerNorm(d)

        def run(m=m, norm=norm) -> None:
            x = z.detach().requires_grad_(True)
            inc, _ = m.step(x, velocity, norm)
            inc.sum().backward()

        fns[name] = run
    return interleaved_ms(fns, repeats)


def gpt_tokens_per_s(steps: int, B: int, N: int) -> dict[str, float]:
    out = {}
    idx = torch.randint(0, 256, (B, N + 1), generator=torch.Generator().manual_seed(0))
    fns = {}
    for name in md.ATTENTIONS:
        torch.manual_seed(0)
        gpt = md.GPT(256, 64, 3, 4, N, attention=name)
        opt = torch.optim.AdamW(gpt.parameters(), lr=1e-3)

        def step(gpt=gpt, opt=opt) -> None:
            loss = F.cross_entropy(gpt(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()

        fns[name] = step
    for name, ms in interleaved_ms(fns, steps).items():
        out[name] = B * N / (ms / 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke run)")
    args = parser.parse_args()
    shapes = [(2, 128, 64), (1, 256, 64)] if args.quick else [(8, 256, 128), (4, 1024, 128)]
    repeats = 3 if args.quick else 10
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, causal, 4 heads; "
          f"median ms of step + backward")
    print(f"{'variant':16} {'(B, N, d)':16} {'ms':>9} {'MHA ms':>9} {'ratio':>7}  target")
    for B, N, d in shapes:
        ms = module_rows(B, N, d, 4, repeats)
        for name, t in ms.items():
            print(f"{name:16} {str((B, N, d)):16} {t:9.2f} {ms['softmax']:9.2f} {t / ms['softmax']:7.3f}  "
                  f"{TARGETS.get(name, '-')}")
    B, N = (4, 64) if args.quick else (16, 128)
    tps = gpt_tokens_per_s(3 if args.quick else 10, B, N)
    print(f"\nGPT training step (d=64, 3 layers, 4 heads, B={B}, N={N}, AdamW): tokens/s")
    print(f"{'variant':10} {'tokens/s':>10} {'vs MHA':>7}")
    for name, v in tps.items():
        print(f"{name:10} {v:10.0f} {v / tps['softmax']:7.3f}")


if __name__ == "__main__":
    main()

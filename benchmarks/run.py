"""Benchmarks: energylib's attention forms against reference implementations, as ratios.

Run: ``make bench`` (or ``.venv/bin/python benchmarks/run.py [--quick]``). Prints one table; each
row times a candidate and its reference in the same run (median of repeats, float32, CPU, the
machine's thread count) and reports candidate / reference. Targets: softmax fast path <= 1.10x
SDPA; chunked gated-linear >= 10x faster than the token loop at N = 2048. Shapes are
(B, H, N, d) with H = 4, d = 64 and B = 8 unless a row says otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from energylib import attention as at


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def rows(quick: bool) -> list[tuple[str, str, float, float, str]]:
    g = torch.Generator().manual_seed(0)
    B, H, d = (2, 2, 64) if quick else (8, 4, 64)
    rep = 5 if quick else 20
    out = []

    def qkv(n: int) -> tuple[torch.Tensor, ...]:
        return tuple(torch.randn(B, H, n, d, generator=g) for _ in range(3))

    q, k, v = qkv(512)
    # interleaved rounds, so drift in the machine's speed hits candidate and reference alike
    sdpa, fast, naive = [], [], []
    for _ in range(3):
        sdpa.append(median_ms(lambda: F.scaled_dot_product_attention(q, k, v), rep))
        fast.append(median_ms(lambda: at.softmax_attention(q, k, v), rep))
        naive.append(median_ms(lambda: at.softmax_attention_weights(q, k, v), rep))
    sdpa_ms, fast_ms, naive_ms = (statistics.median(x) for x in (sdpa, fast, naive))
    out.append(("softmax fast path", "SDPA", fast_ms, sdpa_ms, "<= 1.10"))
    out.append(("softmax naive (weights)", "SDPA", naive_ms, sdpa_ms, "-"))

    for n, batch in ((512, B), (2048, B), (2048, 1)):
        x = tuple(t[:batch] for t in qkv(n))
        args = (*x, torch.rand(batch, H, n, generator=g) * 0.5 + 0.5)
        loop = median_ms(lambda a=args: at.gated_linear_attention_recurrent(*a), 3 if quick else 5, warmup=1)
        chunked = median_ms(lambda a=args: at.gated_linear_attention(*a), rep)
        out.append((f"gated chunked N={n} B={batch}", "token loop", chunked, loop,
                    "<= 0.10" if n == 2048 else "-"))

    q, k, v = qkv(2048)
    lin = median_ms(lambda: at.linear_attention(q, k, v, causal=True), rep)
    sdpa_c = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), rep)
    out.append(("linear causal N=2048", "SDPA causal", lin, sdpa_c, "-"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke run)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, median ms")
    print(f"{'candidate':30} {'reference':14} {'cand ms':>9} {'ref ms':>9} {'ratio':>7}  target")
    for name, ref, c, r, target in rows(args.quick):
        print(f"{name:30} {ref:14} {c:9.2f} {r:9.2f} {c / r:7.3f}  {target}")


if __name__ == "__main__":
    main()

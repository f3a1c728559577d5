"""Benchmark the book's explorers: frames, bytes, render time, live-callback latency.

Run: ``.venv/bin/python benchmarks/explorers.py [--repeats 20] [name ...]``. One row per explorer:

- frames: distinct PNG frames embedded (grid points in brackets);
- png KB: frame bytes; state KB: the widget state a page embeds (base64 frames + models);
- render s: wall / CPU seconds to render every frame (torch on one thread, as in the book);
- live compute ms: median over ``--repeats`` random continuous parameter values of the pure compute
  a live-kernel callback runs (``explorer.compute``; wall and CPU time), and of the whole update
  (compute + draw + PNG, wall).

Budgets (``energylib.frames``): state <= 400 KB, render <= 5 s CPU, live compute <= 50 ms CPU
(median). CPU time, because other jobs on a shared 2-core machine inflate wall time. A row that
misses a budget is flagged and the exit status is 1.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import matplotlib

from energylib import explorers, frames


def random_values(ex: frames.Explorer, rng: random.Random) -> dict:
    values = {}
    for p in ex.params:
        if p.is_choice:
            values[p.name] = rng.choice(p.values)
        elif p.integer:
            values[p.name] = rng.randint(int(p.low), int(p.high))
        elif p.log_scale:
            values[p.name] = p.low * (p.high / p.low) ** rng.random()
        else:
            values[p.name] = rng.uniform(p.low, p.high)
    return values


def live_latency(ex: frames.Explorer, repeats: int, seed: int = 0) -> tuple[float, float, float]:
    """Median seconds of compute only (wall, CPU) and of compute + draw + PNG (wall), at random
    off-grid values. CPU time is what the budget checks: other jobs on a shared machine inflate
    wall time, not the work done."""
    rng = random.Random(seed)
    compute, cpu, full = [], [], []
    ex.png(**ex.defaults)  # warm caches (fonts, torch kernels)
    with matplotlib.rc_context(frames.FRAME_RC), frames.single_thread():
        for _ in range(repeats):
            v = random_values(ex, rng)
            t0, c0 = time.perf_counter(), time.process_time()
            data = ex.compute(**v)
            t1, c1 = time.perf_counter(), time.process_time()
            frames.figure_png(ex.draw(data), ex.colors)
            t2 = time.perf_counter()
            compute.append(t1 - t0)
            cpu.append(c1 - c0)
            full.append(t2 - t0)
    return statistics.median(compute), statistics.median(cpu), statistics.median(full)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=sorted(explorers.EXPLORERS),
                        help=f"explorers to run (default: all of {sorted(explorers.EXPLORERS)})")
    parser.add_argument("--repeats", type=int, default=20, help="live-callback samples")
    args = parser.parse_args()

    header = (f"{'explorer':<12} {'frames':>12} {'png KB':>7} {'state KB':>9} "
              f"{'render s (wall/cpu)':>20} {'live compute ms (wall/cpu)':>27} "
              f"{'live update ms':>15}  budget")
    print(header)
    print("-" * len(header))
    ok = True
    for name in args.names:
        ex = explorers.EXPLORERS[name]()
        f = ex.frames
        state = frames.embedded_bytes(ex.widget())
        compute, cpu, full = live_latency(ex, args.repeats)
        misses = [label for label, bad in (
            ("state", state > frames.STATE_BUDGET_BYTES),
            ("render", f.cpu_seconds > frames.RENDER_BUDGET_S),
            ("live", cpu > frames.LIVE_COMPUTE_BUDGET_S),
        ) if bad]
        ok &= not misses
        grid = "x".join(map(str, f.shape))
        print(f"{name:<12} {f.count:>4} [{grid:>5}] {f.nbytes / 1e3:7.0f} {state / 1e3:9.0f} "
              f"{f.seconds:10.2f} / {f.cpu_seconds:5.2f} {compute * 1e3:19.1f} / {cpu * 1e3:5.1f} "
              f"{full * 1e3:15.0f}  "
              f"{'ok' if not misses else 'MISSED: ' + ', '.join(misses)}")
    print(f"budgets: state <= {frames.STATE_BUDGET_BYTES / 1e3:.0f} KB, render <= "
          f"{frames.RENDER_BUDGET_S:g} s CPU, live compute <= {frames.LIVE_COMPUTE_BUDGET_S * 1e3:.0f} ms")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

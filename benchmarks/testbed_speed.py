"""Scene-generation throughput of the shapes testbed (scenes per second).

Run: ``python benchmarks/testbed_speed.py`` — prints a markdown table and writes it to
``benchmarks/results/testbed_speed.md``.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from captum_clip.testbed import shapes


def scenes_per_second(n: int, size: int, repeats: int = 5, rho: float = 0.9) -> float:
    """Best-of-``repeats`` throughput of :func:`shapes.generate_scenes`."""
    shapes.generate_scenes(8, seed=0, size=size)  # warm up (texture cache)
    best = float("inf")
    for r in range(repeats):
        t0 = time.perf_counter()
        shapes.generate_scenes(n, seed=r, rho=rho, size=size)
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> str:
    rows = []
    for threads in sorted({1, 2}):
        torch.set_num_threads(threads)
        for size, n in ((64, 256), (64, 1024), (128, 256), (224, 64)):
            rows.append((threads, size, n, scenes_per_second(n, size)))
    lines = [
        "# Testbed scene generation speed",
        "",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"CPU, best of 5; 1-min load average at the end {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores (a loaded shared machine gives a lower bound). "
        "Target: >= 2,000 scenes/s at 64x64.",
        "",
        "| threads | image size | batch | scenes/s |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {t} | {s}x{s} | {n} | {v:,.0f} |" for t, s, n, v in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(__file__).resolve().parent / "results" / "testbed_speed.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    return table


if __name__ == "__main__":
    main()

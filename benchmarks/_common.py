"""Small helpers shared by the benchmarks: timing of fresh processes, medians, tables."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time


def time_fresh_process(code: str, repeats: int, env: dict[str, str] | None = None) -> list[float]:
    """Wall time of ``python -c code`` in a fresh interpreter, ``repeats`` times."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env, stdout=subprocess.DEVNULL)
        out.append(time.perf_counter() - start)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def row(*cells: object, widths: tuple[int, ...] = (34, 12, 12, 10)) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False))

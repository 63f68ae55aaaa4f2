"""Small helpers shared by the benchmarks: timing of fresh processes, medians, tables."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


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


def machine() -> str:
    """CPU model, cores, Python and OS: printed beside every ratio, so figures from different
    machines are not compared as if equal."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {sys.platform}"


def load() -> str:
    """The 1, 5 and 15 minute load averages (runnable processes; a shared machine's noise)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"

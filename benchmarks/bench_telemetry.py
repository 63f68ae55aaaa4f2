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

Measured, not estimated: a lifecycle-like workload of real plugin calls (per day of
``--days`` days from 2013-09-01: ``tables()``, ``schema()``, ``read()`` of that day's
flights from nycflights13 and a ``compare_prepared()`` drift test of the day against the
training window with the polars detector) timed in the same four modes, interleaved, median
of ``--repeats``; ``off`` there is the kernel's wrapper with its telemetry scope disabled
(redaction only). The ratio to ``off`` is the overhead.

Sandbox start-up: ``--sandbox-calls`` calls of ``tables()`` with the plugin sandboxed
(``mlx_resources.sandbox``: a child process through Dagster Pipes) against in process.

    .venv/bin/python benchmarks/bench_telemetry.py [--repeats 5] [--n 2000] [--days 120]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load, machine, median

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
    parser.add_argument("--days", type=int, default=120, help="days of the measured workload")
    parser.add_argument("--sandbox-calls", type=int, default=3, help="0: skip the sandbox")
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
    workload(args, setup)
    if args.sandbox_calls:
        sandbox_startup(args.sandbox_calls)
    print(f"load average after: {load()}")


def workload(args: argparse.Namespace, setup: Callable[[str], None]) -> None:
    """The measured lifecycle-like workload in the four modes (see the module docstring)."""
    import datetime as dt

    from mlx_plugins.data_sources.nycflights13 import NYCFlights13Source
    from mlx_plugins.drift_detectors.polars_drift import PolarsDriftDetector
    from mlx_plugins.kernel import base
    from mlx_resources.telemetry import audit

    source, detector = NYCFlights13Source(), PolarsDriftDetector()
    source.open()
    detector.open()
    numeric = ["dep_delay", "arr_delay", "distance", "air_time"]
    categorical = ["carrier", "origin"]
    reference = source.read("flights", dt.date(2013, 1, 1), dt.date(2013, 8, 31))
    prepared = detector.prepare_reference(reference, numeric, categorical)
    days = [dt.date(2013, 9, 1) + dt.timedelta(days=i) for i in range(args.days)]
    columns = numeric + categorical

    def run() -> float:
        gc.collect()  # no collection of an earlier mode's garbage inside this one's timing
        start = time.perf_counter()
        for day in days:
            source.tables()
            source.schema("flights")
            current = source.read("flights", day, day)
            detector.compare_prepared(prepared, current.select(columns))
        return time.perf_counter() - start

    scope = base._call_scope
    modes = ("off", "default", "on", "on+audit")
    times: dict[str, list[float]] = {m: [] for m in modes}

    def one(mode: str) -> float:
        setup("default" if mode == "off" else mode)
        if mode == "off":
            base._call_scope = lambda *a, **k: None  # type: ignore[assignment]
        try:
            return run()
        finally:
            base._call_scope = scope  # type: ignore[assignment]

    for mode in modes:  # warm-up: caches, the audit table
        one(mode)
    for _ in range(args.repeats):
        for mode in modes:
            times[mode].append(one(mode))
    audit.uninstall()
    calls = 4 * len(days)
    off = median(times["off"])
    print(
        f"\nmeasured workload: {len(days)} days x (tables, schema, read, compare_prepared) = "
        f"{calls} plugin calls, median of {args.repeats}"
    )
    best_off = min(times["off"])
    print(
        f"{'mode':<9} {'median s':>9} {'ratio':>7} {'overhead':>9}   {'best s':>7} {'ratio':>7}"
        f"   {'spread s':>8}"
    )
    for mode in modes:
        t, b = median(times[mode]), min(times[mode])
        print(
            f"{mode:<9} {t:9.3f} {t / off:7.3f} {100 * (t / off - 1):8.2f}%   {b:7.3f} "
            f"{b / best_off:7.3f}   {max(times[mode]) - b:8.3f}"
        )
    print("(spread: slowest - fastest repeat of a mode; a ratio within it is noise)")


def sandbox_startup(n: int) -> None:
    """Wall time of a sandboxed ``tables()`` call against the same call in process."""
    from mlx_plugins.data_sources.nycflights13 import NYCFlights13Source
    from mlx_plugins.kernel.sandbox import SANDBOX_FIELD, SandboxPlan, SandboxSpec
    from mlx_resources.sandbox import network_mode

    plan = SandboxPlan(spec=SandboxSpec(network=False), key="plugins.data_source.sandbox")
    boxed = NYCFlights13Source(**{SANDBOX_FIELD: plan.to_field()})
    plain = NYCFlights13Source()
    plain.open()
    inproc = per_call(plain.tables, 200)
    walls = []
    for _ in range(n):
        start = time.perf_counter()
        boxed.tables()
        walls.append(time.perf_counter() - start)
    print(
        f"\nsandbox (network: {network_mode(plan.spec)}): tables() in process "
        f"{inproc * 1e6:.1f} us, sandboxed median {median(walls):.2f} s per call "
        f"(min {min(walls):.2f} s, {n} calls): the start-up cost of a child per call"
    )


if __name__ == "__main__":
    main()

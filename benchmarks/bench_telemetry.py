"""Telemetry overhead on the lifecycle: ``mlx lifecycle`` at 1x with telemetry on against off.

The issue's goal (issue 12): the lifecycle at 1x with tracing and metrics exporting to an
in-process collector against the same lifecycle with telemetry off; under 3 % overhead.

Each measurement is one whole ``mlx lifecycle`` (reference, daily, training, monitoring) on a
fresh MLX home and Dagster instance, in a fresh interpreter, with the composition of
``benchmarks/bench_lifecycle.py`` (``mlx.yaml`` at ``--scale``, ``--epochs``, the gate relaxed
so every run registers a model). Two modes, alternated (on, off, on, off, ...: a change of the
machine's load hits both alike), median of ``--pairs`` each:

* ``on``  what a production run does with a collector configured: every plugin call a span
          (run > step > plugin call > epochs, the training child's spans too) exported over
          OTLP/HTTP (the official exporter, batched) to a collector in THIS process (a loopback
          ``http.server`` speaking OTLP/HTTP, its threads outside the timed process), the
          Prometheus metrics (counters, histograms, the run's ``<home>/metrics/<run>.prom``), the
          OTLP metric reader, and the audit log (SQLite, one row per plugin call).
* ``off`` the same lifecycle with telemetry switched off: ``OTEL_SDK_DISABLED=true`` (no-op
          tracer), the kernel's plugin-call scope removed (no span, metric or audit row per
          call), the run/step wrapper and the audit sink removed (no metrics file). What is left
          is the kernel's secret redaction, which is not telemetry.

After the timings, each ``on`` run is checked to have sent spans (decoded with
``opentelemetry-proto``: count and trace ids), written audit rows and metrics files, and each
``off`` run to have sent nothing: the comparison is between telemetry really on and really off.

Sandbox start-up cost: ``--sandbox-calls`` calls of ``tables()`` with the plugin sandboxed
(``mlx_resources.sandbox``: a child process through Dagster Pipes) against in process, and
``--sandbox-calls`` calls of a feature function (``features.sandbox``) against in process.

    .venv/bin/python benchmarks/bench_telemetry.py [--pairs 3] [--scale 1] [--days 0]
                                                   [--sandbox-calls 3] [--per-call 2000]

``--days N`` runs the same ``mlx lifecycle`` on the flights instance cut to its first N days
(its ``defs.yaml`` copied with ``data.end`` moved; the instances folder pointed at the copy)
and the composition's window moved inside them (2/3 training, the rest test and drift):
reference, daily, training (training set, model, evaluation, registration) and monitoring all
run, on fewer partitions. Use it where the whole year is too slow to repeat.

``--per-call N`` adds the microbenchmark of one trivial plugin call (``tables()``) without the
kernel's wrapper, with nothing exported, with spans to an in-memory exporter, and with the audit
log: the per-call cost in microseconds (useful when profiling the wrapper).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.server
import json
import os
import re
import resource
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _common import load, machine, median  # noqa: E402
from bench_lifecycle import composition  # noqa: E402

# The lifecycle in a fresh interpreter; with "off", telemetry is removed before anything runs.
DRIVER = """
import sys
if sys.argv[1] == "off":
    from mlx_plugins.kernel import base
    import mlx_resources.telemetry as run_telemetry
    import mlx_resources.telemetry.audit as audit
    base._call_scope = lambda *args, **kwargs: None
    run_telemetry.traced_execution = lambda plan_context, events, home=None: events
    audit.install_for_run = lambda *args, **kwargs: None
if sys.argv[2]:  # a shorter lifecycle: the instance's defs.yaml with an earlier data.end
    from pathlib import Path
    import mlx_assets.component.loader as loader
    loader.DEFS_FOLDER = Path(sys.argv[2])
from mlx_assets.cli import main
sys.exit(main(["lifecycle"]))
"""


def window_for(days: int) -> dict[str, object]:
    """A training window inside the first ``days`` days of 2013: about 2/3 training (the last
    sixth of it validation), the rest test (and drift-monitored)."""
    first = dt.date(2013, 1, 1)
    train_days = max(8, (2 * days) // 3)
    return {
        "train_start": first.isoformat(),
        "train_end": (first + dt.timedelta(days=train_days - 1)).isoformat(),
        "valid_days": max(2, train_days // 6),
        "test_start": (first + dt.timedelta(days=train_days)).isoformat(),
        "test_end": (first + dt.timedelta(days=days - 1)).isoformat(),
    }


class Collector(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP collector on 127.0.0.1: keeps each POST's path and body, answers 200."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.posts: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    def take(self) -> list[tuple[str, bytes]]:
        with self.lock:
            posts, self.posts = self.posts, []
        return posts


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.posts.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


STAGE = re.compile(r"^\[?(?:mlx\] )?(\w+): done in ([\d.]+)s", re.MULTILINE)


def run_lifecycle(
    mode: str, work: Path, comp: dict, endpoint: str, days: int
) -> tuple[float, float, dict[str, float]]:
    """One whole ``mlx lifecycle`` in a fresh interpreter on a fresh home; its wall time, the
    CPU seconds (user + system) of its process tree, and the seconds of each stage's run (as
    the lifecycle prints them)."""
    (work / "mlx.yaml").write_text(yaml.safe_dump(comp))
    defs = ""
    if days:  # the flights instance on its first `days` days only
        raw = yaml.safe_load((ROOT / "mlx_assets/defs/flight_delay/defs.yaml").read_text())
        raw["attributes"]["data"]["end"] = (
            dt.date(2013, 1, 1) + dt.timedelta(days=days)
        ).isoformat()
        (work / "defs" / "flight_delay").mkdir(parents=True)
        (work / "defs" / "flight_delay" / "defs.yaml").write_text(yaml.safe_dump(raw))
        defs = str(work / "defs")
    (work / "dagster").mkdir()
    (work / "dagster" / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = {
        **os.environ,
        "MLX_HOME": str(work / "home"),
        "MLX_COMPOSITION": str(work / "mlx.yaml"),
        "DAGSTER_HOME": str(work / "dagster"),
        "OTEL_SERVICE_NAME": "mlx-bench",
    }
    for name in list(env):
        if name.startswith("OTEL_EXPORTER") or name in ("OTEL_TRACES_EXPORTER", "MLX_PROFILE"):
            env.pop(name)
    if mode == "on":
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        env.pop("OTEL_SDK_DISABLED", None)
    else:
        env["OTEL_SDK_DISABLED"] = "true"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, mode, defs],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        sys.exit(f"the {mode} lifecycle failed (exit {done.returncode}):\n{done.stdout[-3000:]}")
    return elapsed, cpu, {m[1]: float(m[2]) for m in STAGE.finditer(done.stdout)}


def evidence(work: Path, posts: list[tuple[str, bytes]]) -> dict[str, int]:
    """What a run left as telemetry: spans received (and their trace ids), audit rows,
    metrics files."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans, traces = 0, set()
    for path, body in posts:
        if path != "/v1/traces":
            continue
        for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
            for ss in rs.scope_spans:
                spans += len(ss.spans)
                traces.update(s.trace_id for s in ss.spans)
    db = work / "home" / "audit" / "audit.sqlite"
    rows = 0
    if db.exists():
        with sqlite3.connect(db) as con:
            rows = con.execute("select count(*) from mlx_audit").fetchone()[0]
    prom = len(list((work / "home" / "metrics").glob("*.prom")))
    return {"spans": spans, "traces": len(traces), "audit_rows": rows, "prom_files": prom}


def lifecycle(args: argparse.Namespace) -> None:
    comp = composition(args.scale, args.epochs)
    if args.days:
        comp["settings"]["window"] = window_for(args.days)
    collector = Collector()
    thread = threading.Thread(target=collector.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    times: dict[str, list[float]] = {"on": [], "off": []}
    cpus: dict[str, list[float]] = {"on": [], "off": []}
    seen: dict[str, list[dict[str, int]]] = {"on": [], "off": []}
    order = ["on", "off"] * args.pairs
    try:
        for i, mode in enumerate(order):
            with tempfile.TemporaryDirectory(prefix=f"mlx-bench-tel-{mode}-") as d:
                collector.take()
                t, c, stages = run_lifecycle(mode, Path(d), comp, endpoint, args.days)
                times[mode].append(t)
                cpus[mode].append(c)
                seen[mode].append(evidence(Path(d), collector.take()))
                parts = " ".join(f"{k} {v:.1f}" for k, v in stages.items())
                print(
                    f"  run {i + 1}/{len(order)} {mode:<3} {t:7.1f} s, cpu {c:6.1f} s ({parts})  "
                    f"load {load()}  "
                    f"{json.dumps(seen[mode][-1])}",
                    flush=True,
                )
    finally:
        collector.shutdown()
        collector.server_close()
    for ev in seen["on"]:
        assert ev["spans"] > 0 and ev["audit_rows"] > 0 and ev["prom_files"] > 0, ev
    for ev in seen["off"]:
        assert ev["spans"] == 0 and ev["audit_rows"] == 0 and ev["prom_files"] == 0, ev
    what = (
        f"the first {args.days} days, window {json.dumps(comp['settings']['window'])}"
        if args.days
        else "the whole year"
    )
    print(
        f"\nlifecycle at {args.scale:g}x ({args.epochs} epochs), {what}; {args.pairs} pairs "
        "alternated (on, off, ...), median of each"
    )
    print(
        f"{'mode':<5} {'wall median s':>13} {'min s':>7} {'max s':>7}   {'cpu median s':>12} "
        f"{'min s':>7} {'max s':>7}   spans/run  audit rows/run"
    )
    for mode in ("on", "off"):
        xs, cs = times[mode], cpus[mode]
        ev = seen[mode][0]
        print(
            f"{mode:<5} {median(xs):13.1f} {min(xs):7.1f} {max(xs):7.1f}   {median(cs):12.1f} "
            f"{min(cs):7.1f} {max(cs):7.1f}   {ev['spans']:>9}  {ev['audit_rows']:>14}"
        )
    for what, xs in (("wall", times), ("cpu", cpus)):
        a, b = median(xs["on"]), median(xs["off"])
        pairs = [x / y for x, y in zip(xs["on"], xs["off"], strict=True)]
        print(
            f"{what} ratio on/off of the medians: {a / b:.3f} ({100 * (a / b - 1):+.1f} %; goal "
            f"< +3 %); per pair: {', '.join(f'{r:.3f}' for r in pairs)}; median of the pair "
            f"ratios {median(pairs):.3f}"
        )


def per_call(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def micro(n: int, repeats: int) -> None:
    """One trivial plugin call in four modes, interleaved, best of ``repeats``."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from mlx_plugins.data_sources.nycflights13 import NYCFlights13Source
    from mlx_plugins.kernel import telemetry
    from mlx_resources.telemetry import audit

    plugin = NYCFlights13Source()
    plugin.open()
    bare = type(plugin).tables.__wrapped__  # type: ignore[attr-defined]
    exporter = InMemorySpanExporter()
    db = Path(tempfile.mkdtemp(prefix="mlx-bench-audit-")) / "audit.sqlite"

    def setup(mode: str) -> None:
        audit.uninstall()
        if mode == "default":
            telemetry.configure(force=True)
        elif mode in ("on", "on+audit"):
            telemetry.configure(exporter)
        if mode == "on+audit":
            audit.install(f"sqlite:///{db}")

    calls: dict[str, Callable[[], object]] = {
        "off": lambda: bare(plugin),
        "default": plugin.tables,
        "on": plugin.tables,
        "on+audit": plugin.tables,
    }
    best = dict.fromkeys(calls, float("inf"))
    for mode, call in calls.items():
        setup(mode)
        per_call(call, 100)
    for _ in range(repeats):
        for mode, call in calls.items():
            setup(mode)
            best[mode] = min(best[mode], per_call(call, n))
            exporter.clear()
    audit.uninstall()
    telemetry.shutdown()
    print(f"\none plugin call (tables()), best of {repeats} x {n}")
    print(f"{'mode':<9} {'per call us':>12} {'overhead us':>12}")
    for mode, t in best.items():
        print(f"{mode:<9} {t * 1e6:12.1f} {(t - best['off']) * 1e6:12.1f}")


def sandbox_startup(n: int) -> None:
    """Wall time of a sandboxed ``tables()`` call and a sandboxed feature function against the
    same calls in process: the start-up cost of a child per call."""
    import polars as pl

    from mlx_plugins.data_sources.nycflights13 import NYCFlights13Source
    from mlx_plugins.kernel.sandbox import SANDBOX_FIELD, SandboxPlan, SandboxSpec
    from mlx_resources.sandbox import network_mode, run_function

    spec = SandboxSpec(network=False)
    plan = SandboxPlan(spec=spec, key="plugins.data_source.sandbox")
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
        f"\nsandbox (network: {network_mode(spec)}): tables() in process {inproc * 1e6:.1f} us, "
        f"sandboxed median {median(walls):.2f} s per call (min {min(walls):.2f} s, {n} calls)"
    )
    frame = pl.DataFrame({"a": list(range(1000)), "b": [float(i) for i in range(1000)]})
    target = "mlx_resources.sandbox.functions:identity"
    start = time.perf_counter()
    for _ in range(200):
        frame.clone()
    inproc = (time.perf_counter() - start) / 200
    walls = []
    for _ in range(n):
        start = time.perf_counter()
        run_function(target, {"t": frame}, spec, key="features.sandbox")
        walls.append(time.perf_counter() - start)
    print(
        f"sandbox: a feature function (1,000 rows in and out as Arrow IPC) in process "
        f"{inproc * 1e6:.1f} us, sandboxed median {median(walls):.2f} s per call "
        f"(min {min(walls):.2f} s, {n} calls)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="on/off pairs, alternated")
    parser.add_argument("--scale", type=float, default=1.0, help="nycflights13 scale")
    parser.add_argument(
        "--days", type=int, default=0, help="0: the whole lifecycle; N: its first N days only"
    )
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--sandbox-calls", type=int, default=3, help="0: skip the sandbox")
    parser.add_argument("--per-call", type=int, default=0, help="N: add the microbenchmark")
    parser.add_argument("--repeats", type=int, default=5, help="of the microbenchmark")
    args = parser.parse_args()
    os.environ.setdefault("MLX_HOME", tempfile.mkdtemp(prefix="mlx-bench-telemetry-"))
    print(f"machine: {machine()}; load average before: {load()}", flush=True)
    if args.pairs:
        lifecycle(args)
    if args.per_call:
        micro(args.per_call, args.repeats)
    if args.sandbox_calls:
        sandbox_startup(args.sandbox_calls)
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()

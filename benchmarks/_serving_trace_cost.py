"""What tracing served requests costs (issue 12): the ``bentoml`` plugin's ``/predict`` ASGI app,
in process (no HTTP, no BentoML server: the handler's own time), one row per request, every
request carrying a W3C ``traceparent``; with no exporter configured (the default: the handler
makes no span) against an exporter configured (a span per request into OpenTelemetry's
in-memory exporter behind a ``BatchSpanProcessor``, as ``telemetry.configure`` sets up OTLP).
Trials alternate between the two so that the machine's load hits both alike; medians are
printed with their ratio.

    .venv/bin/python benchmarks/_serving_trace_cost.py [--requests 3000] [--trials 5]

(``bench_serving.py --trace-cost`` runs it too.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as the served workers run (one BLAS thread)
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import load, machine  # noqa: E402


async def _run(app: Any, body: bytes, n: int) -> float:
    """Seconds per request over ``n`` sequential ASGI calls of ``POST /predict``."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 5000),
    }
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    start = time.perf_counter()
    for _ in range(n):
        await app(dict(scope), receive, send)
    seconds = (time.perf_counter() - start) / n
    if set(statuses) != {200}:
        raise RuntimeError(f"the handler answered {sorted(set(statuses))}, not only 200")
    return seconds


def measure(package_path: str, body: bytes, requests: int, trials: int) -> dict[str, float]:
    """Median microseconds per request without and with an exporter, and their ratio."""
    import timeit

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from mlx_plugins.model_servers.bentoml_runtime import ServingState, build_app

    state = ServingState()
    state.load(package_path, metrics=False)
    app = build_app(state)
    exporter = InMemorySpanExporter()
    # what OTEL_EXPORTER_OTLP_* configures (telemetry.configure): a batch processor, so the
    # request path only queues the span; in memory instead of OTLP so no network is timed
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=1 << 16))
    tracer = provider.get_tracer("mlx")
    off: list[float] = []
    on: list[float] = []

    async def trials_() -> None:  # one event loop: the batcher's tasks live on it
        await _run(app, body, 200)  # warm-up
        for _ in range(trials):
            state.tracer = None
            off.append(await _run(app, body, requests))
            state.tracer = tracer
            on.append(await _run(app, body, requests))
            provider.force_flush()
            spans = exporter.get_finished_spans()
            if len(spans) != requests:
                raise RuntimeError(f"{len(spans)} spans for {requests} traced requests")
            exporter.clear()

    asyncio.run(trials_())
    provider.shutdown()
    state.tracer = None
    # what the request path does for tracing when no exporter is configured
    off_path_s = min(
        timeit.repeat("time.time_ns(); state.tracer is not None", number=100_000, repeat=5,
                      globals={"time": time, "state": state})
    ) / 100_000  # fmt: skip
    a, b = statistics.median(off), statistics.median(on)
    return {"off_us": a * 1e6, "on_us": b * 1e6, "ratio": b / a, "off_path_us": off_path_s * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    print(f"machine: {machine()}; load before: {load()}")
    from bench_serving import MODELS, bodies, build_package

    with tempfile.TemporaryDirectory(prefix="mlx-trace-cost-") as tmp:
        home = Path(tmp)
        for model in ("tiny", "wide"):
            n_in, hidden = MODELS[model]
            _, package = build_package(home, model, n_in, hidden, 1)
            body = bodies(home, n_in)["mlx"].read_bytes()
            json.loads(body)
            r = measure(package.path, body, args.requests, args.trials)
            print(
                f"{model}: handler {r['off_us']:.1f} us/request without an exporter, "
                f"{r['on_us']:.1f} us with a span per request exported in memory: "
                f"x{r['ratio']:.3f} (median of {args.trials} alternating trials of "
                f"{args.requests} requests); without an exporter the tracing code on the "
                f"request path is {r['off_path_us'] * 1000:.0f} ns "
                f"({r['off_path_us'] / r['off_us'] * 100:.3f}% of the handler)"
            )
    print(f"load after: {load()}")


if __name__ == "__main__":
    main()

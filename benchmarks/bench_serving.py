"""Serving throughput and tail latency: MLX's ``bentoml`` model server against a stock BentoML
1.4 service and a hand-written FastAPI + uvicorn app, same package, same run, one row per
request, loaded by wrk on loopback.

Servers (each with ``--workers`` worker processes, one torch thread each):

- ``stock``: ``_serving_stock.py``, an idiomatic ``@bentoml.api(batchable=True,
  max_batch_size=64, max_latency_ms=250)`` service loading the package through ``BentoModel``,
  BentoML's default server settings; body ``{"x": [[...]]}``.
- ``mlx``: the ``bentoml`` plugin's server (``bentoml serve`` of
  ``mlx_plugins.model_servers.bentoml_service``) with its defaults: the lean ASGI predict path
  with adaptive batching (64 rows), load shedding (250 ms) and the per-worker in-flight limit
  (``max_inflight`` 8: one more request is answered 503 + Retry-After before BentoML's
  middlewares); body ``{"rows": [{"f0000": ..., ...}]}`` (named features, validated).
- ``mlx-nolimit``: the same without the in-flight limit (``max_inflight: None``), the baseline
  of the limit within the run.
- ``router``: ``mlx`` behind the nginx router (``routing/nginx.py``, default settings), the
  endpoint the lifecycle's ``model_deployment`` gives users; the worker's 503s pass through.
- ``router-shed``: the same with the router shedding too (``max_inflight_per_replica`` =
  workers x the workers' ``max_inflight``): nginx answers the 503 itself, Python never sees it.
- ``fastapi``: ``_serving_fastapi.py`` under ``uvicorn --workers``; body ``{"x": [[...]]}``.

Models: ``tiny`` 40 -> 64 -> 32 -> 1 and ``wide`` 1024 -> 1024 -> 512 -> 1 (random weights,
``local_torch``'s artifact format, registered and packaged as the lifecycle does).

For each server and concurrency (``--levels``, default 1 4 16 64) wrk runs ``--seconds``
seconds (one keep-alive connection per wrk thread, 5 s request timeout) on the same cores as
the servers. Reported: answered-200 throughput, p50/p99/max latency of every response (503s
included) as the client saw it, timed per request in wrk's Lua script; wrk's own p99 beside it
(``wrk p99``: inflated by wrk's coordinated-omission correction, which turns one pause of the
server into hundreds of phantom samples; docs/serving.md); 503s (shed, counted apart), other
failures, and for the MLX servers the p99 of the 200s alone from
the server's own histogram (``mlx_serving_request_duration_seconds``, arrival in the worker ->
answer, interpolated in its buckets as PromQL does). Goals, checked on the ``tiny`` model:

1. MLX's best throughput at p99 <= 50 ms >= 2x stock BentoML's best at p99 <= 50 ms;
2. MLX's p99 <= 50 ms at every level up to 64 concurrent requests (503s counted, not hidden;
   checked for ``mlx`` and, when run, for ``router``);
3. no 503 from MLX below its throughput knee (the first level within 90% of its best).

``--check-client N`` cross-checks the latencies with a second, independent load generator:
right after wrk, each level is run again by Python ``http.client`` keep-alive connections (one
per thread, N requests each), timed per request. Python's client is itself slow (the GIL, on the
same 2 cores): its figures bound the server's from above, notably at 64 threads.

``--profile`` records the stock and the MLX servers with py-spy (2 concurrent, 8 s) and prints
where a worker's time goes, by package (the figures in ``docs/serving.md``).

    ./dev bench serving [--workers 2] [--seconds 5] [--levels 1 4 16 64] [--models tiny wide]
                        [--servers ...] [--trials 1] [--max-inflight N] [--profile]
                        [--check-client N]
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import load, machine  # noqa: E402

from mlx_plugins.model_servers.base import http_get, stop_process_group  # noqa: E402
from mlx_plugins.model_servers.bentoml_server import BentoMLServer, free_port  # noqa: E402
from mlx_plugins.model_servers.routing.metrics import (  # noqa: E402
    MetricNames,
    _quantile_ms,
    parse_metrics,
)

MODELS = {"tiny": (40, [64, 32]), "wide": (1024, [1024, 512])}
P99_GOAL_MS = 50.0
READY_TIMEOUT_S = 180.0

WRK_SCRIPT = r"""
-- One connection per wrk thread (-t = -c), so request() and response() alternate in each
-- thread's Lua state and time each request as the client saw it (CLOCK_MONOTONIC through
-- LuaJIT's ffi). wrk's own latency statistics are "corrected" for coordinated omission before
-- done() sees them: every answer slower than twice the mean interval between answers adds
-- phantom samples down to that interval (wrk.c, stats_correct), so one 0.4 s pause in a
-- 10,000-request run becomes ~1,000 samples and the p99 (docs/serving.md). Both are printed.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } mlx_timespec;
int clock_gettime(int clk_id, mlx_timespec *tp);
]]
local ts = ffi.new("mlx_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end
local f = assert(io.open(os.getenv("MLX_WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = f:read("*a")
f:close()
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {}; lat = {}; n = 0; t0 = 0; req = wrk.format() end
function request() t0 = now_us(); return req end
function response(status, headers, body)
  n = n + 1
  lat[n] = now_us() - t0
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local all, sts = {}, {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do sts[k] = (sts[k] or 0) + v end
    local l = t:get("lat")
    for i = 1, t:get("n") do all[#all + 1] = l[i] end
  end
  table.sort(all)
  local function q(p)
    if #all == 0 then return 0 end
    return all[math.max(1, math.ceil(p * #all))]
  end
  local parts = {}
  for k, v in pairs(sts) do table.insert(parts, string.format('"%d": %d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'MLXWRK {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "wrk_p50_us": %d, "wrk_p99_us": %d, "statuses": {%s}, ' ..
    '"socket_errors": %d}\n',
    summary.requests, summary.duration, q(0.50), q(0.90), q(0.99), all[#all] or 0,
    latency:percentile(50), latency:percentile(99), table.concat(parts, ", "),
    e.connect + e.read + e.write + e.timeout))
end
"""


# -- the models --------------------------------------------------------------------------------
def build_package(
    home: Path, name: str, n_in: int, hidden: list[int], workers: int, **config: Any
) -> Any:
    """A random-weight ``local_torch`` MLP, registered and packaged by the bentoml plugin."""
    import torch

    from mlx_plugins.ml_platforms.local_torch import save_artifact, sha256_file
    from mlx_plugins.ml_platforms.torch_mlp import Preprocessor, TabularMLP
    from mlx_plugins.model_registries.base import ModelLineage
    from mlx_plugins.model_registries.local import LocalModelRegistry

    torch.manual_seed(0)
    features = [f"f{i:04d}" for i in range(n_in)]
    net = TabularMLP(n_in, [], hidden)
    pre = Preprocessor(features, [], [0.0] * n_in, [1.0] * n_in, {})
    path = save_artifact(net, pre, hidden, 8, str(home / "artifacts" / name))
    registry = LocalModelRegistry(root=str(home / "registry"))
    version = registry.register(
        f"bench_{name}",
        path,
        sha256_file(path),
        metrics={},
        config={
            "features": {
                "numeric_features": features,
                "categorical_features": [],
                "target": "y",
            }
        },
        lineage=ModelLineage(training_data_version=None, partitions=[]),
    )
    server = BentoMLServer(
        home=str(home / "bentoml"), workers=workers, ready_timeout_s=180.0, **config
    )
    return server, server.package(version, registry)


def bodies(folder: Path, n_in: int) -> dict[str, Path]:
    """One request body per server kind, the same row of values."""
    import numpy as np

    row = np.random.default_rng(1).normal(size=n_in).round(4).tolist()
    named = {f"f{i:04d}": v for i, v in enumerate(row)}
    out = {"stock": folder / "x.json", "mlx": folder / "rows.json"}
    out["stock"].write_text(json.dumps({"x": [row]}))
    out["mlx"].write_text(json.dumps({"rows": [named]}))
    out["fastapi"] = out["stock"]
    out["mlx-nolimit"] = out["router"] = out["router-shed"] = out["mlx"]
    return out


# -- the servers -------------------------------------------------------------------------------
class Proc:
    """A server process in its own process group, stopped with the group."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                command,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.log = log

    def wait_ready(self, url: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"server exited ({self.popen.returncode}); see {self.log}")
            if http_get(url, 1.0)[0] == 200:
                return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not ready in {READY_TIMEOUT_S} s; see {self.log}")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        stop_process_group(self.popen.pid, timeout_s=10.0)


class Routed:
    """An MLX server behind the nginx router: stopped together."""

    def __init__(self, handle: Any, router: Any) -> None:
        self.handle, self.router, self.pid = handle, router, handle.pid

    def metrics_text(self, timeout_s: float = 2.0) -> str:
        return str(self.handle.metrics_text(timeout_s))

    def stop(self) -> None:
        try:
            self.router.stop()
        finally:
            self.handle.stop()


def start(
    kind: str, server: BentoMLServer, package: Any, workers: int, home: Path
) -> tuple[Any, str]:
    """Start one server; (something with .stop() and .pid, its predict URL)."""
    if kind == "mlx-nolimit":
        server = server.model_copy(update={"max_inflight": None})
    if kind in ("mlx", "mlx-nolimit", "router", "router-shed"):
        handle = server.start(package, workers=workers)
        if not kind.startswith("router"):
            return handle, f"{handle.url}/predict"
        from mlx_plugins.model_servers.routing.nginx import NginxRouter, NginxSettings
        from mlx_plugins.model_servers.routing.table import RoutingTable

        limit = (server.max_inflight or 8) * workers if kind == "router-shed" else None
        settings = NginxSettings(max_inflight_per_replica=limit, access_log=False)
        try:
            router = NginxRouter(home / f"router-{handle.port}", settings=settings).start(
                RoutingTable.single(package.version_label, [f"127.0.0.1:{handle.port}"])
            )
        except BaseException:
            handle.stop()
            raise
        return Routed(handle, router), f"{router.url}/predict"
    port = free_port()
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE.parent), env.get("PYTHONPATH")) if p)
    log = home / f"{kind}-{package.package_tag.replace(':', '-')}-{port}.log"
    if kind == "stock":
        own = home / f"stock-home-{port}"  # own prometheus dir, models from the shared store
        own.mkdir()
        (own / "models").symlink_to(Path(package.store) / "models", target_is_directory=True)
        env["BENTOML_HOME"] = str(own)
        command = [
            sys.executable, "-m", "bentoml", "serve", "_serving_stock:StockService",
            "--working-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port),
            "--arg", f"model={package.package_tag}", "--arg", f"workers={workers}",
        ]  # fmt: skip
        proc = Proc(command, env, HERE, log)
        proc.wait_ready(f"http://127.0.0.1:{port}/readyz")
    else:
        env["MLX_BENCH_PACKAGE"] = package.path
        command = [
            sys.executable, "-m", "uvicorn", "_serving_fastapi:app", "--app-dir", str(HERE),
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        proc = Proc(command, env, HERE, log)
        proc.wait_ready(f"http://127.0.0.1:{port}/readyz")
    return proc, f"http://127.0.0.1:{port}/predict"


# -- load --------------------------------------------------------------------------------------
def wrk(url: str, body: Path, concurrency: int, seconds: float, script: Path) -> dict[str, Any]:
    """One wrk run: ``concurrency`` keep-alive connections, one per wrk thread, for ``seconds``.
    ``p50_ms``/``p99_ms``/``max_ms`` are the latencies each request had (timed in the Lua
    script); ``wrk_p99_ms`` is wrk's own figure, inflated by its coordinated-omission
    correction (see ``WRK_SCRIPT``)."""
    command = [
        "wrk", f"-t{concurrency}", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "5s",
        "-s", str(script), url,
    ]  # fmt: skip
    out = subprocess.run(
        command,
        env={**os.environ, "MLX_WRK_BODY": str(body)},
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("MLXWRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {out.stdout[-500:]} {out.stderr[-500:]}")
    r: dict[str, Any] = json.loads(line[len("MLXWRK ") :])
    secs = r["duration_us"] / 1e6
    statuses = {int(k): v for k, v in r["statuses"].items()}
    ok = statuses.get(200, 0)
    return {
        "c": concurrency,
        "ok_rps": ok / secs,
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "max_ms": r["max_us"] / 1000,
        "wrk_p99_ms": r["wrk_p99_us"] / 1000,
        "shed": statuses.get(503, 0),
        "failed": sum(v for k, v in statuses.items() if k not in (200, 503)) + r["socket_errors"],
        "requests": r["requests"],
    }


def keepalive_client(url: str, body: Path, concurrency: int, requests: int) -> dict[str, Any]:
    """The cross-check load generator: ``concurrency`` threads, each one ``http.client``
    keep-alive connection sending ``requests`` requests back to back (the body in one send,
    TCP_NODELAY, as http.client does), each request timed; the same fields as :func:`wrk`."""
    import http.client
    import threading
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    payload = body.read_bytes()
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5.0)
        mine, codes = [], collections.Counter()
        try:
            for _ in range(requests):
                t = time.perf_counter()
                conn.request("POST", parts.path, payload, {"Content-Type": "application/json"})
                answer = conn.getresponse()
                answer.read()
                mine.append(time.perf_counter() - t)
                codes[answer.status] += 1
        except Exception as exc:  # counted as failures, reported below
            errors.append(exc)
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)
                statuses.update(codes)

    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ms = sorted(x * 1000 for x in latencies) or [0.0]
    at = lambda p: ms[min(len(ms) - 1, max(0, math.ceil(p * len(ms)) - 1))]  # noqa: E731
    return {
        "c": concurrency,
        "ok_rps": statuses.get(200, 0) / elapsed,
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "max_ms": ms[-1],
        "shed": statuses.get(503, 0),
        "failed": sum(v for k, v in statuses.items() if k not in (200, 503)) + len(errors),
        "requests": len(latencies),
    }


def served_p99_ms(proc: Any, level: Any) -> float | None:
    """p99 of the 200s alone (ms) from the server's histogram since ``level`` (a snapshot)."""
    if not hasattr(proc, "metrics_text"):
        return None
    window = parse_metrics(proc.metrics_text(), MetricNames.mlx_serving()) - level
    return _quantile_ms(0.99, window.buckets.get(200, {}))


def measure(
    proc: Any, url: str, body: Path, c: int, seconds: float, script: Path
) -> dict[str, Any]:
    """One wrk level, with the server-side p99 of the 200s for an MLX server."""
    names = MetricNames.mlx_serving()
    before = parse_metrics(proc.metrics_text(), names) if hasattr(proc, "metrics_text") else None
    r = wrk(url, body, c, seconds, script)
    r["p99_200_ms"] = served_p99_ms(proc, before) if before is not None else None
    return r


def median_trial(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The trial with the median p99 (the lower middle one of an even count), with every
    trial's p99 in ``p99_trials``: one stall of the shared machine moves one trial, not the
    level's figure."""
    ranked = sorted(trials, key=lambda r: r["p99_ms"])
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    chosen["p99_trials"] = [r["p99_ms"] for r in trials]
    return chosen


def best_at_goal(runs: list[dict[str, Any]]) -> float:
    """Best answered-200 req/s over the levels whose p99 met the goal (0 when none did)."""
    good = [r["ok_rps"] for r in runs if r["p99_ms"] <= P99_GOAL_MS and r["failed"] == 0]
    return max(good, default=0.0)


# -- profile -----------------------------------------------------------------------------------
BUCKETS = [
    ("torch (the model)", ("torch/", "torch\\")),
    ("bentoml / _bentoml_impl / _bentoml_sdk", ("bentoml",)),
    ("opentelemetry", ("opentelemetry",)),
    ("prometheus_client", ("prometheus_client",)),
    ("pydantic / pydantic_core", ("pydantic",)),
    ("starlette / fastapi", ("starlette", "fastapi")),
    ("uvicorn / h11 / httptools", ("uvicorn", "h11", "httptools")),
    ("asyncio / anyio / uvloop", ("asyncio", "anyio", "uvloop")),
    ("json / numpy", ("json", "numpy")),
    ("mlx_plugins", ("mlx_plugins",)),
    ("logging", ("logging",)),
]


IDLE = ("select (", "poll (", "epoll", "wait (threading", "_worker (concurrent", "Runner.run (")
"""Leaf frames of a process waiting for I/O or work (not time spent on requests)."""


def _bucket(frame: str) -> str:
    for name, keys in BUCKETS:
        if any(k in frame for k in keys):
            return name
    return "other (python, C)"


def profile(pid: int, url: str, body: Path, script: Path, out: Path) -> dict[str, float]:
    """Sample the server's processes with py-spy under 2 concurrent requests for 8 s; share
    of the samples whose innermost Python frame lies in each package (idle excluded)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = out.with_suffix(".txt")
    rec = subprocess.Popen(
        [spy, "record", "-p", str(pid), "--subprocesses", "-d", "9", "-r", "250", "-f", "raw",
         "-o", str(raw), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    result = wrk(url, body, 2, 8, script)
    rec.wait(timeout=60)
    counts: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines() if raw.exists() else []:
        stack, _, n = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        leaf = frames[-1] if frames else ""
        if any(w in leaf for w in IDLE):
            continue  # waiting for I/O or work: not time spent on requests
        counts[_bucket(leaf)] += int(n)
        leaves[leaf] += int(n)
    total = sum(counts.values()) or 1
    shares = {k: v / total for k, v in counts.most_common()}
    shares["_ok_rps"] = result["ok_rps"]
    for leaf, samples in leaves.most_common(12):
        shares[f"  leaf: {leaf[:90]}"] = samples / total
    return shares


# -- main --------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--models", nargs="+", default=["tiny", "wide"], choices=list(MODELS))
    ap.add_argument(
        "--servers",
        nargs="+",
        default=["stock", "mlx", "mlx-nolimit", "router", "router-shed", "fastapi"],
        choices=["stock", "mlx", "mlx-nolimit", "router", "router-shed", "fastapi"],
    )
    ap.add_argument("--profile", action="store_true")
    ap.add_argument(
        "--check-client",
        type=int,
        default=0,
        metavar="N",
        help="after wrk, run each level again with Python http.client keep-alive connections, "
        "N requests per connection (the independent cross-check; 0: off)",
    )
    ap.add_argument(
        "--trials",
        type=int,
        default=1,
        help="wrk runs per level; the level reports the one with the median p99",
    )
    ap.add_argument(
        "--max-inflight",
        type=int,
        default=None,
        help="the MLX workers' max_inflight (default: the plugin's default)",
    )
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: ./dev bench serving installs it (apt-get)")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    print(f"machine: {machine()}; load before: {load()}")
    if args.trials > 1:
        print(f"{args.trials} trials per level; each level shows the trial with the median p99")
    print(
        f"workers per server: {args.workers}; {args.seconds:g} s per level; wrk (one thread per "
        "connection) runs on the same cores as the servers; p99 = per-request latency as the "
        "client saw it, wrk p99 = wrk's own (coordinated-omission corrected)"
    )
    if (
        "router" in args.servers
        and not shutil.which("nginx")
        and not Path("/usr/sbin/nginx").exists()
    ):
        raise SystemExit("the router server needs nginx: apt-get install -y nginx")
    home = Path(tempfile.mkdtemp(prefix="mlx-bench-serving-"))
    script = home / "wrk.lua"
    script.write_text(WRK_SCRIPT)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    profiles: dict[str, dict[str, float]] = {}
    try:
        for model in args.models:
            n_in, hidden = MODELS[model]
            config = {} if args.max_inflight is None else {"max_inflight": args.max_inflight}
            server, package = build_package(home, model, n_in, hidden, args.workers, **config)
            if model == args.models[0]:
                print(f"MLX workers' max_inflight: {server.max_inflight}", flush=True)
            body = bodies(home, n_in)
            results[model] = {}
            for kind in args.servers:
                proc, url = start(kind, server, package, args.workers, home)
                try:
                    wrk(url, body[kind], 4, 2, script)  # warm-up
                    runs = []
                    for c in args.levels:
                        trials = [
                            measure(proc, url, body[kind], c, args.seconds, script)
                            for _ in range(args.trials)
                        ]
                        runs.append(median_trial(trials))
                        if args.check_client:  # right after wrk's level, same conditions
                            runs[-1]["check"] = keepalive_client(
                                url, body[kind], c, args.check_client
                            )
                    results[model][kind] = runs
                    if args.profile and model == "tiny" and kind in ("stock", "mlx"):
                        profiles[kind] = profile(proc.pid, url, body[kind], script, home / kind)
                finally:
                    proc.stop()
                print(f"  {model}/{kind}: " + "  ".join(_brief(r) for r in runs), flush=True)
        report(results, profiles, args)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(f"load after: {load()}")


def _brief(r: dict[str, Any]) -> str:
    shed = f" 503x{r['shed']}" if r["shed"] else ""
    trials = r.get("p99_trials", [])
    each = f" (trials {'/'.join(f'{t:.0f}' for t in trials)})" if len(trials) > 1 else ""
    check = f" [http.client p99 {r['check']['p99_ms']:.1f}]" if r.get("check") else ""
    return (
        f"c={r['c']}: {r['ok_rps']:.0f}/s p99 {r['p99_ms']:.1f} ms (wrk's "
        f"{r['wrk_p99_ms']:.0f}){each}{shed}{check}"
    )


def report(
    results: dict[str, dict[str, list[dict[str, Any]]]],
    profiles: dict[str, dict[str, float]],
    args: argparse.Namespace,
) -> None:
    for model, by_kind in results.items():
        print(
            f"\n{model} ({' -> '.join(str(x) for x in [MODELS[model][0], *MODELS[model][1], 1])})"
        )
        print(f"{'server':11} {'conc':>4} {'ok req/s':>9} {'p50 ms':>7} {'p99 ms':>8} "
              f"{'max ms':>7} {'wrk p99':>8} {'503':>6} {'shed %':>6} {'failed':>6} "
              f"{'p99 200s (server) ms':>20}")  # fmt: skip
        for kind, runs in by_kind.items():
            for r in runs:
                p99_200 = "-" if r.get("p99_200_ms") is None else f"{r['p99_200_ms']:.1f}"
                share = 100 * r["shed"] / max(r["requests"], 1)
                print(f"{kind:11} {r['c']:>4} {r['ok_rps']:>9.0f} {r['p50_ms']:>7.1f} "
                      f"{r['p99_ms']:>8.1f} {r['max_ms']:>7.0f} {r['wrk_p99_ms']:>8.1f} "
                      f"{r['shed']:>6} {share:>6.1f} {r['failed']:>6} "
                      f"{p99_200:>20}")  # fmt: skip
            for r in [r for r in runs if r.get("check")]:
                k = r["check"]
                print(f"{'  http.client':13} {r['c']:>2} {k['ok_rps']:>9.0f} {k['p50_ms']:>7.1f} "
                      f"{k['p99_ms']:>8.1f} {k['max_ms']:>7.0f} {'-':>8} {k['shed']:>6} "
                      f"{'':>6} {k['failed']:>6}")  # fmt: skip
        best = {k: best_at_goal(v) for k, v in by_kind.items()}
        peak = {k: max(r["ok_rps"] for r in v) for k, v in by_kind.items()}
        print("best req/s at p99 <= 50 ms: " + ", ".join(f"{k} {v:.0f}" for k, v in best.items()))
        if "mlx" in best:
            for other in ("stock", "fastapi", "mlx-nolimit"):
                if best.get(other):
                    ratio, peaks = best["mlx"] / best[other], peak["mlx"] / peak[other]
                    print(
                        f"ratio mlx / {other}: {ratio:.2f}x (best at p99 <= 50 ms), "
                        f"{peaks:.2f}x (peak)"
                    )
        if model == "tiny" and "mlx" in by_kind:
            runs = by_kind["mlx"]
            stock = best.get("stock", 0.0)
            g1 = bool(stock) and best["mlx"] >= 2 * stock
            g2 = all(r["p99_ms"] <= P99_GOAL_MS and not r["failed"] for r in runs if r["c"] <= 64)
            knee = next(r["c"] for r in runs if r["ok_rps"] >= 0.9 * peak["mlx"])
            g3 = all(r["shed"] == 0 for r in runs if r["c"] < knee)
            print(f"goal mlx >= 2x stock at p99 <= 50 ms: {'met' if g1 else 'NOT met'}")
            print(f"goal mlx p99 <= 50 ms up to 64 concurrent: {'met' if g2 else 'NOT met'}")
            for extra in ("router", "router-shed", "mlx-nolimit"):
                if extra in by_kind:
                    ok = all(
                        r["p99_ms"] <= P99_GOAL_MS and not r["failed"]
                        for r in by_kind[extra]
                        if r["c"] <= 64
                    )
                    print(
                        f"  the same for {extra}: {'met' if ok else 'NOT met'} (p99 at each "
                        "level: " + ", ".join(f"{r['p99_ms']:.0f}" for r in by_kind[extra]) + ")"
                    )
            print(f"goal no 503 below the knee (c={knee}): {'met' if g3 else 'NOT met'}")
    for kind, shares in profiles.items():
        rps = shares.pop("_ok_rps", 0.0)
        print(f"\nprofile {kind} (py-spy, 2 concurrent, {rps:.0f} req/s): share of busy samples")
        for name, share in shares.items():
            print(f"  {name:40} {share * 100:5.1f}%")


if __name__ == "__main__":
    main()

"""Reload under load: code-location hot swaps while the UI's GraphQL and runs keep going.

A production-shaped stack on loopback (tests/deploy/_stack.py: ``dagster code-server``,
``dagster-webserver``, ``dagster-daemon``, deploy/dagster.prod.yaml on a fresh PostgreSQL
database). Two phases of the same load, in this order:

* baseline: GraphQL clients (asset graph + location status, back to back) and a stream of
  ``reference`` runs launched through the webserver, no reload;
* reload: the same load while the composition is swapped back and forth
  (``mlx_resources.hot_swap.reload_code_location`` with a candidate file) ``--reloads`` times.

Prints requests and runs attempted vs failed per phase (goal: 0 failed), GraphQL latency
medians and the reload phase's latency ratio to the baseline, with the machine line.

    ./dev bench reload [--seconds 60] [--reloads 4] [--clients 2] [--runs 4]

Needs PostgreSQL on 127.0.0.1:5432 (./dev test starts it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from _common import load, machine, median, row  # noqa: E402

GRAPH = "{ assetNodes { assetKey { path } opVersion } }"


@dataclass
class Tally:
    requests: int = 0
    request_failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    launch_failures: list[str] = field(default_factory=list)
    reloads: int = 0
    reload_s: list[float] = field(default_factory=list)


def _client(stack, tally: Tally, stop: threading.Event, lock: threading.Lock) -> None:  # type: ignore[no-untyped-def]
    from tests.deploy._stack import GraphQLError

    while not stop.is_set():
        start = time.perf_counter()
        problem = None
        try:
            if not stack.post(GRAPH)["assetNodes"]:
                problem = "empty asset graph"
            status = stack.location_status()
            if status[1] != "RepositoryLocation":
                problem = f"location {status}"
        except GraphQLError as exc:
            problem = str(exc)[:300]
        with lock:
            tally.requests += 1
            tally.latencies.append(time.perf_counter() - start)
            if problem:
                tally.request_failures.append(problem)


def phase(stack, seconds: float, clients: int, runs: int, swap=None) -> Tally:  # type: ignore[no-untyped-def]
    """``clients`` GraphQL loops and ``runs`` launches spread over ``seconds``; with ``swap``
    (a function of the tally) also the reloads, in their own thread, the phase lasting until
    they are done (runs keep being launched at the same pace meanwhile)."""
    from tests.deploy._stack import GraphQLError

    tally, stop, lock = Tally(), threading.Event(), threading.Lock()
    threads = [
        threading.Thread(target=_client, args=(stack, tally, stop, lock), daemon=True)
        for _ in range(clients)
    ]
    reloader = threading.Thread(target=swap, args=(tally,), daemon=True) if swap else None
    for t in threads:
        t.start()
    if reloader is not None:
        reloader.start()
    end = time.monotonic() + seconds
    run_every = seconds / max(runs, 1)
    next_run = time.monotonic()
    while time.monotonic() < end or (reloader is not None and reloader.is_alive()):
        if time.monotonic() >= next_run:
            try:
                tally.runs.append(stack.launch("reference"))
            except GraphQLError as exc:
                tally.launch_failures.append(str(exc)[:300])
            next_run += run_every
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    return tally


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    ap.add_argument("--reloads", type=int, default=4)
    ap.add_argument("--clients", type=int, default=2, help="concurrent GraphQL clients")
    ap.add_argument("--runs", type=int, default=4, help="runs launched per --seconds")
    args = ap.parse_args()

    import dagster as dg
    import yaml

    from mlx_resources.hot_swap import HotSwapError, reload_code_location
    from tests.deploy._stack import Stack
    from tests.deploy.conftest import _admin_connect, pg_env, prod_config, small_composition_text

    folder = Path(tempfile.mkdtemp(prefix="bench_reload_"))
    db = f"mlx_b_{uuid.uuid4().hex[:12]}"
    admin = _admin_connect()
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    stack = None
    try:
        (folder / "dagster").mkdir()
        (folder / "dagster" / "dagster.yaml").write_text(yaml.safe_dump(prod_config()))
        served, candidate = folder / "mlx.yaml", folder / "mlx.next.yaml"
        texts = [small_composition_text()]
        texts.append(texts[0].replace("scale: 0.05", "scale: 0.04"))
        served.write_text(texts[0])
        env = {
            **os.environ,
            **pg_env(db),
            "PYTHONPATH": str(ROOT),
            "MLX_HOME": str(folder),
            "DAGSTER_HOME": str(folder / "dagster"),
            "MLX_COMPOSITION": str(served),
        }
        os.environ.update({k: v for k, v in env.items() if k.startswith(("DAGSTER_", "MLX_"))})
        stack = Stack(env, folder)
        stack.start()
        url = f"http://127.0.0.1:{stack.web_port}"

        def swaps(tally: Tally) -> None:
            gap = args.seconds / (args.reloads + 1)
            for i in range(args.reloads):
                time.sleep(gap)
                candidate.write_text(texts[(i + 1) % 2])
                start = time.perf_counter()
                try:
                    reload_code_location(url, "mlx", composition=candidate, env=env)
                    tally.reloads += 1
                except HotSwapError as exc:
                    tally.request_failures.append(f"reload: {exc}")
                tally.reload_s.append(time.perf_counter() - start)

        base = phase(stack, args.seconds, args.clients, args.runs)
        swap = phase(stack, args.seconds, args.clients, args.runs, swap=swaps)
        with dg.DagsterInstance.from_config(str(folder / "dagster")) as instance:
            for tally in (base, swap):
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline and not all(
                    instance.get_run_by_id(r).is_finished for r in tally.runs
                ):
                    time.sleep(1)
            status = {r.run_id: r.status for r in instance.get_runs()}
        failed = {
            "baseline": [r for r in base.runs if status[r] != dg.DagsterRunStatus.SUCCESS],
            "reload": [r for r in swap.runs if status[r] != dg.DagsterRunStatus.SUCCESS],
        }
    finally:
        if stack is not None:
            stack.close()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()

    print(f"machine: {machine()}; load {load()}")
    print(
        f"{args.seconds:.0f} s per phase (the reload phase until its reloads are done), "
        f"{args.clients} GraphQL clients, {args.runs} runs per {args.seconds:.0f} s, "
        f"{swap.reloads}/{args.reloads} reloads "
        f"(median {median(swap.reload_s) if swap.reload_s else float('nan'):.1f} s each)\n"
    )
    widths = (10, 20, 20, 18, 10)
    header = ("phase", "requests failed", "runs failed", "GraphQL median s", "ratio")
    print(row(*header, widths=widths))
    base_median = median(base.latencies)
    for name, t in (("baseline", base), ("reload", swap)):
        runs_failed = len(failed[name]) + len(t.launch_failures)
        print(
            row(
                name,
                f"{len(t.request_failures)} of {t.requests}",
                f"{runs_failed} of {len(t.runs) + len(t.launch_failures)}",
                f"{median(t.latencies):.3f}",
                f"{median(t.latencies) / base_median:.2f}x",
                widths=widths,
            )
        )
    total = len(swap.request_failures) + len(failed["reload"]) + len(swap.launch_failures)
    for problem in (swap.request_failures + swap.launch_failures)[:5]:
        print(f"  failure: {problem}")
    print(f"\nfailed during reloads: {total} (goal 0)")


if __name__ == "__main__":
    print(f"machine: {machine()}; load average before: {load()}", flush=True)
    main()
    print(f"machine: {machine()}; load average after: {load()}", flush=True)

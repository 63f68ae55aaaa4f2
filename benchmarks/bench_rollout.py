"""Rollback speed: from a broken canary's first errors to traffic back on the stable version.

Real ``bentoml serve`` servers (the tests' minimal service: stable healthy, canary failing 30%
of its requests) behind the real nginx router, loopback clients (httpx, 4 threads, bounded).
Each trial starts a fresh canary and rolls it out at 10%. Two figures per trial, both measured
from the moment a client first received a canary 500:

* ``restored``: until the router's new workers serve the stable-only table (the controller's
  ``traffic_restored`` event: no new request reaches the canary after it);
* ``last to canary``: until the last request a client sent that the canary answered (the
  client's view: requests in flight at the switch are finished, not cut).

Baseline, same run: the same rollout judged only when the step's hold is reached
(``early_verdict=False``: monitor-then-decide, as the seed's deployment manager does). Goal:
``restored`` under 2 s.

    ./dev bench rollout [--trials N] [--hold N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import load, machine, median
from mlx_plugins.model_servers.rollout import (
    RolloutController,
    RolloutPolicy,
    ServedVersion,
)
from mlx_plugins.model_servers.routing import NginxRouter, RoutingTable
from tests.serving._rollout_support import (
    FixtureServer,
    LoadDriver,
    start_servers,
    stop_all,
)

GOAL_S = 2.0


def trial(
    router: NginxRouter, stable: ServedVersion, home: Path, policy: RolloutPolicy, n: int
) -> tuple[float, float, str]:
    (canary_handle,) = start_servers([FixtureServer(f"v{n + 2:04d}", fail_rate=0.3)], home)
    canary = ServedVersion(f"v{n + 2:04d}", [canary_handle])
    try:
        with LoadDriver(router.url, threads=4, max_requests=20_000, max_seconds=120) as drive:
            drive.wait_for(20, timeout_s=30)
            result = RolloutController(router, policy).run(stable, canary)
            outcomes = drive.stop()
    finally:
        stop_all([canary_handle])
    if result.decision != "rolled_back":
        raise SystemExit(f"trial {n}: the broken canary was {result.decision}: {result.reason}")
    to_canary = [o for o in outcomes if o.version == canary.version]
    first_error = min(o.done for o in to_canary if o.status == 500)
    restored = result.event_time("traffic_restored")
    failed = result.event_time("step_failed")
    assert restored is not None and failed is not None
    last_sent = max(o.sent for o in to_canary)
    lost = sum(1 for o in outcomes if o.status == 0)
    stable_failed = sum(1 for o in outcomes if o.version == stable.version and o.status != 200)
    note = (
        f"detected {(failed - first_error) * 1000:.0f} ms + switched "
        f"{(restored - failed) * 1000:.0f} ms; {len(outcomes)} requests, {lost} lost, "
        f"{stable_failed} stable failures"
    )
    return restored - first_error, last_sent - first_error, note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=3, help="early-verdict trials (default 3)")
    ap.add_argument("--baseline-trials", type=int, default=2)
    ap.add_argument("--hold", type=int, default=50, help="canary requests per step (default 50)")
    args = ap.parse_args()
    print(f"machine: {machine()}; load {load()}")
    with tempfile.TemporaryDirectory(prefix="mlx-bench-rollout-") as tmp:
        home = Path(tmp)
        (stable_handle,) = start_servers([FixtureServer("v0001")], home / "servers")
        stable = ServedVersion("v0001", [stable_handle])
        router = NginxRouter(home / "router").start(RoutingTable.single("v0001", stable.servers))
        try:
            figures: dict[str, list[tuple[float, float, str]]] = {"early": [], "baseline": []}
            for name, early, trials in (
                ("early", True, args.trials),
                ("baseline", False, args.baseline_trials),
            ):
                policy = RolloutPolicy(hold_requests=args.hold, early_verdict=early)
                for i in range(trials):
                    t0 = time.perf_counter()
                    n = sum(len(v) for v in figures.values())
                    r = trial(router, stable, home / "servers", policy, n)
                    figures[name].append(r)
                    print(
                        f"  {name:8} trial {i + 1}: restored {r[0] * 1000:7.0f} ms, last to "
                        f"canary {r[1] * 1000:7.0f} ms  ({r[2]}; {time.perf_counter() - t0:.0f} s)"
                    )
        finally:
            router.stop()
            stop_all([stable_handle])
    early = median([f[0] for f in figures["early"]])
    early_last = median([f[1] for f in figures["early"]])
    print(
        f"rollback, early verdict (median of {len(figures['early'])}): restored "
        f"{early * 1000:.0f} ms, last request to canary {early_last * 1000:.0f} ms after its "
        f"first error; goal < {GOAL_S:g} s: {'met' if early < GOAL_S else 'MISSED'}"
    )
    if figures["baseline"]:
        base = median([f[0] for f in figures["baseline"]])
        print(
            f"baseline, verdict at the end of the step (hold {args.hold} canary requests): "
            f"restored {base * 1000:.0f} ms after the first error; early/baseline = "
            f"{early / base:.3f} ({base / early:.1f}x faster)"
        )


if __name__ == "__main__":
    print(f"machine: {machine()}; load average before: {load()}", flush=True)
    main()
    print(f"machine: {machine()}; load average after: {load()}", flush=True)

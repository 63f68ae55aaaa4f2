"""Autoscaling: the rule (pure), and the local autoscaler following real loopback load up and
down with real ``bentoml serve`` replicas behind a real nginx router."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from mlx_plugins.model_servers.autoscaling import (
    AutoscalingPolicy,
    LocalAutoscaler,
    Observation,
    decide,
)
from mlx_plugins.model_servers.base import ServerHandle
from mlx_plugins.model_servers.rollout import ServedVersion
from mlx_plugins.model_servers.routing import (
    NginxRouter,
    RouterError,
    RoutingTable,
    find_nginx,
    read_access_log,
)
from tests.serving._rollout_support import FixtureServer, LoadDriver, start_servers, stop_all

SEED = AutoscalingPolicy(min_replicas=1, max_replicas=8, cooldown_s=60)


def _obs(at: float = 1000.0, **kw: float | None) -> Observation:
    return Observation(at=at, replicas=1, **{"queue_depth": 0.0, **kw})  # type: ignore[arg-type]


def test_seed_rules_double_when_overloaded_and_halve_when_idle() -> None:
    assert decide(SEED, 2, _obs(cpu_percent=95.0)).target == 4
    assert decide(SEED, 3, _obs(queue_depth=150.0)).target == 6
    hot = decide(SEED, 2, _obs(p95_ms=2500.0, cpu_percent=50.0))
    assert (hot.action, hot.target) == ("up", 4) and "p95 2500 ms > 2000 ms" in hot.reason
    assert decide(SEED, 6, _obs(cpu_percent=95.0)).target == 8  # capped at max
    assert decide(SEED, 8, _obs(cpu_percent=10.0, queue_depth=1.0)).target == 4
    assert decide(SEED, 3, _obs(cpu_percent=10.0, queue_depth=1.0)).target == 1
    assert decide(SEED, 1, _obs(cpu_percent=10.0)).action == "hold"  # at min
    # between the bounds: nothing to do
    assert decide(SEED, 2, _obs(cpu_percent=50.0, queue_depth=50.0)).action == "hold"
    # idle needs CPU *and* queue depth low
    assert decide(SEED, 4, _obs(cpu_percent=10.0, queue_depth=20.0)).action == "hold"


def test_cooldown_holds_changes_and_bounds_do_not_wait() -> None:
    held = decide(SEED, 2, _obs(at=1030.0, cpu_percent=95.0), last_change=1000.0)
    assert (held.action, held.target) == ("cooldown", 2) and "30.0 s more" in held.reason
    assert decide(SEED, 2, _obs(at=1061.0, cpu_percent=95.0), last_change=1000.0).target == 4
    fix = decide(SEED, 12, _obs(at=1001.0), last_change=1000.0)
    assert (fix.action, fix.target) == ("bounds", 8)


def test_policy_refuses_inconsistent_bounds() -> None:
    with pytest.raises(ValidationError, match=r"min_replicas \(5\) is above max_replicas \(2\)"):
        AutoscalingPolicy(min_replicas=5, max_replicas=2)
    with pytest.raises(ValidationError, match="would flap"):
        AutoscalingPolicy(scale_up_queue_depth=5, scale_down_queue_depth=5)


def test_local_autoscaler_follows_load_up_and_down_with_cooldown(tmp_path: Path) -> None:
    pytest.importorskip("bentoml")
    try:
        find_nginx()
    except RouterError:
        pytest.skip("nginx not installed (./dev test installs it)")
    spec = FixtureServer("v0001", delay_ms=40)  # each request holds its replica 40 ms
    started: list[ServerHandle] = []

    def start_replica() -> ServerHandle:
        (handle,) = start_servers([spec], tmp_path / "servers")
        started.append(handle)
        return handle

    policy = AutoscalingPolicy(
        min_replicas=1,
        max_replicas=2,
        scale_up_queue_depth=2.0,  # 8 clients on one replica: ~8 in flight
        scale_down_queue_depth=0.5,
        # CPU and p95 out of play: this test is about queue depth (a shared machine's CPU is
        # noise)
        scale_up_cpu_percent=1e6,
        scale_down_cpu_percent=1e5,
        scale_up_p95_ms=1e9,
        cooldown_s=6.0,
        interval_s=1.0,
    )
    router = None
    try:
        version = ServedVersion("v0001", [start_replica()])
        router = NginxRouter(tmp_path / "router").start(
            RoutingTable.single("v0001", version.servers)
        )
        scaler = LocalAutoscaler(policy, router, version, start_replica).start()
        try:
            with LoadDriver(router.url, threads=8, pause_s=0, max_seconds=150) as load:
                deadline = time.monotonic() + 120
                while scaler.replicas < 2 and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert scaler.replicas == 2, scaler.history[-3:]
                two = [f"127.0.0.1:{h.port}" for h in started]
                load.wait_for(load.count + 200, timeout_s=30)  # some traffic on two replicas
                outcomes = load.stop()
            # idle now: back to one replica, once the cooldown since the scale-up is over
            deadline = time.monotonic() + 60
            while scaler.replicas > 1 and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            scaler.stop()
        assert scaler.errors == []
        assert scaler.replica_counts() == [1, 2, 1]
        actions = [d.action for d in scaler.history]
        up, down = actions.index("up"), actions.index("down")
        assert up < down
        up_d, down_d = scaler.history[up], scaler.history[down]
        assert "queue depth" in up_d.reason and up_d.observation.queue_depth > 2.0
        assert down_d.observation.queue_depth < 0.5
        # the scale-down waited out the cooldown after the scale-up was in place
        assert up_d.applied_at is not None
        assert down_d.observation.at - up_d.applied_at >= policy.cooldown_s
        # and while load was high at 2 replicas (the max) it held instead of growing
        assert all(d.target <= 2 for d in scaler.history)
        # no request lost or failed while replicas came and went
        assert outcomes and [o for o in outcomes if o.status != 200] == []
        # both replicas served through the router; the one removed is stopped
        upstreams = {e["upstream"] for e in read_access_log(router.access_log)}
        assert set(two) <= upstreams
        assert router.table.route("v0001").servers == (two[0],)
        assert not started[1].alive() and started[0].alive()
    finally:
        if router is not None:
            router.stop()
        stop_all(started)

"""A rollout between servers of the ``bentoml`` model_server plugin (the shared serving
fixtures): its servers' metrics (``mlx_serving_*``) are read, a healthy canary is promoted; and
a broken canary beside a plugin-served stable version is rolled back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("bentoml")

from mlx_plugins.model_servers.base import ServedPackage, ServerHandle, example_row
from mlx_plugins.model_servers.rollout import RolloutController, RolloutPolicy, ServedVersion
from mlx_plugins.model_servers.routing import NginxRouter, RouterError, RoutingTable, find_nginx
from mlx_plugins.model_servers.routing.metrics import MetricNames, detect_names
from tests.serving._rollout_support import FixtureServer, LoadDriver, running

try:
    find_nginx()
except RouterError:
    pytest.skip("nginx not installed (./dev test installs it)", allow_module_level=True)


def test_plugin_servers_promote_and_roll_back(
    tmp_path: Path,
    tiny_package: ServedPackage,
    start_server: Callable[..., ServerHandle],
) -> None:
    blue, green = start_server(tiny_package), start_server(tiny_package)
    assert detect_names(blue.metrics_text()) == MetricNames.mlx_serving()
    body = {"rows": [example_row(tiny_package.request_schema)]}
    stable = ServedVersion("v0001-blue", [blue])
    canary = ServedVersion("v0001-green", [green])
    router = NginxRouter(tmp_path / "router").start(
        RoutingTable.single(stable.version, stable.servers)
    )
    try:
        policy = RolloutPolicy(hold_requests=30)
        with LoadDriver(router.url, threads=4, max_seconds=120, body=body) as load:
            load.wait_for(20, timeout_s=30)
            promoted = RolloutController(router, policy).run(stable, canary)
            outcomes = load.stop()
        assert promoted.decision == "promoted", promoted.reason
        assert all(s.canary.requests >= 30 and s.canary.client_errors == 0 for s in promoted.steps)
        assert outcomes and {o.status for o in outcomes} == {200}
        assert not blue.alive() and green.alive()

        # now green is stable; a broken canary (the tests' minimal service) beside it
        with running([FixtureServer("v0009", fail_rate=0.5)], tmp_path / "broken") as (bad,):
            broken = ServedVersion("v0009", [bad])
            with LoadDriver(router.url, threads=4, max_seconds=120, body=body) as load:
                load.wait_for(20, timeout_s=30)
                result = RolloutController(router, policy).run(canary, broken)
                outcomes = load.stop()
        assert result.decision == "rolled_back", result.reason
        assert [s.canary_percent for s in result.steps] == [10.0]
        assert [o for o in outcomes if o.status == 0] == []
        assert [o for o in outcomes if o.version == canary.version and o.status != 200] == []
        assert router.table.weights == {canary.version: 100.0}
    finally:
        router.stop()

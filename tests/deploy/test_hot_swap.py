"""Hot swap with zero downtime on a production-shaped stack (tests/deploy/_stack.py).

A run is going (a quarter of daily partitions), the composition file changes (the data source's
``scale``: a config switch that changes the raw tables' code version), the code location is
reloaded through the webserver (``mlx_resources.hot_swap``, Dagster's GraphQL client) while a
poller keeps asking the webserver for the asset graph. The running run finishes on the old
composition, the next run uses the new one, no run fails, no GraphQL request fails. Then a
composition that fails validation is refused at reload with its clear error and the location
keeps serving the last good one.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from mlx_resources.hot_swap import HotSwapError, reload_code_location
from tests.deploy._stack import GraphQLError, Stack, range_tags
from tests.deploy.conftest import ProdHome, small_composition_text, wait_for

pytestmark = pytest.mark.slow

GRAPH = "{ assetNodes { assetKey { path } opVersion } }"


class Poller(threading.Thread):
    """Asks the webserver for the asset graph and the location's status until stopped."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.done = threading.Event()
        self.ok = 0
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.done.is_set():
            try:
                assert self.stack.post(GRAPH)["assetNodes"], "empty asset graph"
                status = self.stack.location_status()
                assert status[1] == "RepositoryLocation", f"location status {status}"
                self.ok += 1
            except (GraphQLError, AssertionError) as exc:
                self.failures.append(f"{time.strftime('%X')} {exc}")
            self.done.wait(0.2)


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # the code server never reads half a file


def _materialized_code_versions(instance, run_id: str, asset: str) -> set[str]:  # type: ignore[no-untyped-def]
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset)), limit=10_000
    ).records
    return {
        r.asset_materialization.tags["dagster/code_version"] for r in records if r.run_id == run_id
    }


def test_reload_under_a_running_run_swaps_the_composition_with_zero_downtime(
    prod_home: ProdHome, tmp_path: Path
):
    composition = tmp_path / "mlx.yaml"
    old_text = small_composition_text()
    assert "scale: 0.05" in old_text
    _write(composition, old_text)
    env = {**prod_home.env, "MLX_COMPOSITION": str(composition)}
    stack = Stack(env, tmp_path)
    poller = Poller(stack)
    try:
        stack.start()
        url = f"http://127.0.0.1:{stack.web_port}"
        old_version = stack.code_version("raw_flights")
        reference = stack.launch("reference")
        with prod_home.instance() as instance:
            wait_for(
                "the reference run",
                lambda: instance.get_run_by_id(reference).is_finished,
                timeout_s=300,
            )
            poller.start()
            running = stack.launch("daily", range_tags("2013-01-01", "2013-03-31"))
            wait_for(
                "the daily run to start",
                lambda: instance.get_run_by_id(running).status == dg.DagsterRunStatus.STARTED,
                timeout_s=300,
            )

            # The swap: a candidate with a new config for the data source, checked, installed
            # over the served file and reloaded.
            candidate = tmp_path / "mlx.next.yaml"
            new_text = old_text.replace("scale: 0.05", "scale: 0.04")
            _write(candidate, new_text)
            reload_started = time.time()
            reload_code_location(url, "mlx", composition=candidate, env=env)
            assert composition.read_text() == new_text
            new_version = stack.code_version("raw_flights")
            assert new_version != old_version
            after = stack.launch("daily", range_tags("2013-04-01", "2013-04-02"))

            for run_id in (running, after):
                wait_for(
                    f"run {run_id} to finish",
                    lambda r=run_id: instance.get_run_by_id(r).is_finished,
                    timeout_s=900,
                )
            runs = {r.run_id: r for r in instance.get_runs()}
            assert {r.status for r in runs.values()} == {dg.DagsterRunStatus.SUCCESS}, {
                r.run_id: r.status for r in runs.values()
            }
            started = instance.get_run_record_by_id(running)
            assert started.end_time > reload_started, "the run ended before the reload began"
            # The running run kept the composition it started with; the next one has the new.
            assert _materialized_code_versions(instance, running, "raw_flights") == {old_version}
            assert _materialized_code_versions(instance, after, "raw_flights") == {new_version}

            # A composition that fails validation: refused; the served file, the location and
            # the runs keep the last good one.
            _write(candidate, new_text.replace("epochs: 2", "epochs: true"))
            with pytest.raises(HotSwapError) as refused:
                reload_code_location(url, "mlx", composition=candidate, env=env)
            message = str(refused.value)
            assert "plugins.ml_platform.config.epochs" in message, message
            assert "fix:" in message and "keeps serving" in message, message
            assert str(candidate) in message
            assert composition.read_text() == new_text
            assert stack.location_status() == ("LOADED", "RepositoryLocation")
            assert stack.code_version("raw_flights") == new_version
            last = stack.launch("reference")
            wait_for(
                "a run after the refused reload",
                lambda: instance.get_run_by_id(last).is_finished,
                timeout_s=300,
            )
            assert instance.get_run_by_id(last).status == dg.DagsterRunStatus.SUCCESS
    finally:
        poller.done.set()
        if poller.is_alive():
            poller.join(timeout=60)
        stack.close()
    assert poller.ok > 0
    assert poller.failures == [], poller.failures[:5]

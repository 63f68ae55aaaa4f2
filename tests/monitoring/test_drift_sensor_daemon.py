"""The drift sensor under the real sensor daemon: a restart that loses the cursor does not
launch a second retraining run for the same drift event."""

from __future__ import annotations

import logging

import dagster as dg
import pytest
import yaml
from dagster._core.scheduler.instigation import InstigatorState, SensorInstigatorData
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.sensor import execute_sensor_iteration

from mlx_resources.platform import REPO_ROOT
from tests.monitoring.test_drift_sensor import _observe

pytestmark = pytest.mark.slow
SENSOR = "drift_retrain_sensor"


def _tick(ctx) -> None:
    list(execute_sensor_iteration(ctx, logging.getLogger("test"), None, None))


def _state(ctx, instance) -> tuple[InstigatorState, object]:
    location = next(iter(ctx.create_request_context().get_code_location_entries().values()))
    repo = next(iter(location.code_location.get_repositories().values()))
    sensor = repo.get_sensor(SENSOR)
    state = instance.get_instigator_state(sensor.get_remote_origin_id(), sensor.selector_id)
    return state, sensor


def _rewind(instance, state: InstigatorState, cursor: str | None) -> None:
    """As if the daemon had died before saving the cursor, long enough ago to tick again."""
    data = state.instigator_data
    instance.update_instigator_state(
        state.with_data(
            SensorInstigatorData(
                last_tick_timestamp=(data.last_tick_timestamp or 0) - 3600,
                min_interval=data.min_interval,
                cursor=cursor,
                sensor_type=data.sensor_type,
            )
        )
    )


def test_restart_does_not_launch_a_second_run(tmp_path):
    overrides = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    target = ModuleTarget(
        module_name="mlx_assets.definitions",
        attribute="defs",
        working_directory=str(REPO_ROOT),
        location_name="mlx",
    )
    with (
        dg.instance_for_test(temp_dir=str(tmp_path), overrides=overrides) as instance,
        create_test_daemon_workspace_context(target, instance) as ctx,
    ):
        _observe(instance, "2013-07-01", "retrain")
        _tick(ctx)
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/sensor_name": SENSOR}))
        assert len(runs) == 1
        assert runs[0].job_name == "training"
        assert runs[0].tags["mlx/drift_partition"] == "2013-07-01"
        state, _ = _state(ctx, instance)
        assert state.instigator_data.cursor  # the daemon saved the cursor

        _rewind(instance, state, cursor=None)
        _tick(ctx)
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/sensor_name": SENSOR}))
        assert len(runs) == 1, "the replayed event must not launch a second run"

        _observe(instance, "2013-07-02", "retrain")  # a new event, but inside the cooldown
        state, _ = _state(ctx, instance)
        _rewind(instance, state, cursor=state.instigator_data.cursor)
        _tick(ctx)
        assert len(instance.get_runs(dg.RunsFilter(tags={"dagster/sensor_name": SENSOR}))) == 1

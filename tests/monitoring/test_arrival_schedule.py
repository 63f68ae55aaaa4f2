"""The arrival schedule brings in the next unmonitored day, once a model exists."""

from __future__ import annotations

import dagster as dg

from mlx_assets.monitoring.arrival_schedule import build_arrival_schedule
from tests.conftest import flights_lifecycle


def _materialize(instance, key: str, partition: str | None = None) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=partition))


def _tick(instance) -> dg.RunRequest | dg.SkipReason:
    schedule = build_arrival_schedule(flights_lifecycle())
    return schedule(dg.build_schedule_context(instance=instance))


def test_waits_for_a_model_then_walks_forward_one_day_at_a_time():
    with dg.instance_for_test() as instance:
        first = _tick(instance)
        assert isinstance(first, dg.SkipReason)
        assert "run the lifecycle" in first.skip_message
        _materialize(instance, "training_set")
        for day in ("2013-01-01", "2013-01-02", "2013-01-03"):
            _materialize(instance, "feature_drift", day)
        request = _tick(instance)
        assert isinstance(request, dg.RunRequest)
        assert request.partition_key == "2013-01-04"
        assert request.run_key == "arrival:2013-01-04"
        assert _tick(instance).run_key == request.run_key  # evaluated again: the same run


def test_skips_when_every_day_is_monitored():
    with dg.instance_for_test() as instance:
        _materialize(instance, "training_set")
        from mlx_assets.partitions import DAILY_2013

        for day in DAILY_2013.get_partition_keys():
            _materialize(instance, "feature_drift", day)
        result = _tick(instance)
        assert isinstance(result, dg.SkipReason)
        assert result.skip_message == "every day is monitored"


def _run(instance, status: dg.DagsterRunStatus, **tags: str) -> dg.DagsterRun:
    from dagster._core.remote_origin import (
        InProcessCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.utils import make_new_run_id

    origin = RemoteJobOrigin(  # a queued run must say where its code lives
        repository_origin=RemoteRepositoryOrigin(
            code_location_origin=InProcessCodeLocationOrigin(
                loadable_target_origin=LoadableTargetOrigin(module_name="mlx_assets.definitions")
            ),
            repository_name="__repository__",
        ),
        job_name="monitoring",
    )
    run = dg.DagsterRun(
        job_name="monitoring",
        run_id=make_new_run_id(),
        status=status,
        tags=tags,
        remote_job_origin=origin,
    )
    instance.add_run(run)
    return run


def test_a_day_in_flight_is_not_requested_again():
    """Issue 9 item 10: a stalled queue must not collect the same day once per tick."""
    with dg.instance_for_test() as instance:
        _materialize(instance, "training_set")
        _materialize(instance, "feature_drift", "2013-01-01")
        first = _tick(instance)
        assert first.partition_key == "2013-01-02"
        for status in (
            dg.DagsterRunStatus.QUEUED,
            dg.DagsterRunStatus.NOT_STARTED,
            dg.DagsterRunStatus.STARTING,
            dg.DagsterRunStatus.STARTED,
        ):
            run = _run(instance, status, **{"dagster/partition": "2013-01-02"})
            nxt = _tick(instance)
            assert nxt.partition_key == "2013-01-03", status  # the next day, not 01-02 again
            instance.delete_run(run.run_id)
        # a range run in flight (the lifecycle's monitoring run) covers its days too
        _run(
            instance,
            dg.DagsterRunStatus.STARTED,
            **{
                "dagster/asset_partition_range_start": "2013-01-02",
                "dagster/asset_partition_range_end": "2013-01-10",
            },
        )
        assert _tick(instance).partition_key == "2013-01-11"


def test_a_failed_day_is_retried_under_a_new_key_then_stops_with_a_reason():
    with dg.instance_for_test() as instance:
        _materialize(instance, "training_set")
        tags = {"dagster/partition": "2013-01-01", "dagster/schedule_name": "arrival"}
        keys = []
        for _ in range(3):
            request = _tick(instance)
            assert request.partition_key == "2013-01-01"
            keys.append(request.run_key)
            _run(instance, dg.DagsterRunStatus.FAILURE, **tags)
        assert keys == [
            "arrival:2013-01-01",
            "arrival:2013-01-01:retry-1",
            "arrival:2013-01-01:retry-2",
        ]
        stop = _tick(instance)
        assert isinstance(stop, dg.SkipReason)
        assert "the monitoring run for 2013-01-01 failed 3 times" in stop.skip_message
        assert "-m mlx_assets.definitions" in stop.skip_message

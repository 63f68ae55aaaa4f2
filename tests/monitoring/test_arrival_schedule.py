"""The arrival schedule brings in the next unmonitored day, once a model exists."""

from __future__ import annotations

import dagster as dg

from mlx_assets.monitoring.arrival_schedule import build_arrival_schedule


def _materialize(instance, key: str, partition: str | None = None) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=partition))


def _tick(instance) -> dg.RunRequest | dg.SkipReason:
    schedule = build_arrival_schedule("* * * * *")
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

"""The drift sensor: one retraining run per drift event, across repeats and restarts."""

from __future__ import annotations

import dagster as dg
import pytest

from mlx_assets.monitoring.drift_sensor import DriftCursor, drift_retrain_sensor
from mlx_assets.monitoring.feature_drift import DRIFT_ASSET
from mlx_resources.platform import DriftPolicy, Platform


def _observe(instance: dg.DagsterInstance, day: str, severity: str, share: float = 0.6) -> None:
    instance.report_runless_asset_event(
        dg.AssetObservation(
            asset_key=DRIFT_ASSET,
            partition=day,
            metadata={
                "drift_share": share,
                "dataset_drift": severity == "retrain",
                "severity": severity,
                "drifted_columns": dg.MetadataValue.json(["temp", "dewp"]),
            },
        )
    )


def _evaluate(instance, cursor: str | None, platform: Platform | None = None):
    ctx = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"platform": platform or Platform()}
    )
    return drift_retrain_sensor(ctx)


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_one_run_per_drift_event_and_nothing_for_warnings(instance):
    _observe(instance, "2013-06-01", "ok", 0.1)
    _observe(instance, "2013-06-02", "warn", 0.3)
    _observe(instance, "2013-06-03", "retrain", 0.7)
    result = _evaluate(instance, None)
    assert [r.tags["mlx/drift_partition"] for r in result.run_requests] == ["2013-06-03"]
    req = result.run_requests[0]
    assert req.run_key.startswith("drift:2013-06-03:")
    assert req.run_config == {"ops": {"training_set": {"config": {"test_end": "2013-06-03"}}}}
    # the sensor records what it did as an observation on the model
    assert result.asset_events[0].asset_key == dg.AssetKey("model")
    assert result.asset_events[0].metadata["drift_partition"].value == "2013-06-03"
    # evaluating again from the new cursor finds nothing new
    again = _evaluate(instance, result.cursor)
    assert isinstance(again, dg.SkipReason)


def test_repeated_evaluation_after_a_lost_cursor_asks_for_the_same_run(instance):
    _observe(instance, "2013-07-01", "retrain")
    first = _evaluate(instance, None)
    replay = _evaluate(instance, None)  # the daemon died before saving the cursor
    assert [r.run_key for r in first.run_requests] == [r.run_key for r in replay.run_requests]


def test_cooldown_stops_flapping(instance):
    for day in ("2013-07-01", "2013-07-02", "2013-07-03"):
        _observe(instance, day, "retrain")
    result = _evaluate(instance, None)
    assert len(result.run_requests) == 1, "events within the cooldown retrain once"
    no_cooldown = Platform(drift=DriftPolicy(cooldown_minutes=0))
    result = _evaluate(instance, None, no_cooldown)
    assert len(result.run_requests) == 3
    # the cooldown survives restarts: it lives in the cursor
    cursor = DriftCursor.model_validate_json(_evaluate(instance, None).cursor)
    assert cursor.last_retrain_at is not None
    _observe(instance, "2013-07-04", "retrain")
    later = _evaluate(instance, cursor.model_dump_json())
    assert later.run_requests == []


def test_window_is_not_shifted_when_disabled(instance):
    _observe(instance, "2013-07-01", "retrain")
    fixed = Platform(drift=DriftPolicy(shift_window=False))
    (req,) = _evaluate(instance, None, fixed).run_requests
    assert req.run_config == {"ops": {"training_set": {"config": {}}}}

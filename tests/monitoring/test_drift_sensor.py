"""The drift sensor: at most one retraining per day of new data, never a run that cannot succeed,
and a failed retraining stays retriable (bounded)."""

from __future__ import annotations

from datetime import date, timedelta

import dagster as dg
import pytest
from dagster._core.utils import make_new_run_id

from mlx_assets.monitoring.drift_sensor import DriftCursor, evaluate_drift, run_key
from mlx_assets.monitoring.events import DriftObservation
from mlx_assets.monitoring.feature_drift import DRIFT_ASSET
from mlx_resources.platform import DriftPolicy, Platform, TrainingWindow
from tests.conftest import flights_lifecycle

# A short window keeps the fixtures small: train 06-01..06-15, valid 06-16..06-20,
# test 06-21..06-30.
WINDOW = TrainingWindow(
    train_start="2013-06-01",
    train_end="2013-06-20",
    valid_days=5,
    test_start="2013-06-21",
    test_end="2013-06-30",
)


def _days(first: str, last: str) -> list[str]:
    a, b = date.fromisoformat(first), date.fromisoformat(last)
    return [(a + timedelta(n)).isoformat() for n in range((b - a).days + 1)]


def _platform(**drift) -> Platform:
    return Platform(window=WINDOW, drift=DriftPolicy(**drift))


def _history(instance: dg.DagsterInstance, first: str = "2013-06-01", last: str = "2013-07-31"):
    """flight_features partitions that exist (the days a retraining window can use)."""
    for day in _days(first, last):
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key="flight_features", partition=day)
        )


def _drift(
    instance: dg.DagsterInstance,
    day: str,
    severity: str = "retrain",
    share: float = 0.6,
    reference_end: str | None = None,
) -> None:
    """A feature_drift partition materialized with its own DriftObservation metadata."""
    obs = DriftObservation(
        day=day,
        drift_share=share,
        dataset_drift=severity == "retrain",
        severity=severity,  # type: ignore[arg-type]
        drifted_columns=["temp", "dewp"],
        rows=900,
        reference_end=reference_end,
    )
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=DRIFT_ASSET, partition=day, metadata=obs.to_metadata())
    )


def _trained(instance: dg.DagsterInstance, window: TrainingWindow) -> None:
    """A training_set materialization: the current model's window."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key="training_set",
            metadata={"window": dg.MetadataValue.json(window.model_dump())},
        )
    )


def _evaluate(instance, cursor: str | None, platform: Platform | None = None):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor)
    return evaluate_drift(ctx, flights_lifecycle(platform or _platform()))


def _run(instance, key: str, status: dg.DagsterRunStatus, **tags: str) -> dg.DagsterRun:
    run = dg.DagsterRun(
        job_name="training",
        run_id=make_new_run_id(),
        status=status,
        tags={"dagster/run_key": key, **tags},
    )
    instance.add_run(run)
    return run


def _ticks(instance, platform: Platform, n: int, cursor: str | None = None):
    """n evaluations in a row, each from the cursor the last one saved; all run requests."""
    requests = []
    for _ in range(n):
        result = _evaluate(instance, cursor, platform)
        if isinstance(result, dg.SensorResult):
            requests += result.run_requests or []
            cursor = result.cursor
    return requests, cursor


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        _history(inst)
        yield inst


def test_one_run_per_drift_day_and_nothing_for_warnings(instance):
    _drift(instance, "2013-07-01", "ok", 0.1)
    _drift(instance, "2013-07-02", "warn", 0.3)
    _drift(instance, "2013-07-03", "retrain", 0.7)
    result = _evaluate(instance, None)
    assert [r.tags["mlx/drift_partition"] for r in result.run_requests] == ["2013-07-03"]
    req = result.run_requests[0]
    assert req.run_key == "drift:2013-07-03"
    assert req.run_config == {"ops": {"training_set": {"config": {"test_end": "2013-07-03"}}}}
    # the sensor records what it did as an observation on the model
    assert result.asset_events[0].asset_key == dg.AssetKey("model")
    assert result.asset_events[0].metadata["drift_partition"].value == "2013-07-03"
    # evaluating again from the new cursor finds nothing new
    again = _evaluate(instance, result.cursor)
    assert isinstance(again, dg.SkipReason)


def test_observations_alone_request_nothing(instance):
    """Drift becomes visible only with its day's materialization, never from observations."""
    instance.report_runless_asset_event(
        dg.AssetObservation(
            asset_key=DRIFT_ASSET,
            partition="2013-07-03",
            metadata={"severity": "retrain", "drift_share": 0.7, "dataset_drift": True},
        )
    )
    result = _evaluate(instance, None)
    assert isinstance(result, dg.SkipReason)


def test_days_inside_or_before_the_current_models_window_never_retrain(instance):
    _trained(instance, WINDOW)  # the current model was tested up to 2013-06-30
    for day in ("2013-06-01", "2013-06-25", "2013-06-30"):
        _drift(instance, day)
    result = _evaluate(instance, None, _platform(cooldown_minutes=0))
    assert result.run_requests == []
    _drift(instance, "2013-07-02")  # new to that model
    later = _evaluate(instance, result.cursor, _platform(cooldown_minutes=0))
    assert [r.run_key for r in later.run_requests] == ["drift:2013-07-02"]


def test_reference_end_carried_by_the_observation_counts_too(instance):
    _drift(instance, "2013-07-03", reference_end="2013-07-05")
    _drift(instance, "2013-07-06", reference_end="2013-07-05")
    result = _evaluate(instance, None, _platform(cooldown_minutes=0))
    assert [r.tags["mlx/drift_partition"] for r in result.run_requests] == ["2013-07-06"]


def test_a_retrained_model_moves_the_line(instance):
    _trained(instance, WINDOW)
    _drift(instance, "2013-07-02")
    first = _evaluate(instance, None, _platform(cooldown_minutes=0))
    assert len(first.run_requests) == 1
    _trained(instance, WINDOW.shifted("2013-07-02"))  # the retraining ran
    _drift(instance, "2013-07-01")  # late arrival: older than the new model's test end
    _drift(instance, "2013-07-03")
    second = _evaluate(instance, first.cursor, _platform(cooldown_minutes=0))
    assert [r.tags["mlx/drift_partition"] for r in second.run_requests] == ["2013-07-03"]


def test_window_before_the_first_day_skips_with_the_window_and_the_days():
    with dg.instance_for_test() as instance:
        _history(instance, first="2013-06-10")  # nothing before 06-10
        _drift(instance, "2013-07-02")  # window would start 2013-06-03
        result = _evaluate(instance, None)
        assert result.run_requests == []
        msg = result.skip_reason.skip_message
        assert "not retraining for drift on 2013-07-02" in msg
        assert "train 2013-06-03..2013-06-17" in msg
        assert "starts before the first day with data (2013-06-10)" in msg
        assert "days with data: 52 days, 2013-06-10..2013-07-31" in msg
        # the day is not requested later either: the cursor moved on
        assert isinstance(_evaluate(instance, result.cursor), dg.SkipReason)


def test_too_little_history_names_the_empty_split():
    with dg.instance_for_test() as instance:
        # train and test days exist, the valid days (06-18..06-22 after the shift) do not
        _history(instance, "2013-06-01", "2013-06-17")
        _history(instance, "2013-06-23", "2013-07-31")
        _drift(instance, "2013-07-02")
        result = _evaluate(instance, None)
        assert result.run_requests == []
        assert "has no 'valid' rows" in result.skip_reason.skip_message
        assert "valid 2013-06-18..2013-06-22" in result.skip_reason.skip_message


def test_the_default_composition_never_reaches_back_into_2012(instance):
    """The seen bug: drift on 2013-01-01 asked for a window in 2012 that could not train."""
    _history(instance, "2013-01-01", "2013-12-31")
    _drift(instance, "2013-01-01")
    result = _evaluate(instance, None, Platform())
    assert result.run_requests == []
    assert "2012-" in result.skip_reason.skip_message  # names the window it refused


def test_a_day_is_requested_once_however_often_it_is_materialized(instance):
    no_cooldown = _platform(cooldown_minutes=0)
    for _ in range(3):
        _drift(instance, "2013-07-02")
    _drift(instance, "2013-07-03")
    requests, cursor = _ticks(instance, no_cooldown, 3)
    assert [r.run_key for r in requests] == ["drift:2013-07-02", "drift:2013-07-03"]
    _drift(instance, "2013-07-02")  # materialized again later
    more, _ = _ticks(instance, no_cooldown, 3, cursor)
    assert more == []


def test_repeated_evaluation_after_a_lost_cursor_asks_for_the_same_run(instance):
    _drift(instance, "2013-07-01")
    first = _evaluate(instance, None)
    replay = _evaluate(instance, None)  # the daemon died before saving the cursor
    assert [r.run_key for r in first.run_requests] == [r.run_key for r in replay.run_requests]


def test_a_failed_retraining_is_retried_then_given_up(instance, caplog):
    platform = _platform(cooldown_minutes=0, max_attempts=2)
    _drift(instance, "2013-07-02")
    first = _evaluate(instance, None, platform)
    (req,) = first.run_requests
    # the run is still running: nothing new, the event stays pending
    running = _run(instance, req.run_key, dg.DagsterRunStatus.STARTED)
    waiting = _evaluate(instance, first.cursor, platform)
    assert isinstance(waiting, dg.SkipReason) and "2013-07-02" in waiting.skip_message
    # it failed (after its training_set step moved the window): the event is eligible again,
    # under a new run key
    instance.delete_run(running.run_id)
    _run(instance, req.run_key, dg.DagsterRunStatus.FAILURE)
    _trained(instance, WINDOW.shifted("2013-07-02"))
    retry = _evaluate(instance, first.cursor, platform)
    assert [r.run_key for r in retry.run_requests] == ["drift:2013-07-02:attempt-2"]
    assert retry.run_requests[0].tags["mlx/drift_attempt"] == "2"
    # the second run fails too: max_attempts=2 is spent, the sensor says so and stops
    _run(instance, "drift:2013-07-02:attempt-2", dg.DagsterRunStatus.FAILURE)
    gave_up = _evaluate(instance, retry.cursor, platform)
    assert gave_up.run_requests == []
    assert gave_up.asset_events[0].metadata["action"].value == "retraining gave up"
    assert DriftCursor.model_validate_json(gave_up.cursor).pending == {}
    assert isinstance(_evaluate(instance, gave_up.cursor, platform), dg.SkipReason)


def test_a_failed_run_that_dagster_will_retry_is_still_in_flight(instance):
    platform = _platform(cooldown_minutes=0)
    _drift(instance, "2013-07-02")
    first = _evaluate(instance, None, platform)
    failed = _run(
        instance,
        run_key("2013-07-02", 1),
        dg.DagsterRunStatus.FAILURE,
        **{"dagster/will_retry": "true"},
    )
    assert isinstance(_evaluate(instance, first.cursor, platform), dg.SkipReason)
    # Dagster's retry succeeded: the event is done, nothing is requested again
    retry = _run(
        instance, "other", dg.DagsterRunStatus.SUCCESS, **{"dagster/parent_run_id": failed.run_id}
    )
    instance.add_run_tags(failed.run_id, {"dagster/auto_retry_run_id": retry.run_id})
    done = _evaluate(instance, first.cursor, platform)
    assert done.run_requests == []
    assert DriftCursor.model_validate_json(done.cursor).pending == {}


def test_cooldown_stops_flapping(instance):
    for day in ("2013-07-01", "2013-07-02", "2013-07-03"):
        _drift(instance, day)
    result = _evaluate(instance, None)
    assert len(result.run_requests) == 1, "events within the cooldown retrain once"
    result = _evaluate(instance, None, _platform(cooldown_minutes=0))
    assert len(result.run_requests) == 3
    # the cooldown survives restarts: it lives in the cursor
    cursor = DriftCursor.model_validate_json(_evaluate(instance, None).cursor)
    assert cursor.last_retrain_at is not None
    _drift(instance, "2013-07-04")
    later = _evaluate(instance, cursor.model_dump_json())
    assert later.run_requests == []


def test_window_is_not_shifted_when_disabled(instance):
    _drift(instance, "2013-07-01")
    (req,) = _evaluate(instance, None, _platform(shift_window=False)).run_requests
    assert req.run_config == {"ops": {"training_set": {"config": {}}}}


def test_metadata_without_a_drift_observation_is_skipped_not_fatal(instance):
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=DRIFT_ASSET, partition="2013-07-01", metadata={"x": 1})
    )
    _drift(instance, "2013-07-02")
    result = _evaluate(instance, None)
    assert [r.run_key for r in result.run_requests] == ["drift:2013-07-02"]


def _gate_result(instance, run_id: str, passed: bool) -> None:
    """The beats_baseline check's evaluation, as the training run reports it."""
    from dagster._core.events import AssetCheckEvaluationPlanned, DagsterEvent, DagsterEventType

    GATE = flights_lifecycle().gate_check

    for kind, data in (
        (
            DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED,
            AssetCheckEvaluationPlanned(asset_key=GATE.asset_key, check_name=GATE.name),
        ),
        (
            DagsterEventType.ASSET_CHECK_EVALUATION,
            dg.AssetCheckEvaluation(asset_key=GATE.asset_key, check_name=GATE.name, passed=passed),
        ),
    ):
        instance.report_dagster_event(
            DagsterEvent(
                event_type_value=kind.value, job_name="training", event_specific_data=data
            ),
            run_id=run_id,
        )


def test_a_retrained_model_that_fails_the_gate_is_not_retrained_again(instance):
    platform = _platform(cooldown_minutes=0)
    _drift(instance, "2013-07-02")
    first = _evaluate(instance, None, platform)
    failed = _run(instance, run_key("2013-07-02", 1), dg.DagsterRunStatus.FAILURE)
    _gate_result(instance, failed.run_id, passed=False)
    result = _evaluate(instance, first.cursor, platform)
    assert result.run_requests == []
    assert result.asset_events[0].metadata["action"].value == "retrained model failed the gate"
    assert DriftCursor.model_validate_json(result.cursor).pending == {}

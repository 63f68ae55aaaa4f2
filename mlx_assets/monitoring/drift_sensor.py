"""The event bus: each day's drift in, at most one retraining per day of data out.

The sensor reads ``feature_drift`` MATERIALIZATIONS (each partition's own ``DriftObservation``
metadata, so a day's drift is visible only once that day is materialized) after the storage id
in its cursor, and makes one decision per day:

- a day that is inside or before the current model's window (the latest ``training_set``
  materialization's ``window``, or the observation's ``reference_end``) is not news to that
  model and never requests a retraining;
- a day already requested is not requested again, even when it is materialized again;
- the retraining window (moved to end on the day) is checked BEFORE the request with the rule
  the ``training_set`` asset enforces (``window_problem``) on the materialized feature days: a
  window that starts before the first day with data, or has an empty split, is skipped with a
  reason naming the window and the available days, never launched;
- a cooldown keeps a flapping feature from retraining every tick.

Each request's run key is derived from the day (``drift:<day>``, then ``drift:<day>:attempt-<n>``)
so a tick repeated after a crash asks for the same run and Dagster launches it once. Requests
stay in the cursor until their run (with Dagster's automatic retries) succeeds; a run that
failed makes its event eligible again, up to ``DriftPolicy.max_attempts`` runs per day.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import ValidationError

from mlx_assets.component.spec import Lifecycle
from mlx_assets.monitoring.events import DriftObservation
from mlx_assets.training.training_set import describe_window, window_problem
from mlx_resources.platform import TrainingWindow

if TYPE_CHECKING:
    # the cursor's models, re-exported through __getattr__ below
    from mlx_assets.monitoring.drift_cursor import DriftCursor as DriftCursor
    from mlx_assets.monitoring.drift_cursor import Pending as Pending

BATCH = 500
SENSOR_NAME = "drift_retrain_sensor"
TRIGGER_TAG = "mlx/trigger"
DAY_TAG = "mlx/drift_partition"
ATTEMPT_TAG = "mlx/drift_attempt"
RUN_KEY_TAG = "dagster/run_key"
AUTO_RETRY_RUN_ID_TAG = "dagster/auto_retry_run_id"


def __getattr__(name: str) -> Any:
    """:class:`DriftCursor` and :class:`Pending`, still importable from here. They live in
    :mod:`mlx_assets.monitoring.drift_cursor`, imported by a sensor tick: loading the code
    location no longer creates them (docs/lifecycle_component.md, "Load time")."""
    if name in ("DriftCursor", "Pending"):
        from mlx_assets.monitoring import drift_cursor

        return getattr(drift_cursor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_key(day: str, attempt: int) -> str:
    """Run key of the ``attempt``-th (1-based) retraining for ``day``."""
    return f"drift:{day}" if attempt == 1 else f"drift:{day}:attempt-{attempt}"


def retrain_request(day: str, attempt: int, lc: Lifecycle) -> dg.RunRequest:
    """The training run for a drift event on ``day`` (ISO date), its window moved to end there."""
    config = {"test_end": day} if lc.drift.shift_window else {}
    op = "__".join(lc.training_set_key.path)  # the asset's op name
    return dg.RunRequest(
        run_key=run_key(day, attempt),
        run_config={"ops": {op: {"config": config}}},
        tags={TRIGGER_TAG: "drift", DAY_TAG: day, ATTEMPT_TAG: str(attempt)},
    )


def retrain_window(day: str, lc: Lifecycle) -> TrainingWindow:
    """The window the retraining for ``day`` trains on (what ``training_set`` will compute)."""
    return lc.window.shifted(day) if lc.drift.shift_window else lc.window


def current_reference_end(instance: dg.DagsterInstance, lc: Lifecycle) -> str | None:
    """Last day (ISO) of the current model's window: the latest ``training_set``'s test end."""
    event = instance.get_latest_materialization_event(lc.training_set_key)
    mat = event.asset_materialization if event else None
    window = mat.metadata.get("window") if mat else None
    value = getattr(window, "value", None)
    if isinstance(value, dict) and isinstance(value.get("test_end"), str):
        return value["test_end"]
    return None


def run_outcome(instance: dg.DagsterInstance, key: str, gate: dg.AssetCheckKey) -> str:
    """What became of the run launched with run key ``key``.

    Returns ``"success"``, ``"in_flight"``, ``"gate_failed"`` (it failed because the retrained
    model did not pass the blocking ``beats_baseline`` check: retrying gives the same model) or
    ``"failed"`` (any other failure or a cancellation). Follows Dagster's automatic
    re-executions (``dagster/auto_retry_run_id``): a failed run whose retry is pending or running
    is still in flight; the last run of the chain decides. A key with no run yet (the daemon has
    not created it) is in flight.
    """
    runs = instance.get_runs(dg.RunsFilter(tags={RUN_KEY_TAG: key}), limit=5)
    roots = [r for r in runs if "dagster/parent_run_id" not in r.tags] or list(runs)
    if not roots:
        return "in_flight"
    outcomes = set()
    for run in roots:
        chain = [run.run_id]
        while (child := run.tags.get(AUTO_RETRY_RUN_ID_TAG)) and child not in chain:
            nxt = instance.get_run_by_id(child)
            if nxt is None:
                break
            run = nxt
            chain.append(run.run_id)
        if run.status == dg.DagsterRunStatus.SUCCESS:
            outcomes.add("success")
        elif not run.is_finished or run.is_complete_and_waiting_to_retry:
            outcomes.add("in_flight")
        elif _gate_failed(instance, chain, gate):
            outcomes.add("gate_failed")
        else:
            outcomes.add("failed")
    return next(o for o in ("success", "in_flight", "gate_failed", "failed") if o in outcomes)


def _gate_failed(instance: dg.DagsterInstance, run_ids: list[str], gate: dg.AssetCheckKey) -> bool:
    from dagster._core.storage.asset_check_execution_record import (
        AssetCheckExecutionRecordStatus,
    )

    failed = instance.event_log_storage.get_asset_check_execution_history(
        gate, limit=50, status={AssetCheckExecutionRecordStatus.FAILED}
    )
    return any(r.run_id in run_ids for r in failed)


def _some(items: list[str], n: int = 10) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _event(
    lc: Lifecycle, day: str, share: float, columns: list[str], action: str
) -> dg.AssetObservation:
    return dg.AssetObservation(
        asset_key=lc.model_key,
        metadata={
            "drift_partition": day,
            "drift_share": dg.MetadataValue.float(float(share)),
            "drifted_columns": dg.MetadataValue.json(list(columns)),
            "action": action,
            "requested_at": datetime.now(UTC).isoformat(),
        },
    )


def build_drift_sensor(lc: Lifecycle) -> dg.SensorDefinition:
    """The instance's drift -> retrain sensor (``drift_retrain_sensor``, under its prefix)."""

    @dg.sensor(
        name=lc.name_of(SENSOR_NAME),
        job_name=lc.job("training"),
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Requests one retraining run of {lc.model_name} for a day of data the "
        "current model has not seen when its drift passes the dataset rule; retries a failed "
        "retraining up to drift.max_attempts; a cooldown keeps a flapping feature from "
        "retraining every tick.",
    )
    def _sensor(context: dg.SensorEvaluationContext):
        return evaluate_drift(context, lc)

    return _sensor


def evaluate_drift(
    context: dg.SensorEvaluationContext, lc: Lifecycle
) -> dg.SensorResult | dg.SkipReason:
    """One tick of the drift sensor of ``lc`` (see the module doc)."""
    from mlx_assets.monitoring.drift_cursor import DriftCursor, Pending

    cursor = DriftCursor.model_validate_json(context.cursor) if context.cursor else DriftCursor()
    policy = lc.drift
    instance = context.instance
    requests: list[dg.RunRequest] = []
    events: list[dg.AssetObservation] = []
    skips: list[str] = []
    unreadable: list[str] = []
    warned: list[str] = []
    seen: list[str] = []
    ends: set[str] = set()
    changed = False
    reference_end = current_reference_end(instance, lc)
    history: set[str] | None = None

    def available_days() -> set[str]:
        nonlocal history
        if history is None:
            history = instance.get_materialized_partitions(lc.features_key)
        return history

    def check(day: str) -> str | None:
        window = retrain_window(day, lc)
        problem = window_problem(window, available_days(), whole_history=True)
        if problem:
            return f"not retraining for drift on {day}: {problem}"
        return None

    # 1. Requests made earlier: done, still running, or failed (then eligible again).
    for day, pend in list(cursor.pending.items()):
        outcome = run_outcome(instance, pend.run_key, lc.gate_check)
        if outcome == "in_flight":
            continue
        changed = True
        if outcome == "success":
            del cursor.pending[day]
            context.log.info(f"retraining for drift on {day} succeeded ({pend.run_key})")
            continue
        if outcome == "gate_failed":
            del cursor.pending[day]
            context.log.warning(
                f"the model retrained for drift on {day} did not pass the quality gate "
                f"({pend.run_key}); not retrying: the same window trains the same model. The "
                "registered model stays current; see the beats_baseline check for the numbers"
            )
            events.append(
                _event(lc, day, pend.share, pend.drifted_columns, "retrained model failed the gate")
            )
            continue
        if pend.attempt >= policy.max_attempts:
            del cursor.pending[day]
            context.log.error(
                f"retraining for drift on {day} failed {pend.attempt} times (last run key "
                f"{pend.run_key}); giving up on this event (settings.drift.max_attempts = "
                f"{policy.max_attempts}). Fix the cause, then launch the training job by hand."
            )
            events.append(_event(lc, day, pend.share, pend.drifted_columns, "retraining gave up"))
            continue
        problem = check(day)
        if problem:
            del cursor.pending[day]
            skips.append(problem)
            context.log.warning(problem)
            continue
        attempt = pend.attempt + 1
        context.log.warning(
            f"retraining for drift on {day} failed ({pend.run_key}); the event is eligible again: "
            f"attempt {attempt} of {policy.max_attempts}"
        )
        requests.append(retrain_request(day, attempt, lc))
        cursor.pending[day] = pend.model_copy(
            update={"run_key": run_key(day, attempt), "attempt": attempt}
        )
        events.append(
            _event(
                lc,
                day,
                pend.share,
                pend.drifted_columns,
                f"retraining requested (attempt {attempt})",
            )
        )

    # 2. New days of drift, in the order they were materialized.
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=lc.drift_key, after_storage_id=cursor.after_storage_id),
        limit=BATCH,
        ascending=True,
    ).records
    cooldown = policy.cooldown_minutes * 60
    for record in records:
        cursor.after_storage_id = record.storage_id
        changed = True
        mat = record.asset_materialization
        if mat is None or mat.partition is None:
            continue
        day = str(mat.partition)
        try:
            obs = DriftObservation.from_metadata(mat.metadata, day=day)
        except ValidationError as exc:
            first = exc.errors()[0]
            unreadable.append(f"{day} ({'.'.join(map(str, first['loc']))}: {first['msg']})")
            continue
        if obs.severity != "retrain":
            if obs.severity == "warn":
                warned.append(f"{day} ({obs.drift_share:.0%})")
            continue
        known_end = max(e for e in (reference_end, obs.reference_end, "") if e is not None)
        if known_end and day <= known_end:
            seen.append(day)
            ends.add(known_end)
            continue
        if day in cursor.requested:
            context.log.info(f"drift on {day} already requested a retraining; not again")
            continue
        if (
            cursor.last_retrain_at is not None
            and record.timestamp - cursor.last_retrain_at < cooldown
        ):
            context.log.info(
                f"drift on {day} within the cooldown ({policy.cooldown_minutes:g} min); "
                "not retraining again"
            )
            continue
        problem = check(day)
        if problem:
            skips.append(problem)
            context.log.warning(problem)
            continue
        cursor.last_retrain_at = record.timestamp
        cursor.requested.append(day)
        cursor.pending[day] = Pending(
            run_key=run_key(day, 1),
            attempt=1,
            share=obs.drift_share,
            drifted_columns=list(obs.drifted_columns),
        )
        window = retrain_window(day, lc)
        context.log.info(
            f"drift on {day} (share {obs.drift_share:.0%}): retraining on {describe_window(window)}"
        )
        requests.append(retrain_request(day, 1, lc))
        events.append(_event(lc, day, obs.drift_share, obs.drifted_columns, "retraining requested"))

    if warned:
        context.log.warning(
            f"drift warning (share >= {policy.warn_share:.0%}, no dataset drift) on "
            f"{len(warned)} days: {_some(warned)}"
        )
    if seen:
        context.log.info(
            f"dataset drift on {len(seen)} days inside or before the current model's window (it "
            f"ends {max(ends)}): not news to that model, not retraining: {_some(seen)}"
        )
    if unreadable:
        context.log.warning(
            f"{len(unreadable)} feature_drift materializations carry no readable DriftObservation "
            f"metadata and were skipped, e.g. {unreadable[0]}"
        )
    if not changed:
        return dg.SkipReason(
            "no new feature_drift materializations"
            + (f"; waiting for {', '.join(sorted(cursor.pending))}" if cursor.pending else "")
        )
    skip_reason = None
    if not requests:
        why = list(skips)
        if seen:
            why.append(f"{len(seen)} drift days are inside the current model's window")
        skip_reason = "; ".join(why) or "no day of new data calls for retraining"
    return dg.SensorResult(
        run_requests=requests,
        asset_events=events,
        cursor=cursor.model_dump_json(),
        skip_reason=skip_reason,
    )

"""The event bus: drift observations in, retraining runs out, exactly once per event.

The cursor is the storage id of the last drift observation handled, plus the time of the last
retraining request (for the cooldown). Each request carries a run key derived from the event, so
an evaluation repeated after a crash (cursor not yet saved) asks for the same run and Dagster
launches it once.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
from pydantic import BaseModel

from mlx_assets.monitoring.feature_drift import DRIFT_ASSET
from mlx_resources.platform import Platform

BATCH = 200


class DriftCursor(BaseModel):
    after_storage_id: int | None = None
    last_retrain_at: float | None = None
    """Timestamp of the drift event that last requested retraining."""


def retrain_request(partition: str, storage_id: int, platform: Platform) -> dg.RunRequest:
    config = {"test_end": partition} if platform.drift.shift_window else {}
    return dg.RunRequest(
        run_key=f"drift:{partition}:{storage_id}",
        run_config={"ops": {"training_set": {"config": config}}},
        tags={"mlx/trigger": "drift", "mlx/drift_partition": partition},
    )


@dg.sensor(
    job_name="training",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests a retraining run when a day's drift passes the dataset rule; "
    "a cooldown keeps a flapping feature from retraining every tick.",
)
def drift_retrain_sensor(context: dg.SensorEvaluationContext, platform: Platform):
    cursor = DriftCursor.model_validate_json(context.cursor) if context.cursor else DriftCursor()
    records = context.instance.fetch_observations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(DRIFT_ASSET), after_storage_id=cursor.after_storage_id
        ),
        limit=BATCH,
        ascending=True,
    ).records
    cooldown = platform.drift.cooldown_minutes * 60
    requests: list[dg.RunRequest] = []
    events: list[dg.AssetObservation] = []
    for record in records:
        cursor.after_storage_id = record.storage_id
        obs = record.asset_observation
        if obs is None:
            continue
        level = obs.metadata["severity"].value if "severity" in obs.metadata else "ok"
        partition = str(obs.partition)
        share = obs.metadata["drift_share"].value if "drift_share" in obs.metadata else None
        if level != "retrain":
            if level == "warn":
                context.log.warning(f"drift warning on {partition}: share {share}")
            continue
        if (
            cursor.last_retrain_at is not None
            and record.timestamp - cursor.last_retrain_at < cooldown
        ):
            context.log.info(f"drift on {partition} within the cooldown; not retraining again")
            continue
        cursor.last_retrain_at = record.timestamp
        requests.append(retrain_request(partition, record.storage_id, platform))
        events.append(
            dg.AssetObservation(
                asset_key="model",
                metadata={
                    "drift_partition": partition,
                    "drift_share": dg.MetadataValue.float(float(share or 0.0)),
                    "drifted_columns": obs.metadata["drifted_columns"]
                    if "drifted_columns" in obs.metadata
                    else dg.MetadataValue.json([]),
                    "action": "retraining requested",
                    "requested_at": datetime.now(UTC).isoformat(),
                },
            )
        )
    if not records:
        return dg.SkipReason("no new drift observations")
    return dg.SensorResult(
        run_requests=requests, asset_events=events, cursor=cursor.model_dump_json()
    )

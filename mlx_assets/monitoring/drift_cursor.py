"""The drift sensor's state (:class:`DriftCursor`, stored as JSON in Dagster's cursor) and its
pending retraining requests (:class:`Pending`).

Only a sensor tick (``drift_sensor.evaluate_drift``) imports this module: loading the code
location does not create these models (docs/lifecycle_component.md, "Load time"). They stay
importable from ``mlx_assets.monitoring.drift_sensor``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Pending(BaseModel):
    """A retraining requested for one day, not yet known to have succeeded."""

    model_config = ConfigDict(defer_build=True)

    run_key: str
    attempt: int = Field(ge=1)
    share: float = 0.0
    drifted_columns: list[str] = Field(default_factory=list)


class DriftCursor(BaseModel):
    """The sensor's state, stored as JSON in Dagster's cursor."""

    model_config = ConfigDict(defer_build=True)

    after_storage_id: int | None = None
    """Storage id of the last ``feature_drift`` materialization read."""
    last_retrain_at: float | None = None
    """Timestamp of the drift event that last requested retraining (for the cooldown)."""
    requested: list[str] = Field(default_factory=list)
    """Days that ever requested a retraining: one decision per day of data."""
    pending: dict[str, Pending] = Field(default_factory=dict)
    """Day -> its latest request, until that run succeeds or the attempts are spent."""

"""The typed hand-off of the drift event bus: one ``DriftObservation`` per day of data.

``feature_drift`` writes it as the metadata of each partition's own materialization (so a day's
drift becomes visible only when that day is materialized, and a killed run publishes nothing);
``drift_retrain_sensor`` reads it back from the materialization records. Nothing else travels
between the two.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field

Severity = Literal["ok", "warn", "retrain", "insufficient_data"]


class DriftObservation(BaseModel):
    """Drift of one day's features against the current model's training rows.

    Attributes:
        day: the partition key, ISO date ``YYYY-MM-DD``.
        drift_share: share of monitored columns that drifted, in [0, 1].
        dataset_drift: whether the detector's dataset rule fired.
        severity: ``ok`` | ``warn`` | ``retrain`` | ``insufficient_data`` (fewer rows than the
            policy's ``min_rows``) under the composition's drift policy.
        drifted_columns: names of the drifted columns, in report order.
        rows: rows of the day that were compared (0 for an empty day).
        report: path (or URL) of the standalone HTML report of that day.
        reference_data_version: data version of the training set the day was compared with.
        reference_end: last day (ISO) of the reference model's training/test window; days on or
            before it are not new to that model.
    """

    model_config = ConfigDict(defer_build=True, frozen=True)

    day: str
    drift_share: float = Field(ge=0, le=1)
    dataset_drift: bool
    severity: Severity
    drifted_columns: list[str] = Field(default_factory=list)
    rows: int = Field(default=0, ge=0)
    report: str | None = None
    reference_data_version: str | None = None
    reference_end: str | None = None

    def to_metadata(self) -> dict[str, dg.MetadataValue]:
        """Materialization metadata of the day's partition (what the UI shows per partition)."""
        meta: dict[str, dg.MetadataValue] = {
            "day": dg.MetadataValue.text(self.day),
            "drift_share": dg.MetadataValue.float(self.drift_share),
            "dataset_drift": dg.MetadataValue.bool(self.dataset_drift),
            "severity": dg.MetadataValue.text(self.severity),
            "drifted_columns": dg.MetadataValue.json(list(self.drifted_columns)),
            "rows_compared": dg.MetadataValue.int(self.rows),
        }
        if self.report is not None:
            meta["report"] = dg.MetadataValue.path(self.report)
        if self.reference_data_version is not None:
            meta["reference_data_version"] = dg.MetadataValue.text(self.reference_data_version)
        if self.reference_end is not None:
            meta["reference_end"] = dg.MetadataValue.text(self.reference_end)
        return meta

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], day: str | None = None) -> DriftObservation:
        """Read back what ``to_metadata`` wrote (raw values or ``MetadataValue``s).

        Raises:
            pydantic.ValidationError: a key is missing or has the wrong type.
        """

        def raw(key: str) -> Any:
            v = metadata.get(key)
            return getattr(v, "value", v)

        return cls(
            day=raw("day") or day,
            drift_share=raw("drift_share"),
            dataset_drift=raw("dataset_drift"),
            severity=raw("severity"),
            drifted_columns=list(raw("drifted_columns") or []),
            rows=raw("rows_compared") or 0,
            report=raw("report"),
            reference_data_version=raw("reference_data_version"),
            reference_end=raw("reference_end"),
        )

"""Severity of a day's drift under the platform's drift policy."""

from __future__ import annotations

from typing import Literal

from mlx_plugins.drift_detectors.base import DriftReport
from mlx_resources.platform import DriftPolicy

Severity = Literal["ok", "warn", "retrain"]


def severity(report: DriftReport, policy: DriftPolicy) -> Severity:
    if report.dataset_drift and policy.retrain_on_dataset_drift:
        return "retrain"
    if report.drift_share >= policy.warn_share or report.dataset_drift:
        return "warn"
    return "ok"

"""Severity of a day's drift under the platform's drift policy."""

from __future__ import annotations

from typing import Literal

from mlx_plugins.drift_detectors.base import DriftReport
from mlx_resources.platform import DriftPolicy

Severity = Literal["ok", "warn", "retrain", "insufficient_data"]
DRIFT_SEVERITIES = ("warn", "retrain")
"""The severities that are drift events (warned, summarised, maybe retrained on)."""


def severity(report: DriftReport, policy: DriftPolicy) -> Severity:
    """``insufficient_data`` when the day has fewer than ``policy.min_rows`` rows (a handful of
    rows says little about a distribution, so a small day is never a drift event); otherwise
    ``retrain`` on dataset drift (if the policy retrains), ``warn`` from ``warn_share``, else
    ``ok``."""
    if report.current_rows < policy.min_rows:
        return "insufficient_data"
    if report.dataset_drift and policy.retrain_on_dataset_drift:
        return "retrain"
    if report.drift_share >= policy.warn_share or report.dataset_drift:
        return "warn"
    return "ok"

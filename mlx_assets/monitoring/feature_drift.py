"""Drift of each day's features against the current model's training rows (its reference)."""

import dagster as dg
import polars as pl

from mlx_assets.features.flight_features import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from mlx_assets.monitoring.policy import severity
from mlx_assets.partitions import DAILY_2013, SINGLE_RUN
from mlx_assets.training.training_set import SPLIT
from mlx_assets.versioning import code_version
from mlx_plugins.drift_detectors.base import DriftDetector, DriftReport
from mlx_resources.platform import Platform

# Calendar features are functions of the date: one day against months of reference always
# "drifts" on them, so drift is watched on what the world changes.
CALENDAR = ("day_of_week", "day_of_year", "month", "is_weekend")
MONITORED_NUMERIC = [c for c in NUMERIC_FEATURES if c not in CALENDAR]
MONITORED_CATEGORICAL = list(CATEGORICAL_FEATURES)
FEATURES = [*MONITORED_NUMERIC, *MONITORED_CATEGORICAL]
DRIFT_ASSET = "feature_drift"


def report_rows(day: str, report: DriftReport, level: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "date": [day] * len(report.columns),
            "column": [c.column for c in report.columns],
            "kind": [c.kind for c in report.columns],
            "test": [c.test for c in report.columns],
            "statistic": [c.statistic for c in report.columns],
            "p_value": [c.p_value for c in report.columns],
            "threshold": [c.threshold for c in report.columns],
            "drifted": [c.drifted for c in report.columns],
            "drift_share": [report.drift_share] * len(report.columns),
            "severity": [level] * len(report.columns),
        },
        schema_overrides={"p_value": pl.Float64, "statistic": pl.Float64},
    ).with_columns(pl.col("date").str.to_date())


@dg.asset(
    partitions_def=DAILY_2013,
    backfill_policy=SINGLE_RUN,
    group_name="monitoring",
    kinds={"polars", "parquet"},
    code_version=code_version(__file__),
    metadata={"partition_expr": "date"},
    description="Per-column drift of each day's features against the model's training rows. "
    "Each day also emits an observation (share, severity, report) that the drift sensor reads.",
)
def feature_drift(
    context: dg.AssetExecutionContext,
    platform: Platform,
    drift_detector: DriftDetector,
    flight_features: pl.DataFrame,
    training_set: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    from mlx_plugins.drift_detectors.report import render_html, render_markdown

    reference = training_set.filter(pl.col(SPLIT) == "train").select(FEATURES)
    reports_dir = platform.path("reports", "drift")
    by_day = {
        d.isoformat(): f for (d,), f in flight_features.partition_by("date", as_dict=True).items()
    }
    # the reference is sorted, binned and counted once for all the days
    prepared = drift_detector.prepare_reference(
        reference, numeric=MONITORED_NUMERIC, categorical=MONITORED_CATEGORICAL
    )
    frames, last = [], None
    for day in context.partition_keys:
        current = by_day.get(day, flight_features.clear())
        report = drift_detector.compare_prepared(prepared, current.select(FEATURES))
        level = severity(report, platform.drift)
        html = reports_dir / f"{day}.html"
        tmp = html.with_suffix(".html.tmp")
        tmp.write_text(render_html(report, title=f"Feature drift on {day}"))
        tmp.replace(html)
        context.log_event(
            dg.AssetObservation(
                asset_key=DRIFT_ASSET,
                partition=day,
                metadata={
                    "drift_share": dg.MetadataValue.float(report.drift_share),
                    "dataset_drift": dg.MetadataValue.bool(report.dataset_drift),
                    "severity": level,
                    "drifted_columns": dg.MetadataValue.json(report.drifted_columns),
                    "report": dg.MetadataValue.path(str(html)),
                },
            )
        )
        if level != "ok":
            context.log.warning(
                f"{day}: drift share {report.drift_share:.0%} ({level}): "
                f"{', '.join(report.drifted_columns)}"
            )
        frames.append(report_rows(day, report, level))
        last = (day, report, level, html)
    df = pl.concat(frames)
    meta: dict[str, object] = {
        "days_with_dataset_drift": dg.MetadataValue.int(
            df.filter(pl.col("severity") == "retrain")["date"].n_unique()
        ),
    }
    if last is not None:
        day, report, level, html = last
        meta |= {
            "last_day": day,
            "drift_share": dg.MetadataValue.float(report.drift_share),
            "severity": level,
            "columns": dg.MetadataValue.md(render_markdown(report)),
            "report": dg.MetadataValue.path(str(html)),
        }
    return dg.Output(df, metadata=meta)

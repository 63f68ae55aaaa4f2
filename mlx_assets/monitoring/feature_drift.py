"""Drift of each day's features against the current model's training rows (its reference)."""

from typing import TYPE_CHECKING

import dagster as dg

from mlx_assets.component.spec import Lifecycle
from mlx_assets.features.flight_features import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from mlx_assets.monitoring.events import DriftObservation
from mlx_assets.monitoring.policy import DRIFT_SEVERITIES, severity
from mlx_assets.partitions import SINGLE_RUN
from mlx_assets.training.training_set import SPLIT
from mlx_assets.versioning import code_version
from mlx_plugins.drift_detectors.base import DriftDetector, DriftReport
from mlx_resources.atomic import atomic_write_text
from mlx_resources.io_managers.frames import DataFrame
from mlx_resources.platform import Platform

if TYPE_CHECKING:
    import polars as pl


# The flights instance's monitored columns (its defs.yaml lists the calendar features under
# features.not_monitored): calendar features are functions of the date, so one day against months
# of reference always "drifts" on them; drift is watched on what the world changes.
CALENDAR = ("day_of_week", "day_of_year", "month", "is_weekend")
MONITORED_NUMERIC = [c for c in NUMERIC_FEATURES if c not in CALENDAR]
MONITORED_CATEGORICAL = list(CATEGORICAL_FEATURES)
FEATURES = [*MONITORED_NUMERIC, *MONITORED_CATEGORICAL]
DRIFT_ASSET = "feature_drift"


def report_rows(day: str, report: DriftReport, level: str) -> "pl.DataFrame":
    """One row per monitored column of ``day``'s report (``date`` is a polars Date)."""
    import polars as pl

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


def _reference(
    instance: dg.DagsterInstance, training_set_key: dg.AssetKey
) -> tuple[str | None, str | None]:
    """Data version of the latest training set and the last day of its window (test end)."""
    event = instance.get_latest_materialization_event(training_set_key)
    mat = event.asset_materialization if event else None
    if mat is None:
        return None, None
    window = mat.metadata.get("window")
    raw = getattr(window, "value", None)
    end = raw.get("test_end") if isinstance(raw, dict) else None
    return (mat.tags or {}).get("dagster/data_version"), str(end) if end else None


def build_feature_drift(lc: Lifecycle) -> dg.AssetsDefinition:
    """The instance's daily drift asset: each day's monitored features against the current
    model's training rows."""
    fs = lc.spec.features
    numeric, categorical = fs.monitored_numeric, fs.monitored_categorical
    columns = [*numeric, *categorical]
    time_col = lc.spec.data.time_column

    @dg.asset(
        key=lc.drift_key,
        ins={
            "features": dg.AssetIn(key=lc.features_key),
            "training_set": dg.AssetIn(key=lc.training_set_key),
        },
        partitions_def=lc.partitions_def,
        backfill_policy=SINGLE_RUN,
        group_name=lc.group,
        kinds={"polars", "arrow"},  # Arrow IPC files (PolarsIOManager default format)
        code_version=code_version(__file__),
        metadata={"partition_expr": "date"},
        description="Per-column drift of each day's features against the model's training "
        "rows. Each day's materialization carries that day's drift (share, severity, drifted "
        "columns, the per-column table and the HTML report path), which the drift sensor reads.",
    )
    def _feature_drift(
        context: dg.AssetExecutionContext,
        platform: Platform,
        drift_detector: DriftDetector,
        features: DataFrame,
        training_set: DataFrame,
    ) -> dg.Output[DataFrame]:
        # One row per (day, monitored column); per-partition metadata is a
        # ``DriftObservation``. Every partition of a multi-day run gets its own metadata
        # (``context.add_asset_metadata`` with ``partition_key``) and, through the IO manager,
        # its own data version (content hash). A comment, not a docstring: Dagster parses an
        # asset function's docstring at every load (~2.5 ms); the description is given above.
        import polars as pl

        from mlx_plugins.drift_detectors.report import render_html, render_markdown

        reference = training_set.filter(pl.col(SPLIT) == "train").select(columns)
        parts = ("reports", "drift", *lc.prefix)
        reports_dir = platform.path(*parts)
        reference_version, reference_end = _reference(context.instance, lc.training_set_key)
        by_day = {
            d.isoformat(): f for (d,), f in features.partition_by(time_col, as_dict=True).items()
        }
        # the reference is sorted, binned and counted once for all the days
        prepared = drift_detector.prepare_reference(
            reference, numeric=numeric, categorical=categorical
        )
        frames: list[pl.DataFrame] = []
        flagged: list[str] = []
        currents = [by_day.get(day, features.clear()) for day in context.partition_keys]
        # every day at once: the detector vectorises each column across the days
        reports = drift_detector.compare_prepared_many(
            prepared, [current.select(columns) for current in currents]
        )
        for day, current, report in zip(context.partition_keys, currents, reports, strict=True):
            level = severity(report, lc.drift)
            insufficient = level == "insufficient_data"
            html = atomic_write_text(
                reports_dir / f"{day}.html", render_html(report, title=f"Feature drift on {day}")
            )
            observation = DriftObservation(
                day=day,
                drift_share=report.drift_share,
                dataset_drift=report.dataset_drift and not insufficient,
                severity=level,
                drifted_columns=[] if insufficient else report.drifted_columns,
                rows=current.height,
                report=str(html),
                reference_data_version=reference_version,
                reference_end=reference_end,
            )
            context.add_asset_metadata(
                {
                    **observation.to_metadata(),
                    "columns": dg.MetadataValue.md(render_markdown(report)),
                },
                partition_key=day,
            )
            if level in DRIFT_SEVERITIES:
                flagged.append(f"{day} ({level}, {report.drift_share:.0%})")
            frames.append(report_rows(day, report, level))
        if flagged:
            context.log.info(
                f"{len(flagged)} of {len(context.partition_keys)} days drifted: "
                f"{', '.join(flagged[:10])}{' ...' if len(flagged) > 10 else ''}; "
                f"reports in {reports_dir}"
            )
        return dg.Output(pl.concat(frames))

    return _feature_drift

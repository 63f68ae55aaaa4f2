"""The training set: a window of feature partitions, split by time into train/valid/test."""

import dagster as dg
import polars as pl

from mlx_assets.versioning import code_version
from mlx_resources.platform import Platform, TrainingWindow

SPLIT = "split"


def split_by_time(features: pl.LazyFrame, window: TrainingWindow) -> pl.DataFrame:
    """Rows of the window labelled train/valid/test by date; days outside are dropped."""
    train_start, valid_start, train_end, test_start, test_end = window.dates()
    d = pl.col("date")
    return (
        features.filter(d.is_between(train_start, train_end) | d.is_between(test_start, test_end))
        .with_columns(
            pl.when(d >= test_start)
            .then(pl.lit("test"))
            .when(d >= valid_start)
            .then(pl.lit("valid"))
            .otherwise(pl.lit("train"))
            .alias(SPLIT)
        )
        .sort("date", maintain_order=True)
        .collect()
    )


def window_partitions(window: TrainingWindow) -> list[str]:
    from datetime import timedelta

    a, _, b, c, d = window.dates()
    days = [a + timedelta(n) for n in range((b - a).days + 1)]
    days += [c + timedelta(n) for n in range((d - c).days + 1)]
    return [x.isoformat() for x in days]


def partition_data_versions(
    instance: dg.DagsterInstance, key: dg.AssetKey, partitions: list[str]
) -> dict[str, str]:
    """Latest data version of each partition, in one query."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=partitions), limit=len(partitions) * 4
    ).records
    out: dict[str, str] = {}
    for r in records:  # newest first
        mat = r.asset_materialization
        if mat is None or mat.partition in out:
            continue
        version = (mat.tags or {}).get("dagster/data_version")
        if version:
            out[str(mat.partition)] = version
    return out


class TrainingSetConfig(dg.Config):
    """Run config; the drift sensor sets ``test_end`` to retrain on the most recent days."""

    test_end: str | None = None


@dg.asset(
    group_name="training",
    kinds={"polars", "parquet"},
    code_version=code_version(__file__),
    ins={"flight_features": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
    description="Feature rows of the training window with a 'split' column (train/valid/test), "
    "split by date.",
)
def training_set(
    context: dg.AssetExecutionContext,
    config: TrainingSetConfig,
    platform: Platform,
    flight_features: pl.LazyFrame,
) -> dg.Output[pl.DataFrame]:
    window = platform.window.shifted(config.test_end) if config.test_end else platform.window
    if config.test_end:
        context.log.info(f"window moved to end on {config.test_end}: {window.model_dump()}")
    df = split_by_time(flight_features, window)
    counts = dict(df.group_by(SPLIT).len().iter_rows())
    for split in ("train", "valid", "test"):
        if not counts.get(split):
            raise dg.Failure(
                f"the training window has no {split!r} rows; check settings.window "
                f"({window.model_dump()}) against the materialized feature partitions",
            )
    partitions = window_partitions(window)
    versions = partition_data_versions(context.instance, dg.AssetKey("flight_features"), partitions)
    missing = [p for p in partitions if p not in versions]
    if missing:
        context.log.warning(
            f"{len(missing)} window partitions have no data version, e.g. {missing[:3]}"
        )
    return dg.Output(
        df,
        metadata={
            **{f"rows_{k}": dg.MetadataValue.int(v) for k, v in sorted(counts.items())},
            "window": dg.MetadataValue.json(window.model_dump()),
            "partitions": dg.MetadataValue.json(
                {"first": partitions[0], "last": partitions[-1], "count": len(partitions)}
            ),
            "partition_data_versions": dg.MetadataValue.json(versions),
        },
    )

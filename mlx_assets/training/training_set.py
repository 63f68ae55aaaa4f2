"""The training set: a window of feature partitions, split by time into train/valid/test."""

from collections.abc import Iterable
from datetime import date, timedelta
from typing import TYPE_CHECKING

import dagster as dg

from mlx_assets.component.spec import Lifecycle
from mlx_assets.versioning import code_version
from mlx_resources.io_managers.frames import DataFrame, LazyFrame
from mlx_resources.platform import TrainingWindow

if TYPE_CHECKING:
    import polars as pl


SPLIT = "split"


def split_by_time(
    features: "pl.LazyFrame", window: TrainingWindow, time_column: str = "date"
) -> "pl.DataFrame":
    """Rows of the window labelled train/valid/test by date; days outside are dropped."""
    import polars as pl

    train_start, valid_start, train_end, test_start, test_end = window.dates()
    d = pl.col(time_column)
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
        .sort(time_column, maintain_order=True)
        .collect()
    )


SPLITS = ("train", "valid", "test")


def split_ranges(window: TrainingWindow) -> dict[str, tuple[date, date]]:
    """First and last day (inclusive) of each split of ``window``: train, valid, test."""
    train_start, valid_start, train_end, test_start, test_end = window.dates()
    return {
        "train": (train_start, valid_start - timedelta(days=1)),
        "valid": (valid_start, train_end),
        "test": (test_start, test_end),
    }


def describe_days(days: Iterable[date | str]) -> str:
    """``"<n> days, <first>..<last>"`` (or ``"none"``) for a set of ISO days or dates."""
    ds = sorted({d if isinstance(d, date) else date.fromisoformat(d) for d in days})
    if not ds:
        return "none"
    return f"{len(ds)} days, {ds[0].isoformat()}..{ds[-1].isoformat()}"


def describe_window(window: TrainingWindow) -> str:
    """The window's splits as ``train A..B, valid C..D, test E..F``."""
    return ", ".join(
        f"{k} {a.isoformat()}..{b.isoformat()}" for k, (a, b) in split_ranges(window).items()
    )


def window_problem(
    window: TrainingWindow, days: Iterable[date | str], *, whole_history: bool = False
) -> str | None:
    """Why ``window`` cannot train a model on ``days``, or ``None`` when it can.

    The rule the ``training_set`` asset enforces (on the days that have rows) and the drift
    sensor checks before it requests a retraining (on the materialized feature partitions):
    every split (train, valid, test) holds at least one of ``days``. With ``whole_history`` the
    window must also not start before the first of ``days`` (a retraining window never reaches
    into days that do not exist).

    Args:
        window: the training window.
        days: ISO date strings or dates that have data; order and duplicates do not matter.
        whole_history: also refuse a window that starts before the first day with data.

    Returns:
        A one-line message naming the window, the empty splits and the available days.
    """
    available = sorted({d if isinstance(d, date) else date.fromisoformat(d) for d in days})
    ranges = split_ranges(window)
    empty = [k for k, (a, b) in ranges.items() if not _between(available, a, b)]
    problems = []
    if whole_history and available and ranges["train"][0] < available[0]:
        problems.append(f"starts before the first day with data ({available[0].isoformat()})")
    if empty:
        problems.append(f"has no {' or '.join(repr(k) for k in empty)} rows")
    if not problems:
        return None
    return (
        f"the training window ({describe_window(window)}) {' and '.join(problems)}; "
        f"days with data: {describe_days(available)}"
    )


def _between(sorted_days: list[date], a: date, b: date) -> list[date]:
    from bisect import bisect_left, bisect_right

    return sorted_days[bisect_left(sorted_days, a) : bisect_right(sorted_days, b)]


def window_partitions(window: TrainingWindow) -> list[str]:
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


def build_training_set(lc: Lifecycle) -> dg.AssetsDefinition:
    """The instance's training set: its feature partitions of the training window, split by
    time into train/valid/test (a ``split`` column)."""
    features_name = lc.features_key.to_user_string()

    @dg.asset(
        key=lc.training_set_key,
        group_name=lc.group,
        kinds={"polars", "arrow"},  # Arrow IPC files (PolarsIOManager default format)
        code_version=code_version(__file__),
        ins={
            "features": dg.AssetIn(key=lc.features_key, partition_mapping=dg.AllPartitionMapping())
        },
        description="Feature rows of the training window with a 'split' column "
        "(train/valid/test), split by date.",
    )
    def _training_set(
        context: dg.AssetExecutionContext,
        config: TrainingSetConfig,
        features: LazyFrame,
    ) -> dg.Output[DataFrame]:
        import polars as pl

        base = lc.window
        window = base.shifted(config.test_end) if config.test_end else base
        if config.test_end:
            context.log.info(f"window moved to end on {config.test_end}: {window.model_dump()}")
        df = split_by_time(features, window, lc.spec.data.time_column)
        time_col = lc.spec.data.time_column
        if window_problem(window, df[time_col].unique().to_list()):
            # the message names every day the features have, not only those inside the window
            have = features.select(pl.col(time_col).unique()).collect()[time_col].to_list()
            problem = window_problem(window, have)
            raise dg.Failure(
                f"{problem}; fix: move the window of lifecycle {lc.name!r} (its defs.yaml "
                "window, else settings.window; or the run's training_set test_end) onto "
                f"materialized {features_name} partitions, or materialize the missing days",
            )
        counts = dict(df.group_by(SPLIT).len().iter_rows())
        partitions = window_partitions(window)
        versions = partition_data_versions(context.instance, lc.features_key, partitions)
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

    return _training_set

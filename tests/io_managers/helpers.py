"""Shared helpers for the polars IO manager tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
from dagster._core.definitions.data_version import (
    DATA_VERSION_TAG,
    CachingStaleStatusResolver,
    StaleStatus,
)
from dagster._core.loader import LoadingContextForTest
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from mlx_resources.io_managers import PolarsIOManager


def frame(n: int = 1000, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "id": np.arange(n, dtype=np.int64),
            "x": rng.random(n),
            "label": [f"k{i % 7}" for i in range(n)],
        }
    )


def resources(base: Path | str, **config: object) -> dict[str, object]:
    return {"io_manager": PolarsIOManager(base_path=str(base), **config)}  # type: ignore[arg-type]


def range_tags(start: str, end: str) -> dict[str, str]:
    """Tags of a single-run backfill over a partition key range."""
    return {ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end}


def materializations(
    instance: dg.DagsterInstance, key: str, partition: str | None = None
) -> list[dg.AssetMaterialization]:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey.from_user_string(key),
            asset_partitions=[partition] if partition is not None else None,
        ),
        limit=100,
        ascending=True,
    ).records
    return [r.asset_materialization for r in records if r.asset_materialization is not None]


def data_version(instance: dg.DagsterInstance, key: str, partition: str | None = None) -> str:
    return materializations(instance, key, partition)[-1].tags[DATA_VERSION_TAG]


def stale_status(
    instance: dg.DagsterInstance,
    assets: Sequence[dg.AssetsDefinition],
    key: str,
    partition: str | None = None,
) -> StaleStatus:
    """A fresh resolver each call: it caches everything it has looked up."""
    resolver = CachingStaleStatusResolver(
        instance, AssetGraph.from_assets(assets), LoadingContextForTest(instance)
    )
    return resolver.get_status(dg.AssetKey.from_user_string(key), partition)


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name]

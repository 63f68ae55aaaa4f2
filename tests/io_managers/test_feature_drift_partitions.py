"""feature_drift over a range of days in one run: each partition carries its own values."""

import datetime as dt
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from mlx_assets.features.flight_features import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from mlx_assets.monitoring import feature_drift as fd
from mlx_assets.monitoring.events import DriftObservation
from mlx_assets.partitions import DAILY_2013, SINGLE_RUN
from mlx_plugins.drift_detectors.polars_drift import PolarsDriftDetector
from mlx_resources.io_managers import PolarsIOManager, content_hash
from mlx_resources.platform import Platform
from tests.conftest import flights_lifecycle
from tests.io_managers.helpers import materializations, range_tags

FEATURE_DRIFT = fd.build_feature_drift(flights_lifecycle())

DAYS = ["2013-03-01", "2013-03-02", "2013-03-03", "2013-03-04"]


def _features(day: str, n: int, shift: float) -> pl.DataFrame:
    rng = np.random.default_rng(abs(hash(day)) % 2**32)
    cols: dict[str, object] = {"date": [dt.date.fromisoformat(day)] * n}
    for c in NUMERIC_FEATURES:
        cols[c] = rng.normal(shift, 1.0, n)
    for c in CATEGORICAL_FEATURES:
        cols[c] = rng.choice(["a", "b", "c"], n).tolist()
    cols["delayed"] = rng.integers(0, 2, n).astype(np.int8)
    return pl.DataFrame(cols)


# day -> (rows, mean shift); the last day drifts hard, one day is small
SHAPE = {DAYS[0]: (400, 0.0), DAYS[1]: (50, 0.0), DAYS[2]: (400, 0.1), DAYS[3]: (400, 5.0)}


@dg.asset(
    partitions_def=DAILY_2013, backfill_policy=SINGLE_RUN, metadata={"partition_expr": "date"}
)
def flight_features(context: dg.AssetExecutionContext) -> pl.DataFrame:
    return pl.concat([_features(d, *SHAPE[d]) for d in context.partition_keys])


@dg.asset
def training_set() -> dg.Output[pl.DataFrame]:
    ref = _features("2013-01-15", 2000, 0.0).with_columns(split=pl.lit("train"))
    return dg.Output(
        ref,
        metadata={"window": dg.MetadataValue.json({"test_end": "2013-02-28"})},
    )


def test_each_drift_partition_has_its_own_metadata_and_version(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch
) -> None:
    monkeypatch.setenv("MLX_HOME", str(tmp_path / "home"))
    res = {
        "io_manager": PolarsIOManager(base_path=str(tmp_path / "data")),
        "platform": Platform(),
        "drift_detector": PolarsDriftDetector(),
    }
    assert dg.materialize([training_set], instance=instance, resources=res).success
    ts_version = materializations(instance, "training_set")[-1].tags[DATA_VERSION_TAG]
    result = dg.materialize(
        [flight_features, FEATURE_DRIFT, training_set],
        selection=[flight_features, FEATURE_DRIFT],
        instance=instance,
        resources=res,
        tags=range_tags(DAYS[0], DAYS[-1]),
    )
    assert result.success

    seen_versions = set()
    shares = {}
    for day in DAYS:
        [mat] = materializations(instance, "feature_drift", day)
        meta = mat.metadata
        obs = DriftObservation.from_metadata(meta)
        assert obs.day == day
        assert obs.rows == SHAPE[day][0]
        assert obs.reference_data_version == ts_version
        assert obs.reference_end == "2013-02-28"
        assert obs.report == str(tmp_path / "home" / "reports" / "drift" / f"{day}.html")
        assert Path(obs.report).read_text().startswith("<!")
        assert "|" in meta["columns"].value  # the per-column markdown table, inline
        stored = pl.read_ipc(tmp_path / "data" / "feature_drift" / f"{day}.arrow")
        assert meta["content_hash"].value == content_hash(stored)
        assert mat.tags[DATA_VERSION_TAG] == content_hash(stored)
        # the stored rows agree with the metadata of the same day
        assert stored["drift_share"].unique().to_list() == [obs.drift_share]
        assert set(stored.filter(pl.col("drifted"))["column"].to_list()) == set(obs.drifted_columns)
        seen_versions.add(mat.tags[DATA_VERSION_TAG])
        shares[day] = obs.drift_share
        assert "last_day" not in meta
    assert len(seen_versions) == len(DAYS)
    assert shares[DAYS[3]] > shares[DAYS[0]]  # the shifted day drifted, the first did not
    assert (
        DriftObservation.from_metadata(
            materializations(instance, "feature_drift", DAYS[3])[0].metadata
        ).severity
        != "ok"
    )
    # no per-day observations any more: the sensor reads the materializations
    observations = instance.fetch_observations(dg.AssetKey("feature_drift"), limit=10).records
    assert observations == []


def test_training_lineage_holds_each_days_own_version(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    """What a model version's lineage records per feature day: distinct, per-day values."""
    from mlx_assets.training.training_set import partition_data_versions

    res = {"io_manager": PolarsIOManager(base_path=str(tmp_path / "data"))}
    tags = range_tags(DAYS[0], DAYS[-1])
    assert dg.materialize([flight_features], instance=instance, resources=res, tags=tags).success
    versions = partition_data_versions(instance, dg.AssetKey("flight_features"), DAYS)
    assert sorted(versions) == DAYS
    assert len(set(versions.values())) == len(DAYS)
    for day in DAYS:
        stored = pl.read_ipc(tmp_path / "data" / "flight_features" / f"{day}.arrow")
        assert versions[day] == content_hash(stored)

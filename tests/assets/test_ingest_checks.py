"""Bad source data and source errors in real runs (issue 9 items 15 and 16, source part).

A day with null keys fails its raw asset before anything is stored or marked materialized,
with an error naming the run, the day, the column and the count; the failed checks are the
visible record; flight_features refuses an input day whose newest blocking check failed.
Permanent read errors make exactly one attempt; transient ones are retried.
"""

from __future__ import annotations

import errno
from datetime import date
from pathlib import Path
from typing import ClassVar

import dagster as dg
import polars as pl
import pytest

from mlx_assets.features.features import build_features_asset
from mlx_assets.ingest import raw
from mlx_assets.ingest.source_errors import classify
from mlx_plugins.data_sources.nycflights13 import NYCFlights13Source
from mlx_plugins.kernel.metadata import PluginMetadata
from mlx_resources.io_managers.polars_io import PolarsIOManager
from tests.conftest import flights_lifecycle

BAD_DAY = "2013-01-02"
RANGE = ("2013-01-01", "2013-01-03")


class FaultySource(NYCFlights13Source):
    """nycflights13 with chosen faults: null keys or no dates on one day, or a read error.
    Each read appends a line to ``attempts_file`` (runs may retry in fresh resource copies)."""

    metadata: ClassVar[PluginMetadata] = PluginMetadata(
        name="faulty",
        kind="data_source",
        version="0.0.1",
        capabilities=("partitioned:daily",),
        description="test faults",
    )
    null_keys_on: str = ""
    no_date_on: str = ""
    raise_error: str = ""
    attempts_file: str = ""

    def read(self, table: str, start: date | None = None, end: date | None = None) -> pl.DataFrame:
        if self.attempts_file:
            with open(self.attempts_file, "a") as f:
                f.write(f"{table}\n")
        if self.raise_error:
            raise _ERRORS[self.raise_error]()
        df = super().read(table, start, end)
        if table != "flights":
            return df
        if self.null_keys_on:
            day = pl.col("date") == date.fromisoformat(self.null_keys_on)
            first_rows = pl.int_range(pl.len()).over("date") < 3
            df = df.with_columns(
                pl.when(day & first_rows).then(None).otherwise(pl.col("carrier")).alias("carrier")
            )
        if self.no_date_on:
            day = pl.col("date") == date.fromisoformat(self.no_date_on)
            df = df.with_columns(pl.when(day).then(None).otherwise(pl.col("date")).alias("date"))
        return df


_ERRORS = {
    "disk_full": lambda: OSError(errno.ENOSPC, "No space left on device", "/data/flights.csv.zip"),
    "permission": lambda: PermissionError(errno.EACCES, "Permission denied", "/data/weather.csv"),
    "read_only": lambda: OSError(errno.EROFS, "Read-only file system", "/data/cache"),
    "missing": lambda: FileNotFoundError(errno.ENOENT, "No such file", "/data/flights.csv.zip"),
    "schema": lambda: pl.exceptions.SchemaError("column 'year' is not Int32"),
    "timeout": lambda: TimeoutError("read timed out"),
    "connection": lambda: ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
}
PERMANENT = ["disk_full", "permission", "read_only", "missing", "schema"]
TRANSIENT = ["timeout", "connection"]
FAST_RETRY = dg.RetryPolicy(max_retries=2, delay=0.05, backoff=dg.Backoff.EXPONENTIAL)
FLIGHTS = flights_lifecycle()
_FLIGHTS_TABLE = next(t for t in FLIGHTS.spec.data.tables if t.name == "flights")
raw_flights_fast_retry = raw._daily_raw_asset(FLIGHTS, _FLIGHTS_TABLE, retry_policy=FAST_RETRY)


def _job(assets: list, selection: str | list[str]) -> dg.JobDefinition:
    defs = dg.Definitions(
        assets=assets,
        jobs=[
            dg.define_asset_job(
                "job",
                selection=selection,
                executor_def=dg.in_process_executor,
            )
        ],
        resources={  # configured per run, through the run config
            "flights": FaultySource.configure_at_launch(),
            "io_manager": PolarsIOManager.configure_at_launch(),
        },
    )
    return defs.resolve_job_def("job")


RAW = {a.key.to_user_string(): a for a in raw.build_raw_assets(FLIGHTS)}
ALL = [*RAW.values(), build_features_asset(FLIGHTS)]


def ingest_job() -> dg.JobDefinition:
    """The real raw and feature assets, one job over the daily range."""
    return _job(ALL, "*")


def raw_flights_job() -> dg.JobDefinition:
    return _job(ALL, ["raw_flights"])


def features_job() -> dg.JobDefinition:
    return _job(ALL, ["flight_features"])


def retry_job() -> dg.JobDefinition:
    return _job([raw_flights_fast_retry], "*")


def _run(job_fn, instance: dg.DagsterInstance, tmp_path: Path, tags: dict, **source: str):
    run_config = {
        "resources": {
            "flights": {"config": dict(source)},
            "io_manager": {"config": {"base_path": str(tmp_path / "data")}},
        }
    }
    with dg.execute_job(
        dg.reconstructable(job_fn),
        instance=instance,
        run_config=run_config,
        tags=tags,
        raise_on_error=False,
    ) as result:
        failures = [
            e.step_failure_data.error
            for e in result.all_events
            if e.event_type == dg.DagsterEventType.STEP_FAILURE and e.step_failure_data
        ]
        return result.success, result.run_id, [f.message if f else "" for f in failures]


def _range_tags(start: str, end: str) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}


def _materialized(instance: dg.DagsterInstance, asset: str) -> set[str]:
    return set(instance.get_materialized_partitions(dg.AssetKey(asset)))


def _check(instance: dg.DagsterInstance, asset: str, name: str):
    key = dg.AssetCheckKey(dg.AssetKey(asset), name)
    return instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).get(key)


@pytest.fixture
def instance(tmp_path: Path):
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as inst:
        yield inst


def test_a_day_with_null_keys_is_never_stored_and_the_error_names_it(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    ok, run_id, errors = _run(
        ingest_job, instance, tmp_path, _range_tags(*RANGE), null_keys_on=BAD_DAY
    )
    assert not ok
    [message] = [m for m in errors if "raw_flights" in m]
    assert f"run {run_id}" in message and BAD_DAY in message
    assert "carrier: 3" in message and "Nothing was stored" in message
    assert "fix: repair the source data" in message and "drop" not in message
    # nothing of the run's raw_flights was stored or marked materialized; downstream never ran
    assert _materialized(instance, "raw_flights") == set()
    assert _materialized(instance, "flight_features") == set()
    assert not (tmp_path / "data" / "raw_flights").exists()
    # the check is the visible record, with the day, column and count
    record = _check(instance, "raw_flights", "no_null_keys")
    assert record is not None and record.status.value == "FAILED" and record.run_id == run_id
    evaluation = record.event.dagster_event.event_specific_data
    assert evaluation.metadata["null_counts_by_day"].value == {BAD_DAY: {"carrier": 3}}
    # one attempt: a failed check is not something a retry can fix
    attempts = [
        e
        for e in instance.all_logs(run_id)
        if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY
    ]
    assert attempts == []


def test_rows_without_a_date_are_named_without_telling_to_drop_rows(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    ok, run_id, errors = _run(
        raw_flights_job, instance, tmp_path, _range_tags(*RANGE), no_date_on=BAD_DAY
    )
    assert not ok
    [message] = errors
    assert "row(s) have no date" in message and f"run {run_id}" in message
    assert "give every row of 'flights' its date" in message
    assert "drop" not in message.lower() and "filter" not in message.lower()
    assert _materialized(instance, "raw_flights") == set()


def test_good_days_pass_and_flight_features_refuses_a_day_whose_latest_check_failed(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    ok, _, errors = _run(ingest_job, instance, tmp_path, _range_tags(*RANGE))
    assert ok, errors
    assert _materialized(instance, "flight_features") == {"2013-01-01", "2013-01-02", "2013-01-03"}
    assert _check(instance, "raw_flights", "no_null_keys").status.value == "SUCCEEDED"
    # the source goes bad for one day: that day's raw run fails (the good copy stays on disk)
    ok, _, _ = _run(
        raw_flights_job, instance, tmp_path, {"dagster/partition": BAD_DAY}, null_keys_on=BAD_DAY
    )
    assert not ok
    # a later --select flight_features run over the range refuses to use it, naming it
    ok, run_id, errors = _run(features_job, instance, tmp_path, _range_tags(*RANGE))
    assert not ok
    [message] = errors
    assert f"run {run_id}" in message and f"raw_flights {BAD_DAY} (no_null_keys)" in message
    assert "--select raw_flights --partition 2013-01-02" in message
    # other days are fine on their own; after a good re-run the day is usable again
    ok, _, errors = _run(features_job, instance, tmp_path, {"dagster/partition": "2013-01-03"})
    assert ok, errors
    ok, _, _ = _run(raw_flights_job, instance, tmp_path, {"dagster/partition": BAD_DAY})
    assert ok
    ok, _, errors = _run(features_job, instance, tmp_path, _range_tags(*RANGE))
    assert ok, errors


def _attempts(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("error", PERMANENT)
def test_a_permanent_read_error_makes_one_attempt_and_names_path_and_fix(
    tmp_path: Path, instance: dg.DagsterInstance, error: str
) -> None:
    attempts = tmp_path / "attempts.txt"
    ok, _, errors = _run(
        retry_job,
        instance,
        tmp_path,
        {"dagster/partition": "2013-01-01"},
        raise_error=error,
        attempts_file=str(attempts),
    )
    assert not ok
    assert _attempts(attempts) == 1
    [message] = errors
    assert "Retrying cannot fix this" in message and "fix:" in message
    assert "raw_flights" in message and "2013-01-01" in message
    if error != "schema":
        assert "path: /data/" in message


@pytest.mark.parametrize("error", TRANSIENT)
def test_a_transient_read_error_is_retried(
    tmp_path: Path, instance: dg.DagsterInstance, error: str
) -> None:
    attempts = tmp_path / "attempts.txt"
    ok, _, _ = _run(
        retry_job,
        instance,
        tmp_path,
        {"dagster/partition": "2013-01-01"},
        raise_error=error,
        attempts_file=str(attempts),
    )
    assert not ok
    assert _attempts(attempts) == 1 + FAST_RETRY.max_retries


def test_the_raw_assets_retry_with_backoff_and_jitter() -> None:
    for asset in RAW.values():
        policy = asset.op.retry_policy
        assert policy.backoff == dg.Backoff.EXPONENTIAL and policy.jitter is not None
        assert policy.max_retries >= 1


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (OSError(errno.ENOSPC, "full"), "permanent"),
        (OSError(errno.EDQUOT, "quota"), "permanent"),
        (PermissionError(errno.EPERM, "no"), "permanent"),
        (IsADirectoryError(errno.EISDIR, "dir"), "permanent"),
        (KeyError("no table 'flightz'"), "permanent"),
        (pl.exceptions.ColumnNotFoundError("x"), "permanent"),
        (OSError(errno.ETIMEDOUT, "timed out"), "transient"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "transient"),
        (BlockingIOError(errno.EAGAIN, "again"), "transient"),
        (RuntimeError("something odd"), "transient"),
    ],
)
def test_classification(exc: BaseException, kind: str) -> None:
    assert classify(exc)[0] == kind

"""The whole lifecycle on the production instance (deploy/dagster.prod.yaml on PostgreSQL).

One module fixture: two lifecycles started at the same moment on one MLX home and one fresh
PostgreSQL database (the small composition: a year of daily partitions at 5% of the flights,
two epochs; a few minutes here). Both must exit 0 with the work done once; the tests then read
what they left, straight from PostgreSQL too, and wipe partitions and have them re-arrive.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from mlx_resources.model_registry import ModelRegistry
from tests.deploy.conftest import (
    ProdHome,
    _admin_connect,
    lifecycle,
    pg_env,
    prod_config,
    stop,
    write_small_composition,
)

pytestmark = pytest.mark.slow

LIFECYCLE_TIMEOUT_S = 1800


@dataclass
class Done:
    prod: ProdHome
    outputs: list[str]
    defs: dg.Definitions


def _wait(proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> str:
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop(proc)
        pytest.fail(f"lifecycle did not finish in {timeout_s:.0f}s:\n{log.read_text()[-3000:]}")
    finally:
        stop(proc)
    return log.read_text()


@pytest.fixture(scope="module")
def done(tmp_path_factory):  # type: ignore[no-untyped-def]
    import uuid

    import yaml

    home = tmp_path_factory.mktemp("prod_lifecycle")
    db = f"mlx_t_{uuid.uuid4().hex[:12]}"
    admin = _admin_connect()
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    mp = pytest.MonkeyPatch()
    try:
        dagster_home = home / "dagster"
        dagster_home.mkdir()
        (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(prod_config()))
        env_vars = {
            **pg_env(db),
            "MLX_HOME": str(home),
            "DAGSTER_HOME": str(dagster_home),
            "MLX_COMPOSITION": str(write_small_composition(home / "mlx.yaml")),
        }
        for key, value in env_vars.items():
            mp.setenv(key, value)
        mp.delenv("MLX_PROFILE", raising=False)
        from mlx_resources.platform import REPO_ROOT

        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        prod = ProdHome(home, dagster_home, db, env)
        logs = [home / "first.log", home / "second.log"]
        procs = [lifecycle(env, log) for log in logs]
        outputs = [_wait(p, log, LIFECYCLE_TIMEOUT_S) for p, log in zip(procs, logs, strict=True)]
        codes = [p.returncode for p in procs]
        assert codes == [0, 0], "\n----\n".join(o[-3000:] for o in outputs)

        from mlx_assets.build import build_definitions
        from mlx_plugins.kernel.composition import load_composition

        defs = build_definitions(load_composition())
        yield Done(prod, outputs, defs)
    finally:
        mp.undo()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


@pytest.fixture(autouse=True)
def _isolated_home(done, monkeypatch):  # type: ignore[no-untyped-def]  # the module's home
    for key, value in done.prod.env.items():
        if key.startswith(("DAGSTER_", "MLX_")):
            monkeypatch.setenv(key, value)


@pytest.fixture
def instance(done):  # type: ignore[no-untyped-def]
    with done.prod.instance() as inst:
        yield inst


def test_the_instance_is_postgres_from_the_production_file(instance, done):
    from dagster_postgres import (
        PostgresEventLogStorage,
        PostgresRunStorage,
        PostgresScheduleStorage,
    )

    from mlx_resources.run_coordinator import MlxQueuedRunCoordinator

    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    assert isinstance(instance.run_coordinator, MlxQueuedRunCoordinator)
    # what the instance reports is what is in the database
    import psycopg2

    pg = psycopg2.connect(host="127.0.0.1", user="postgres", dbname=done.prod.db)
    try:
        with pg.cursor() as cur:
            cur.execute("SELECT count(*) FROM runs")
            (rows,) = cur.fetchone()
    finally:
        pg.close()
    assert rows == len(instance.get_runs()) > 0


def test_two_lifecycles_at_once_do_the_work_once(instance, done):
    waited = [o for o in done.outputs if "another lifecycle is running (pid" in o]
    assert len(waited) == 1, [o[-2000:] for o in done.outputs]
    assert "nothing to recompute" in waited[0] or "up to date" in waited[0], waited[0][-2000:]
    runs = instance.get_runs()
    assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
    jobs = Counter(r.job_name for r in runs)
    assert set(jobs) == {"reference", "daily", "training", "monitoring"}, jobs
    assert set(jobs.values()) == {1}, jobs
    versions = ModelRegistry(root=str(done.prod.home / "registry")).versions("flight_delay")
    assert [v.version for v in versions] == [1]


def test_every_asset_of_the_definitions_is_materialized_once_per_partition(instance, done):
    graph = done.defs.resolve_asset_graph()
    keys = [k for k in graph.get_all_asset_keys() if graph.get(k).is_materializable]
    assert keys, "the definitions have no assets"
    for key in keys:
        records = instance.fetch_materializations(key, limit=10_000).records
        assert records, f"{key.to_user_string()} was never materialized"
        per_partition = Counter(r.partition_key for r in records)
        twice = {p: n for p, n in per_partition.items() if n > 1}
        assert not twice, f"{key.to_user_string()} materialized more than once: {twice}"
        node = graph.get(key)
        if node.is_partitioned:
            all_keys = set(node.partitions_def.get_partition_keys())
            assert set(per_partition) <= all_keys
    # The daily assets cover the year; checks ran and passed in the same storage.
    raw = dg.AssetKey("raw_flights")
    assert len(instance.get_materialized_partitions(raw)) == 365
    check = dg.AssetCheckKey(dg.AssetKey("model_evaluation"), "beats_baseline")
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([check])[check]
    assert record.status.value == "SUCCEEDED"


def test_wiped_partitions_re_arrive(instance, done):
    """Wipe the drift assets (every partition: OSS dagster-postgres 0.29 refuses a wipe of
    single partitions, NotImplementedError, as SQLite does) and have them re-arrive."""
    keys = [dg.AssetKey("feature_drift"), dg.AssetKey("drift_incident_summary")]
    before = {k: instance.get_materialized_partitions(k) for k in keys}
    assert all(before.values()), before
    runs_before = {r.run_id for r in instance.get_runs()}
    with pytest.raises(NotImplementedError):
        instance.wipe_asset_partitions(keys[0], ["2013-01-10"])

    instance.wipe_assets(keys)
    assert not any(instance.get_materialized_partitions(k) for k in keys)

    log = done.prod.home / "rearrive.log"
    proc = lifecycle(done.prod.env, log)
    out = _wait(proc, log, LIFECYCLE_TIMEOUT_S)
    assert proc.returncode == 0, out[-3000:]
    assert "drift monitoring: 28 days 2013-01-01..2013-01-28" in out, out[-3000:]
    assert "runs and events in PostgreSQL" in out, out[-3000:]  # the summary says where
    assert {k: instance.get_materialized_partitions(k) for k in keys} == before
    new = [r for r in instance.get_runs() if r.run_id not in runs_before]
    assert "monitoring" in {r.job_name for r in new}
    assert {r.status for r in new} == {dg.DagsterRunStatus.SUCCESS}

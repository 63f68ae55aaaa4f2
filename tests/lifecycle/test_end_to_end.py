"""The whole lifecycle on a real Dagster instance: materialize, re-run (no-op), lineage, gate.

One module-scoped instance and MLX home: the full year is materialized once (about a minute
here) and every test reads what it left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mlx_assets.lifecycle import LifecyclePlan, plan, run_lifecycle
from mlx_resources.model_registry import ModelRegistry
from mlx_resources.platform import REPO_ROOT

pytestmark = pytest.mark.slow


@dataclass
class Lifecycle:
    instance: dg.DagsterInstance
    defs: dg.Definitions
    home: Path
    first: LifecyclePlan
    log: list[str]
    output: str
    """Everything the first `mlx lifecycle` printed (stdout and stderr)."""


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory):
    home = tmp_path_factory.mktemp("lifecycle_home")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLX_HOME", str(home))
    mp.setenv("MLX_PROFILE", "smoke")
    (home / "dagster").mkdir()
    # The repository's dagster.yaml, so the suite runs on the instance config users get.
    overrides = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    with dg.instance_for_test(temp_dir=str(home / "dagster"), overrides=overrides) as instance:
        mp.setenv("DAGSTER_HOME", instance.root_directory)
        from mlx_assets.build import build_definitions
        from mlx_plugins.kernel.composition import load_composition

        # Built here, not imported: mlx_assets.definitions may have been imported by an earlier
        # test with another MLX_HOME, and resources resolve their paths when built.
        defs = build_definitions(load_composition())
        first = plan(instance, defs)
        # The README's command, in its own process: training steps run in forked workers whose
        # environment must be this test's, not that of an earlier test in this pytest process.
        done = subprocess.run(
            [sys.executable, "-m", "mlx_assets.cli", "lifecycle"],
            cwd=REPO_ROOT,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        log = [line for line in done.stdout.splitlines() if line.startswith("[mlx]")]
        yield Lifecycle(instance, defs, home, first, log, done.stdout + done.stderr)
    mp.undo()


@pytest.fixture(autouse=True)
def _isolated_home(lifecycle, monkeypatch):  # overrides the suite-wide per-test home
    monkeypatch.setenv("MLX_HOME", str(lifecycle.home))
    monkeypatch.setenv("MLX_PROFILE", "smoke")


def _runs(instance) -> list[dg.DagsterRun]:
    return list(instance.get_runs())


def test_first_run_materializes_everything(lifecycle):
    instance, first = lifecycle.instance, lifecycle.first
    daily = "[mlx] daily data (raw_flights, raw_weather, flight_features): 365 days"
    assert f"{daily} 2013-01-01..2013-12-31 ..." in lifecycle.log
    assert first.reference == ["planes"]
    assert len(first.partitions) == 365
    runs = _runs(instance)
    assert sorted(r.job_name for r in runs) == ["daily", "monitoring", "reference", "training"]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    daily = next(r for r in runs if r.job_name == "daily")
    assert daily.tags["dagster/asset_partition_range_start"] == "2013-01-01"
    assert daily.tags["dagster/asset_partition_range_end"] == "2013-12-31"
    for key in ("raw_flights", "raw_weather", "flight_features"):
        assert len(instance.get_materialized_partitions(dg.AssetKey(key))) == 365
    # drift up to the model's test end; later days arrive through the `arrival` schedule
    assert len(instance.get_materialized_partitions(dg.AssetKey("feature_drift"))) == 304
    # each monitored day gets its incident summary (a labelled template: no LLM provider)
    incidents = instance.get_materialized_partitions(dg.AssetKey("drift_incident_summary"))
    assert len(incidents) == 304
    assert any((lifecycle.home / "reports" / "incidents").glob("2013-*.md"))


def test_registered_version_records_lineage(lifecycle):
    instance, home = lifecycle.instance, lifecycle.home
    versions = ModelRegistry(root=str(home / "registry")).versions("flight_delay")
    assert [v.version for v in versions] == [1]
    v = versions[0]
    assert os.path.exists(v.artifact_path)
    assert v.metrics["roc_auc"] > 0.6
    assert v.metrics["log_loss"] < v.metrics["baseline_log_loss"]
    lin = v.lineage
    assert lin.partitions[0] == "2013-01-01" and lin.partitions[-1] == "2013-10-31"
    assert len(lin.partitions) == 243 + 61  # Jan-Aug (train and valid) + Sep-Oct (test)
    assert set(lin.partition_data_versions) == set(lin.partitions)
    ts = instance.get_latest_materialization_event(dg.AssetKey("training_set"))
    assert lin.training_data_version == ts.asset_materialization.tags["dagster/data_version"]
    assert set(lin.code_versions) >= {"flight_features", "training_set", "model"}
    assert v.config["window"]["train_end"] == "2013-08-31"


def test_checks_ran_and_passed(lifecycle):
    instance = lifecycle.instance
    for asset, check in (
        ("raw_flights", "schema_matches_source"),
        ("raw_flights", "no_null_keys"),
        ("model_evaluation", "beats_baseline"),
    ):
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey(asset), check)]
        )[dg.AssetCheckKey(dg.AssetKey(asset), check)]
        assert record.status.value == "SUCCEEDED", (asset, check)


def test_second_run_recomputes_nothing(lifecycle):
    instance, defs = lifecycle.instance, lifecycle.defs
    before = len(_runs(instance))
    log: list[str] = []
    todo = run_lifecycle(instance, defs, log=log.append)
    assert todo.empty, todo
    assert len(_runs(instance)) == before
    assert log == ["everything is up to date; nothing to recompute"]


def test_unchanged_upstream_keeps_downstream_fresh(lifecycle):
    instance, defs = lifecycle.instance, lifecycle.defs
    result = defs.resolve_job_def("reference").execute_in_process(instance=instance)
    assert result.success
    # planes was re-materialized with identical content: same data version, nothing stale.
    todo = plan(instance, defs)
    assert todo.empty, todo


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlx_assets.cli", "lifecycle", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
    )


_CODE_VERSIONS = (
    "import json\n"
    "from mlx_assets.definitions import defs\n"
    "graph = defs.resolve_asset_graph()\n"
    "print(json.dumps({k.to_user_string(): graph.get(k).code_version "
    "for k in graph.get_all_asset_keys()}))\n"
)


def _skip_if_asset_code_changed(lifecycle) -> None:
    """These tests count the runs a repair launches; an edit to asset code since the fixture ran
    (a shared working tree) rightly makes more stale. Compare the code versions a fresh process
    sees with those recorded."""
    done = subprocess.run(
        [sys.executable, "-c", _CODE_VERSIONS],
        cwd=REPO_ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    now = json.loads(done.stdout.strip().splitlines()[-1])
    changed = []
    for name, version in now.items():
        event = lifecycle.instance.get_latest_materialization_event(dg.AssetKey(name))
        recorded = event.asset_materialization.tags.get("dagster/code_version") if event else None
        if version and recorded and recorded != version:
            changed.append(name)
    if changed:
        pytest.skip(f"asset code edited since the fixture ran: {', '.join(sorted(changed))}")


def test_first_run_console_fits_a_screen_and_ends_with_the_summary(lifecycle):
    """Issue 8: 2,617 lines with the AUC on line 1,473 -> one line per stage and a summary."""
    lines = lifecycle.output.splitlines()
    assert len(lines) <= 40, lifecycle.output
    assert "Materialized value" not in lifecycle.output
    assert "DEBUG" not in lifecycle.output and "Traceback" not in lifecycle.output
    home = lifecycle.home
    summary = [line.removeprefix("[mlx]   ") for line in lines[-8:]]
    assert summary[0] == (
        f"model      flight_delay:v0001: {home / 'registry' / 'flight_delay' / 'v0001'}/model.pt"
    )
    assert summary[1] == "gate       beats_baseline passed"
    assert summary[2].startswith("metrics    ROC AUC 0.") and "Brier" in summary[2]
    assert summary[3].startswith("drift      ") and f"reports: {home / 'reports'}" in summary[3]
    assert summary[4].startswith(f"data       {home / 'data'}")
    assert summary[5].startswith(f"registry   {home / 'registry'}")
    assert summary[6].startswith("instance   ")
    assert summary[7].startswith("ui         ./dev ui") and "http://127.0.0.1:3000" in summary[7]


def _versions(instance, asset: str, days: list[str]) -> dict[str, str]:
    tags = instance.event_log_storage.get_latest_tags_by_partition(
        dg.AssetKey(asset),
        dg.DagsterEventType.ASSET_MATERIALIZATION,
        ["dagster/data_version"],
        asset_partitions=days,
    )
    return {day: t["dagster/data_version"] for day, t in tags.items()}


def test_bad_files_are_rematerialized_exactly_and_verbose_prints_events(lifecycle):
    """Issue 9 item 14: a truncated and a deleted partition file are found and re-materialized."""
    _skip_if_asset_code_changed(lifecycle)
    instance, home = lifecycle.instance, lifecycle.home
    truncated = home / "data" / "flight_features" / "2013-11-15.arrow"
    deleted = home / "data" / "raw_weather" / "2013-12-01.arrow"
    size = truncated.stat().st_size
    versions = _versions(instance, "flight_features", ["2013-11-15", "2013-12-01"])
    truncated.write_bytes(truncated.read_bytes()[: size // 2])
    deleted.unlink()
    before = {r.run_id for r in _runs(instance)}

    done = _cli("--verbose")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert "found 2 bad stored partition(s)" in out
    assert f"flight_features 2013-11-15: file has {size // 2:,} bytes, {size:,} were written" in out
    assert f"raw_weather 2013-12-01: file missing: {deleted}" in out
    assert "ASSET_MATERIALIZATION" in out, "--verbose prints Dagster's event lines"

    new = [r for r in _runs(instance) if r.run_id not in before]
    assert sorted(r.job_name for r in new) == ["daily", "daily"], "no retraining, no drift rerun"
    materialized = set()
    for run in new:
        assert run.status == dg.DagsterRunStatus.SUCCESS
        for record in instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        ).records:
            mat = record.event_log_entry.asset_materialization
            materialized.add((mat.asset_key.to_user_string(), mat.partition))
    assert materialized == {
        ("flight_features", "2013-11-15"),
        ("raw_weather", "2013-12-01"),
        ("flight_features", "2013-12-01"),
    }
    assert deleted.exists()
    # same content, same data version: nothing downstream became stale
    assert _versions(instance, "flight_features", ["2013-11-15", "2013-12-01"]) == versions
    assert plan(instance, lifecycle.defs).empty


def test_failed_run_exits_1_with_one_line_naming_the_run(lifecycle, tmp_path):
    """A run that fails ends the lifecycle with exit 1 and one line: which run, how to see it."""
    _skip_if_asset_code_changed(lifecycle)
    home = lifecycle.home
    victim = home / "data" / "raw_flights" / "2013-12-20.arrow"
    victim.unlink()
    broken = tmp_path / "mlx.yaml"
    text = (REPO_ROOT / "mlx.yaml").read_text()
    assert "scale: 1.0\n" in text
    broken.write_text(
        text.replace("scale: 1.0\n", "scale: 1.0\n        data_dir: /nonexistent/mlx\n")
    )
    done = _cli(str(broken))
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.strip()]
    failed = next(r for r in _runs(lifecycle.instance) if r.status == dg.DagsterRunStatus.FAILURE)
    # A new data_dir is a new source config: the reference table (planes) is stale first, so the
    # reference run is the one that fails, reading from the missing folder.
    assert failed.job_name == "reference"
    assert line.startswith(
        f"mlx lifecycle: the reference run {failed.run_id[:8]} failed at step planes: "
    )
    assert "/nonexistent/mlx" in line and "dagster._core" not in line
    assert f"./dev ui` (Runs -> {failed.run_id[:8]})" in line
    # and with the right file the next lifecycle repairs it
    done = _cli()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert victim.exists()


def test_quality_gate_blocks_a_bad_model(lifecycle, monkeypatch):
    instance, home = lifecycle.instance, lifecycle.home
    from mlx_assets.build import build_definitions
    from mlx_plugins.kernel.composition import load_composition

    monkeypatch.setenv("MLX__SETTINGS__QUALITY_GATE__MIN_ROC_AUC", "0.99")
    strict = build_definitions(load_composition())
    result = strict.resolve_job_def("training").execute_in_process(
        instance=instance,
        raise_on_error=False,
        asset_selection=[dg.AssetKey("model_evaluation"), dg.AssetKey("registered_model")],
    )
    assert not result.success
    assert result.get_asset_check_evaluations()[0].passed is False
    skipped = [e for e in result.all_events if e.step_key == "registered_model"]
    assert not any(e.is_successful_output for e in skipped)
    versions = ModelRegistry(root=str(home / "registry")).versions("flight_delay")
    assert [v.version for v in versions] == [1], "a blocked model must not be registered"


def test_an_arriving_day_is_left_to_the_arrival_schedule(lifecycle):
    """A day after the model's test end arrives through the monitoring job (the `arrival`
    schedule's run); its partition carries its own drift values, and the lifecycle neither plans
    it nor the days after it. The loop itself (sensor -> retraining -> new version under the
    daemon) is tests/monitoring/test_drift_sensor_daemon.py."""
    from mlx_assets.monitoring.events import DriftObservation

    instance, defs = lifecycle.instance, lifecycle.defs
    drift = dg.AssetKey("feature_drift")
    day = "2013-12-24"
    result = defs.resolve_job_def("monitoring").execute_in_process(
        instance=instance, partition_key=day, asset_selection=[drift]
    )
    assert result.success
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=drift, asset_partitions=[day]), limit=1
    ).records[0]
    observed = DriftObservation.from_metadata(record.asset_materialization.metadata, day=day)
    assert observed.day == day and observed.rows > 0
    assert plan(instance, defs).monitoring == []

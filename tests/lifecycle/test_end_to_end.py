"""The whole lifecycle on a real Dagster instance: materialize, re-run (no-op), lineage, gate.

One module-scoped instance and MLX home: the full year is materialized once (about a minute
here) and every test reads what it left.
"""

from __future__ import annotations

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
        yield Lifecycle(instance, defs, home, first, log)
    mp.undo()


@pytest.fixture(autouse=True)
def _isolated_home(lifecycle, monkeypatch):  # overrides the suite-wide per-test home
    monkeypatch.setenv("MLX_HOME", str(lifecycle.home))
    monkeypatch.setenv("MLX_PROFILE", "smoke")


def _runs(instance) -> list[dg.DagsterRun]:
    return list(instance.get_runs())


def test_first_run_materializes_everything(lifecycle):
    instance, first = lifecycle.instance, lifecycle.first
    assert "[mlx] daily partitions: 365 days, 2013-01-01..2013-12-31, in one run" in lifecycle.log
    assert first.reference == ["planes"]
    assert len(first.partitions) == 365
    runs = _runs(instance)
    assert sorted(r.job_name for r in runs) == ["daily", "monitoring", "reference", "training"]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    daily = next(r for r in runs if r.job_name == "daily")
    assert daily.tags["dagster/asset_partition_range_start"] == "2013-01-01"
    assert daily.tags["dagster/asset_partition_range_end"] == "2013-12-31"
    for key in ("raw_flights", "raw_weather", "flight_features", "feature_drift"):
        assert len(instance.get_materialized_partitions(dg.AssetKey(key))) == 365


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


def test_new_day_drift_retrains_on_the_recent_window(lifecycle):
    """Data arrives -> drift -> retraining run -> a new model version, on the real instance."""
    from mlx_assets.monitoring.drift_sensor import drift_retrain_sensor
    from mlx_resources.platform import DriftPolicy, Platform

    instance, defs, home = lifecycle.instance, lifecycle.defs, lifecycle.home
    drift = dg.AssetKey("feature_drift")
    history = instance.fetch_observations(drift, limit=1000).records
    retrain_days = sorted(
        str(r.asset_observation.partition)
        for r in history
        if r.asset_observation.metadata["severity"].value == "retrain"
    )
    assert retrain_days, "some days of 2013 drift against the Jan-Aug reference"
    day = retrain_days[-1]
    # The day's data arrives (again): the arrival schedule's run for one partition.
    platform = Platform(drift=DriftPolicy(cooldown_minutes=0))
    cursor = None  # drain the history first: everything seen so far is not news
    while True:
        drained = drift_retrain_sensor(
            dg.build_sensor_context(
                instance=instance, cursor=cursor, resources={"platform": platform}
            )
        )
        if isinstance(drained, dg.SkipReason):
            break
        cursor = drained.cursor
    result = defs.resolve_job_def("monitoring").execute_in_process(
        instance=instance, partition_key=day, asset_selection=[drift]
    )
    assert result.success
    obs = [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    assert [e.event_specific_data.asset_observation.partition for e in obs] == [day]
    severity = obs[0].event_specific_data.asset_observation.metadata["severity"].value
    assert severity == "retrain", "the same day drifts the same way when it arrives again"

    sensed = drift_retrain_sensor(
        dg.build_sensor_context(instance=instance, cursor=cursor, resources={"platform": platform})
    )
    (retrain,) = sensed.run_requests
    assert retrain.tags["mlx/drift_partition"] == day
    run = defs.resolve_job_def("training").execute_in_process(
        instance=instance,
        run_config=retrain.run_config,
        tags=retrain.tags,
        asset_selection=[
            dg.AssetKey(k)
            for k in ("training_set", "model", "model_evaluation", "registered_model")
        ],
        raise_on_error=False,
    )
    versions = ModelRegistry(root=str(home / "registry")).versions("flight_delay")
    ts = instance.get_latest_materialization_event(dg.AssetKey("training_set"))
    assert ts.asset_materialization.metadata["window"].value["test_end"] == day
    if run.success:  # the shifted model may or may not pass the quality gate
        assert versions[-1].lineage.window["test_end"] == day
        assert versions[-1].lineage.partitions[-1] == day

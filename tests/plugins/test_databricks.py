"""The ``databricks`` ml_platform against the loopback Databricks server.

The official client stack runs unchanged (dagster-databricks' ``PipesDatabricksClient`` ->
databricks-sdk ``WorkspaceClient`` -> HTTP on 127.0.0.1); the server runs the submitted
``spark_python_task`` as a local process, so the real Pipes bootstrap trains on the "cluster"
side with local_torch's code and streams its messages back through "DBFS".
"""

import logging
import os
import signal
import threading
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from mlx_plugins.kernel.secrets import redact
from mlx_plugins.ml_platforms.base import (
    EpochStats,
    TrainedModel,
    TrainingDataError,
    TrainingDivergedError,
    TrainingSpec,
)
from mlx_plugins.ml_platforms.databricks import (
    DatabricksAuthError,
    DatabricksError,
    DatabricksPlatform,
)
from mlx_plugins.ml_platforms.databricks_loopback import LoopbackDatabricks
from mlx_plugins.testing import MLPlatformContract
from mlx_plugins.testing.contracts import _learnable_frame

TOKEN = f"dapi-{uuid.uuid4().hex}"  # secret: must never show in a log, an error or metadata
TORCH = {"epochs": 3, "hidden": [16], "batch_size": 256, "num_threads": 1}


@pytest.fixture(scope="module")
def server():
    with LoopbackDatabricks(token=TOKEN, max_run_s=300) as s:
        yield s


def make_plugin(server: LoopbackDatabricks, **overrides: Any) -> DatabricksPlatform:
    config: dict[str, Any] = {
        "host": server.url,
        "token": TOKEN,
        "poll_interval_s": 0.2,
        "timeout_s": 300,
        "http_timeout_s": 30.0,
        "torch": TORCH,
    }
    return DatabricksPlatform(**{**config, **overrides})


def spec_for(tmp_path: Path) -> TrainingSpec:
    return TrainingSpec(
        numeric_features=("x", "noise"),
        categorical_features=("cat",),
        target="y",
        artifact_dir=str(tmp_path / "model"),
    )


def frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    return _learnable_frame(2000, 1), _learnable_frame(500, 2)


class TestDatabricksContract(MLPlatformContract):
    @pytest.fixture
    def plugin(self, server):
        return make_plugin(server)


def _run_asset(
    plugin: DatabricksPlatform, spec: TrainingSpec
) -> tuple[dg.ExecuteInProcessResult, list[str]]:
    """Materialize one asset that trains through the plugin as the ``model`` asset does; the
    result and the run's event-log messages."""
    train, valid = frames()

    @dg.asset
    def model(context: dg.AssetExecutionContext, ml_platform: DatabricksPlatform) -> Any:
        def on_epoch(e: EpochStats) -> None:
            context.log_event(
                dg.AssetObservation(
                    asset_key="model", metadata={"epoch": e.epoch, "train_loss": e.train_loss}
                )
            )

        trained = ml_platform.train(train, valid, spec, on_epoch=on_epoch, context=context)
        return dg.Output(trained.model_dump(mode="json"))

    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [model], resources={"ml_platform": plugin}, instance=instance, raise_on_error=False
        )
        messages = [e.user_message or "" for e in instance.all_logs(result.run_id)]
    return result, messages


def test_epochs_and_logs_stream_through_pipes_into_the_event_log(
    server: LoopbackDatabricks, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    before = len(server.submitted)
    result, messages = _run_asset(make_plugin(server), spec_for(tmp_path))
    assert result.success
    trained = TrainedModel.model_validate(result.output_for_node("model"))

    # one observation per epoch, sent by on_epoch as each Pipes message landed
    observations = [
        e.asset_observation_data.asset_observation
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    assert [o.metadata["epoch"].value for o in observations] == [1, 2, 3]
    assert [h.epoch for h in trained.history] == [1, 2, 3]
    # the cluster's Pipes log lines (and the run's page) are in the run's event log
    assert any("[databricks] epoch 3: train_loss=" in m for m in messages)
    assert any("[databricks] run" in m and "submitted: http" in m for m in messages)
    assert not any(TOKEN in m for m in messages)

    # the submitted task: a spark_python_task on a job cluster with the Pipes bootstrap env
    (body,) = server.submitted[before:]
    (task,) = body["tasks"]
    assert task["spark_python_task"]["python_file"].startswith("dbfs:/tmp/mlx/packages/entry-")
    env = task["new_cluster"]["spark_env_vars"]
    assert {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"} <= set(env)
    assert task["new_cluster"]["spark_version"].endswith("-ml-scala2.12")
    assert task["new_cluster"]["num_workers"] == 0
    assert any(lib["pypi"]["package"].startswith("dagster==") for lib in task["libraries"])
    assert body["timeout_seconds"] == 300
    run = server.runs[trained.params["databricks_run_id"]]
    assert run.result_state == "SUCCESS"
    assert TOKEN not in str(run.env) and TOKEN not in str(body)  # the cluster never sees it

    # lineage: the run id, its page and the cluster spec; the artifact is local and whole
    assert trained.platform == "databricks"
    assert trained.params["databricks_run_url"].startswith(server.url)
    assert trained.params["cluster"]["new_cluster"]["node_type_id"] == "i3.xlarge"
    assert Path(trained.artifact_path).parent == tmp_path / "model"
    from mlx_plugins.ml_platforms.local_torch import sha256_file

    assert sha256_file(Path(trained.artifact_path)) == trained.artifact_sha256
    # the run's frames and artifact are gone from DBFS; the package cache stays
    assert not any((server.dbfs_root / "tmp/mlx/runs").iterdir())
    assert any((server.dbfs_root / "tmp/mlx/packages").glob("mlx_plugins-*.zip"))

    out = capfd.readouterr()
    text = caplog.text + out.out + out.err
    assert TOKEN not in text


def test_a_failed_run_names_its_state_error_and_page(
    server: LoopbackDatabricks, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    plugin = make_plugin(server, torch={**TORCH, "device": "cuda"})  # no GPU on this cluster
    train, valid = frames()
    with plugin.session(), pytest.raises(DatabricksError) as err:
        plugin.train(train, valid, spec_for(tmp_path))
    message = str(err.value)
    run_id = max(server.runs)
    assert f"Databricks run {run_id} ended FAILED" in message
    assert "cuda" in message  # the task's own error line
    assert f"{server.url}/?o=0#job/0/run/{run_id}" in message
    assert not (tmp_path / "model" / "model.pt").exists()
    out = capfd.readouterr()
    assert TOKEN not in message + caplog.text + out.out + out.err


def test_a_training_error_on_the_cluster_is_raised_as_its_own_class(
    server: LoopbackDatabricks, tmp_path: Path
) -> None:
    """local_torch's typed errors cross the Pipes channel: a diverging loss on the cluster is
    a TrainingDivergedError here, as with local_torch, and no model is saved."""
    plugin = make_plugin(server, torch={**TORCH, "learning_rate": 1e20})
    train, valid = frames()
    with plugin.session(), pytest.raises(TrainingDivergedError, match=r"epoch \d of 3"):
        plugin.train(train, valid, spec_for(tmp_path))
    assert server.runs[max(server.runs)].result_state == "FAILED"
    assert not (tmp_path / "model" / "model.pt").exists()


def test_bad_input_is_refused_before_anything_is_uploaded(
    server: LoopbackDatabricks, tmp_path: Path
) -> None:
    plugin = make_plugin(server)
    train, valid = frames()
    requests = len(server.requests)
    with plugin.session():
        with pytest.raises(TrainingDataError, match=r"validation frame lacks .*'cat'"):
            plugin.train(train, valid.drop("cat"), spec_for(tmp_path))
        with pytest.raises(TrainingDataError, match="y"):
            plugin.train(train.with_columns(y=pl.lit(3)), valid, spec_for(tmp_path))
    assert len(server.requests) == requests  # nothing reached Databricks


def test_a_wrong_token_is_a_clear_error_at_health_and_before_any_run(
    server: LoopbackDatabricks, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = f"dapi-wrong-{uuid.uuid4().hex}"
    plugin = make_plugin(server, token=wrong)
    with plugin.session():
        status = plugin.check_health()
    assert not status.healthy
    assert "refused the token" in status.detail and "Invalid access token" in status.detail
    submitted = len(server.submitted)
    train, valid = frames()
    with plugin.session(), pytest.raises(DatabricksAuthError, match="refused the token"):
        plugin.train(train, valid, spec_for(tmp_path))
    assert len(server.submitted) == submitted  # nothing was submitted
    out = capfd.readouterr()
    text = status.detail + caplog.text + out.out + out.err
    assert wrong not in text and TOKEN not in text


def test_the_token_from_the_environment_is_never_logged(
    server: LoopbackDatabricks, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    monkeypatch.setenv("MLX_TEST_DATABRICKS_TOKEN", TOKEN)
    plugin = make_plugin(server, token=dg.EnvVar("MLX_TEST_DATABRICKS_TOKEN"))
    status = plugin.check_health()
    assert status.healthy, status.detail
    with plugin.session() as live:
        assert live.token == TOKEN
    assert redact(f"token {TOKEN}") == "token ***"  # registered as a secret when read
    out = capfd.readouterr()
    assert TOKEN not in out.out + out.err


def _when_running(server: LoopbackDatabricks, action: Any, before: int) -> threading.Thread:
    def watch() -> None:
        run = server.wait_for_state(
            lambda r: r.run_id > before and r.life_cycle_state == "RUNNING", timeout_s=120
        )
        action(run)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_step_termination_cancels_the_run(server: LoopbackDatabricks, tmp_path: Path) -> None:
    """SIGINT in the step's process (what Dagster's run termination sends) cancels the
    Databricks run before the step ends, and the task's process is gone."""
    before = max(server.runs, default=0)

    def interrupt(run: Any) -> None:
        if run.life_cycle_state == "RUNNING":  # never signal once the step is over
            os.kill(os.getpid(), signal.SIGINT)

    watcher = _when_running(server, interrupt, before)
    plugin = make_plugin(server, torch={**TORCH, "epochs": 100_000})
    result, messages = _run_asset(plugin, spec_for(tmp_path))
    watcher.join(timeout=5)
    assert not result.success
    run = server.runs[max(server.runs)]
    assert run.run_id in server.cancelled
    assert run.result_state == "CANCELED"
    assert run.process is not None and run.process.poll() is not None
    # dagster-databricks' own cancel, or MLX's safety net when Dagster raised the interruption
    # past it (it may defer a SIGINT while it handles an event)
    assert any("canceling Databricks job" in m or "cancelling run" in m for m in messages)


def test_timeout_cancels_the_run(server: LoopbackDatabricks, tmp_path: Path) -> None:
    plugin = make_plugin(server, timeout_s=2, torch={**TORCH, "epochs": 100_000})
    train, valid = frames()
    with plugin.session(), pytest.raises(TimeoutError, match="timeout_s=2"):
        plugin.train(train, valid, spec_for(tmp_path))
    run = server.runs[max(server.runs)]
    assert run.life_cycle_state in ("TERMINATING", "TERMINATED")
    assert run.result_state in (None, "CANCELED", "TIMEDOUT")
    run.process.wait(timeout=30)  # type: ignore[union-attr]


def test_a_run_that_disappears_is_a_clear_error(server: LoopbackDatabricks, tmp_path: Path) -> None:
    before = max(server.runs, default=0)
    watcher = _when_running(server, lambda run: server.forget_run(run.run_id), before)
    plugin = make_plugin(server, torch={**TORCH, "epochs": 100_000})
    train, valid = frames()
    with plugin.session(), pytest.raises(DatabricksError, match="disappeared"):
        plugin.train(train, valid, spec_for(tmp_path))
    watcher.join(timeout=5)


def test_a_run_deleted_before_its_first_poll_is_the_same_clear_error(
    server: LoopbackDatabricks, tmp_path: Path
) -> None:
    """The run is gone by the first ``runs/get`` (CI once deleted it that early): the error
    still says it disappeared, not that Databricks refused the job spec."""
    plugin = make_plugin(server)
    train, valid = frames()
    server.forget_on_submit = True
    try:
        with plugin.session(), pytest.raises(DatabricksError) as raised:
            plugin.train(train, valid, spec_for(tmp_path))
    finally:
        server.forget_on_submit = False
    message = str(raised.value)
    assert "disappeared" in message and "materialize again" in message
    assert "refused the training job" not in message

"""LocalGpuRunLauncher end to end: real runs, real run-worker processes, GPUs faked as ids.

This machine has no GPU; the launcher is configured with ``gpus: [0, 1]`` and the GPU asset
records the ``CUDA_VISIBLE_DEVICES`` it was given. All waits poll with generous timeouts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRunStatus, instance_for_test
from dagster._core.launcher import WorkerStatus

from mlx_resources.launchers.local_gpu import LocalGpuLaunchError, LocalGpuRunLauncher
from tests.launchers.helpers import create_run, wait_for

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def local_instance(tmp_path: Path, **config: Any) -> Iterator[DagsterInstance]:
    config.setdefault("poll_interval_seconds", 0.2)
    config.setdefault("wait_log_interval_seconds", 5.0)
    overrides = {
        "run_launcher": {
            "module": "mlx_resources.launchers.local_gpu",
            "class": "LocalGpuRunLauncher",
            "config": config,
        }
    }
    with instance_for_test(overrides=overrides) as instance:
        try:
            yield instance
        finally:
            # Let every held run go and wait for all run processes before the instance's
            # storage disappears.
            for probe in tmp_path.glob("*.json"):
                probe.with_suffix(".release").touch()
            instance.run_launcher.join(timeout=180)


def launch(
    instance: DagsterInstance, out: Path, job: str = "gpu_job", hold: bool = False, **kw: Any
) -> str:
    asset = "cpu_features" if job == "cpu_job" else "train_model"
    run_config = {"ops": {asset: {"config": {"out_dir": str(out), "hold": hold}}}}
    run = create_run(instance, job, run_config=run_config, **kw)
    instance.launch_run(run.run_id, workspace=None)
    return run.run_id


def probe(out: Path, run_id: str, timeout: float = 180) -> dict[str, Any]:
    """What the asset of ``run_id`` saw, once it has started."""
    path = out / f"{run_id}.json"
    return wait_for(
        lambda: json.loads(path.read_text()) if path.exists() else None,
        timeout=timeout,
        what=f"run {run_id} to start its asset",
    )


def release(out: Path, run_id: str) -> None:
    (out / f"{run_id}.release").touch()


def finished(instance: DagsterInstance, run_id: str, timeout: float = 180):
    return wait_for(
        lambda: (lambda run: run if run.is_finished else None)(instance.get_run_by_id(run_id)),
        timeout=timeout,
        what=f"run {run_id} to finish",
    )


def messages(instance: DagsterInstance, run_id: str) -> list[str]:
    return [entry.message for entry in instance.all_logs(run_id) if entry.message]


def logged(instance: DagsterInstance, run_id: str, pattern: str) -> re.Match[str] | None:
    return next(
        (m for m in (re.search(pattern, msg) for msg in messages(instance, run_id)) if m), None
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_concurrent_runs_get_different_gpus_a_third_waits_and_cpu_runs_see_none(tmp_path):
    with local_instance(tmp_path, gpus=[0, 1], gpu_memory_gb=80) as instance:
        first = launch(instance, tmp_path, hold=True)
        second = launch(instance, tmp_path, hold=True)
        first_seen, second_seen = probe(tmp_path, first), probe(tmp_path, second)
        assert {first_seen["CUDA_VISIBLE_DEVICES"], second_seen["CUDA_VISIBLE_DEVICES"]} == {
            "0",
            "1",
        }
        # mlx/gpu-memory-gb=40 on an 80 GB GPU.
        assert first_seen["MLX_GPU_MEMORY_FRACTION"] == "0.5000"
        assert first_seen["MLX_GPU_COUNT"] == "1"

        third = launch(instance, tmp_path, hold=True)
        wait_for(
            lambda: logged(instance, third, r"Waiting for 1 free GPU\(s\) of \[0, 1\]"),
            what="the third run to log that it waits for a GPU",
        )
        # Waiting is not failing: still STARTING, its asset has not begun.
        assert instance.get_run_by_id(third).status == DagsterRunStatus.STARTING
        assert not (tmp_path / f"{third}.json").exists()

        # A CPU-only run does not queue behind the GPUs and sees no GPU at all.
        cpu = launch(instance, tmp_path, job="cpu_job")
        cpu_seen = probe(tmp_path, cpu)
        assert cpu_seen["CUDA_VISIBLE_DEVICES"] == ""
        assert cpu_seen["MLX_GPU_COUNT"] is None
        assert finished(instance, cpu).status == DagsterRunStatus.SUCCESS

        release(tmp_path, first)
        assert finished(instance, first).status == DagsterRunStatus.SUCCESS
        third_seen = probe(tmp_path, third)
        assert third_seen["CUDA_VISIBLE_DEVICES"] == first_seen["CUDA_VISIBLE_DEVICES"]
        assert (
            instance.get_run_by_id(third).tags["mlx/assigned-gpus"]
            == (first_seen["CUDA_VISIBLE_DEVICES"])
        )

        release(tmp_path, second)
        release(tmp_path, third)
        assert finished(instance, second).status == DagsterRunStatus.SUCCESS
        assert finished(instance, third).status == DagsterRunStatus.SUCCESS
        launcher = instance.run_launcher
        assert isinstance(launcher, LocalGpuRunLauncher)
        launcher.join(timeout=180)
        assert launcher.gpu_status() == {"0": None, "1": None}


def test_killed_run_worker_releases_its_gpu_and_fails_the_run(tmp_path):
    with local_instance(tmp_path, gpus=[0]) as instance:
        doomed = launch(instance, tmp_path, hold=True)
        step_pid = probe(tmp_path, doomed)["pid"]
        worker_pid = int(
            wait_for(
                lambda: logged(instance, doomed, r"Started process for run \(pid: (\d+)\)"),
                what="the run worker pid",
            ).group(1)
        )
        waiting = launch(instance, tmp_path)
        wait_for(
            lambda: logged(instance, waiting, r"Waiting for 1 free GPU"),
            what="the second run to wait",
        )

        os.kill(worker_pid, signal.SIGKILL)

        # The run is failed (not left STARTED), its orphaned step process is cleaned up and
        # the GPU goes to the waiting run.
        dead = finished(instance, doomed)
        assert dead.status == DagsterRunStatus.FAILURE
        assert logged(instance, doomed, rf"pid {worker_pid}\) exited with signal SIGKILL")
        wait_for(lambda: not alive(step_pid), what="the orphaned step process to be killed")
        assert probe(tmp_path, waiting)["CUDA_VISIBLE_DEVICES"] == "0"
        assert finished(instance, waiting).status == DagsterRunStatus.SUCCESS


def test_killed_supervisor_leaks_no_gpu_and_its_run_goes_on(tmp_path):
    with local_instance(tmp_path, gpus=[0]) as instance:
        launcher = instance.run_launcher
        run_id = launch(instance, tmp_path, hold=True)
        probe(tmp_path, run_id)
        supervisor = int(instance.get_run_by_id(run_id).tags["mlx/run-supervisor-pid"])

        os.kill(supervisor, signal.SIGKILL)
        wait_for(lambda: not alive(supervisor), what="the supervisor to die")

        # The run worker inherited the lease: the GPU stays taken and the run is healthy.
        assert launcher.gpu_status()["0"]["run_id"] == run_id
        run = instance.get_run_by_id(run_id)
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING

        release(tmp_path, run_id)
        assert finished(instance, run_id).status == DagsterRunStatus.SUCCESS
        wait_for(lambda: launcher.gpu_status() == {"0": None}, what="the GPU to be released")


def test_terminate_cancels_waiting_and_running_runs_and_frees_the_gpu(tmp_path):
    with local_instance(tmp_path, gpus=[0]) as instance:
        launcher = instance.run_launcher
        running = launch(instance, tmp_path, hold=True)
        probe(tmp_path, running)
        waiting = launch(instance, tmp_path, hold=True)
        wait_for(lambda: logged(instance, waiting, r"Waiting for 1 free GPU"), what="waiting")

        assert launcher.terminate(waiting)
        assert finished(instance, waiting).status == DagsterRunStatus.CANCELED
        assert not (tmp_path / f"{waiting}.json").exists()

        assert launcher.terminate(running)
        assert finished(instance, running).status == DagsterRunStatus.CANCELED
        launcher.join(timeout=180)
        assert launcher.gpu_status() == {"0": None}


def test_gpu_run_falls_back_to_cpu_on_a_host_without_gpus(tmp_path):
    with local_instance(tmp_path, gpus=[]) as instance:
        run_id = launch(instance, tmp_path)
        seen = probe(tmp_path, run_id)
        assert seen["CUDA_VISIBLE_DEVICES"] == ""
        assert seen["MLX_GPU_COUNT"] == "0"
        assert finished(instance, run_id).status == DagsterRunStatus.SUCCESS
        assert logged(instance, run_id, r"No GPU on this host.*running GPU steps \(train_model\)")


def test_require_gpu_fails_gpu_runs_clearly_on_a_host_without_gpus(tmp_path):
    with local_instance(tmp_path, gpus=[], require_gpu=True) as instance:
        run = create_run(instance, "gpu_job")
        with pytest.raises(LocalGpuLaunchError) as err:
            instance.launch_run(run.run_id, workspace=None)
        assert run.run_id in str(err.value)
        assert "require_gpu" in str(err.value) and "Fix:" in str(err.value)
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE


def test_run_needing_more_gpus_than_the_host_has_fails_at_launch(tmp_path):
    with local_instance(tmp_path, gpus=[0]) as instance:
        run = create_run(instance, "big_job")
        with pytest.raises(LocalGpuLaunchError, match=r"needs 2 GPU\(s\).*has 1 \(0\)"):
            instance.launch_run(run.run_id, workspace=None)


def test_gpu_type_other_than_the_hosts_fails_at_launch(tmp_path):
    with local_instance(tmp_path, gpus=[0, 1], gpu_type="A100") as instance:
        run = create_run(instance, "gpu_job")
        with pytest.raises(LocalGpuLaunchError, match=r"'h100'.*this host has 'a100'"):
            instance.launch_run(run.run_id, workspace=None)


def test_bad_gpu_tag_fails_at_launch_naming_the_step(tmp_path):
    with local_instance(tmp_path, gpus=[0]) as instance:
        run = create_run(instance, "zero_gpu_job")
        with pytest.raises(ValueError, match=rf"{run.run_id}.*zero_gpu_model.*mlx/gpu"):
            instance.launch_run(run.run_id, workspace=None)


def test_invalid_launcher_config_is_rejected():
    overrides = {
        "run_launcher": {
            "module": "mlx_resources.launchers.local_gpu",
            "class": "LocalGpuRunLauncher",
            "config": {"gpus": [0, 0]},
        }
    }
    with (
        pytest.raises(LocalGpuLaunchError, match="distinct"),
        instance_for_test(overrides=overrides) as instance,
    ):
        _ = instance.run_launcher

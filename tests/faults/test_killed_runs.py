"""kill -9 of a process executing a run: the run is found dead and failed, its slot freed."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.launcher import WorkerStatus
from dagster._core.utils import make_new_run_id

from mlx_resources.process_identity import (
    TAG_HOST,
    TAG_PID,
    ProcessIdentity,
    identity,
    is_alive,
)
from mlx_resources.run_liveness import (
    TAG_RUN,
    LivenessRunLauncher,
    sweep_dead_runs,
    worker_death,
)
from tests.faults.conftest import start, wait_for

IN_PROGRESS = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING]


COMMANDS = {
    "execute_job": ["-m", "tests.faults._tiny"],  # what `mlx lifecycle` does
    "dagster asset materialize": [
        "-m",
        "dagster",
        "asset",
        "materialize",
        "-m",
        "tests.faults._tiny",
        "--select",
        "slow",
    ],
}


def _kill_running_tiny(
    tmp_path: Path, instance: dg.DagsterInstance, n: int = 1, how: str = "execute_job"
) -> list[str]:
    """Start ``n`` in-process runs of the tiny job, wait until each is executing, kill -9 them."""
    procs: list[tuple[subprocess.Popen[str], Path]] = []
    for i in range(n):
        ready = tmp_path / f"ready-{i}"
        procs.append((start(COMMANDS[how], MLX_FAULT_READY=str(ready), MLX_FAULT_BLOCK="1"), ready))
    # All are executing before any is killed (a run starting later would fail the dead ones).
    for proc, ready in procs:
        wait_for(f"run in pid {proc.pid} to start its step", ready.exists)
    for proc, _ in procs:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    runs = instance.get_runs()
    assert len(runs) == n
    return [r.run_id for r in runs]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_process_identity_tells_a_reused_pid_apart():
    me = identity()
    assert is_alive(me) is True
    # Same pid, another start time: a different process that reuses the pid, so ours is dead.
    assert is_alive(ProcessIdentity(me.pid, str(int(me.start) + 1), me.host, me.boot)) is False
    # A boot id that is not this boot's: the host restarted since.
    assert is_alive(ProcessIdentity(me.pid, me.start, me.host, "another-boot")) is False
    # Another host: cannot be judged here, never reported dead.
    assert is_alive(ProcessIdentity(me.pid, me.start, me.host + "-other", me.boot)) is None


def test_a_finished_process_is_dead():
    proc = subprocess.Popen(["sleep", "30"])
    who = identity(proc.pid)
    assert is_alive(who) is True
    proc.kill()
    proc.wait()
    assert is_alive(who) is False


@pytest.mark.parametrize("how", list(COMMANDS))
def test_killed_in_process_run_is_failed_by_the_next_command(tmp_path, instance, how):
    (run_id,) = _kill_running_tiny(tmp_path, instance, how=how)
    run = instance.get_run_by_id(run_id)
    # What the issue saw: the run stays STARTED after its process died ...
    assert run.status == dg.DagsterRunStatus.STARTED
    # ... but it recorded its process, so it is known dead ...
    assert run.tags[TAG_HOST] == socket.gethostname() and int(run.tags[TAG_PID]) > 0
    assert "is gone" in worker_death(run)
    # ... and the sweep every `mlx lifecycle` starts with fails it.
    log: list[str] = []
    assert sweep_dead_runs(instance, log.append) == [run_id]
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    assert log and run_id[:8] in log[0]
    # Idempotent: nothing left to fail.
    assert sweep_dead_runs(instance, log.append) == []


def test_daemon_run_monitoring_fails_dead_runs_and_frees_the_queue(tmp_path, instance):
    """Four dead runs held all max_concurrent_runs slots; run monitoring frees them."""
    from dagster._daemon.monitoring.run_monitoring import monitor_started_run

    assert isinstance(instance.run_launcher, LivenessRunLauncher)  # the repository's dagster.yaml
    assert instance.run_launcher.supports_check_run_worker_health
    limit = instance.get_concurrency_config().run_queue_config.max_concurrent_runs
    run_ids = _kill_running_tiny(tmp_path, instance, n=limit)
    in_progress = instance.get_run_records(filters=dg.RunsFilter(statuses=IN_PROGRESS))
    assert len(in_progress) == limit  # the queue is blocked: no slot free
    for record in in_progress:
        health = instance.run_launcher.check_run_worker_health(record.dagster_run)
        assert health.status == WorkerStatus.FAILED
        # The daemon's own code path (dagster/_daemon/monitoring/run_monitoring.py).
        monitor_started_run(instance, None, record, logging.getLogger("test"))
    statuses = {instance.get_run_by_id(r).status for r in run_ids}
    assert statuses == {dg.DagsterRunStatus.FAILURE}
    assert instance.get_run_records(filters=dg.RunsFilter(statuses=IN_PROGRESS)) == []


def _started_run(
    instance: dg.DagsterInstance, tags: dict[str, str], recorded_by: str | None = "self"
) -> dg.DagsterRun:
    """A STARTED run with worker ``tags`` recorded by itself (or by run ``recorded_by``)."""
    run_id = make_new_run_id()
    if tags:
        tags = {**tags, TAG_RUN: run_id if recorded_by == "self" else str(recorded_by)}
    return instance.add_run(
        dg.DagsterRun(job_name="g", run_id=run_id, status=dg.DagsterRunStatus.STARTED, tags=tags)
    )


def test_live_and_foreign_runs_are_left_alone(instance):
    me = identity()
    runs = [
        _started_run(instance, me.tags()),  # this (live) process
        _started_run(instance, {**me.tags(), TAG_HOST: "other-host", TAG_PID: "999999"}),
        _started_run(instance, {}),  # no liveness tags: e.g. launched elsewhere
    ]
    # A retry or re-execution: Dagster copied its parent's tags, a dead worker among them, and
    # its own worker has not recorded itself yet.
    dead = identity(_dead_pid())
    runs.append(_started_run(instance, dead.tags(), recorded_by=make_new_run_id()))
    assert sweep_dead_runs(instance, lambda m: None) == []
    for run in runs:
        fresh = instance.get_run_by_id(run.run_id)
        assert fresh.status == dg.DagsterRunStatus.STARTED
        assert instance.run_launcher.check_run_worker_health(fresh).status == WorkerStatus.RUNNING


@pytest.mark.parametrize("bad", ["x", ""])
def test_malformed_tags_are_not_judged(bad):
    assert ProcessIdentity.from_tags({TAG_PID: bad, TAG_HOST: socket.gethostname()}) is None


@pytest.mark.parametrize("how", list(COMMANDS))
def test_the_next_run_of_any_command_fails_the_dead_run(tmp_path, instance, how):
    """Not only `mlx lifecycle`: any run started with the platform's executor sweeps first."""
    (dead,) = _kill_running_tiny(tmp_path, instance)
    proc = start(COMMANDS[how])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    statuses = {r.run_id: r.status for r in instance.get_runs()}
    assert statuses.pop(dead) == dg.DagsterRunStatus.FAILURE
    assert list(statuses.values()) == [dg.DagsterRunStatus.SUCCESS]

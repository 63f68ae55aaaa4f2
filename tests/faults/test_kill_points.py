"""kill -9 at chosen points (a partition write, training, registration): nothing lost, nothing
half-written, no stuck run, leftovers cleaned, and the next command works."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mlx_resources.leftovers import GRACE_S, clean_registry, clean_scratch, temp_owner
from mlx_resources.model_registry import ModelLineage, ModelRegistry
from mlx_resources.process_identity import identity, pid_running
from mlx_resources.run_liveness import TAG_RUN, recover
from tests.faults._driver import SMALL_DAYS
from tests.faults.conftest import start, wait_for


def _run_driver(*args: str, **env: str) -> tuple[int, str]:
    proc = start(["-m", "tests.faults._driver", *args], **env)
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if not temp_owner(p.name)[0]
    }


def test_kill_during_a_partition_write(home, tmp_path):
    rc, out = _run_driver("job", "reference", "daily")
    assert rc == 0, out[-3000:]
    folder = next((home / "data").rglob("raw_weather"))
    before = _digests(folder)
    assert len(before) == len(SMALL_DAYS)

    mark = tmp_path / "killed"
    rc, out = _run_driver(
        "job", "daily", MLX_FAULT_KILL_AT="partition-write", MLX_FAULT_MARK=str(mark)
    )
    assert rc == -signal.SIGKILL and mark.exists(), out[-3000:]
    temps = [p for p in folder.iterdir() if temp_owner(p.name)[0]]
    assert temps, "the kill point leaves the run's temp files behind"
    assert all(temp_owner(p.name)[1] == int(mark.read_text()) for p in temps)
    # Nothing lost, nothing half-written: every final file is the previous, complete version.
    assert _digests(folder) == before
    for name in before:
        assert pl.read_ipc(folder / name).height > 0

    with dg.DagsterInstance.get() as instance:
        (stuck,) = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    # The next run of any command (here the daily job again; `mlx lifecycle` does the same
    # first) fails the dead run and removes the dead writer's temps once past the grace period.
    for p in temps:
        os.utime(p, (time.time() - GRACE_S - 60, time.time() - GRACE_S - 60))
    rc, out = _run_driver("job", "daily")
    assert rc == 0, out[-3000:]
    assert f"run {stuck.run_id[:8]} (daily) was left STARTED by a dead process" in out
    assert "leftover(s) of killed runs" in out
    assert not [p for p in folder.iterdir() if temp_owner(p.name)[0]]
    assert set(_digests(folder)) == set(before)
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(stuck.run_id).status == dg.DagsterRunStatus.FAILURE


def test_recover_fails_dead_runs_and_cleans_what_they_left(home):
    """What `mlx lifecycle` calls before planning (mlx_resources.run_liveness.recover)."""
    from mlx_assets.build import build_definitions
    from mlx_plugins.kernel.composition import load_composition
    from mlx_resources.instance_home import ensure_dagster_home

    ensure_dagster_home()
    proc = subprocess.Popen(["true"])
    proc.wait()
    dead = identity(proc.pid)
    temp = home / "data" / "raw_weather" / f".2013-01-01.arrow.tmp-{dead.pid}-0123456789ab"
    temp.parent.mkdir(parents=True)
    temp.write_bytes(b"half")
    with dg.DagsterInstance.get() as instance:
        run = instance.add_run(
            dg.DagsterRun(job_name="daily", status=dg.DagsterRunStatus.STARTED, run_id="0" * 36)
        )
        instance.add_run_tags(run.run_id, {**dead.tags(), TAG_RUN: run.run_id})
        log: list[str] = []
        report = recover(instance, build_definitions(load_composition()), log.append, grace_s=0)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert log[0].startswith("run 00000000 (daily) was left STARTED by a dead process")
    assert temp in report.removed and not temp.exists()
    assert f"removed {len(report.removed)} leftover(s) of killed runs" in log[-1]


@pytest.mark.parametrize("how", ["train", "train-ddp"])
def test_kill_during_training_takes_the_training_child_with_it(tmp_path, how):
    """``train``: the forked child (and its forkserver); ``train-ddp``: torchrun and its workers."""
    pids_file, mark = tmp_path / "pids", tmp_path / "killed"
    proc = start(
        ["-m", "tests.faults._driver", how, str(tmp_path / "artifact")],
        MLX_FAULT_KILL_AT="training",
        MLX_FAULT_PIDS=str(pids_file),
        MLX_FAULT_MARK=str(mark),
    )
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL and mark.exists(), out[-3000:]
    children = [int(p) for p in pids_file.read_text().split()]
    assert children, "the training child (and its forkserver) were running at the kill"
    # Before the fix the forked child went on training (here: a million epochs) for good.
    wait_for(
        "the training processes to die with their parent",
        lambda: not any(pid_running(p) for p in children),
    )
    # Its scratch folder (the train/valid frames) is a dead pid's leftover.
    prefix = "mlx-train" if how == "train" else "mlx-ddp"
    scratch = list(Path(tempfile.gettempdir()).glob(f"{prefix}-{proc.pid}-*"))
    assert scratch
    report = clean_scratch(grace_s=0)
    assert set(scratch) <= set(report.removed)
    assert not any(p.exists() for p in scratch)
    assert not (tmp_path / "artifact" / "model.pt").exists()


def _first_version(root: Path, tmp_path: Path) -> Path:
    artifact = tmp_path / "model.pt"
    artifact.write_bytes(b"weights-v1" * 1000)
    ModelRegistry(root=str(root)).register(
        "m",
        artifact,
        hashlib.sha256(artifact.read_bytes()).hexdigest(),
        {"roc_auc": 0.7},
        {"writer": "test"},
        ModelLineage(training_data_version=None, partitions=[]),
    )
    return artifact


@pytest.mark.parametrize("point", ["registration", "registration-after-rename"])
def test_kill_during_registration(tmp_path, point):
    root = tmp_path / "registry"
    artifact = _first_version(root, tmp_path)
    registry = ModelRegistry(root=str(root))
    (v1,) = registry.versions("m")

    rc, out = _run_driver(
        "register",
        str(root),
        str(artifact),
        MLX_FAULT_KILL_AT=point,
        MLX_FAULT_MARK=str(tmp_path / "k"),
    )
    assert rc == -signal.SIGKILL, out[-3000:]
    # Nothing lost: the earlier version is listed and its artifact intact.
    assert [v.version for v in registry.versions("m")] == [1]
    assert hashlib.sha256(Path(v1.artifact_path).read_bytes()).hexdigest() == v1.artifact_sha256
    # Nothing half-written is visible as a version; what the kill left is cleaned.
    leftovers = sorted(p.name for p in (root / "m").iterdir() if p.name != "v0001")
    assert leftovers, "the kill point leaves a claim or staging folder"
    report = clean_registry(root, grace_s=0)
    assert sorted(p.name for p in report.removed) == leftovers
    assert sorted(p.name for p in (root / "m").iterdir()) == ["v0001"]

    rc, out = _run_driver("register", str(root), str(artifact))
    assert rc == 0, out[-3000:]
    assert [v.version for v in registry.versions("m")] == [1, 2]
    v2 = registry.versions("m")[1]
    assert Path(v2.artifact_path).read_bytes() == artifact.read_bytes()

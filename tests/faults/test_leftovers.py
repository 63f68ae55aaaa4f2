"""What killed runs leave is cleaned, and only that: live writers, young files, finals, kept."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from mlx_resources.atomic import temp_path_for
from mlx_resources.leftovers import (
    LEGACY_GRACE_S,
    clean_leftovers,
    clean_registry,
    clean_run_artifacts,
    clean_scratch,
    clean_temp_files,
    temp_owner,
)
from mlx_resources.model_registry import ModelLineage, ModelRegistry


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _touch(path: Path, age_s: float = 0.0, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (".2013-01-01.arrow.tmp-4711-0123456789ab", (True, 4711)),  # the IO manager's
        (".day.html.tmp-4711-k3j_x9ab", (True, 4711)),  # mlx_resources.atomic (mkstemp)
        (".dagster.yaml.4711.ab12cd34.tmp", (True, 4711)),  # the instance home's link
        (".2013-01-01.arrow.tmp-0123456789ab", (True, None)),  # before pids were in names
        (".model-abc123.tmp", (True, None)),
        ("2013-01-01.html.tmp", (True, None)),
        ("2013-01-01.arrow", (False, None)),
        ("version.json", (False, None)),
        (".instance.lock", (False, None)),
    ],
)
def test_temp_owner_reads_every_temp_naming(name, expected):
    assert temp_owner(name) == expected


def test_atomic_temp_names_carry_the_writer_pid(tmp_path):
    fd, path = temp_path_for(tmp_path / "report.html")
    os.close(fd)
    assert temp_owner(path.name) == (True, os.getpid())


def test_dead_writers_old_temps_go_live_and_young_ones_stay(tmp_path):
    dead = _dead_pid()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        final = _touch(tmp_path / "raw_weather" / "2013-01-01.arrow", age_s=999)
        gone = [
            _touch(
                tmp_path
                / "raw_weather"
                / f".2013-01-0{i}.arrow.tmp-{dead}-{uuid.uuid4().hex[:12]}",
                999,
            )
            for i in range(1, 4)
        ]
        live = _touch(tmp_path / "raw_weather" / f".x.arrow.tmp-{sleeper.pid}-abcdef", 999)
        young = _touch(tmp_path / "raw_weather" / f".y.arrow.tmp-{dead}-abcdef")
        legacy_old = _touch(tmp_path / ".z.arrow.tmp-0123456789ab", LEGACY_GRACE_S + 10)
        legacy_young = _touch(tmp_path / ".w.arrow.tmp-0123456789ab", 999)
        report = clean_temp_files([tmp_path], grace_s=60)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sorted(report.removed) == sorted([*gone, legacy_old])
    for kept in (final, live, young, legacy_young):
        assert kept.exists(), kept
    reasons = dict(report.kept)
    assert "running" in reasons[live] and "grace" in reasons[young]


def _finished_run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus) -> str:
    run = instance.add_run(dg.DagsterRun(job_name="training", status=status))
    return run.run_id


def test_artifact_folders_of_failed_runs_go_and_others_stay(tmp_path):
    artifacts = tmp_path / "artifacts" / "models"
    with dg.instance_for_test() as instance:
        failed = _finished_run(instance, dg.DagsterRunStatus.FAILURE)
        ok = _finished_run(instance, dg.DagsterRunStatus.SUCCESS)
        running = _finished_run(instance, dg.DagsterRunStatus.STARTED)
        failed_with_model = _finished_run(instance, dg.DagsterRunStatus.FAILURE)
        # A materialization of `model` in the failed run: a retry from failure may still load it.
        instance.handle_new_event(
            dg.EventLogEntry(
                error_info=None,
                level="DEBUG",
                user_message="",
                run_id=failed_with_model,
                timestamp=time.time(),
                dagster_event=dg.DagsterEvent(
                    event_type_value=dg.DagsterEventType.ASSET_MATERIALIZATION.value,
                    job_name="training",
                    event_specific_data=dg._core.events.StepMaterializationData(  # type: ignore[attr-defined]
                        dg.AssetMaterialization("model")
                    ),
                ),
            )
        )
        folders = {
            rid: _touch(artifacts / f"{rid}-abc123" / "model.pt", 999).parent
            for rid in (failed, ok, running, failed_with_model)
        }
        unknown = _touch(artifacts / f"{uuid.uuid4()}-abc123" / "model.pt", 999).parent
        for p in (*folders.values(), unknown):
            os.utime(p, (time.time() - 999, time.time() - 999))
        report = clean_run_artifacts(instance, artifacts, grace_s=60)
    assert report.removed == [folders[failed]]
    assert not folders[failed].exists()
    for rid in (ok, running, failed_with_model):
        assert (folders[rid] / "model.pt").exists()
    assert unknown.exists()


def test_registry_leftovers_go_and_recorded_versions_stay(tmp_path):
    root = tmp_path / "registry"
    artifact = _touch(tmp_path / "model.pt", text="weights")
    registry = ModelRegistry(root=str(root))
    v1 = registry.register(
        "m", artifact, "0" * 64, {}, {}, ModelLineage(training_data_version=None, partitions=[])
    )
    claim = root / "m" / "v0002"
    claim.mkdir()
    staging = _touch(root / "m" / ".v0002-k2j3" / "model.pt", text="half").parent
    unrecorded = _touch(root / "m" / "v0003" / "version.json", text="{}").parent
    for p in (claim, staging, unrecorded):
        os.utime(p, (time.time() - 999, time.time() - 999))
    young = root / "m" / "v0004"
    young.mkdir()
    report = clean_registry(root, grace_s=60)
    assert sorted(report.removed) == sorted([claim, staging, unrecorded])
    assert young.exists()
    assert Path(v1.artifact_path).read_text() == "weights"
    assert [v.version for v in registry.versions("m")] == [1]


def test_scratch_folders_of_dead_pids_go(tmp_path):
    dead = _dead_pid()
    gone = _touch(tmp_path / f"mlx-train-{dead}-abcd" / "train.arrow", 999).parent
    mine = _touch(tmp_path / f"mlx-train-{os.getpid()}-abcd" / "train.arrow", 999).parent
    other = _touch(tmp_path / "something-else" / "f", 999).parent
    for p in (gone, mine, other):
        os.utime(p, (time.time() - 999, time.time() - 999))
    report = clean_scratch(tmp_path, grace_s=60)
    assert report.removed == [gone]
    assert mine.exists() and other.exists()


def test_clean_leftovers_stays_inside_the_platform_folders(tmp_path):
    dead = _dead_pid()
    ours = _touch(tmp_path / "data" / "t" / f".2013-01-01.arrow.tmp-{dead}-abcdef", 999)
    user = _touch(tmp_path / "notes" / ".draft.tmp", LEGACY_GRACE_S + 10)
    beside = _touch(tmp_path / f".x.arrow.tmp-{dead}-abcdef", 999)
    with dg.instance_for_test() as instance:
        report = clean_leftovers(instance, tmp_path, grace_s=60)
    # (it also cleans the system temp dir, where other killed runs may have left scratch folders)
    assert [p for p in report.removed if tmp_path in p.parents] == [ours]
    assert user.exists() and beside.exists()


def test_a_leftover_that_cannot_be_removed_is_reported_not_raised(tmp_path, monkeypatch):
    dead = _dead_pid()
    stuck = _touch(tmp_path / f"mlx-train-{dead}-abcd" / "train.arrow", 999).parent
    os.utime(stuck, (time.time() - 999, time.time() - 999))

    def refuse(path, *a, **k):  # type: ignore[no-untyped-def]
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("shutil.rmtree", refuse)
    report = clean_scratch(tmp_path, grace_s=60)
    assert report.removed == []
    assert report.kept == [(stuck, "could not remove: Permission denied")]

"""Concurrent first use of a fresh instance (issue 9 item 7): one wins, the others wait/reuse."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import dagster as dg
import pytest

from mlx_resources.instance_home import (
    LIFECYCLE_LOCK,
    READY_MARKER,
    HomeLockError,
    ensure_dagster_home,
    exclusive_lock,
    lifecycle_lock,
)
from tests.faults.conftest import start, wait_for


def _alembic_heads(home: Path) -> dict[str, int]:
    """Rows of alembic_version in every SQLite storage of the instance (1 each when healthy)."""
    heads = {}
    for db in sorted(home.rglob("*.db")):
        with sqlite3.connect(db) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if "alembic_version" in tables:
                heads[db.name] = conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0]
    return heads


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_three_processes_on_a_fresh_home_make_one_instance_and_one_run(home, tmp_path):
    dagster_home = home / "dagster"
    assert not dagster_home.exists()
    log = tmp_path / "log"
    # Hold the lifecycle lock so that all three are certainly inside first use at once and then
    # queue on the lock; released once each says it is waiting.
    with exclusive_lock(dagster_home / LIFECYCLE_LOCK, "lifecycle"):
        procs = [start(["-m", "tests.faults._tiny", "first-use", str(log)]) for _ in range(3)]
        wait_for(
            "three processes waiting on the lifecycle lock",
            lambda: sum("another lifecycle is running" in line for line in _lines(log)) == 3,
        )
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(o[-2000:] for o in outs)
    lines = _lines(log)
    assert sum(line.endswith("materialized slow") for line in lines) == 1
    assert sum(line.endswith("nothing to do") for line in lines) == 2
    waits = [line for line in lines if "another lifecycle is running" in line]
    assert len(waits) == 3 and all(f"(pid {os.getpid()}); waiting" in line for line in waits)

    heads = _alembic_heads(dagster_home)
    assert heads and set(heads.values()) == {1}, heads
    assert (dagster_home / READY_MARKER).exists()
    assert (dagster_home / "dagster.yaml").resolve().name == "dagster.yaml"
    # Later commands work on it.
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS]
        assert instance.get_ticks("origin", "selector") == []  # schedule storage opens
    again = start(["-m", "tests.faults._tiny", "first-use", str(log)])
    assert again.wait(timeout=120) == 0
    assert _lines(log)[-1].endswith("nothing to do")


def test_racing_instance_creation_leaves_one_alembic_head(home):
    """Six processes open the same fresh instance at once (no other lock held)."""
    code = (
        "from mlx_resources.instance_home import ensure_dagster_home; ensure_dagster_home();"
        "import dagster as dg; i = dg.DagsterInstance.get(); i.get_runs(); i.dispose()"
    )
    procs = [start(["-c", code]) for _ in range(6)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, "\n".join(o[-2000:] for o in outs)
    heads = _alembic_heads(home / "dagster")
    assert set(heads) >= {"runs.db", "index.db", "schedules.db"}
    assert set(heads.values()) == {1}, heads


def test_lifecycle_lock_is_released_by_a_killed_holder(home):
    dagster_home = ensure_dagster_home()
    holder = start(
        [
            "-c",
            "import sys, time; from pathlib import Path;"
            "from mlx_resources.instance_home import lifecycle_lock\n"
            f"with lifecycle_lock(Path({str(dagster_home)!r})):\n"
            "    print('held', flush=True); time.sleep(600)",
        ]
    )
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # kill -9: no finally runs, but the kernel drops the dead process's flock
    holder.wait()
    said: list[str] = []
    with lifecycle_lock(dagster_home, said.append):
        pass
    assert said == []  # acquired at once: nothing to wait for


def test_unusable_home_names_the_path_and_the_fix(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DAGSTER_HOME", str(blocker / "dagster"))
    with pytest.raises(HomeLockError, match=r"a-file/dagster: Not a directory; fix: make it"):
        ensure_dagster_home()

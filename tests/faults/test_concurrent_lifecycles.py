"""The issue's command, for real: ``rm -rf .mlx_home; mlx lifecycle & mlx lifecycle &``.

Two full lifecycles (a year of partitions, about two minutes here) on one fresh home: both exit
0, the work runs once (one run per job, one registry version; the one that waited finds nothing
to do), the instance has one alembic head per storage, and a later ``mlx lifecycle`` works.
Marked slow like the other end-to-end lifecycle tests.
"""

from __future__ import annotations

import subprocess
import sys

import dagster as dg
import pytest

from mlx_resources.model_registry import ModelRegistry
from mlx_resources.platform import REPO_ROOT
from tests.faults.conftest import child_env
from tests.faults.test_first_use import _alembic_heads

pytestmark = pytest.mark.slow


def _lifecycle() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mlx_assets.cli", "lifecycle"],
        cwd=REPO_ROOT,
        env=child_env(MLX_PROFILE="smoke"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_lifecycles_on_a_fresh_home_do_the_work_once(home, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME")  # as a user has it: the CLI derives it from MLX_HOME
    procs = [_lifecycle(), _lifecycle()]
    outs = [p.communicate(timeout=1200)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(o[-3000:] for o in outs)
    waited = [o for o in outs if "another lifecycle is running (pid" in o]
    assert len(waited) == 1, outs
    assert "nothing to recompute" in waited[0] or "up to date" in waited[0]

    dagster_home = home / "dagster"
    heads = _alembic_heads(dagster_home)
    assert set(heads.values()) == {1}, heads
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    with dg.DagsterInstance.get() as instance:
        jobs = sorted(r.job_name for r in instance.get_runs())
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in instance.get_runs())
    assert len(jobs) == len(set(jobs)), jobs  # every job ran once
    assert {"reference", "daily", "training", "monitoring"} <= set(jobs)
    versions = ModelRegistry(root=str(home / "registry")).versions("flight_delay")
    assert [v.version for v in versions] == [1]

    # Later commands work on the instance (that a second lifecycle recomputes nothing is
    # tests/lifecycle/test_end_to_end.py::test_second_run_recomputes_nothing).
    later = _lifecycle()
    out = later.communicate(timeout=1200)[0]
    assert later.returncode == 0, out[-3000:]
    assert "another lifecycle is running" not in out

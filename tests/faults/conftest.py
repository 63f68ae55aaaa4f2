"""Fixtures for the fault-injection suite: a fresh instance home per test, real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest

from mlx_resources.platform import REPO_ROOT

DEADLINE_S = 60.0


@pytest.fixture
def home(_isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's MLX home; DAGSTER_HOME is ``<home>/dagster`` (created by the code under test)."""
    monkeypatch.setenv("DAGSTER_HOME", str(_isolated_home / "dagster"))
    return _isolated_home


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def start(args: list[str], **extra: str) -> subprocess.Popen[str]:
    """``python ARGS`` in the repository root with the test's environment plus ``extra``."""
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=child_env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(what: str, cond: Callable[[], object], timeout_s: float = DEADLINE_S) -> object:
    """Poll ``cond`` until truthy (returns its value); fail naming ``what`` after the deadline."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def instance(home: Path) -> Iterator[dg.DagsterInstance]:
    """The instance at DAGSTER_HOME (the repository's dagster.yaml), created the CLI's way."""
    from mlx_resources.instance_home import ensure_dagster_home

    ensure_dagster_home()
    with dg.DagsterInstance.get() as inst:
        yield inst

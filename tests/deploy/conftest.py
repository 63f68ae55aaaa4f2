"""Fixtures for the production-instance tests: a fresh PostgreSQL database per test and a
Dagster home whose dagster.yaml is deploy/dagster.prod.yaml with its run launcher swapped for
the local one (the Kubernetes launcher needs a cluster; everything else is the production file).

PostgreSQL: the local server on 127.0.0.1:5432 (trust auth), which ./dev test starts when it is
down. Each test gets a database of its own, created from the ``test`` database and dropped
afterwards (``WITH (FORCE)``, so a leftover connection cannot keep it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from mlx_resources.platform import REPO_ROOT

PG_HOST = os.environ.get("MLX_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MLX_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("MLX_TEST_PG_USER", "postgres")
PG_ADMIN_DB = "test"
PROD_YAML = REPO_ROOT / "deploy" / "dagster.prod.yaml"
SMALL_COMPOSITION = Path(__file__).with_name("mlx.small.yaml")
BIN = Path(sys.executable).parent
DEADLINE_S = 120.0


def small_composition_text() -> str:
    """tests/deploy/mlx.small.yaml, limited to the ``flight_delay`` lifecycle where the platform
    loads several lifecycle instances (``settings.lifecycles``)."""
    from mlx_resources.platform import Platform

    text = SMALL_COMPOSITION.read_text()
    if "lifecycles" in Platform.model_fields:
        text = text.replace("\nsettings:\n", "\nsettings:\n  lifecycles: [flight_delay]\n", 1)
    return text


def write_small_composition(path: Path) -> Path:
    """:func:`small_composition_text` written to ``path`` (returned)."""
    path.write_text(small_composition_text())
    return path


def _admin_connect():  # type: ignore[no-untyped-def]
    import psycopg2

    try:
        conn = psycopg2.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=PG_ADMIN_DB, connect_timeout=5
        )
    except psycopg2.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} as {PG_USER} (database "
            f"{PG_ADMIN_DB!r}): {str(exc).strip()}; ./dev test starts the local cluster "
            "(pg_ctlcluster 15 main start)"
        )
    conn.autocommit = True
    return conn


@pytest.fixture
def pg_db() -> Iterator[str]:
    """A fresh, empty database for this test (its name); dropped afterwards."""
    name = f"mlx_t_{uuid.uuid4().hex[:12]}"
    conn = _admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def pg_env(db: str) -> dict[str, str]:
    """The environment deploy/dagster.prod.yaml reads its connection from."""
    return {
        "DAGSTER_PG_HOST": PG_HOST,
        "DAGSTER_PG_PORT": str(PG_PORT),
        "DAGSTER_PG_USERNAME": PG_USER,
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": db,
    }


def prod_config(**overrides: object) -> dict:
    """deploy/dagster.prod.yaml with the repository's local run launcher (a laptop or one host
    runs production storage this way) and faster monitoring polls; ``overrides`` replace
    top-level blocks."""
    config = yaml.safe_load(PROD_YAML.read_text())
    local = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    config["run_launcher"] = local["run_launcher"]
    config["run_monitoring"]["poll_interval_seconds"] = 2
    config["run_monitoring"]["max_resume_run_attempts"] = 0  # only Kubernetes resumes runs
    config.update(overrides)
    return config


@dataclass
class ProdHome:
    """An MLX home whose Dagster instance is the production file on a fresh database."""

    home: Path
    dagster_home: Path
    db: str
    env: dict[str, str]
    """The full environment for a child process (PYTHONPATH, MLX_HOME, DAGSTER_HOME, PG)."""

    def instance(self):  # type: ignore[no-untyped-def]
        import dagster as dg

        return dg.DagsterInstance.from_config(str(self.dagster_home))


@pytest.fixture
def prod_home(
    _isolated_home: Path, pg_db: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ProdHome]:
    dagster_home = _isolated_home / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(prod_config()))
    extra = pg_env(pg_db)
    for key, value in extra.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    composition = write_small_composition(_isolated_home / "mlx.yaml")
    monkeypatch.setenv("MLX_COMPOSITION", str(composition))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    yield ProdHome(_isolated_home, dagster_home, pg_db, env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, cond: Callable[[], object], timeout_s: float = DEADLINE_S) -> object:
    """Poll ``cond`` until truthy (returns its value); fail naming ``what`` after the deadline."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")


def start(
    args: list[str | Path], env: dict[str, str], log: Path, cwd: Path = REPO_ROOT
) -> subprocess.Popen[bytes]:
    """A child process in its own session (so :func:`stop` ends it and its children), its
    output appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [str(a) for a in args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
    """End ``proc``'s process group (``sig``, then SIGKILL after ``timeout_s``)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # what is left of the group (run workers...)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def lifecycle(env: dict[str, str], log: Path, *days: str) -> subprocess.Popen[bytes]:
    """``mlx lifecycle`` on the small composition, limited to ``days`` (tests/deploy/_driver)."""
    return start([sys.executable, "-m", "tests.deploy._driver", "lifecycle", *days], env, log)

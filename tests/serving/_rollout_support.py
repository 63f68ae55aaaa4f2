"""Helpers of the rollout, router and autoscaling tests: real ``bentoml serve`` processes of a
minimal service (``_rollout_service.py``) and a bounded loopback load driver (httpx in threads).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from mlx_plugins.kernel.process_identity import identity
from mlx_plugins.model_servers.base import ServerHandle, ServingError, http_get
from mlx_plugins.model_servers.routing import free_port
from mlx_plugins.model_servers.routing.traffic import TrafficGenerator

HERE = Path(__file__).parent
READY_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class FixtureServer:
    """What to start: a version of the test service and how it behaves."""

    version: str
    fail_rate: float = 0.0
    delay_ms: float = 0.0
    workers: int = 1


def start_servers(specs: list[FixtureServer], home: Path) -> list[ServerHandle]:
    """Start one ``bentoml serve`` per spec (in parallel) and wait until each answers /readyz.

    Raises ServingError (after stopping every one of them) when one is not ready in time.
    """
    procs: list[tuple[FixtureServer, int, subprocess.Popen[bytes]]] = []
    bentoml_cli = str(Path(sys.executable).parent / "bentoml")
    home.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        port = free_port()
        env = {
            **os.environ,
            # one home per server: bentoml serve empties its home's prometheus_multiproc_dir
            # at start, and servers sharing one would report each other's requests
            "BENTOML_HOME": str(home / f"bentoml-{spec.version}-{port}"),
            "BENTOML_DO_NOT_TRACK": "true",
            "MLX_TEST_VERSION": spec.version,
            "MLX_TEST_FAIL_RATE": str(spec.fail_rate),
            "MLX_TEST_DELAY_MS": str(spec.delay_ms),
            "MLX_TEST_WORKERS": str(spec.workers),
        }
        log = open(home / f"{spec.version}-{port}.log", "wb")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                [
                    bentoml_cli,
                    "serve",
                    "_rollout_service:RolloutEcho",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                cwd=HERE,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        procs.append((spec, port, proc))
    handles = [
        ServerHandle(
            model="rollout_echo",
            version=int(spec.version.lstrip("v") or 1),
            package_tag=f"rollout_echo:{spec.version}",
            host="127.0.0.1",
            port=port,
            pid=proc.pid,
            process=identity(proc.pid).encode(),
            workers=spec.workers,
            started_at=time.time(),
        )
        for spec, port, proc in procs
    ]
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = list(zip(handles, procs, strict=True))
    while pending:
        for item in list(pending):
            handle, (spec, port, proc) = item
            if proc.poll() is not None:
                stop_all(handles)
                log = (home / f"{spec.version}-{port}.log").read_text(errors="replace")[-2000:]
                raise ServingError(f"bentoml serve {spec.version} exited: {log}")
            if http_get(handle.url + "/readyz", 1.0)[0] == 200:
                pending.remove(item)
        if pending and time.monotonic() > deadline:
            stop_all(handles)
            raise ServingError(f"{[h.url for h, _ in pending]} not ready in {READY_TIMEOUT_S} s")
        time.sleep(0.2)
    return handles


def kill_server(handle: ServerHandle) -> None:
    """SIGKILL a server and every process under it (a crash). BentoML's workers sit in process
    groups of their own, so killing the server's group alone would leave them serving."""
    with contextlib.suppress(psutil.Error):
        leader = psutil.Process(handle.pid)
        for proc in [*leader.children(recursive=True), leader]:
            with contextlib.suppress(psutil.Error):
                proc.kill()


def stop_all(handles: list[ServerHandle]) -> None:
    """Stop each server (SIGTERM, then SIGKILL), and kill any worker its stop left behind."""
    for h in handles:
        workers: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            workers = psutil.Process(h.pid).children(recursive=True)
        with contextlib.suppress(Exception):
            h.stop(5.0)
        for w in workers:
            with contextlib.suppress(psutil.Error):
                w.kill()


@contextlib.contextmanager
def running(specs: list[FixtureServer], home: Path) -> Iterator[list[ServerHandle]]:
    handles = start_servers(specs, home)
    try:
        yield handles
    finally:
        stop_all(handles)


class LoadDriver(TrafficGenerator):
    """The platform's :class:`TrafficGenerator` with the test service's one-row body."""

    def __init__(self, url: str, body: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(url, [body or {"rows": [{"x": 1.0}]}], **kw)

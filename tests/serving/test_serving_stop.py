"""``mlx serving stop``: what ``./dev lifecycle --serve`` left running (the servers recorded in
``<home>/serving/<model>/servers.json`` and the model's nginx router) is stopped from the
command line, and the lifecycle summary says so."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mlx_assets.cli import main
from mlx_assets.serving.deployment import not_serving
from mlx_plugins.kernel.process_identity import identity
from mlx_plugins.model_servers.base import ServerHandle
from mlx_plugins.model_servers.routing import (
    NginxRouter,
    RouterError,
    RoutingTable,
    find_nginx,
    free_port,
)

try:
    find_nginx()
    HAVE_NGINX = True
except RouterError:
    HAVE_NGINX = False


@pytest.mark.skipif(not HAVE_NGINX, reason="nginx not installed (apt-get install nginx)")
def test_serving_stop_stops_the_recorded_servers_and_the_router(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLX_HOME", str(tmp_path))
    folder = tmp_path / "serving" / "flight_delay"
    folder.mkdir(parents=True)
    # a stand-in server process in a process group of its own, as `bentoml serve` runs
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    threading.Thread(target=proc.wait, daemon=True).start()  # reaped as soon as it exits
    port = free_port()
    handle = ServerHandle(
        model="flight_delay",
        version=1,
        package_tag="flight_delay:v0001",
        host="127.0.0.1",
        port=port,
        pid=proc.pid,
        process=identity(proc.pid).encode(),
        workers=1,
        started_at=time.time(),
    )
    (folder / "servers.json").write_text(json.dumps({"v0001": [handle.model_dump(mode="json")]}))
    assert not_serving(tmp_path, "flight_delay") is None  # its server is alive
    router = NginxRouter(folder / "router").start(
        RoutingTable.single("v0001", [f"127.0.0.1:{port}"])
    )
    master = router.pid
    try:
        assert main(["serving", "stop"]) == 0
        out = capsys.readouterr().out
        assert f"flight_delay: stopped v0001 on port {port} (pid {proc.pid})" in out
        assert f"the router at {router.url}" in out
        assert proc.poll() is not None
        assert master is not None and not router.running()  # (reaps its own child)
        assert json.loads((folder / "servers.json").read_text()) == {}
        # the next lifecycle serves it again instead of calling the stopped deployment fresh
        assert "no server of it is running" in (not_serving(tmp_path, "flight_delay") or "")
        # a second stop finds nothing running
        assert main(["serving", "stop"]) == 0
        assert "flight_delay: nothing ran" in capsys.readouterr().out
        # a model that was never served is named with the ones that were
        assert main(["serving", "stop", "-m", "flights"]) == 1
        err = capsys.readouterr().err
        assert "no served model 'flights'" in err and "served there: flight_delay" in err
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(RouterError):
            NginxRouter.attach(folder / "router").stop(timeout_s=2)

"""The real Dagster webserver loads the code location from workspace.yaml, without warnings,
and serves the asset graph, jobs, schedule and sensor over GraphQL."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mlx_resources.platform import REPO_ROOT

pytestmark = pytest.mark.slow

QUERY = """
{
  workspaceOrError { __typename ... on Workspace { locationEntries { name
    locationOrLoadError { __typename ... on PythonError { message } } } } }
  assetNodes { assetKey { path } groupName isPartitioned }
  repositoriesOrError { ... on RepositoryConnection { nodes { name
    jobs { name } schedules { name scheduleState { status } }
    sensors { name sensorState { status } } } } }
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(port: int, query: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["data"]


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    home = tmp_path_factory.mktemp("webserver")
    (home / "dagster").mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster" / "dagster.yaml")
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home / "dagster"), "MLX_HOME": str(home)}
    log = home / "webserver.log"
    exe = Path(sys.executable).with_name("dagster-webserver")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(exe), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"webserver did not start:\n{log.read_text()}") from None
                    time.sleep(0.5)
            yield port, log
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_code_location_loads_and_serves_the_graph(webserver):
    port, _ = webserver
    data = _post(port, QUERY)
    (entry,) = data["workspaceOrError"]["locationEntries"]
    assert entry["name"] == "mlx"
    assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
    assets = {tuple(a["assetKey"]["path"]): a for a in data["assetNodes"]}
    assert {
        ("raw_flights",),
        ("flight_features",),
        ("model",),
        ("registered_model",),
        ("feature_drift",),
    } <= set(assets)
    assert assets[("raw_flights",)]["isPartitioned"]
    assert assets[("model",)]["groupName"] == "training"
    (repo,) = data["repositoriesOrError"]["nodes"]
    assert {"reference", "daily", "training", "monitoring"} <= {j["name"] for j in repo["jobs"]}
    assert [s["scheduleState"]["status"] for s in repo["schedules"]] == ["RUNNING"]
    assert [s["sensorState"]["status"] for s in repo["sensors"]] == ["RUNNING"]


def test_no_warnings_while_loading(webserver):
    port, log = webserver
    _post(port, "{ version }")
    text = log.read_text()
    assert "Warning" not in text, text


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=20000",
    "--window-size=1400,900",
]


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("Chromium is not installed: ./dev test installs it (apt-get install chromium)")
    return exe


def test_ui_renders_the_asset_catalog_in_chromium(webserver, tmp_path):
    port, _ = webserver
    url = f"http://127.0.0.1:{port}/assets"
    profile = tmp_path / "chromium-profile"
    dom = subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    for asset in ("raw_flights", "flight_features", "registered_model", "feature_drift"):
        assert asset in dom, f"{asset} not rendered by the UI"
    shot = tmp_path / "assets.png"
    subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=120,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""The real Dagster webserver (and daemon) load the code location from workspace.yaml, without
warnings, and serve the asset graph, jobs, schedule and sensor over GraphQL and in Chromium:
every asset of every lifecycle instance rendered in its group's graph, a materialization
launched by clicking Materialize on the page that succeeds, the sensor and schedule pages
showing them running. Screenshots go to the folder the tests print (``MLX_UI_ARTEFACTS``,
default ``test-artefacts/ui``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
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


def _end_group(proc: subprocess.Popen) -> None:
    """SIGTERM ``proc``'s process group, SIGKILL what is left after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


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
            daemon = subprocess.Popen(
                [str(exe.with_name("dagster-daemon")), "run", "-w", "workspace.yaml"],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                yield port, log
            finally:
                _end_group(daemon)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_code_location_loads_and_serves_the_graph(webserver, defined_assets):
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
    # every asset of the Definitions, in the group the Definitions give it
    assert {tuple(p): g for p, g in defined_assets} == {
        k: a["groupName"] for k, a in assets.items() if k in {tuple(p) for p, _ in defined_assets}
    }
    (repo,) = data["repositoriesOrError"]["nodes"]
    assert {"reference", "daily", "training", "monitoring"} <= {j["name"] for j in repo["jobs"]}
    assert repo["schedules"] and repo["sensors"]
    assert {s["scheduleState"]["status"] for s in repo["schedules"]} == {"RUNNING"}
    assert {s["sensorState"]["status"] for s in repo["sensors"]} == {"RUNNING"}


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


# --------------------------------------------------------------------------------------------
# Driving the page (tests/ui/_browser.py: the same Chromium, over the DevTools protocol).
# --------------------------------------------------------------------------------------------

_DEFINED_ASSETS = (
    "import json, mlx_assets.definitions as d\n"
    "g = d.defs.resolve_asset_graph()\n"
    "print(json.dumps([[k.path, g.get(k).group_name] for k in g.get_all_asset_keys()"
    " if g.get(k).is_materializable]))\n"
)


@pytest.fixture(scope="module")
def defined_assets(webserver) -> list[tuple[list[str], str]]:
    """(key path, group) of every materializable asset, from the Definitions the workspace's
    module builds, loaded in a fresh process with the webserver's environment."""
    done = subprocess.run(
        [sys.executable, "-c", _DEFINED_ASSETS],
        cwd=REPO_ROOT,
        env={**os.environ, "MLX_HOME": str(webserver[1].parent)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assets = [(path, group) for path, group in json.loads(done.stdout.strip().splitlines()[-1])]
    assert assets, "the definitions have no assets"
    return assets


@pytest.fixture(scope="module")
def artefacts(request) -> Path:
    folder = Path(os.environ.get("MLX_UI_ARTEFACTS") or REPO_ROOT / "test-artefacts" / "ui")
    folder.mkdir(parents=True, exist_ok=True)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"[ui] screenshots in {folder}")
    return folder


@pytest.fixture
def browser(tmp_path):
    from tests.ui._browser import Browser

    _chromium()
    page = Browser(tmp_path / "chromium-profile", timeout_s=120).start()
    try:
        yield page
    finally:
        page.close()


# How many nodes of the rendered graph (inside its SVG: not the sidebar, not the header) are
# titled LABEL. Full and zoomed-out (minimal) nodes both count; a zoomed-out node may shorten a
# long title in the middle ("drift_inc…_summary").
_NODES_TITLED = """((label) => [...document.querySelectorAll('svg *')].filter(e => {
  if (e.childElementCount !== 0) return false;
  const t = e.textContent.trim();
  if (t === label) return true;
  const [head, tail, ...rest] = t.split('\u2026');
  return tail !== undefined && rest.length === 0 && head.length > 0
    && label.startsWith(head) && label.endsWith(tail) && label.length > t.length;
}).length)(%s)"""


def test_every_asset_of_every_lifecycle_renders_in_the_asset_graph(
    webserver, defined_assets, browser, artefacts
):
    port, _ = webserver
    served = {tuple(a["assetKey"]["path"]) for a in _post(port, QUERY)["assetNodes"]}
    assert {tuple(path) for path, _ in defined_assets} <= served
    groups: dict[str, Counter[str]] = {}
    for path, group in defined_assets:
        groups.setdefault(group, Counter())[path[-1]] += 1  # a node is titled by its last part
    for group, titles in sorted(groups.items()):
        browser.goto(f"http://127.0.0.1:{port}/locations/mlx/asset-groups/{group}/lineage")
        check = " && ".join(
            f"{_NODES_TITLED % json.dumps(title)} >= {n}" for title, n in titles.items()
        )
        try:
            browser.wait(check, what=f"the {group} graph to show its assets {dict(titles)}")
        finally:
            browser.screenshot(artefacts / f"graph-{group}.png")  # also what a failure saw
    assert sum(sum(c.values()) for c in groups.values()) == len(defined_assets)


def _asset_with_no_upstream(port: int) -> str:
    data = _post(
        port,
        "{ assetNodes { assetKey { path } isPartitioned isMaterializable "
        "dependencyKeys { path } } }",
    )
    candidates = [
        "/".join(a["assetKey"]["path"])
        for a in data["assetNodes"]
        if a["isMaterializable"] and not a["isPartitioned"] and not a["dependencyKeys"]
    ]
    assert candidates, "no unpartitioned root asset to materialize from the UI"
    return sorted(candidates)[0]


def test_materialize_clicked_in_the_page_succeeds(webserver, browser, artefacts):
    port, _ = webserver
    asset = _asset_with_no_upstream(port)  # one click, no launch dialog (planes)
    browser.goto(f"http://127.0.0.1:{port}/assets/{asset}")
    browser.wait(
        "[...document.querySelectorAll('button')].some("
        "x => x.innerText.trim() === 'Materialize' && !x.disabled)",
        what="the Materialize button",
    )
    browser.click_button("Materialize")
    toast = browser.wait(
        "(document.body.innerText.match(/Launched run ([0-9a-f]{8})/) || [])[1]",
        what="the 'Launched run' message",
    )
    browser.screenshot(artefacts / "materialize-launched.png")
    query = "{ runsOrError { ... on Runs { results { runId status } } } }"
    deadline = time.monotonic() + 300
    status = None
    while time.monotonic() < deadline:
        runs = _post(port, query)["runsOrError"]["results"]
        status = next((r["status"] for r in runs if r["runId"].startswith(toast)), None)
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(1)
    assert status == "SUCCESS", f"run {toast} launched from the page ended {status}"
    browser.goto(f"http://127.0.0.1:{port}/assets/{asset}")
    browser.wait(
        "document.body.innerText.includes('Latest materialization') && "
        "!document.body.innerText.includes('Never materialized')",
        what="the asset page to show the materialization",
    )
    browser.screenshot(artefacts / "materialized.png")


@pytest.mark.parametrize("kind", ["sensors", "schedules"])
def test_sensor_and_schedule_pages_show_running(webserver, browser, artefacts, kind):
    port, _ = webserver
    (repo,) = _post(port, QUERY)["repositoriesOrError"]["nodes"]
    names = [x["name"] for x in repo[kind]]
    assert names
    for name in names:
        browser.goto(f"http://127.0.0.1:{port}/locations/mlx/{kind}/{name}")
        browser.wait(
            "document.body.innerText.includes('Running') && "
            "[...document.querySelectorAll('input[type=checkbox]')].some(x => x.checked)",
            what=f"the {name} page to show it running",
        )
        browser.screenshot(artefacts / f"{kind}-{name}.png")

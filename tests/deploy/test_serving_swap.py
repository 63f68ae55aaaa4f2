"""A model-server swap keeps serving (issue 14): no request fails while the composition's
``model_server`` config changes under a production-shaped stack (tests/deploy/_stack.py).

The ``serving`` profile serves v0001 (bentoml, one worker per server) behind the nginx router.
Requests go through the router continuously from a client thread; the code location is
reloaded with a composition whose ``model_server`` has two workers (``mlx_resources.hot_swap``:
checked, installed, GraphQL ``reloadRepositoryLocation`` on the real webserver), then
``model_deployment`` is materialized again through the webserver: the same version is started
on the new config and swapped in behind the router (``reconfigured``), the old server stops,
and not one request failed or was lost.

Then the UI's Reload (GraphQL ``reloadRepositoryLocation``, without hot_swap's check) of a served
composition that no longer loads: the code location keeps serving the last good composition
(``MLX_LAST_GOOD_COMPOSITION``, mlx_assets/composition_guard.py), the ``composition_error``
sensor's description names the key and the fix, and a run launched afterwards still works on
the old definitions.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from mlx_resources.hot_swap import reload_code_location
from tests.deploy._stack import LAUNCH, LOCATION, REPOSITORY, GraphQLError, Stack
from tests.deploy.conftest import ProdHome, lifecycle, small_composition_text, stop, wait_for

pytestmark = pytest.mark.slow

MODEL = "flight_delay"
WAIT_S = 900.0
RELOAD = """
mutation($name: String!) { reloadRepositoryLocation(repositoryLocationName: $name) {
  __typename ... on PythonError { message } } }
"""
SENSOR = """
query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { __typename
  ... on Sensor { description } ... on PythonError { message } } }
"""


def swap_composition(defs: Path, workers: int) -> str:
    """The small composition on January (``defs``), serving with ``workers`` per server; the
    arrival schedule ticks once a year (nothing else runs during the swap)."""
    text = small_composition_text()
    text = text.replace(
        "\nsettings:\n", f'\nsettings:\n  defs_folder: {defs}\n  arrival_cron: "0 0 1 1 *"\n', 1
    )
    assert str(defs) in text, text
    return (
        text + "\nprofiles:\n  serving:\n    plugins:\n      model_server:\n"
        f"        plugin: bentoml\n        config:\n          workers: {workers}\n"
    )


class Load(threading.Thread):
    """POSTs one prediction at a time to ``url`` until stopped; every answer that is not a 200
    from ``version`` (or no answer) is a failure."""

    def __init__(self, url: str, body: dict, version: str) -> None:
        super().__init__(daemon=True)
        self.url, self.body, self.version = url, body, version
        self.done = threading.Event()
        self.ok: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        from tests.serving.conftest import post

        while not self.done.is_set():
            try:
                status, answer = post(self.url + "/predict", self.body, timeout_s=60)
            except Exception as exc:  # a refused or reset connection is a lost request
                self.failures.append(f"{time.strftime('%X')} {type(exc).__name__}: {exc}")
                continue
            if status == 200 and isinstance(answer, dict) and answer["version"] == self.version:
                self.ok.append(time.time())
            else:
                self.failures.append(f"{time.strftime('%X')} {status} {str(answer)[:200]}")


def materialize(stack: Stack, asset: str) -> str:
    """Launch a run of ``asset`` alone through the webserver (the UI's Materialize)."""
    params = {
        "selector": {
            "repositoryLocationName": LOCATION,
            "repositoryName": REPOSITORY,
            "jobName": "__ASSET_JOB",
            "assetSelection": [{"path": [asset]}],
        },
        "runConfigData": {},
    }
    out = stack.post(LAUNCH, {"p": params})["launchRun"]
    if out["__typename"] != "LaunchRunSuccess":
        raise GraphQLError(f"launchRun({asset}) answered {out}")
    return str(out["run"]["runId"])


def test_a_model_server_config_swap_keeps_serving(prod_home: ProdHome, tmp_path: Path):
    pytest.importorskip("bentoml")
    from mlx_plugins.model_servers.base import ServerHandle, example_row
    from mlx_plugins.model_servers.bentoml_server import BentoMLServer
    from mlx_plugins.model_servers.routing import NginxRouter, find_nginx
    from mlx_resources.model_registry import ModelRegistry
    from tests.serving.test_daemon_rollout import january_defs, stop_serving

    find_nginx()
    home = prod_home.home
    defs = january_defs(tmp_path / "defs")
    composition = tmp_path / "mlx.yaml"
    composition.write_text(swap_composition(defs, workers=1))
    env = {
        **prod_home.env,
        "MLX_COMPOSITION": str(composition),
        "MLX_PROFILE": "serving",
        "MLX_LAST_GOOD_COMPOSITION": str(tmp_path / "state" / "last_good.yaml"),
    }
    folder = home / "serving" / MODEL
    stack = Stack(env, tmp_path)
    load: Load | None = None
    try:
        log = tmp_path / "lifecycle.log"
        proc = lifecycle(env, log)
        try:
            proc.wait(timeout=WAIT_S)
        finally:
            stop(proc)
        assert proc.returncode == 0, log.read_text()[-4000:]
        (old,) = (ServerHandle.model_validate(h) for h in _servers(folder)["v0001"])
        assert old.workers == 1
        url = NginxRouter.attach(folder / "router").url
        (version,) = ModelRegistry(root=str(home / "registry")).versions(MODEL)
        package = BentoMLServer(home=str(home / "bentoml")).package(version)
        load = Load(url, {"rows": [example_row(package.request_schema)]}, "v0001")

        stack.start()
        load.start()
        wait_for("requests through the router", lambda: len(load.ok) >= 5, timeout_s=120)
        candidate = tmp_path / "mlx.next.yaml"
        candidate.write_text(swap_composition(defs, workers=2))
        web = f"http://127.0.0.1:{stack.web_port}"
        reload_code_location(web, LOCATION, composition=candidate, env=env)
        assert composition.read_text() == candidate.read_text()
        assert stack.location_status() == ("LOADED", "RepositoryLocation")

        run_id = materialize(stack, "model_deployment")
        with prod_home.instance() as instance:
            wait_for(
                "the model_deployment run to finish",
                lambda: instance.get_run_by_id(run_id).is_finished,
                timeout_s=WAIT_S,
            )
            record = instance.get_run_record_by_id(run_id)
            assert record is not None
            assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS, stack.log("daemon")[
                -3000:
            ]
            wait_for("requests after the swap", lambda: load.ok[-1] > record.end_time + 1, 120)
            event = instance.get_latest_materialization_event(dg.AssetKey("model_deployment"))
            assert event is not None and event.run_id == run_id
            mat = event.asset_materialization
            assert mat is not None
            meta = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
        load.done.set()
        load.join(timeout=120)

        assert meta["decision"] == "reconfigured", meta
        assert meta["served_version"] == "v0001" and meta["workers"] == 2, meta
        (new,) = (ServerHandle.model_validate(h) for h in _servers(folder)["v0001"])
        assert new.workers == 2 and new.port != old.port
        assert new.alive() and not old.alive()
        router = NginxRouter.attach(folder / "router")
        assert router.url == url
        assert router.table.route("v0001").servers == (f"{new.host}:{new.port}",)
        during = [t for t in load.ok if record.start_time <= t <= record.end_time]
        assert during, "no request was answered while model_deployment ran"
        assert load.failures == [], load.failures[:5]
        print(
            f"swap: {len(load.ok)} requests answered through the router, {len(during)} of them "
            f"while model_deployment ran, {len(load.failures)} failed"
        )

        # The UI's Reload of a composition that does not load: the location keeps serving the
        # last good one and says why.
        composition.write_text(candidate.read_text().replace("epochs: 2", "epochs: true"))
        answer = stack.post(RELOAD, {"name": LOCATION})["reloadRepositoryLocation"]
        assert answer["__typename"] == "WorkspaceLocationEntry", answer
        assert stack.location_status() == ("LOADED", "RepositoryLocation")
        selector = {
            "repositoryLocationName": LOCATION,
            "repositoryName": REPOSITORY,
            "sensorName": "composition_error",
        }
        alarm = stack.post(SENSOR, {"s": selector})["sensorOrError"]
        assert alarm["__typename"] == "Sensor", alarm
        assert "plugins.ml_platform.config.epochs" in alarm["description"], alarm
        assert "fix:" in alarm["description"] and str(composition) in alarm["description"]
        again = materialize(stack, "model_deployment")  # runs import the last good one too
        with prod_home.instance() as instance:
            wait_for(
                "a run after the refused reload",
                lambda: instance.get_run_by_id(again).is_finished,
                timeout_s=WAIT_S,
            )
            assert instance.get_run_by_id(again).status == dg.DagsterRunStatus.SUCCESS
            event = instance.get_latest_materialization_event(dg.AssetKey("model_deployment"))
            assert event is not None and event.asset_materialization is not None
            decision = event.asset_materialization.metadata["decision"]
            assert getattr(decision, "value", decision) == "unchanged"  # still 2 workers
    finally:
        if load is not None:
            load.done.set()
        stack.close()
        stop_serving(home)


def _servers(folder: Path) -> dict:
    return json.loads((folder / "servers.json").read_text())

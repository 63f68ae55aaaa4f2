"""The ``model_server`` contract: package a registered version, serve the kind's HTTP contract
on loopback, stop without leaving a process, render Kubernetes manifests.

Usage::

    from mlx_plugins.testing import ModelServerContract

    class TestMyServer(ModelServerContract):
        @pytest.fixture
        def plugin(self, tmp_path):
            return MyServer(home=str(tmp_path))

        @pytest.fixture
        def registered(self):
            return version, registry  # a small binary model: numeric x, noise; categorical cat

``registered`` gives a :class:`~mlx_plugins.model_registries.base.ModelVersion` (registered
with ``config["features"]``) and the registry holding it; ``tests/serving/conftest.py`` trains
one with ``local_torch`` in about a second.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from mlx_plugins.testing.contracts import PluginContract


def _post(url: str, body: Any, timeout_s: float = 10.0) -> tuple[int, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


class ModelServerContract(PluginContract):
    """Serves a registered version over the kind's HTTP contract and cleans up after itself."""

    @pytest.fixture
    def registered(self) -> Any:  # pragma: no cover - the subclass provides it
        raise NotImplementedError("provide `registered`: (ModelVersion, ModelRegistry)")

    def test_serves_the_http_contract_and_stops_cleanly(self, plugin: Any, registered: Any) -> None:
        from mlx_plugins.model_servers.base import example_row, http_get

        version, registry = registered
        package = plugin.package(version, registry)
        assert (package.model, package.version) == (version.model, version.version)
        handle = plugin.start(package)
        try:
            assert handle.health().healthy
            row = example_row(package.request_schema)
            status, body = _post(f"{handle.url}/predict", {"rows": [row, row]})
            assert status == 200, body
            assert body["version"] == package.version_label and len(body["predictions"]) == 2
            assert all(0.0 <= p <= 1.0 for p in body["predictions"])  # a binary model
            status, body = _post(f"{handle.url}/predict", {"rows": [{**row, "no_such": 1}]})
            assert status == 422 and body["detail"][0]["field"] == "no_such"
            status, text = http_get(f"{handle.url}/metrics")
            assert status == 200 and "mlx_serving_requests_total" in text
        finally:
            handle.stop()
        assert not handle.alive()
        assert http_get(f"{handle.url}/healthz", timeout_s=1.0)[0] != 200

    def test_renders_a_deployment_and_a_service(self, plugin: Any, registered: Any) -> None:
        version, registry = registered
        package = plugin.package(version, registry)
        manifests = plugin.render_manifests(package, image="example/model:1", replicas=2)
        assert [m["kind"] for m in manifests] == ["Deployment", "Service"]
        assert manifests[0]["spec"]["replicas"] == 2
        with pytest.raises(ValueError, match="replicas"):
            plugin.render_manifests(package, image="example/model:1", replicas=0)

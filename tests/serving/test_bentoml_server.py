"""The ``bentoml`` model server on real ``bentoml serve`` processes on loopback: packaging,
predictions equal to the platform's own, request errors (422, 413), unknown categories,
health, readiness, metrics, restart and clean stop."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from mlx_plugins.model_servers.base import (
    ServerHandle,
    ServingError,
    curl_example,
    descendants,
    example_row,
    http_get,
    serve_version,
)
from mlx_plugins.model_servers.bentoml_server import BentoMLServer
from tests.serving.conftest import post


def _rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return frame.select("x", "noise", "cat").to_dicts()


def _metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def test_package_holds_weights_schema_lineage_and_metrics(tiny_package, tiny_version) -> None:
    import bentoml

    from mlx_plugins.model_servers.bentoml_runtime import MODEL_FILE, PACKAGE_FILE

    assert tiny_package.package_tag == "tiny:v0001"
    assert tiny_package.request_schema.numeric == ("x", "noise")
    assert tiny_package.request_schema.categorical == {"cat": ("a", "b", "c")}
    assert tiny_package.request_schema.task == "binary"
    assert tiny_package.metrics == {"roc_auc": 0.9, "log_loss": 0.4}
    assert tiny_package.lineage["run_id"] == "test-run"
    from bentoml._internal.models import ModelStore

    stored = bentoml.models.get(
        "tiny:v0001", _model_store=ModelStore(f"{tiny_package.store}/models")
    )
    meta = stored.info.metadata
    assert meta["artifact_sha256"] == tiny_version.artifact_sha256
    assert meta["registered"]["version"] == 1
    assert meta["features"]["target"] == "y"
    assert Path(stored.path_of(MODEL_FILE)).stat().st_size > 0
    described = json.loads(Path(stored.path_of(PACKAGE_FILE)).read_text())
    assert described["request_schema"]["numeric"] == ["x", "noise"]


def test_packaging_again_returns_the_stored_package(
    bentoml_server, tiny_version, tiny_registry, tiny_package
) -> None:
    again = bentoml_server.package(tiny_version, tiny_registry)
    assert again == tiny_package


def test_a_changed_artifact_is_refused(bentoml_server, tiny_version, tmp_path) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not the registered bytes")
    changed = tiny_version.model_copy(update={"artifact_path": str(bad), "version": 99})
    with pytest.raises(ValueError, match=r"tiny:v0099.*sha256.*changed after registration"):
        bentoml_server.package(changed)


def test_a_version_without_features_is_refused(bentoml_server, tiny_version) -> None:
    bare = tiny_version.model_copy(update={"config": {}, "version": 98})
    with pytest.raises(ValueError, match=r"tiny:v0098 has no feature spec"):
        bentoml_server.package(bare)


def test_predictions_equal_the_platform_on_the_same_rows(
    tiny_served: ServerHandle, tiny_model, tiny_frames
) -> None:
    from mlx_plugins.ml_platforms.local_torch import LocalTorchPlatform

    frame = tiny_frames[1].head(50)
    # nulls, NaN-free missing values and an unseen category go through the same preprocessing
    frame = pl.concat(
        [
            frame,
            pl.DataFrame(
                {"x": [None, 3.0e3, 0.5], "noise": [0.1, None, -1.0], "cat": ["b", None, "zz"]},
                schema={"x": pl.Float64, "noise": pl.Float64, "cat": pl.String},
            ).with_columns(y=pl.lit(0, dtype=pl.Int8)),
        ]
    )
    platform = LocalTorchPlatform(device="cpu", isolation="none", num_threads=1)
    with platform.session():
        want = platform.predict_proba(tiny_model, frame)
    status, body = post(f"{tiny_served.url}/predict", {"rows": _rows(frame)})
    assert status == 200, body
    assert body["model"] == "tiny" and body["version"] == "v0001"
    got = np.asarray(body["predictions"], dtype=np.float64)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # one row at a time gives the same numbers as the batch
    status, one = post(f"{tiny_served.url}/predict", {"rows": _rows(frame)[:1]})
    assert status == 200 and math.isclose(one["predictions"][0], want[0], abs_tol=1e-6)


@pytest.mark.parametrize(
    ("row_update", "field", "problem"),
    [
        ({"x": "fast"}, "x", "expected a number or null"),
        ({"x": True}, "x", "expected a number or null"),
        ({"cat": 3}, "cat", "expected a category"),
        ({"bogus": 1.0}, "bogus", "unknown feature"),
    ],
)
def test_a_bad_row_is_a_422_naming_the_field(
    tiny_served: ServerHandle, row_update, field, problem
) -> None:
    good = {"x": 0.1, "noise": 0.2, "cat": "a"}
    status, body = post(f"{tiny_served.url}/predict", {"rows": [good, {**good, **row_update}]})
    assert status == 422, body
    [entry] = body["detail"]
    assert entry["row"] == 1 and entry["field"] == field
    assert problem in entry["problem"]


def test_missing_fields_and_malformed_bodies_are_422(tiny_served: ServerHandle) -> None:
    status, body = post(f"{tiny_served.url}/predict", {"rows": [{"x": 0.1, "cat": "a"}]})
    assert status == 422 and body["detail"][0]["field"] == "noise"
    assert "missing feature" in body["detail"][0]["problem"]
    status, body = post(f"{tiny_served.url}/predict", b'{"rows": [')
    assert status == 422 and body["detail"]
    status, body = post(f"{tiny_served.url}/predict", {"rows": []})
    assert status == 422 and body["detail"][0]["field"] == "rows"
    status, body = post(f"{tiny_served.url}/predict", [1, 2])
    assert status == 422
    # the worker is still there
    status, body = post(f"{tiny_served.url}/predict", {"rows": [example_row_tiny()]})
    assert status == 200


def example_row_tiny() -> dict[str, Any]:
    return {"x": 0.0, "noise": 0.0, "cat": "a"}


def test_an_oversized_batch_is_a_413(tiny_served: ServerHandle, tiny_package) -> None:
    limit = tiny_package.request_schema.max_batch_rows
    rows = [example_row_tiny()] * (limit + 1)
    status, body = post(f"{tiny_served.url}/predict", {"rows": rows})
    assert status == 413, body
    assert str(limit) in body["error"] and "split" in body["error"]
    status, _ = post(f"{tiny_served.url}/predict", {"rows": [example_row_tiny()] * limit})
    assert status == 200


def test_health_readiness_schema_and_metrics(tiny_served: ServerHandle, tiny_package) -> None:
    assert tiny_served.health().healthy
    assert http_get(f"{tiny_served.url}/healthz")[0] == 200
    assert http_get(f"{tiny_served.url}/readyz")[0] == 200
    status, schema = http_get(f"{tiny_served.url}/schema")
    assert status == 200 and json.loads(schema)["categorical"] == {"cat": ["a", "b", "c"]}
    before = tiny_served.metrics_text()
    labels = {"model": "tiny", "version": "v0001"}
    ok0 = _metric(before, "mlx_serving_requests_total", status="200", **labels)
    bad0 = _metric(before, "mlx_serving_requests_total", status="422", **labels)
    for _ in range(3):
        post(f"{tiny_served.url}/predict", {"rows": [example_row_tiny()]})
    post(f"{tiny_served.url}/predict", {"rows": [{"x": "no"}]})
    after = tiny_served.metrics_text()
    assert _metric(after, "mlx_serving_requests_total", status="200", **labels) == ok0 + 3
    assert _metric(after, "mlx_serving_requests_total", status="422", **labels) == bad0 + 1
    assert (
        _metric(after, "mlx_serving_request_duration_seconds_count", status="200", **labels)
        == ok0 + 3
    )
    assert _metric(after, "mlx_serving_model_info", package="tiny:v0001") == 1


def test_unknown_category_rejected_when_configured(
    serving_home, tiny_package, tiny_version, tiny_registry, start_server
) -> None:
    strict = BentoMLServer(
        home=str(serving_home / "bentoml"),
        unknown_category="reject",
        max_request_rows=4,
        die_with_caller=True,
    )
    package = strict.package(tiny_version, tiny_registry)
    assert package.package_tag == tiny_package.package_tag  # same stored package
    assert package.request_schema.unknown_category == "reject"
    handle = start_server(package, server=strict, workers=2)
    status, body = post(
        f"{handle.url}/predict", {"rows": [example_row_tiny(), {**example_row_tiny(), "cat": "q"}]}
    )
    assert status == 422, body
    [entry] = body["detail"]
    assert (
        entry
        == {
            "row": 1,
            "field": "cat",
            "problem": entry["problem"],
        }
        and 'unknown category "q"' in entry["problem"]
    )
    assert post(f"{handle.url}/predict", {"rows": [example_row_tiny()] * 5})[0] == 413
    assert post(f"{handle.url}/predict", {"rows": [{**example_row_tiny(), "cat": None}]})[0] == 200
    # two workers share one /metrics: the 200, 422 and 413 above are all counted
    text = handle.metrics_text()
    counts = {
        s: _metric(text, "mlx_serving_requests_total", status=s, version="v0001")
        for s in ("200", "413", "422")
    }
    assert counts == {"200": 1.0, "413": 1.0, "422": 1.0}


def test_restart_stop_and_a_port_in_use(
    bentoml_server, tiny_package, start_server, tiny_served
) -> None:
    from mlx_plugins.kernel.process_identity import pid_running

    handle = start_server(tiny_package)
    assert post(f"{handle.url}/predict", {"rows": [example_row_tiny()]})[0] == 200
    workers = descendants(handle.pid)
    assert workers  # BentoML's worker processes (in process groups of their own)
    assert handle.stop() is True
    assert not handle.alive() and not pid_running(handle.pid)
    assert not any(pid_running(p) for p in workers)
    assert http_get(f"{handle.url}/healthz", timeout_s=1.0)[0] == 0
    assert handle.stop() is False  # idempotent
    again = start_server(tiny_package, port=handle.port)
    assert again.port == handle.port and again.pid != handle.pid
    assert post(f"{again.url}/predict", {"rows": [example_row_tiny()]})[0] == 200
    with pytest.raises(ServingError, match=rf"port {tiny_served.port} on 127.0.0.1 is in use"):
        bentoml_server.start(tiny_package, port=tiny_served.port)
    assert tiny_served.health().healthy  # the server holding the port is untouched


def test_serve_version_and_curl_example(
    bentoml_server, tiny_registry, tiny_version, start_server
) -> None:
    package, handle = serve_version(bentoml_server, tiny_registry, tiny_version)
    try:
        command = curl_example(handle, package.request_schema)
        assert command.startswith(f"curl -s -X POST {handle.url}/predict")
        body = json.loads(command.split("-d '", 1)[1].rstrip("'"))
        assert body == {"rows": [example_row(package.request_schema)]}
        assert post(f"{handle.url}/predict", body)[0] == 200
    finally:
        handle.stop()


def test_a_bento_holds_the_service_sources_and_the_package(bentoml_server, tiny_package) -> None:
    import yaml

    tag = bentoml_server.build_bento(tiny_package)
    assert tag == "mlx-tiny:v0001"
    folder = Path(bentoml_server.home) / "bentos" / "mlx-tiny" / "v0001"
    described = yaml.safe_load((folder / "bento.yaml").read_text())
    assert described["service"] == "mlx_plugins.model_servers.bentoml_service:MLXModelService"
    [service] = described["services"]  # the package, through the service's BentoModel
    assert [m["tag"] for m in service["models"]] == ["tiny:v0001"]
    assert described["args"]["model"] == "tiny:v0001"
    assert "/predict" in described["schema"]["paths"]
    assert (folder / "src" / "mlx_plugins" / "model_servers" / "bentoml_runtime.py").exists()
    assert not list((folder / "src").glob("tests"))  # only mlx_plugins
    assert bentoml_server.build_bento(tiny_package) == tag  # idempotent


def test_with_die_with_caller_a_killed_caller_leaves_no_server(tiny_package) -> None:
    """A script (or test run) killed with SIGKILL takes its servers and their workers along."""
    import signal
    import subprocess
    import sys
    import time

    from mlx_plugins.kernel.process_identity import pid_running

    script = (
        "import sys, time\n"
        "from mlx_plugins.model_servers.base import ServedPackage\n"
        "from mlx_plugins.model_servers.bentoml_server import BentoMLServer\n"
        "package = ServedPackage.model_validate_json(sys.argv[1])\n"
        "server = BentoMLServer(home=package.store, die_with_caller=True)\n"
        "print(server.start(package, workers=2).model_dump_json(), flush=True)\n"
        "time.sleep(600)\n"
    )
    caller = subprocess.Popen(
        [sys.executable, "-c", script, tiny_package.model_dump_json()],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = caller.stdout.readline() if caller.stdout else ""
        handle = ServerHandle.model_validate_json(line)
        assert handle.health().healthy
        group = [handle.pid, *descendants(handle.pid)]
        assert len(group) >= 3  # the server and its two workers (at least)
    finally:
        caller.send_signal(signal.SIGKILL)
        caller.wait(timeout=10)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(pid_running(p) for p in group):
        time.sleep(0.5)
    assert not any(pid_running(p) for p in group), "server processes outlived their caller"

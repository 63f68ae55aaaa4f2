"""Fixtures of the serving tests, shared by the ``bentoml`` server tests and the rollout,
router and autoscaling tests.

Session-scoped, built once (a tiny model trains in about a second):

``serving_home``
    A temporary folder for the session's registry and BentoML store.
``tiny_frames``
    ``(train, valid)`` polars frames: numeric ``x``, ``noise``, categorical ``cat`` (a/b/c),
    binary target ``y``.
``tiny_registry`` / ``tiny_version``
    A ``local`` registry holding one version of ``tiny`` trained by ``local_torch`` (2 epochs,
    one hidden layer of 8), registered as the lifecycle does (``config["features"]``).
``tiny_model``
    The :class:`TrainedModel` behind ``tiny_version`` (for the platform's own predictions).
``bentoml_server``
    A ``bentoml`` plugin with its home in ``serving_home`` (1 worker; ``die_with_caller``: the
    servers die with the test process, even when it is killed).
``tiny_package``
    ``tiny_version`` packaged by ``bentoml_server``.
``tiny_served``
    A running server of ``tiny_package`` (one per session, stopped at the end).

Function-scoped:

``start_server``
    ``start_server(package, **kwargs) -> ServerHandle``: starts another server and stops it
    when the test ends, even when the test fails.

``post(url, body, timeout_s=10) -> (status, json_or_text)`` is a plain helper (import it).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("bentoml")

from mlx_plugins.ml_platforms.base import TrainedModel, TrainingSpec
from mlx_plugins.model_registries.base import ModelLineage, ModelVersion
from mlx_plugins.model_servers.base import ServedPackage, ServerHandle


def post(url: str, body: Any, timeout_s: float = 10.0) -> tuple[int, Any]:
    """POST ``body`` (JSON-encoded unless bytes) to ``url``; ``(status, parsed JSON or text)``."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method="POST", headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


@pytest.fixture(scope="session")
def serving_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serving")


@pytest.fixture(scope="session")
def tiny_frames() -> tuple[Any, Any]:
    from mlx_plugins.testing.contracts import _learnable_frame

    return _learnable_frame(600, 1), _learnable_frame(200, 2)


@pytest.fixture(scope="session")
def tiny_model(serving_home: Path, tiny_frames: tuple[Any, Any]) -> TrainedModel:
    from mlx_plugins.ml_platforms.local_torch import LocalTorchPlatform

    platform = LocalTorchPlatform(
        epochs=2, hidden=[8], num_threads=1, device="cpu", isolation="none"
    )
    spec = TrainingSpec(
        numeric_features=("x", "noise"),
        categorical_features=("cat",),
        target="y",
        artifact_dir=str(serving_home / "artifacts" / "tiny"),
    )
    with platform.session():
        return platform.train(*tiny_frames, spec)


@pytest.fixture(scope="session")
def tiny_registry(serving_home: Path) -> Any:
    from mlx_plugins.model_registries.local import LocalModelRegistry

    return LocalModelRegistry(root=str(serving_home / "registry"))


def register(registry: Any, model: TrainedModel, name: str = "tiny") -> ModelVersion:
    """Register ``model`` as the lifecycle's ``registered_model`` asset does."""
    version: ModelVersion = registry.register(
        name,
        model.artifact_path,
        model.artifact_sha256,
        metrics={"roc_auc": 0.9, "log_loss": 0.4},
        config={
            "platform": model.platform,
            "params": model.params,
            "features": model.spec.model_dump(exclude={"artifact_dir"}),
        },
        lineage=ModelLineage(
            training_data_version=None, partitions=["2013-01-01"], run_id="test-run"
        ),
    )
    return version


@pytest.fixture(scope="session")
def tiny_version(tiny_registry: Any, tiny_model: TrainedModel) -> ModelVersion:
    return register(tiny_registry, tiny_model)


@pytest.fixture(scope="session")
def bentoml_server(serving_home: Path) -> Any:
    from mlx_plugins.model_servers.bentoml_server import BentoMLServer

    return BentoMLServer(
        home=str(serving_home / "bentoml"),
        workers=1,
        ready_timeout_s=120.0,
        die_with_caller=True,  # a killed test run leaves no server behind
    )


@pytest.fixture(scope="session")
def tiny_package(bentoml_server: Any, tiny_version: ModelVersion, tiny_registry: Any) -> Any:
    package: ServedPackage = bentoml_server.package(tiny_version, tiny_registry)
    return package


@pytest.fixture(scope="session")
def tiny_served(bentoml_server: Any, tiny_package: ServedPackage) -> Iterator[ServerHandle]:
    handle: ServerHandle = bentoml_server.start(tiny_package)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def start_server(bentoml_server: Any) -> Iterator[Callable[..., ServerHandle]]:
    started: list[ServerHandle] = []

    def start(package: ServedPackage, server: Any = None, **kwargs: Any) -> ServerHandle:
        handle: ServerHandle = (server or bentoml_server).start(package, **kwargs)
        started.append(handle)
        return handle

    try:
        yield start
    finally:
        for handle in started:
            handle.stop()

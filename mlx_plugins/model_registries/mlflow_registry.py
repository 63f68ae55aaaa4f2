"""``mlflow``: MLflow's model registry (install the ``mlflow`` extra).

Each registration is one MLflow run in the experiment ``experiment`` and one version of the
registered model of the same name:

- the run logs the metrics (``log_batch``), the config as params (flattened, ``a.b`` keys), the
  lineage as tags (``mlx.training_data_version``, ``mlx.partitions``, ``mlx.code_version.<asset>``,
  ``mlx.dagster_run_id``...), the artifact under ``model/`` and the whole record as
  ``mlx/version.json`` (so nothing is lost to MLflow's tag and param length limits);
- the model version's source is that ``model/`` folder; its tags carry ``mlx.identity`` (see
  :func:`~mlx_plugins.model_registries.base.identity`) and ``mlx.artifact_sha256``;
- aliases (``champion``, ``challenger``) are MLflow's registered-model aliases.

Versions are numbered by MLflow (1, 2, ...). Registrations through this plugin are serialized
by a lock file in ``lock_dir`` (threads and processes of one host), which makes identical
concurrent registrations one version; registrations from other hosts into the same remote
tracking server are numbered correctly by MLflow but are not checked for identity against
each other while in flight.

MLflow is imported inside the methods, so loading the code location does not pay for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import Field, PrivateAttr

from mlx_plugins.kernel.metadata import PluginMetadata
from mlx_plugins.model_registries.base import (
    ModelRegistry,
    ModelVersion,
    Registration,
    check_alias,
)

_RECORD = "mlx/version.json"
_MAX_PARAM = 6000  # MLflow's limit on a param value (characters)
_MAX_TAG = 5000  # MLflow's limit on a model version tag value


def _without_userinfo(uri: str) -> str:
    """``uri`` with any ``user:password@`` removed (health lines and errors never show it)."""
    return re.sub(r"(?<=://)[^/@]*@", "***@", uri)


def _flatten(config: Any, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists and scalars as JSON text."""
    if isinstance(config, dict) and config:
        out: dict[str, str] = {}
        for key, value in config.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    if not prefix:
        return {}  # an empty config has no params
    text = config if isinstance(config, str) else json.dumps(config, default=str)
    return {prefix.rstrip("."): text[:_MAX_PARAM]}


class MLflowModelRegistry(ModelRegistry):
    """MLflow's model registry at ``tracking_uri`` (a local SQLite store in the MLX home when
    left empty)."""

    metadata: ClassVar[PluginMetadata] = PluginMetadata(
        name="mlflow",
        kind="model_registry",
        version="1.0.0",
        capabilities=("versions", "aliases", "lineage", "register_once", "metrics", "artifacts"),
        description="MLflow model registry: versions, aliases, runs with metrics and lineage.",
    )

    tracking_uri: str = Field(
        default="",
        description="MLflow tracking URI (sqlite:///..., http://host:5000, databricks); empty: "
        "sqlite:///<MLX home>/mlflow/mlflow.db.",
    )
    registry_uri: str = Field(default="", description="Model registry URI; empty: tracking_uri.")
    artifact_location: str = Field(
        default="",
        description="Artifact root of the experiment when this plugin creates it (file://, "
        "s3://...); empty: the server's default, or <MLX home>/mlflow/artifacts for the "
        "default local store.",
    )
    experiment: str = Field(default="mlx", description="Experiment that holds the runs.")
    lock_dir: str = Field(
        default="",
        description="Folder of the registration lock files; empty: the system temp folder.",
    )

    _client: Any = PrivateAttr(default=None)
    _records: dict[tuple[str, int], ModelVersion] = PrivateAttr(default_factory=dict)

    def with_home(self, home: Path) -> Self:
        if self.tracking_uri:
            return self
        folder = Path(home) / "mlflow"
        return type(self)(
            tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
            registry_uri=self.registry_uri,
            artifact_location=self.artifact_location or (folder / "artifacts").as_uri(),
            experiment=self.experiment,
            lock_dir=self.lock_dir or str(folder),
        )

    # -- client ----------------------------------------------------------------------------

    def open(self) -> None:
        if self._client is None:
            self._client = self._new_client()

    def close(self) -> None:
        self._client = None

    def _new_client(self) -> Any:
        try:
            from mlflow import MlflowClient
        except ImportError as exc:
            raise ImportError(
                "model_registry 'mlflow' needs MLflow: pip install 'mlx-platform[mlflow]'"
            ) from exc
        if not self.tracking_uri:
            raise ValueError(
                "model_registry 'mlflow' has no tracking_uri: set plugins.model_registry.config."
                "tracking_uri, or build the definitions from a composition (a SQLite store in "
                "the MLX home)"
            )
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
        return MlflowClient(
            tracking_uri=self.tracking_uri, registry_uri=self.registry_uri or self.tracking_uri
        )

    @property
    def client(self) -> Any:
        """The ``mlflow.MlflowClient`` (created on first use when outside a session)."""
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def _probe(self) -> str:
        self.client.search_registered_models(max_results=1)
        return f"MLflow registry at {_without_userinfo(self.registry_uri or self.tracking_uri)}"

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return str(exp.experiment_id)
        try:
            return str(
                self.client.create_experiment(
                    self.experiment, artifact_location=self.artifact_location or None
                )
            )
        except Exception:
            exp = self.client.get_experiment_by_name(self.experiment)  # created meanwhile
            if exp is None:
                raise
            return str(exp.experiment_id)

    @contextlib.contextmanager
    def _lock(self, model: str) -> Iterator[None]:
        folder = Path(self.lock_dir or tempfile.gettempdir())
        folder.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
        with open(folder / f".mlx-mlflow-{safe}.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- the kind's methods ----------------------------------------------------------------

    @contextlib.contextmanager
    def _registering(self, reg: Registration) -> Iterator[None]:
        """Registrations of one model are serialized (a file lock under ``lock_dir``).

        Raises:
            OSError: the artifact can't be read.
            mlflow.exceptions.MlflowException: the tracking server refused a call (its message
                names the call); a run created before the failure is marked FAILED and no model
                version is created.
        """
        if not reg.artifact.is_file():
            raise FileNotFoundError(
                f"artifact {reg.artifact} to register as {reg.model!r} is not a file"
            )
        with self._lock(reg.model):
            yield

    def _stored_versions(self, handle: None, model: str) -> list[ModelVersion]:
        return self.versions(model)

    def _add_version(self, handle: None, reg: Registration) -> ModelVersion:
        model, src, artifact_sha256 = reg.model, reg.artifact, reg.artifact_sha256
        metrics, config, lineage, key = reg.metrics, reg.config, reg.lineage, reg.key
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.exceptions import MlflowException

        client = self.client
        created_at = datetime.now(UTC)
        tags = {
            "mlx.model": model,
            "mlx.training_data_version": lineage.training_data_version or "",
            "mlx.partitions": (
                f"{lineage.partitions[0]}..{lineage.partitions[-1]} ({len(lineage.partitions)})"
                if lineage.partitions
                else ""
            ),
            "mlx.dagster_run_id": lineage.run_id or "",
            "mlx.window": json.dumps(lineage.window, default=str)[:_MAX_TAG],
            **{f"mlx.code_version.{k}": v for k, v in sorted(lineage.code_versions.items())},
        }
        run = client.create_run(self._experiment_id(), run_name=f"{model}-register")
        run_id = run.info.run_id
        try:
            ms = int(created_at.timestamp() * 1000)
            client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), ms, 0) for k, v in sorted(metrics.items())],
                params=[Param(k, v) for k, v in sorted(_flatten(config).items())],
                tags=[RunTag(k, v) for k, v in tags.items()],
            )
            client.log_artifact(run_id, str(src), "model")
            try:
                client.create_registered_model(model)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            source = f"{run.info.artifact_uri}/model"
            mv = client.create_model_version(
                model,
                source=source,
                run_id=run_id,
                tags={
                    "mlx.identity": key or "",
                    "mlx.artifact_sha256": artifact_sha256,
                    "mlx.artifact_name": src.name,
                },
            )
            record = ModelVersion(
                model=model,
                version=int(mv.version),
                created_at=created_at.isoformat(),
                artifact_path=f"{source}/{src.name}",
                artifact_sha256=artifact_sha256,
                metrics=metrics,
                config=config,
                lineage=lineage,
            )
            client.log_dict(run_id, record.model_dump(mode="json"), _RECORD)
            client.set_terminated(run_id, "FINISHED")
        except BaseException:
            with contextlib.suppress(Exception):
                client.set_terminated(run_id, "FAILED")
            raise
        self._records[(model, record.version)] = record
        return record

    def _record(self, mv: Any) -> ModelVersion:
        """Our record of MLflow model version ``mv`` (read once, then cached: it is immutable)."""
        key = (str(mv.name), int(mv.version))
        if key not in self._records:
            from mlflow.artifacts import download_artifacts

            with tempfile.TemporaryDirectory(prefix="mlx-mlflow-") as tmp:
                path = download_artifacts(
                    run_id=mv.run_id,
                    artifact_path=_RECORD,
                    dst_path=tmp,
                    tracking_uri=self.tracking_uri,
                )
                self._records[key] = ModelVersion.model_validate_json(Path(path).read_text())
        return self._records[key]

    def versions(self, model: str) -> list[ModelVersion]:
        found = self.client.search_model_versions(f"name = '{model.replace(chr(39), '')}'")
        out = []
        for mv in sorted(found, key=lambda m: int(m.version)):
            if mv.run_id:  # a version created outside MLX has no record to read
                with contextlib.suppress(OSError):
                    out.append(self._record(mv))
        return out

    def get(self, model: str, version: int) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version(model, str(version))
        except MlflowException:
            return super().get(model, version)  # the KeyError naming the versions there are
        return self._record(mv)

    def set_alias(self, model: str, alias: str, version: int) -> None:
        check_alias(alias)
        self.get(model, version)  # KeyError naming the versions there are
        self.client.set_registered_model_alias(model, alias, str(version))

    def aliases(self, model: str) -> dict[str, int]:
        from mlflow.exceptions import MlflowException

        try:
            registered = self.client.get_registered_model(model)
        except MlflowException:
            return {}
        return {str(a): int(v) for a, v in sorted(registered.aliases.items())}

    def download_artifact(self, version: ModelVersion, dest: str | os.PathLike[str]) -> Path:
        from mlflow.artifacts import download_artifacts

        Path(dest).mkdir(parents=True, exist_ok=True)
        return Path(
            download_artifacts(
                artifact_uri=version.artifact_path,
                dst_path=str(dest),
                tracking_uri=self.tracking_uri,
            )
        )

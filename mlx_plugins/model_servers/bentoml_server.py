"""``bentoml``: registered versions packaged as BentoML models and served by ``bentoml serve``.

* :meth:`BentoMLServer.package` saves a registered version into a BentoML model store with
  ``bentoml.models.create`` (not the deprecated ``bentoml.pytorch``): the registered artifact
  (weights, architecture, preprocessing) and ``mlx_package.json`` (request schema, task,
  classes), with the version's lineage, metrics and sha256 as the model's metadata. The tag is
  ``<model>:v<NNNN>``; packaging a version again returns the stored package.
* :meth:`BentoMLServer.start` runs ``bentoml serve
  mlx_plugins.model_servers.bentoml_service:MLXModelService`` on a free loopback port with the
  configured workers, in its own process group, and waits for ``/readyz``;
  :meth:`ServerHandle.stop` ends the whole group.
* :meth:`BentoMLServer.render_manifests` renders the Deployment and Service for Kubernetes.

bentoml is imported inside methods: loading the code location never pays for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from pydantic import Field

from mlx_plugins.kernel.metadata import PluginMetadata
from mlx_plugins.kernel.process_identity import PARENT_ENV, parent_env
from mlx_plugins.model_servers.base import (
    ModelServer,
    RequestSchema,
    ServedPackage,
    ServerHandle,
    ServingError,
    UnknownCategory,
    http_get,
    stop_process_group,
)
from mlx_plugins.model_servers.ports import free_port, port_is_free

if TYPE_CHECKING:
    from mlx_plugins.model_registries.base import ModelRegistry, ModelVersion

SERVICE = "mlx_plugins.model_servers.bentoml_service:MLXModelService"
"""What ``bentoml serve`` runs (the service module beside this one)."""
_TAG_PART = re.compile(r"^[a-z0-9]([a-z0-9_.-]*[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_PORT_IN_USE = ("address already in use", "errno 98")
BENTO_REQUIREMENTS = (
    "bentoml>=1.4.30,<1.5",
    "msgspec>=0.19,<0.21",
    "torch>=2.6,<2.15",
    "numpy",
    "polars",
    "pydantic>=2",
    "dagster",
)
"""What a Bento's image installs: the service's imports (``mlx_plugins`` comes as source)."""


def bento_tag(version: ModelVersion) -> str:
    """The BentoML model tag of a registered version: ``<model>:v<NNNN>`` (lower case).

    Raises
    ------
    ValueError
        The model name is not a valid BentoML tag name (letters, digits, ``_ . -``).
    """
    name = version.model.lower()
    if not _TAG_PART.match(name) or len(name) > 63:
        raise ValueError(
            f"model name {version.model!r} cannot be a BentoML model tag: use at most 63 "
            "letters, digits, '_', '.' or '-', starting and ending with a letter or digit"
        )
    return f"{name}:v{version.version:04d}"


def _metadata_safe(value: Any) -> Any:
    """``value`` as BentoML model metadata accepts it (no None: dropped from dicts, '' in lists)."""
    if isinstance(value, dict):
        return {str(k): _metadata_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_metadata_safe(v) if v is not None else "" for v in value]
    return value


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class BentoMLServer(ModelServer):
    """Serves registered versions with BentoML 1.4 (the ``serving`` extra)."""

    metadata: ClassVar[PluginMetadata] = PluginMetadata(
        name="bentoml",
        kind="model_server",
        version="0.1.0",
        capabilities=(
            "package:bentoml_model",
            "serve:local",
            "adaptive_batching",
            "metrics:prometheus",
            "manifests:kubernetes",
        ),
        description="BentoML models in a local store, served by `bentoml serve` processes.",
    )

    home: str = Field(
        default="",
        description="BENTOML_HOME: the model store and server logs; empty: 'bentoml' in the "
        "platform's MLX home.",
    )
    workers: int = Field(default=1, ge=1, le=64, description="Worker processes per server.")
    max_request_rows: int = Field(
        default=1024, ge=1, description="Most rows in one request; more is answered 413."
    )
    batch_rows: int = Field(
        default=64, ge=1, description="Most rows in one forward pass (adaptive batching)."
    )
    max_latency_ms: float = Field(
        default=250.0,
        gt=0,
        description="A worker answers 503 at once to a request it expects to wait longer "
        "than this (ms) for its batched forward pass: load is shed and counted, the queue "
        "stays bounded. Measured on a loaded 2-core machine, 50 ms shed most requests of the "
        "wide model already at 16 concurrent (docs/serving.md); set it to your latency goal.",
    )
    max_inflight: int | None = Field(
        default=8,
        ge=1,
        description="Prediction requests one worker holds at once; one more is answered 503 "
        "with Retry-After at once, before BentoML's middlewares (a refusal costs a fraction of "
        "an answer), and counted (mlx_serving_shed_requests_total, reason inflight). Bounds "
        "the tail under overload: wait <= max_inflight x time per answer. None: no limit.",
    )
    unknown_category: UnknownCategory = Field(
        default="missing",
        description="A category not seen in training: 'missing' scores it as a null, as the "
        "training preprocessing does; 'reject' answers 422 naming the field and value.",
    )
    torch_threads: int = Field(default=1, ge=1, description="torch threads per worker.")
    request_timeout_s: float = Field(default=30.0, gt=0, description="Per request (s).")
    ready_timeout_s: float = Field(
        default=120.0, gt=0, description="How long start() waits for /readyz (s)."
    )
    die_with_caller: bool = Field(
        default=False,
        description="Servers are killed when the process (the thread) that started them dies: "
        "for tests and scripts. Off (the default), a server outlives its caller: an asset "
        "starts it and a later run stops it.",
    )

    def with_home(self, home: Path) -> Self:
        if self.home:
            return self
        # a new instance, not model_copy: Dagster rebuilds a resource from the config given to
        # __init__, so a copy's new home would be lost in the run process
        config = {k: getattr(self, k) for k in type(self).model_fields if k != "home"}
        return type(self)(**config, home=str(Path(home) / "bentoml"))

    @property
    def _home(self) -> Path:
        if not self.home:
            raise ValueError(
                "model_server 'bentoml' has no home folder: set plugins.model_server.config."
                "home, or build the definitions from a composition (home = <MLX home>/bentoml)"
            )
        return Path(self.home)

    def _store_path(self) -> Path:
        path = self._home / "models"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _store(self) -> Any:
        from bentoml._internal.models import ModelStore

        return ModelStore(str(self._store_path()))

    def _probe(self) -> str:
        import bentoml

        self._store()
        return f"bentoml {bentoml.__version__}, store {self._home / 'models'}"

    # -- packaging ------------------------------------------------------------------------------
    def package(
        self, version: ModelVersion, registry: ModelRegistry | None = None
    ) -> ServedPackage:
        """See :meth:`ModelServer.package`. The BentoML model's ``metadata`` holds
        ``registered`` (model, version, created_at), ``artifact_sha256``, ``metrics``,
        ``lineage``, ``features`` and ``request_schema``; its labels the model and version."""
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
        import bentoml
        from bentoml.exceptions import NotFound

        from mlx_plugins.model_servers.bentoml_runtime import (
            MODEL_FILE,
            PACKAGE_FILE,
            request_schema,
        )

        tag = bento_tag(version)
        features = version.config.get("features")
        if not isinstance(features, dict) or "numeric_features" not in features:
            raise ValueError(
                f"{version.tag} has no feature spec in its config (config['features'] with "
                "numeric_features, categorical_features, target): it cannot be served; "
                "register it again from the lifecycle's registered_model asset"
            )
        store = self._store()
        with contextlib.suppress(NotFound):
            existing = bentoml.models.get(tag, _model_store=store)
            stored_sha = str(existing.info.metadata.get("artifact_sha256"))
            if stored_sha != version.artifact_sha256:
                raise ValueError(
                    f"the BentoML store {self._store_path()} already holds {tag} built "
                    f"from an artifact with sha256 {stored_sha}, but {version.tag} has "
                    f"{version.artifact_sha256}: two registries share one store? delete it "
                    f"with `BENTOML_HOME={self._home} bentoml models delete {tag}`"
                )
            return self._served(existing)
        with tempfile.TemporaryDirectory(prefix="mlx-package-") as tmp:
            if registry is not None:
                artifact = registry.download_artifact(version, tmp)
            else:
                artifact = Path(version.artifact_path)
                if not artifact.exists():
                    raise FileNotFoundError(
                        f"the artifact of {version.tag} is gone: {artifact}; pass the registry "
                        "to package() to fetch it, or register the model again"
                    )
            from mlx_plugins.ml_platforms.local_torch import sha256_file

            digest = sha256_file(artifact)
            if digest != version.artifact_sha256:
                raise ValueError(
                    f"the artifact of {version.tag} ({artifact}) has sha256 {digest}, not the "
                    f"registered {version.artifact_sha256}: it was changed after registration"
                )
            preprocessing = _read_preprocessing(artifact)
            schema = request_schema(
                preprocessing,
                task=features.get("task", "binary"),
                classes=tuple(str(c) for c in features.get("classes") or ()),
                unknown_category=self.unknown_category,
                max_batch_rows=self.max_request_rows,
            )
            description = {
                "model": version.model,
                "version": version.version,
                "version_label": f"v{version.version:04d}",
                "package_tag": tag,
                "registered_tag": version.tag,
                "artifact_sha256": version.artifact_sha256,
                "request_schema": schema.model_dump(mode="json"),
                "features": features,
                "metrics": version.metrics,
                "lineage": version.lineage.model_dump(mode="json"),
            }
            with bentoml.models.create(
                tag,
                labels={"mlx.model": version.model, "mlx.version": str(version.version)},
                metadata=_metadata_safe(
                    {
                        **{k: v for k, v in description.items() if k != "request_schema"},
                        "request_schema": description["request_schema"],
                        "registered": {
                            "model": version.model,
                            "version": version.version,
                            "created_at": version.created_at,
                        },
                    }
                ),
                _model_store=store,
            ) as ref:
                shutil.copyfile(artifact, ref.path_of(MODEL_FILE))
                Path(ref.path_of(PACKAGE_FILE)).write_text(json.dumps(description, indent=1))
        return self._served(bentoml.models.get(tag, _model_store=store))

    def _served(self, stored: Any) -> ServedPackage:
        meta = stored.info.metadata
        schema = RequestSchema.model_validate(meta["request_schema"]).model_copy(
            update={
                "unknown_category": self.unknown_category,
                "max_batch_rows": self.max_request_rows,
            }
        )
        return ServedPackage(
            server=self.metadata.name,
            model=str(meta["model"]),
            version=int(meta["version"]),
            package_tag=str(stored.tag),
            store=str(self._home),
            path=str(stored.path),
            artifact_sha256=str(meta["artifact_sha256"]),
            request_schema=schema,
            metrics={k: float(v) for k, v in dict(meta.get("metrics", {})).items()},
            lineage=dict(meta.get("lineage", {})),
        )

    def build_bento(self, package: ServedPackage, *, timeout_s: float = 600.0) -> str:
        """Build a Bento of ``package`` into ``<home>/bentos`` (idempotent) and return its tag,
        ``mlx-<model>:v<NNNN>``: the service with its arguments, the ``mlx_plugins`` sources,
        the Python requirements, and the package as a model of the service (its
        ``BentoModel``; BentoML 1.4 keeps it in the model store, and ``bentoml containerize
        <tag>`` copies it into the image that :meth:`render_manifests` runs).

        Raises
        ------
        ServingError
            ``bentoml build`` failed or took longer than ``timeout_s`` seconds; the message has
            the end of its output.
        """
        import yaml

        import mlx_plugins

        name = "mlx-" + re.sub(r"[^a-z0-9_.-]+", "-", package.model.lower())
        tag = f"{name}:{package.version_label}"
        if (self._home / "bentos" / name / package.version_label / "bento.yaml").exists():
            return tag
        root = Path(next(iter(mlx_plugins.__path__))).resolve().parent
        bentofile = {
            "service": SERVICE,
            "include": ["mlx_plugins/**/*.py"],
            "labels": {"mlx.model": package.model, "mlx.version": package.version_label},
            "python": {"packages": list(BENTO_REQUIREMENTS)},
        }
        with tempfile.TemporaryDirectory(prefix="mlx-bento-") as tmp:
            spec = Path(tmp) / "bentofile.yaml"
            spec.write_text(yaml.safe_dump(bentofile))
            command = [
                sys.executable, "-m", "bentoml", "build", str(root), "-f", str(spec),
                "--name", name, "--version", package.version_label,
                *self.service_args(package),
            ]  # fmt: skip
            env = self._server_env(self._home)
            try:
                done = subprocess.run(
                    command, env=env, capture_output=True, text=True, timeout=timeout_s
                )
            except subprocess.TimeoutExpired:
                raise ServingError(
                    f"bentoml build of {tag} took longer than {timeout_s:g} s"
                ) from None
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            raise ServingError(f"bentoml build of {tag} failed ({done.returncode}):\n{tail}")
        return tag

    # -- local servers --------------------------------------------------------------------------
    def service_args(self, package: ServedPackage, workers: int | None = None) -> list[str]:
        """The ``--arg KEY=VALUE`` options of ``bentoml serve`` for ``package``."""
        args = {
            "model": package.package_tag,
            "workers": workers or self.workers,
            "max_batch_rows": self.batch_rows,
            "max_latency_ms": self.max_latency_ms,
            "torch_threads": self.torch_threads,
            "timeout_s": self.request_timeout_s,
            "unknown_category": self.unknown_category,
            "max_request_rows": self.max_request_rows,
            "max_inflight": self.max_inflight,
        }
        out: list[str] = []
        for key, value in args.items():
            if value is None:
                continue
            out += ["--arg", f"{key}={value}"]
        return out

    def start(
        self,
        package: ServedPackage,
        *,
        port: int | None = None,
        workers: int | None = None,
        host: str = "127.0.0.1",
    ) -> ServerHandle:
        """See :meth:`ModelServer.start`. The server's output goes to
        ``<home>/logs/<model>-v<NNNN>-<port>.log``. A port picked here that another process
        takes first is retried on another (up to 3 times)."""
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        if package.server != self.metadata.name:
            raise ValueError(
                f"{package.package_tag} was packaged by {package.server!r}, not bentoml"
            )
        attempts = 1 if port is not None else 3
        last: ServingError | None = None
        for _ in range(attempts):
            try:
                return self._start_once(package, port or free_port(host), workers, host)
            except _PortTaken as exc:
                last = ServingError(str(exc))
        assert last is not None
        raise last

    def _start_once(
        self, package: ServedPackage, port: int, workers: int | None, host: str
    ) -> ServerHandle:
        from mlx_plugins.kernel.process_identity import identity

        if not port_is_free(host, port):
            raise _PortTaken(
                f"port {port} on {host} is in use by another process; pass another port, or "
                "none to pick a free one"
            )
        n = workers or self.workers
        logs = self._home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{package.model}-{package.version_label}-{port}.log"
        command = [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            SERVICE,
            "--host",
            host,
            "--port",
            str(port),
            *self.service_args(package, n),
        ]
        # One BENTOML_HOME per server, its models folder the shared store: bentoml serve
        # empties <home>/prometheus_multiproc_dir at start, so servers sharing a home would
        # wipe and mix each other's metrics.
        server_home = self._home / "servers" / f"{package.model}-{package.version_label}-{port}"
        shutil.rmtree(server_home, ignore_errors=True)
        server_home.mkdir(parents=True)
        (server_home / "models").symlink_to(self._store_path(), target_is_directory=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._server_env(server_home),
                cwd=str(server_home),
                start_new_session=True,  # its own process group: stop() ends every worker
            )
        handle = ServerHandle(
            model=package.model,
            version=package.version,
            package_tag=package.package_tag,
            host=host,
            port=port,
            pid=proc.pid,
            process=identity(proc.pid).encode(),
            workers=n,
            started_at=time.time(),
        )
        deadline = time.monotonic() + self.ready_timeout_s
        try:
            while True:
                code = proc.poll()
                if code is not None:
                    tail = _tail(log_path)
                    if any(s in tail.lower() for s in _PORT_IN_USE):
                        raise _PortTaken(f"port {port} on {host} is taken:\n{tail}")
                    raise ServingError(
                        f"bentoml serve for {package.package_tag} exited with code {code} "
                        f"before it was ready; the end of its log ({log_path}):\n{tail}"
                    )
                status, _ = http_get(f"{handle.url}/readyz", timeout_s=1.0)
                if status == 200:
                    return handle
                if time.monotonic() > deadline:
                    raise ServingError(
                        f"bentoml serve for {package.package_tag} on {handle.url} was not ready "
                        f"within {self.ready_timeout_s:g} s (ready_timeout_s); it was stopped. "
                        f"The end of its log ({log_path}):\n{_tail(log_path)}"
                    )
                time.sleep(0.2)
        except BaseException:
            stop_process_group(proc.pid, timeout_s=5.0)
            raise

    def _server_env(self, server_home: Path) -> dict[str, str]:
        import mlx_plugins

        root = str(Path(next(iter(mlx_plugins.__path__))).resolve().parent)
        env = dict(os.environ)
        env.update(
            {
                "BENTOML_HOME": str(server_home),
                "BENTOML_DO_NOT_TRACK": "True",
                "PYTHONPATH": os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p),
                "OMP_NUM_THREADS": str(self.torch_threads),
            }
        )
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # BentoML sets its own per server
        env.pop(PARENT_ENV, None)  # never tied to an ancestor's life by inheritance
        if self.die_with_caller:  # the service calls die_with_parent() on it
            env.update(parent_env())
        return env

    # -- Kubernetes -----------------------------------------------------------------------------
    def render_manifests(
        self,
        package: ServedPackage,
        *,
        image: str,
        replicas: int = 1,
        namespace: str = "default",
        port: int = 3000,
    ) -> list[dict[str, Any]]:
        """See :meth:`ModelServer.render_manifests`. The container runs the same ``bentoml
        serve`` command as :meth:`start`, with ``BENTOML_HOME=/home/bentoml`` (where
        ``bentoml containerize`` puts the Bento's models); CPU and memory requests scale with
        the worker count (0.5 CPU and 512 MiB per worker)."""
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, not {replicas}")
        if not _DNS_LABEL.match(namespace) or len(namespace) > 63:
            raise ValueError(f"namespace {namespace!r} is not a valid Kubernetes name")
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is outside 1..65535")
        if not image or any(c.isspace() for c in image):
            raise ValueError(f"image {image!r} is not a container image reference")
        name = kubernetes_name(package)
        labels = {
            "app.kubernetes.io/name": "mlx-model",
            "app.kubernetes.io/instance": name,
            "app.kubernetes.io/managed-by": "mlx",
            "mlx.model": _label_value(package.model),
            "mlx.version": package.version_label,
        }
        selector = {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}
        command = [
            "bentoml",
            "serve",
            SERVICE,
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            *self.service_args(package),
        ]
        probe = {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5}
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": selector},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
                },
                "template": {
                    "metadata": {
                        "labels": labels,
                        "annotations": {
                            "prometheus.io/scrape": "true",
                            "prometheus.io/port": str(port),
                            "prometheus.io/path": "/metrics",
                        },
                    },
                    "spec": {
                        "containers": [
                            {
                                "name": "server",
                                "image": image,
                                "command": command,
                                "ports": [
                                    {"name": "http", "containerPort": port, "protocol": "TCP"}
                                ],
                                "env": [
                                    {"name": "BENTOML_HOME", "value": "/home/bentoml"},
                                    {"name": "BENTOML_DO_NOT_TRACK", "value": "True"},
                                    {"name": "OMP_NUM_THREADS", "value": str(self.torch_threads)},
                                ],
                                "resources": {
                                    "requests": {
                                        "cpu": f"{500 * self.workers}m",
                                        "memory": f"{512 * self.workers}Mi",
                                    },
                                    "limits": {"memory": f"{1024 * self.workers}Mi"},
                                },
                                "startupProbe": {
                                    **probe,
                                    "failureThreshold": max(1, int(self.ready_timeout_s // 5)),
                                },
                                "readinessProbe": probe,
                                "livenessProbe": {
                                    "httpGet": {"path": "/healthz", "port": "http"},
                                    "periodSeconds": 10,
                                    "failureThreshold": 3,
                                },
                            }
                        ],
                        "terminationGracePeriodSeconds": 30,
                    },
                },
            },
        }
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "type": "ClusterIP",
                "selector": selector,
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
            },
        }
        return [deployment, service]


def kubernetes_name(package: ServedPackage) -> str:
    """The Deployment/Service name of a package: ``<model>-v<NNNN>`` as a DNS label."""
    base = re.sub(r"[^a-z0-9-]+", "-", package.model.lower()).strip("-") or "model"
    suffix = f"-{package.version_label}"
    return base[: 63 - len(suffix)].rstrip("-") + suffix


def _label_value(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63].strip("-_.")
    return value or "model"


def _read_preprocessing(artifact: Path) -> dict[str, Any]:
    """The preprocessing recorded in a ``local_torch`` artifact (``model.pt``).

    Raises
    ------
    ValueError
        The file is not a ``local_torch`` model (no preprocessing in it).
    """
    import torch

    try:
        payload = torch.load(artifact, map_location="cpu", weights_only=True)
        pre = payload["preprocessing"]
        return dict(json.loads(pre) if isinstance(pre, str) else pre)
    except (KeyError, TypeError, RuntimeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{artifact} is not a local_torch model artifact (weights, architecture and "
            f"preprocessing): {type(exc).__name__}: {exc}"
        ) from None


class _PortTaken(ServingError):
    """The picked port was taken before the server bound it."""

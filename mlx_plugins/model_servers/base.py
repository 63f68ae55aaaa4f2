"""The ``model_server`` kind (at most one per platform): package registered versions, serve them.

A model server plugin turns a registered :class:`~mlx_plugins.model_registries.base.ModelVersion`
into a :class:`ServedPackage` (the weights, preprocessing, request schema, lineage and metrics
in the server's own model store), starts real HTTP servers for a package on this machine
(:class:`ServerHandle`), and renders the Kubernetes manifests that serve it in production.

Every server a plugin starts speaks the same HTTP contract, which routers and rollouts rely on:

``POST /predict``
    JSON ``{"rows": [{feature: value, ...}, ...]}`` (at most ``schema.max_batch_rows`` rows).
    200: ``{"model": str, "version": "v0003", "predictions": [...]}``, one entry per row in
    order: a float probability of the positive class (``binary``), ``{"label": str,
    "probabilities": {class: float}}`` (``multiclass``) or a float value (``regression``).
    422: a bad row (the body names the row, the field and the problem); 413: too many rows;
    503: the server sheds load (queue full or ``max_latency_ms`` cannot be met) - a retry
    elsewhere may succeed, it is not a model error.
``GET /healthz``
    200 while the process serves HTTP (liveness).
``GET /readyz``
    200 once the model is loaded and a warm-up prediction succeeded, 503 before (readiness).
``GET /metrics``
    Prometheus text; the metric names are in ``docs/serving.md`` (request counts by status and
    a latency histogram, labelled with ``model`` and ``version``).

Servers started here listen on loopback unless told otherwise, and outlive the process that
started them (an asset starts a server that the next rollout step stops): a handle is plain
data and :meth:`ServerHandle.stop` works from any process on the same host.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from abc import abstractmethod
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from mlx_plugins.kernel.base import HealthStatus, MLXPlugin
from mlx_plugins.model_servers.schema import (
    RequestSchema,
    Task,
    UnknownCategory,
    example_row,
)

if TYPE_CHECKING:
    from mlx_plugins.model_registries.base import ModelRegistry, ModelVersion

__all__ = [
    "ModelServer",
    "RequestSchema",
    "ServedPackage",
    "ServerHandle",
    "ServingError",
    "Task",
    "UnknownCategory",
    "curl_example",
    "descendants",
    "example_row",
    "http_get",
    "serve_version",
    "stop_process_group",
]


class ServingError(RuntimeError):
    """A server could not be started, did not become ready in time, or a package could not be
    built; the message names the version, the port or file, and what to do."""


class ServedPackage(BaseModel):
    """A registered model version packaged for serving (the output of
    :meth:`ModelServer.package`); plain data, safe to store as an asset value."""

    model_config = ConfigDict(frozen=True)

    server: str
    """The ``model_server`` plugin that built it (``bentoml``)."""
    model: str
    """Registered model name, e.g. ``flight_delay``."""
    version: int
    """Registered version number (1-based)."""
    package_tag: str
    """The package's tag in the server's store, e.g. ``flight_delay:v0003`` (a BentoML model
    tag for ``bentoml``)."""
    store: str
    """Folder of the server's model store (``BENTOML_HOME`` for ``bentoml``)."""
    path: str
    """Folder of this package inside the store."""
    artifact_sha256: str
    """sha256 of the registered artifact the package was built from."""
    request_schema: RequestSchema
    metrics: dict[str, float] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)

    @property
    def version_label(self) -> str:
        """``v0003``: the ``version`` label of this package's Prometheus metrics."""
        return f"v{self.version:04d}"


class ServerHandle(BaseModel):
    """A running server, started by :meth:`ModelServer.start`; plain data (JSON-able), so that
    a later run or another process can check and stop it.

    ``pid`` leads the server's own process group (the server and all its workers);
    ``process`` is its identity (``pid:start:host:boot``), so :meth:`stop` never signals an
    unrelated process that reused the pid.
    """

    model_config = ConfigDict(frozen=True)

    model: str
    version: int
    package_tag: str
    host: str
    port: int = Field(ge=1, le=65535)
    pid: int
    process: str
    workers: int = Field(ge=1)
    started_at: float
    """Unix time (s) the server was started."""

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:38211`` (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def version_label(self) -> str:
        return f"v{self.version:04d}"

    def alive(self) -> bool:
        """Whether the server's main process still runs (False when it exited or the pid now
        belongs to another process; True when this host cannot tell)."""
        from mlx_plugins.kernel.process_identity import ProcessIdentity, is_alive

        return is_alive(ProcessIdentity.decode(self.process)) is not False

    def health(self, timeout_s: float = 2.0) -> HealthStatus:
        """Probe ``/healthz`` and ``/readyz``: healthy when both answer 200 within
        ``timeout_s`` seconds each; ``detail`` says which failed and how. Never raises."""
        start = time.perf_counter()
        problems = []
        for path in ("/healthz", "/readyz"):
            status, body = http_get(self.url + path, timeout_s)
            if status != 200:
                problems.append(f"{path}: {status or 'no answer'} {body[:200]}".strip())
        return HealthStatus(
            healthy=not problems,
            detail="; ".join(problems) or f"{self.model} {self.version_label} ready at {self.url}",
            latency_ms=(time.perf_counter() - start) * 1000,
        )

    def metrics_text(self, timeout_s: float = 2.0) -> str:
        """The server's ``/metrics`` (Prometheus text format).

        Raises
        ------
        ServingError
            The server did not answer 200.
        """
        status, body = http_get(self.url + "/metrics", timeout_s)
        if status != 200:
            raise ServingError(f"{self.url}/metrics answered {status or 'nothing'}: {body[:200]}")
        return body

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop the server and every worker: SIGTERM to its process group, SIGKILL after
        ``timeout_s`` seconds. Idempotent; returns True when it was running.

        Works from any process on the host that started it; does nothing (False) when the
        process is gone or the pid belongs to another process now.
        """
        if not self.alive():
            return False
        return stop_process_group(self.pid, timeout_s)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children...), from ``/proc`` on Linux;
    ``[]`` elsewhere. BentoML's supervisor puts its workers in process groups of their own, so
    signalling the server's group alone would leave them behind."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop_process_group(pid: int, timeout_s: float = 10.0) -> bool:
    """SIGTERM the process group led by ``pid`` (and every descendant, whatever its group),
    wait up to ``timeout_s`` seconds for them to exit, then SIGKILL what is left. True when
    something was signalled."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return False
    if pgid != pid:  # not a group leader: never signal the group we might be part of
        pgid = 0
    below = descendants(pid)
    _signal(pid, pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _reaped(pid) and not any(_running(p) for p in below):
            break
        time.sleep(0.05)
    _signal(pid, pgid, signal.SIGKILL)  # workers that ignored SIGTERM, or a stuck leader
    for p in below:
        if _running(p):
            _signal(p, 0, signal.SIGKILL)
    _reaped(pid)
    return True


def _running(pid: int) -> bool:
    from mlx_plugins.kernel.process_identity import pid_running

    return pid_running(pid)


def _signal(pid: int, pgid: int, sig: int) -> None:
    try:
        if pgid:
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reaped(pid: int) -> bool:
    """True when ``pid`` is gone (reaping it if it is our child)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return True
    except ChildProcessError:  # not our child: look at it instead
        pass
    from mlx_plugins.kernel.process_identity import pid_running

    return not pid_running(pid)


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, str]:
    """``(status, body)`` of a GET; ``(0, reason)`` when nothing answered. Never raises."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except (OSError, ValueError) as exc:
        return 0, f"{type(exc).__name__}: {exc}"


class ModelServer(MLXPlugin):
    """Packages registered model versions and serves them over HTTP. Resource key
    ``model_server``; at most one per platform."""

    @abstractmethod
    def package(
        self, version: ModelVersion, registry: ModelRegistry | None = None
    ) -> ServedPackage:
        """Package a registered version for serving (idempotent: packaging the same version
        again returns the existing package).

        Parameters
        ----------
        version
            The registered version; its ``config["features"]`` (the training spec: numeric
            and categorical features, target, optional ``task`` and ``classes``) gives the
            request schema, its artifact the weights and preprocessing.
        registry
            The registry it came from, used to fetch the artifact
            (:meth:`ModelRegistry.download_artifact`); None reads ``version.artifact_path``
            as a local file.

        Returns
        -------
        ServedPackage

        Raises
        ------
        FileNotFoundError
            The artifact is gone.
        ValueError
            The artifact's sha256 differs from the registered one, or the version's config has
            no feature spec; the message names the version and the fix.
        """

    @abstractmethod
    def start(
        self,
        package: ServedPackage,
        *,
        port: int | None = None,
        workers: int | None = None,
        host: str = "127.0.0.1",
    ) -> ServerHandle:
        """Start a server for ``package`` and wait until ``/readyz`` answers 200.

        Parameters
        ----------
        package
            What :meth:`package` returned.
        port
            TCP port; None picks a free one.
        workers
            Worker processes; None uses the plugin's configured count.
        host
            Interface to listen on (loopback by default).

        Returns
        -------
        ServerHandle
            The ready server; it runs until :meth:`stop` (it is not tied to this process).

        Raises
        ------
        ServingError
            The server exited or was not ready within the plugin's ready timeout; the message
            has the tail of its log. Nothing is left running then.
        """

    def stop(self, handle: ServerHandle, timeout_s: float = 10.0) -> bool:
        """Stop a server (see :meth:`ServerHandle.stop`)."""
        return handle.stop(timeout_s)

    @abstractmethod
    def render_manifests(
        self,
        package: ServedPackage,
        *,
        image: str,
        replicas: int = 1,
        namespace: str = "default",
        port: int = 3000,
    ) -> list[dict[str, Any]]:
        """Kubernetes manifests serving ``package``: an ``apps/v1`` Deployment (probes on
        ``/healthz`` and ``/readyz``, Prometheus scrape annotations) and a ``v1`` Service.

        Parameters
        ----------
        image
            Container image holding the platform and the package (e.g. a ``bentoml
            containerize`` image).
        replicas
            Pod count (>= 1).
        namespace
            Kubernetes namespace.
        port
            Container port the server listens on.

        Returns
        -------
        list[dict]
            Manifests as dicts (``yaml.safe_dump_all`` them), valid for Kubernetes 1.30.

        Raises
        ------
        ValueError
            A value Kubernetes would refuse (replicas < 1, a bad name); names the field.
        """


def serve_version(
    server: ModelServer,
    registry: ModelRegistry,
    version: ModelVersion,
    *,
    port: int | None = None,
    workers: int | None = None,
) -> tuple[ServedPackage, ServerHandle]:
    """Package ``version`` with ``server`` and start it on loopback: what an asset calls.

    Returns the package and the ready server's handle. Raises what :meth:`ModelServer.package`
    and :meth:`ModelServer.start` raise.
    """
    package = server.package(version, registry)
    return package, server.start(package, port=port, workers=workers)


def curl_example(handle: ServerHandle, schema: RequestSchema) -> str:
    """A ``curl`` command that predicts one example row on the server (for a console summary)."""
    body = json.dumps({"rows": [example_row(schema)]}, separators=(",", ":"))
    return f"curl -s -X POST {handle.url}/predict -H 'content-type: application/json' -d '{body}'"

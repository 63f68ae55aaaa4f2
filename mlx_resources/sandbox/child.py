"""The child side of a sandboxed plugin call: ``python -m mlx_resources.sandbox.child``.

Started by :func:`mlx_resources.sandbox.runner.run_call` with the Dagster Pipes bootstrap
variables. It sets its rlimits, cuts its network when asked, forwards its log records to the
run through Pipes, joins the caller's trace (``TRACEPARENT``), runs the call and leaves the
result (or the exception) pickled in its working directory (written to a temporary name, then
renamed: the parent never reads half a file).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import signal
import socket
import sys
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


class CpuLimitExceeded(BaseException):
    """SIGXCPU: the soft CPU limit was reached (the hard limit, one second later, kills)."""


class SandboxNetworkError(PermissionError):
    """A network connection attempted in a sandbox with ``network: false``."""


def set_limits(limits: dict[str, Any]) -> None:
    """Apply the rlimits of a :class:`~mlx_plugins.kernel.sandbox.SandboxSpec` dump."""

    def cap(kind: int, soft: int, hard: int | None = None) -> None:
        _, old_hard = resource.getrlimit(kind)
        hard = soft if hard is None else hard
        if old_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, old_hard), min(hard, old_hard)
        resource.setrlimit(kind, (soft, hard))

    if limits.get("memory_mb"):
        cap(resource.RLIMIT_AS, int(limits["memory_mb"]) * MIB)
        _watch_native_loads()
    if limits.get("cpu_seconds"):

        def on_xcpu(signum: int, frame: Any) -> None:
            raise CpuLimitExceeded()

        signal.signal(signal.SIGXCPU, on_xcpu)
        cap(resource.RLIMIT_CPU, int(limits["cpu_seconds"]), int(limits["cpu_seconds"]) + 2)
    if limits.get("open_files"):
        cap(resource.RLIMIT_NOFILE, int(limits["open_files"]))
    if limits.get("file_size_mb"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails with EFBIG
        cap(resource.RLIMIT_FSIZE, int(limits["file_size_mb"]) * MIB)


def block_network(plugin: str, key: str, subject: str | None = None) -> None:
    """Make every internet socket (IPv4/IPv6) fail at creation with a clear error naming the
    plugin (or ``subject``, e.g. ``features.function '...'``) and the config key. Unix sockets
    stay allowed (local IPC)."""
    original = socket.socket
    message = (
        f"network is disabled in the sandbox of {subject or f'plugin {plugin!r}'} "
        f"({key}.network: false); "
        f"fix: set {key}.network: true in the composition (mlx.yaml) if it needs the network"
    )

    class NoNetworkSocket(original):  # type: ignore[misc, valid-type]
        def __init__(
            self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None
        ) -> None:
            fam = socket.AF_INET if family == -1 else family
            if fileno is None and fam in (socket.AF_INET, socket.AF_INET6):
                raise SandboxNetworkError(errno.EACCES, message)
            super().__init__(family, type, proto, fileno)

    def no_dns(*args: Any, **kwargs: Any) -> Any:
        raise SandboxNetworkError(errno.EACCES, message)

    socket.socket = NoNetworkSocket  # type: ignore[misc]
    socket.getaddrinfo = no_dns  # type: ignore[assignment]


class _PipesHandler(logging.Handler):
    def __init__(self, pipes: Any) -> None:
        super().__init__(logging.INFO)
        self.pipes = pipes

    def emit(self, record: logging.LogRecord) -> None:
        from mlx_plugins.kernel.secrets import redact

        try:
            text = redact(self.format(record))
            level = record.levelname.lower()
            getattr(self.pipes.log, level if level in ("warning", "error", "critical") else "info")(
                text
            )
        except Exception:
            self.handleError(record)


NATIVE_LOAD_FAILURES: list[str] = []
"""Messages of native extension modules that failed to load for want of address space; some
libraries swallow that ImportError (polars warns "binary is missing" and fails later with a
NameError), so it is recorded here and makes any failure of the call a ``memory_mb`` hit."""


def _watch_native_loads() -> None:
    import importlib.machinery

    loader = importlib.machinery.ExtensionFileLoader
    create = loader.create_module

    def create_module(self: Any, spec: Any) -> Any:
        try:
            return create(self, spec)
        except ImportError as exc:
            text = str(exc)
            if "failed to map segment" in text or "Cannot allocate memory" in text:
                NATIVE_LOAD_FAILURES.append(f"{spec.name}: {text}")
            raise

    loader.create_module = create_module  # type: ignore[method-assign]


def _limit_of(exc: BaseException, limits: dict[str, Any]) -> str | None:
    """The limit ``exc`` shows was hit, if any."""
    if NATIVE_LOAD_FAILURES and limits.get("memory_mb"):
        return "memory_mb"
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, CpuLimitExceeded):
            return "cpu_seconds"
        if isinstance(exc, MemoryError) and limits.get("memory_mb"):
            return "memory_mb"
        if isinstance(exc, OSError):
            if exc.errno in (errno.EMFILE, errno.ENFILE) and limits.get("open_files"):
                return "open_files"
            if exc.errno == errno.EFBIG and limits.get("file_size_mb"):
                return "file_size_mb"
            if exc.errno == errno.ENOMEM and limits.get("memory_mb"):
                return "memory_mb"
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def die_with_parent() -> None:
    """``PR_SET_PDEATHSIG``: the kernel kills this child when the process that started it
    dies (a kill -9 of the run must not leave a sandboxed call running); exit at once if that
    process is already gone."""
    parent = int(os.environ.get("MLX_SANDBOX_PARENT", "0") or 0)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if parent and os.getppid() != parent:
        os._exit(70)


def main() -> int:
    die_with_parent()
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        job = pipes.extras["mlx_sandbox"]
        workdir = Path(job["workdir"])
        if job["network"] != "on":
            block_network(job["plugin"], job["key"], job.get("subject"))
        root = logging.getLogger()
        root.addHandler(_PipesHandler(pipes))
        root.setLevel(logging.INFO)
        set_limits(job["limits"])
        if job.get("function"):
            return _call_function(pipes, job, workdir)
        return _call(pipes, job, workdir)


def _call(pipes: Any, job: dict[str, Any], workdir: Path) -> int:
    import cloudpickle

    from mlx_plugins.kernel import telemetry
    from mlx_plugins.kernel.base import parse_env_value
    from mlx_plugins.kernel.secrets import register_secret

    status: dict[str, Any] = {"mlx_sandbox": True, "network": job["network"]}
    try:
        cls, config, method, args, kwargs = cloudpickle.loads((workdir / "call.pkl").read_bytes())
        for field, var in job["env_fields"].items():
            text = os.environ[var]
            register_secret(text)
            config[field] = parse_env_value(cls.model_fields[field].annotation, text)
        telemetry.configure(force=True)
        token = telemetry.attach_parent_from_env()
        try:
            with telemetry.tracer().start_as_current_span(f"sandbox.{job['plugin']}.{method}"):
                status["trace_id"] = telemetry.current_trace_id() or ""
                plugin = cls(**config)
                plugin.open()
                try:
                    result = getattr(plugin, method)(*args, **kwargs)
                finally:
                    plugin.close()
        finally:
            if token is not None:
                telemetry.detach(token)
            telemetry.shutdown()
        _write(workdir / "result.pkl", cloudpickle.dumps(result))
        return 0
    except BaseException as exc:
        return _failed(exc, job, workdir, status)
    finally:
        pipes.report_custom_message(status)


def _failed(exc: BaseException, job: dict[str, Any], workdir: Path, status: dict[str, Any]) -> int:
    """Record why the call failed: the limit in ``status``, else the exception pickled to
    ``error.pkl`` and its redacted traceback on stderr. Returns the exit code (1)."""
    import cloudpickle

    limit = _limit_of(exc, job["limits"])
    if limit:
        status["limit"] = limit
    else:
        with contextlib.suppress(Exception):  # an unpicklable exception: stderr tells
            _write(workdir / "error.pkl", cloudpickle.dumps(exc))
        import traceback

        from mlx_plugins.kernel.secrets import redact

        sys.stderr.write(redact(traceback.format_exc()))
    return 1


def _call_function(pipes: Any, job: dict[str, Any], workdir: Path) -> int:
    """``module:function`` of ``job`` called with its Arrow IPC inputs (one polars frame per
    table, by name); its frame written to ``job["output"]`` (temporary name, then renamed)."""
    import importlib

    import polars as pl

    from mlx_plugins.kernel import telemetry

    status: dict[str, Any] = {"mlx_sandbox": True, "network": job["network"]}
    try:
        module, _, attr = job["function"].partition(":")
        fn = getattr(importlib.import_module(module), attr)
        tables = {name: pl.read_ipc(workdir / file) for name, file in job["inputs"].items()}
        telemetry.configure(force=True)
        token = telemetry.attach_parent_from_env()
        try:
            with telemetry.tracer().start_as_current_span(f"sandbox.function.{job['function']}"):
                status["trace_id"] = telemetry.current_trace_id() or ""
                out = fn(**tables)
        finally:
            if token is not None:
                telemetry.detach(token)
            telemetry.shutdown()
        if not isinstance(out, pl.DataFrame):
            raise TypeError(
                f"features.function {job['function']!r} returned {type(out).__name__}, not a "
                "polars DataFrame; fix: return a polars DataFrame"
            )
        tmp = workdir / f"{job['output']}.tmp"
        out.write_ipc(tmp)
        os.replace(tmp, workdir / job["output"])
        return 0
    except BaseException as exc:
        return _failed(exc, job, workdir, status)
    finally:
        pipes.report_custom_message(status)


if __name__ == "__main__":
    sys.exit(main())

"""The parent side of a sandboxed plugin call: a Dagster Pipes session around a child process
with rlimits, a scrubbed environment, a private working directory and optionally no network."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlx_plugins.kernel.sandbox import SANDBOX_FIELD, SandboxPlan, SandboxSpec
from mlx_plugins.kernel.secrets import redact

ALLOWED_ENV = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "PYTHONPATH",
    "PYTHONHASHSEED",
    "PYTHONUNBUFFERED",
    "VIRTUAL_ENV",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
)
"""Variables a sandboxed child sees when the parent has them (besides the spec's ``env``, the
secrets the plugin's config reads, the Pipes bootstrap and ``TRACEPARENT``). ``HOME`` and
``TMPDIR`` are the child's private working directory."""

OTLP_ENV = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
)
"""Passed on only when the child has network (it exports its spans itself)."""

LIMIT_HINTS = {
    "memory_mb": "the child ran out of address space (RLIMIT_AS)",
    "cpu_seconds": "the child used all its CPU seconds (RLIMIT_CPU)",
    "open_files": "the child opened too many files (RLIMIT_NOFILE)",
    "file_size_mb": "the child wrote a file larger than allowed (RLIMIT_FSIZE)",
    "wall_seconds": "the child ran longer than allowed and was killed",
}


class SandboxError(RuntimeError):
    """A sandboxed call failed in a way that is not the plugin's own exception (the child
    crashed, or its arguments or result could not cross the process boundary)."""


class SandboxLimitError(SandboxError):
    """A sandboxed call hit one of its limits.

    Attributes: ``plugin`` (name), ``limit`` (the ``SandboxSpec`` field, e.g. ``memory_mb``),
    ``value`` (its configured value), ``key`` (where to raise it, e.g.
    ``plugins.data_source[0].sandbox.memory_mb``).
    """

    retryable = False

    def __init__(
        self,
        plugin: str,
        method: str,
        limit: str,
        value: Any,
        key: str,
        *,
        subject: str | None = None,
        where: str = "the composition (mlx.yaml)",
    ) -> None:
        self.plugin, self.limit, self.value, self.key = plugin, limit, value, key
        super().__init__(
            f"{subject or f'plugin {plugin!r}'} hit its sandbox limit {limit}={value} in "
            f"{method}(): {LIMIT_HINTS.get(limit, 'limit exceeded')}; fix: raise {key} in "
            f"{where}, or remove the limit"
        )


_MEMORY_SIGNS = re.compile(
    r"MemoryError|failed to map segment from shared object|Cannot allocate memory"
    r"|memory allocation of \d+ bytes failed|Unable to allocate|std::bad_alloc|[Oo]ut of memory",
    re.MULTILINE,
)
"""What a child's stderr shows when its address space (``memory_mb``) was too small, even to
start (a ``MemoryError`` while importing, a native library that cannot be mapped).
``MemoryError`` is matched inside words: an interpreter out of memory may print it with no
newline, run together with the next message ("MemoryErrorException ignored in
sys.unraisablehook"), and numpy names its own ``_ArrayMemoryError`` ("Unable to allocate ...")."""


@functools.cache
def netns_available() -> bool:
    """Whether ``unshare -n`` can make a network namespace here (root or user namespaces)."""
    exe = shutil.which("unshare")
    if exe is None or not sys.platform.startswith("linux"):
        return False
    try:
        done = subprocess.run([exe, "-n", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def network_mode(spec: SandboxSpec) -> str:
    """How the child's network is cut: ``"on"`` (not cut), ``"netns+socket"`` (a new network
    namespace with only a down loopback, and ``socket`` refusing internet sockets with a clear
    error) or ``"socket"`` (where no namespace can be made: ``socket`` alone)."""
    if spec.network:
        return "on"
    return "netns+socket" if netns_available() else "socket"


def _dagster_context(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    import dagster as dg

    kinds = (dg.OpExecutionContext, dg.AssetExecutionContext)
    for value in (*args, *kwargs.values()):
        if isinstance(value, kinds):
            return value
    try:
        return dg.OpExecutionContext.get()
    except Exception:
        return None


def _strip_contexts(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Dagster contexts do not cross into the child (it talks to the run through Pipes)."""
    import dagster as dg

    kinds = (dg.OpExecutionContext, dg.AssetExecutionContext)
    return (
        tuple(None if isinstance(a, kinds) else a for a in args),
        {k: (None if isinstance(v, kinds) else v) for k, v in kwargs.items()},
    )


def child_env(plan: SandboxPlan, workdir: str, extra: dict[str, str]) -> dict[str, str]:
    """The child's whole environment: the allow-list, the spec's ``env``, the variables the
    plugin's config reads, ``HOME``/``TMPDIR`` = ``workdir``, then ``extra``."""
    import mlx_plugins

    names = [*ALLOWED_ENV, *plan.spec.env, *plan.env_vars]
    if plan.spec.network:
        names += OTLP_ENV
    env = {n: os.environ[n] for n in names if n in os.environ}
    root = str(Path(next(iter(mlx_plugins.__path__))).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env["HOME"] = env["TMPDIR"] = workdir
    env.update(extra)
    return env


def run_call(plugin: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run ``plugin.<method>(*args, **kwargs)`` in a sandboxed child and return its result.

    The kernel's :data:`mlx_plugins.kernel.sandbox.CallRunner`. Arguments and the result cross
    the boundary pickled (cloudpickle) through files in a private directory (mode 0700, removed
    afterwards); callbacks in the arguments run in the child. Inside a Dagster run the child's
    log lines (its ``logging`` records at INFO and above) stream into the run through Pipes;
    outside one they go to the ``mlx.sandbox`` logger when the child ends.

    Raises the plugin's own exception (re-raised here with its type), :class:`SandboxLimitError`
    when a limit is hit, :class:`SandboxError` when the child crashes or a value cannot cross.
    """
    import cloudpickle

    plan = SandboxPlan.from_field(plugin.__dict__[SANDBOX_FIELD])
    spec = plan.spec
    meta = type(plugin).metadata
    context = _dagster_context(args, kwargs)
    args, kwargs = _strip_contexts(args, kwargs)
    skip = {SANDBOX_FIELD, "mlx_env", *plan.env_fields}
    config = {
        k: v for k, v in plugin.__dict__.items() if k in type(plugin).model_fields and k not in skip
    }
    workdir = tempfile.mkdtemp(prefix=f"mlx-sandbox-{meta.name}-")
    os.chmod(workdir, 0o700)
    try:
        call_path = Path(workdir) / "call.pkl"
        try:
            payload = cloudpickle.dumps((type(plugin), config, method, args, kwargs))
        except Exception as exc:
            raise SandboxError(
                f"plugin {meta.name!r}: the arguments of {method}() cannot be sent to its "
                f"sandbox ({type(exc).__name__}: {redact(str(exc))}); fix: pass picklable "
                f"values, or remove {plan.key}"
            ) from None
        fd = os.open(call_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        job = {
            "plugin": meta.name,
            "method": method,
            "key": plan.key,
            "limits": spec.model_dump(exclude={"env", "network", "wall_seconds"}),
            "network": network_mode(spec),
            "env_fields": plan.env_fields,
            "workdir": workdir,
        }
        returncode, stderr_tail, messages = launch(job, plan, context)
        return _outcome(plugin, method, plan, workdir, returncode, stderr_tail, messages)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def launch(
    job: dict[str, Any], plan: SandboxPlan, context: Any = None
) -> tuple[int | str, str, list[Any]]:
    """Start ``python -m mlx_resources.sandbox.child`` for ``job`` (its ``workdir`` holds the
    inputs) under ``plan``'s limits, through a Pipes session (``context``: the Dagster context,
    ``None`` outside a run); wait for it (at most ``wall_seconds``).

    Returns ``(exit code or "wall", the redacted end of its stderr, its Pipes custom
    messages)``."""
    from mlx_plugins.kernel import telemetry

    workdir = job["workdir"]
    env = child_env(plan, workdir, telemetry.traceparent_env())
    env["MLX_SANDBOX_PARENT"] = str(os.getpid())  # the child dies with this process
    command = [sys.executable, "-m", "mlx_resources.sandbox.child"]
    if job["network"] == "netns+socket":
        command = [shutil.which("unshare") or "unshare", "-n", "--", *command]
    with _session(context, {"mlx_sandbox": job}) as session:
        env.update(session.bootstrap_env())
        returncode, stderr_tail = _run(command, env, workdir, plan.spec.wall_seconds)
    return returncode, stderr_tail, session.custom_messages()


def status_of(messages: list[Any]) -> dict[str, Any]:
    """The child's status message (``limit``, ``trace_id``, ``network``) among ``messages``;
    records the child's trace id on the current span."""
    from mlx_plugins.kernel import telemetry

    status: dict[str, Any] = {}
    for m in messages:
        if isinstance(m, dict) and m.get("mlx_sandbox"):
            status.update(m)
    if status.get("trace_id"):
        telemetry.trace_api().get_current_span().set_attribute(
            "mlx.sandbox.child_trace_id", status["trace_id"]
        )
    return status


def limit_hit(
    spec: SandboxSpec, returncode: int | str, status: dict[str, Any], stderr_tail: str
) -> str | None:
    """The limit a finished child hit (a ``SandboxSpec`` field name), if any."""
    if returncode == "wall":
        return "wall_seconds"
    if status.get("limit"):
        return str(status["limit"])
    if isinstance(returncode, int) and returncode < 0:
        sig = -returncode
        if sig in (signal.SIGXCPU, signal.SIGKILL) and spec.cpu_seconds is not None:
            return "cpu_seconds"
        if sig == signal.SIGXFSZ and spec.file_size_mb is not None:
            return "file_size_mb"
        # native code (polars, numpy's C side) aborts when an allocation fails under RLIMIT_AS:
        # Rust prints "memory allocation of N bytes failed" before aborting
        if (
            spec.memory_mb is not None
            and sig == signal.SIGABRT
            and "memory allocation of" in stderr_tail
        ):
            return "memory_mb"
    if spec.memory_mb is not None and returncode != 0 and _MEMORY_SIGNS.search(stderr_tail):
        return "memory_mb"
    return None


def _run(
    command: list[str], env: dict[str, str], workdir: str, wall: float | None
) -> tuple[int | str, str]:
    err_path = Path(workdir) / "stderr.txt"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            command, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=err, stderr=err
        )
        try:
            code: int | str = proc.wait(timeout=wall)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = "wall"
        except BaseException:  # interrupted (the run was terminated): never leave it running
            proc.kill()
            proc.wait()
            raise
    text = err_path.read_bytes()[-4000:].decode("utf-8", "replace")
    return code, redact(text)


def _outcome(
    plugin: Any,
    method: str,
    plan: SandboxPlan,
    workdir: str,
    returncode: int | str,
    stderr_tail: str,
    messages: list[Any],
) -> Any:
    import cloudpickle

    name = type(plugin).metadata.name
    spec = plan.spec
    status = status_of(messages)
    limit = limit_hit(spec, returncode, status, stderr_tail)
    if limit is not None:
        raise SandboxLimitError(name, method, limit, getattr(spec, limit), f"{plan.key}.{limit}")
    if isinstance(returncode, int) and returncode < 0:
        sig = -returncode
        if spec.memory_mb is not None and sig in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS):
            raise SandboxError(
                f"plugin {name!r}: its sandboxed child died of signal {sig} in {method}(), "
                f"probably the memory_mb={spec.memory_mb} limit; fix: raise "
                f"{plan.key}.memory_mb. Its stderr ends with:\n{stderr_tail}"
            )
    result_path = Path(workdir) / "result.pkl"
    error_path = Path(workdir) / "error.pkl"
    if returncode == 0 and result_path.exists():
        return cloudpickle.loads(result_path.read_bytes())
    if error_path.exists():
        try:
            exc = cloudpickle.loads(error_path.read_bytes())
        except Exception:
            exc = None
        if isinstance(exc, BaseException):
            raise exc
    raise SandboxError(
        f"plugin {name!r}: its sandboxed child failed in {method}() (exit {returncode}) "
        f"without a result; its stderr ends with:\n{stderr_tail}"
    )


# -- Pipes sessions ------------------------------------------------------------------------------
class _RunSession:
    """A Dagster Pipes session inside a run: the child's log lines go to the run's log."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def bootstrap_env(self) -> dict[str, str]:
        return dict(self.session.get_bootstrap_env_vars())

    def custom_messages(self) -> list[Any]:
        import dagster as dg

        return list(dg.PipesClientCompletedInvocation(self.session).get_custom_messages())


class _LocalSession:
    """Outside a run (scripts, tests, ``mlx health``): the same Pipes files, read here; log
    lines go to the ``mlx.sandbox`` logger once the child ends."""

    def __init__(self, workdir: str, extras: dict[str, Any]) -> None:
        self.context_path = Path(workdir) / "pipes_context.json"
        self.messages_path = Path(workdir) / "pipes_messages.jsonl"
        data = {
            "asset_keys": None,
            "code_version_by_asset_key": None,
            "provenance_by_asset_key": None,
            "partition_key": None,
            "partition_key_range": None,
            "partition_time_window": None,
            "run_id": "local",
            "job_name": None,
            "retry_number": 0,
            "extras": extras,
        }
        self.context_path.write_text(json.dumps(data))
        self.messages: list[dict[str, Any]] = []

    def bootstrap_env(self) -> dict[str, str]:
        from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, DAGSTER_PIPES_MESSAGES_ENV_VAR

        def enc(value: Any) -> str:
            return base64.b64encode(zlib.compress(json.dumps(value).encode())).decode()

        return {
            DAGSTER_PIPES_CONTEXT_ENV_VAR: enc({"path": str(self.context_path)}),
            DAGSTER_PIPES_MESSAGES_ENV_VAR: enc({"path": str(self.messages_path)}),
        }

    def read(self) -> None:
        import logging

        log = logging.getLogger("mlx.sandbox")
        if not self.messages_path.exists():
            return
        for line in self.messages_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                self.messages.append(msg)
                if msg.get("method") == "log":
                    params = msg.get("params") or {}
                    level = getattr(logging, str(params.get("level", "INFO")).upper(), 20)
                    log.log(level, "%s", redact(str(params.get("message", ""))))

    def custom_messages(self) -> list[Any]:
        return [
            (m.get("params") or {}).get("payload")
            for m in self.messages
            if m.get("method") == "report_custom_message"
        ]


def _step_context(context: Any) -> Any:
    """The Dagster step context behind an op/asset context (private Dagster attribute)."""
    op_context = getattr(context, "op_execution_context", context)
    step = getattr(op_context, "_step_execution_context", None)
    return step if hasattr(step, "_requires_typed_event_stream") else None


@contextlib.contextmanager
def _session(context: Any, extras: dict[str, Any]) -> Iterator[Any]:
    if context is not None:
        import dagster as dg

        step = _step_context(context)
        before = (
            (step._requires_typed_event_stream, step._typed_event_stream_error_message)
            if step is not None
            else None
        )
        try:
            with contextlib.ExitStack() as stack:
                with warnings.catch_warnings():
                    # Dagster's own Pipes handler reads its preview `expected_writer_count`
                    # and warns on every session; only the opening is filtered, never the call
                    warnings.filterwarnings(
                        "ignore", message=".*expected_writer_count", category=Warning
                    )
                    session = stack.enter_context(
                        dg.open_pipes_session(
                            context=context,
                            context_injector=dg.PipesTempFileContextInjector(),
                            message_reader=dg.PipesTempFileMessageReader(),
                            extras=extras,
                        )
                    )
                yield _RunSession(session)
        finally:
            # open_pipes_session makes the asset return Pipes results (MaterializeResult);
            # the sandbox reports none, so the asset keeps returning its value as before
            if step is not None and before is not None:
                step._requires_typed_event_stream, step._typed_event_stream_error_message = before
        return
    local = _LocalSession(extras["mlx_sandbox"]["workdir"], extras)
    try:
        yield local
    finally:
        local.read()


def startup_seconds() -> float:
    """Wall time of one no-op child start (interpreter, imports, Pipes), for the benchmark."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import dagster_pipes"], check=True)
    return time.perf_counter() - start

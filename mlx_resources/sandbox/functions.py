"""A user's function (``package.module:function``, polars frames in, a polars frame out) run in
a sandboxed child: the lifecycle's ``features.function`` with ``features.sandbox``.

The same child, limits, scrubbed environment, network cut and Pipes session as a sandboxed
plugin call (:mod:`mlx_resources.sandbox.runner`); the frames cross as Arrow IPC files in the
child's private working directory (mode 0700, removed after the call): one file per input
table, and the output written by the child to a temporary name, then renamed, so a child that
fails or is killed leaves no output to read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlx_plugins.kernel.sandbox import SandboxPlan, SandboxSpec
from mlx_resources.sandbox.runner import (
    SandboxError,
    SandboxLimitError,
    launch,
    limit_hit,
    network_mode,
    status_of,
)

if TYPE_CHECKING:
    import polars as pl

OUTPUT = "out.arrow"
"""The child's output file in its working directory (present only once complete)."""


def run_function(
    target: str,
    tables: dict[str, pl.DataFrame],
    spec: SandboxSpec,
    *,
    key: str = "features.sandbox",
    where: str = "the lifecycle's defs.yaml",
    context: Any = None,
) -> pl.DataFrame:
    """``target(**tables)`` in a sandboxed child process; returns its frame.

    Args:
        target: ``package.module:function``, importable in the child (the repository root is
            on its ``PYTHONPATH``); called with one polars DataFrame per table, by name, it
            returns a polars DataFrame.
        tables: table name -> frame (any schema Arrow IPC can hold).
        spec: the limits (:class:`~mlx_plugins.kernel.sandbox.SandboxSpec`: ``memory_mb``,
            ``cpu_seconds``, ``open_files``, ``file_size_mb`` (the output file counts),
            ``wall_seconds``, ``network``, ``env``).
        key: where the limits are written (``features.sandbox``), named in errors.
        where: the file that holds ``key`` (e.g. ``mlx_assets/defs/flight_delay/defs.yaml``).
        context: the Dagster asset context (the child's log records go to the step's log), or
            ``None`` outside a run.

    Raises:
        SandboxLimitError: a limit was hit; names the limit, its value, ``key`` and ``where``.
        SandboxError: the child crashed, or returned something that is not a polars DataFrame.
        Exception: the function's own exception, with its type.
    """
    import polars as pl

    module, _, function = target.partition(":")
    workdir = tempfile.mkdtemp(prefix="mlx-sandbox-function-")
    os.chmod(workdir, 0o700)
    try:
        inputs: dict[str, str] = {}
        for i, (name, frame) in enumerate(tables.items()):
            inputs[name] = f"in_{i}.arrow"
            frame.write_ipc(Path(workdir) / inputs[name])
        job = {
            "plugin": target,
            "subject": f"features.function {target!r}",
            "function": target,
            "method": function,
            "inputs": inputs,
            "output": OUTPUT,
            "key": key,
            "limits": spec.model_dump(exclude={"env", "network", "wall_seconds"}),
            "network": network_mode(spec),
            "env_fields": {},
            "workdir": workdir,
        }
        plan = SandboxPlan(spec=spec, key=key)
        returncode, stderr_tail, messages = launch(job, plan, context)
        status = status_of(messages)
        limit = limit_hit(spec, returncode, status, stderr_tail)
        if limit is not None:
            raise SandboxLimitError(
                target,
                function,
                limit,
                getattr(spec, limit),
                f"{key}.{limit}",
                subject=f"features.function {target!r}",
                where=where,
            )
        out = Path(workdir) / OUTPUT
        if returncode == 0 and out.exists():
            return pl.read_ipc(out)  # a mapping outlives the removed file (POSIX)
        _reraise(Path(workdir) / "error.pkl")
        raise SandboxError(
            f"features.function {target!r}: its sandboxed child ({module}) failed (exit "
            f"{returncode}) without a result; its stderr ends with:\n{stderr_tail}"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _reraise(error_path: Path) -> None:
    if not error_path.exists():
        return
    import cloudpickle

    try:
        exc = cloudpickle.loads(error_path.read_bytes())
    except Exception:
        return
    if isinstance(exc, BaseException):
        raise exc


def identity(**tables: pl.DataFrame) -> pl.DataFrame:
    """The first table as it is (the benchmark's no-op feature function)."""
    return next(iter(tables.values()))


__all__ = ["OUTPUT", "identity", "run_function"]

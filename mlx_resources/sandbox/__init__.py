"""Sandboxed plugin execution (issue 12): a composition entry's ``sandbox:`` key runs that
plugin's calls in a child process through Dagster Pipes, with rlimits (address space, CPU
seconds, open files, file size), a wall-time limit, a scrubbed environment, a private working
directory and optionally no network. No plugin code changes: the kernel routes the calls
(:mod:`mlx_plugins.kernel.sandbox`); importing this package installs the runner.

See ``docs/observability.md`` ("Sandbox").
"""

from __future__ import annotations

from mlx_plugins.kernel.sandbox import SandboxPlan, SandboxSpec, set_call_runner
from mlx_resources.sandbox.functions import run_function
from mlx_resources.sandbox.runner import (
    ALLOWED_ENV,
    SandboxError,
    SandboxLimitError,
    netns_available,
    network_mode,
    run_call,
)


def install() -> None:
    """Make this process run sandboxed plugin calls through :func:`run_call` (idempotent)."""
    set_call_runner(run_call)


install()

__all__ = [
    "ALLOWED_ENV",
    "SandboxError",
    "SandboxLimitError",
    "SandboxPlan",
    "SandboxSpec",
    "install",
    "netns_available",
    "network_mode",
    "run_call",
    "run_function",
]

"""The sandbox's contract in the kernel: the ``sandbox:`` key of a composition entry and the hook
through which the resource layer runs a plugin call out of process.

The kernel only validates the key and routes calls; the mechanism (Dagster Pipes, rlimits, the
scrubbed environment, no network) is :mod:`mlx_resources.sandbox`, which fills the hook in with
:func:`set_call_runner` when it is imported (imports only go downward: the kernel never imports
the resource layer).

In ``mlx.yaml``::

    plugins:
      data_source:
        - plugin: nycflights13
          sandbox: {memory_mb: 2048, cpu_seconds: 120, open_files: 256, file_size_mb: 512,
                    wall_seconds: 600, network: false, env: [MY_SETTING]}
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from mlx_plugins.kernel.base import MLXPlugin

SANDBOX_FIELD = "mlx_sandbox"
"""The hidden config field of every plugin carrying its sandbox spec as JSON (empty: none)."""

LOCAL_METHODS = frozenset(
    {
        "open",
        "close",
        "setup_for_execution",
        "teardown_after_execution",
        "session",
        "reads_env",
        "resolved",
        "with_home",
        "init_private_attributes",
        "model_post_init",
    }
)
"""Methods that always run in the calling process (the lifecycle and config helpers)."""


class SandboxSpec(BaseModel):
    """The limits of one sandboxed plugin (``plugins.<kind>.sandbox`` in the composition).

    Every limit is optional (``None``: not limited). ``memory_mb`` is the child's address
    space (``RLIMIT_AS``, MiB, virtual memory: an interpreter with polars and torch loaded takes
    1-2 GiB of it before any data); ``cpu_seconds`` its CPU time (``RLIMIT_CPU``, user + system
    seconds); ``open_files`` its file descriptors (``RLIMIT_NOFILE``); ``file_size_mb`` the
    largest file it may write (``RLIMIT_FSIZE``, MiB); ``wall_seconds`` the wall time the caller
    waits before killing it. ``network: false`` runs it without network. ``env`` names the
    environment variables the child may see besides the allow-list and the secrets the plugin's
    config reads with ``{env: NAME}``.
    """

    model_config = ConfigDict(defer_build=True, frozen=True, extra="forbid")

    memory_mb: int | None = Field(default=None, gt=0)
    cpu_seconds: int | None = Field(default=None, gt=0)
    open_files: int | None = Field(default=None, gt=8)
    file_size_mb: int | None = Field(default=None, gt=0)
    wall_seconds: float | None = Field(default=None, gt=0)
    network: bool = True
    env: tuple[str, ...] = ()


class SandboxPlan(BaseModel):
    """What a plugin instance carries in :data:`SANDBOX_FIELD`: the spec, where it was
    written (``key``, e.g. ``plugins.data_source[0].sandbox``, named in limit errors), the
    config fields read from the environment (``env_fields``: field -> variable) and every
    variable the config reads (``env_vars``), which alone of the secrets reach the child."""

    model_config = ConfigDict(defer_build=True, frozen=True, extra="forbid")

    spec: SandboxSpec
    key: str
    env_fields: dict[str, str] = Field(default_factory=dict)
    env_vars: tuple[str, ...] = ()

    def to_field(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_field(cls, text: str) -> SandboxPlan:
        return cls.model_validate(json.loads(text))


class CallRunner(Protocol):
    """Runs ``plugin.<method>(*args, **kwargs)`` out of process and returns its result (or
    raises its exception). ``args`` exclude ``self``."""

    def __call__(
        self, plugin: MLXPlugin, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any: ...


_RUNNER: list[CallRunner] = []


def set_call_runner(runner: CallRunner | None) -> None:
    """Install (or, with ``None``, remove) the runner of sandboxed plugin calls."""
    _RUNNER.clear()
    if runner is not None:
        _RUNNER.append(runner)


def call_runner() -> CallRunner | None:
    return _RUNNER[0] if _RUNNER else None


class SandboxUnavailableError(RuntimeError):
    """A plugin asks for a sandbox but no runner is installed in this process."""


def run_sandboxed(
    plugin: MLXPlugin, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Route one call of a sandboxed plugin to the installed runner.

    Raises :class:`SandboxUnavailableError` (naming the plugin and the fix) when none is
    installed: a sandboxed plugin never silently runs in process.
    """
    runner = call_runner()
    if runner is None:
        name = type(plugin).metadata.name
        raise SandboxUnavailableError(
            f"plugin {name!r} is configured with a sandbox but no sandbox runner is installed in "
            "this process; fix: import mlx_resources.sandbox before calling it (the platform's "
            "definitions do), or remove its sandbox: key from the composition"
        )
    return runner(plugin, method, args, kwargs)


__all__ = [
    "LOCAL_METHODS",
    "SANDBOX_FIELD",
    "CallRunner",
    "SandboxPlan",
    "SandboxSpec",
    "SandboxUnavailableError",
    "call_runner",
    "run_sandboxed",
    "set_call_runner",
]

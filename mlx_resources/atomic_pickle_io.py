"""Dagster's ``FilesystemIOManager`` with atomic writes: a killed write leaves the old pickle.

Dagster's pickling IO manager opens the final path and pickles into it, so a ``kill -9`` (or a
full disk) in the middle leaves a truncated pickle under the final name, and every later load of
that output fails. Here a local output is pickled to a unique temp file next to its target
(``mlx_resources.atomic``: ``.<name>.tmp-<pid>-<random>``, which ``mlx_resources.leftovers``
removes once its writer is dead) and renamed over it. Remote paths keep Dagster's behaviour.
"""

from __future__ import annotations

import pickle
from typing import Any

import dagster as dg
from dagster._core.storage.fs_io_manager import PickledObjectFilesystemIOManager

from mlx_resources.atomic import atomic_open


class _AtomicPickledObjectFilesystemIOManager(PickledObjectFilesystemIOManager):
    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: Any) -> None:
        protocol = getattr(path, "protocol", "") or ""
        if protocol not in ("", "file", "local"):
            super().dump_to_path(context, obj, path)
            return
        try:
            with atomic_open(str(path), "wb") as fh:
                pickle.dump(obj, fh, pickle.HIGHEST_PROTOCOL)
        except (AttributeError, RecursionError, ImportError, pickle.PicklingError) as exc:
            raise dg.Failure(
                f"cannot pickle the output {context.get_identifier()!r} of type "
                f"{type(obj).__name__} ({type(exc).__name__}: {exc}); "
                "fix: return a picklable value or give the output another io_manager_key"
            ) from exc


class AtomicFilesystemIOManager(dg.FilesystemIOManager):
    """``dg.FilesystemIOManager`` (same config: ``base_dir``) whose writes are atomic.

    Values are pickled (``pickle.HIGHEST_PROTOCOL``) to ``<base_dir>/<asset key path>``; a
    crash mid-write leaves the previous value readable and a temp file named with the writer's
    pid. Raises ``dg.Failure`` naming the output and type when a value cannot be pickled.
    """

    def create_io_manager(self, context: dg.InitResourceContext) -> Any:
        base_dir = self.base_dir
        if not base_dir:
            if context.instance is None:
                raise dg.DagsterInvariantViolationError(
                    "AtomicFilesystemIOManager: no base_dir and no instance to default it from; "
                    "fix: set base_dir"
                )
            base_dir = context.instance.storage_directory()
        return _AtomicPickledObjectFilesystemIOManager(base_dir=base_dir)

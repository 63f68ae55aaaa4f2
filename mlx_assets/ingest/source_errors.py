"""Errors of a data source read, sorted into those retrying can fix and those it cannot.

A permanent error (no space left, permission denied, read-only file system, a missing file or
folder, a schema the reader cannot apply, an unknown table) fails the step at once with
``dg.Failure(allow_retries=False)``: the asset's ``RetryPolicy`` is skipped, and the message
names the table, the path and the fix. A transient error (a timeout, a refused or reset
connection, an interrupted call, "try again") is raised as it is, so the ``RetryPolicy``
(with backoff and jitter) retries the read. Anything not recognised is treated as transient,
as before this module existed.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Literal, TypeVar

import dagster as dg

from mlx_plugins.kernel.secrets import redact

_T = TypeVar("_T")
Kind = Literal["permanent", "transient"]

_PERMANENT_ERRNO: dict[int, str] = {
    errno.ENOSPC: "free space on that file system (or point the source at another folder)",
    errno.EDQUOT: "raise the disk quota or free space on that file system",
    errno.EACCES: "give the run's user read access to that path",
    errno.EPERM: "give the run's user read access to that path",
    errno.EROFS: "the path is on a read-only file system; point the source's folder at a "
    "writable location (or remount it read-write)",
    errno.ENOENT: "check the data source's folder/path in mlx.yaml, and that the file exists",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the source's path in mlx.yaml",
    errno.EISDIR: "the path is a folder, not a file: fix the source's path in mlx.yaml",
    errno.ENAMETOOLONG: "shorten the path configured for the data source",
}
_TRANSIENT_ERRNO = {
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EAGAIN,
    errno.EINTR,
    errno.EPIPE,
    errno.EBUSY,
}


def _polars_permanent() -> tuple[type[BaseException], ...]:
    import polars.exceptions as ple

    names = (
        "SchemaError",
        "SchemaFieldNotFoundError",
        "ColumnNotFoundError",
        "ShapeError",
        "InvalidOperationError",
        "DuplicateError",
        "NoDataError",
    )
    return tuple(getattr(ple, n) for n in names if hasattr(ple, n))


def classify(exc: BaseException) -> tuple[Kind, str]:
    """``("permanent" | "transient", fix)`` for an error raised while reading a source.

    Permanent: OSErrors of no space, quota, permission, read-only file system, missing or
    wrong-kind paths; polars schema/column/shape errors; ``KeyError``/``TypeError``/
    ``ValueError`` raised by the source for bad arguments (an unknown table); any error whose
    ``retryable`` attribute is ``False`` (a sandbox limit hit). Transient:
    ``TimeoutError``, ``ConnectionError``, OSErrors of timeouts, refused/reset connections and
    "try again". Anything else is transient (retried, as the ``RetryPolicy`` says).
    """
    if getattr(exc, "retryable", None) is False:  # e.g. a sandbox limit hit: its message says
        return "permanent", "do what the error says"  # the fix
    if isinstance(exc, TimeoutError | ConnectionError):
        return "transient", ""
    if isinstance(exc, OSError):
        if exc.errno in _TRANSIENT_ERRNO:
            return "transient", ""
        if exc.errno in _PERMANENT_ERRNO:
            return "permanent", _PERMANENT_ERRNO[exc.errno]
        if isinstance(exc, FileNotFoundError):
            return "permanent", _PERMANENT_ERRNO[errno.ENOENT]
        if isinstance(exc, PermissionError):
            return "permanent", _PERMANENT_ERRNO[errno.EACCES]
        return "transient", ""
    if isinstance(exc, _polars_permanent()):
        return "permanent", (
            "the source's data no longer matches the schema it declares: fix the file, or the "
            "data source's schema"
        )
    if isinstance(exc, KeyError | TypeError | ValueError):
        return "permanent", "fix the data source's configuration in mlx.yaml (see the message)"
    return "transient", ""


def read_or_fail(read: Callable[[], _T], *, asset: str, source: str, table: str, what: str) -> _T:
    """``read()``, with a permanent error turned into ``dg.Failure(allow_retries=False)``
    naming the asset, the source, the table, ``what`` was read (e.g. the days), the path and
    the fix (secret values redacted); transient errors are re-raised for the RetryPolicy."""
    try:
        return read()
    except Exception as exc:
        kind, fix = classify(exc)
        if kind == "transient":
            raise
        path = getattr(exc, "filename", None)
        where = f" (path: {path})" if path else ""
        message = (
            f"{asset}: reading table {table!r} ({what}) from data source {source} failed with "
            f"{type(exc).__name__}: {exc}{where}. Retrying cannot fix this, so the step fails "
            f"now. fix: {fix}, then re-materialize {asset}."
        )
        raise dg.Failure(
            description=redact(message),
            metadata={
                "error": dg.MetadataValue.text(type(exc).__name__),
                "path": dg.MetadataValue.text(redact(str(path)) if path else ""),
                "retryable": dg.MetadataValue.bool(False),
            },
            allow_retries=False,
        ) from None

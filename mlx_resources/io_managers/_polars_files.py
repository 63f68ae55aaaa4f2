"""File-level machinery behind ``PolarsIOManager``: layout, atomic writes, reads, hashing.

Nothing here knows about Dagster; ``polars_io`` turns the plain exceptions raised here into
errors that name the asset, partition and fix.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import polars as pl
import pyarrow as pa
import pyarrow.ipc as pa_ipc
from upath import UPath

from mlx_resources.io_managers._formats import EXTENSIONS

_FORMAT_BY_SUFFIX = {ext: fmt for fmt, ext in EXTENSIONS.items()}
_LOCAL_PROTOCOLS = ("", "file", "local")
TEMP_MARKER = ".tmp-"


# --------------------------------------------------------------------------- layout


def encode_segment(value: str) -> str:
    """Make one path segment safe on local disks and object stores, reversibly.

    Percent-encodes everything but ``[A-Za-z0-9-_.~+@,=]`` (so '/', ':', '|' and spaces can't
    create folders or break Windows/S3 tooling) and a leading '.', so that a key never yields a
    hidden file, '.' or '..', or a name that looks like one of our temp files.
    """
    encoded = quote(value, safe="-_.~+@,=")
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    return encoded or "%00"


def relative_stem(
    key_path: Sequence[str], partition_dims: Sequence[tuple[str | None, str]] | None
) -> list[str]:
    """Path segments (without extension) of one stored file, relative to ``base_path``.

    Unpartitioned: ``a/b/c`` -> ``a/b/c``. Partitioned: ``a/b/c/<partition_key>``. For
    multi-dimensional keys every dimension becomes a ``<dim>=<key>`` segment, ordered by
    dimension name: ``a/b/c/date=2024-01-01/region=eu``.
    """
    parts = [encode_segment(p) for p in key_path]
    if partition_dims is None:
        return parts
    for dim, key in partition_dims:
        segment = encode_segment(key)
        parts.append(segment if dim is None else f"{encode_segment(dim)}={segment}")
    return parts


# --------------------------------------------------------------------------- locations


def is_local(path: UPath) -> bool:
    return path.protocol in _LOCAL_PROTOCOLS


def local_path(path: UPath) -> Path:
    return Path(path.path if path.protocol else str(path))


def exists(path: UPath) -> bool:
    if is_local(path):
        return local_path(path).is_file()
    # info, not isfile: isfile says False for a refused request (wrong credentials), which
    # would read as "no stored file"; a refusal must surface as one
    try:
        return bool(path.fs.info(path.path).get("type") == "file")
    except FileNotFoundError:
        return False


def with_format(stem: UPath, fmt: str) -> UPath:
    return stem.with_name(stem.name + EXTENSIONS[fmt])


def format_of(path: UPath) -> str:
    return _FORMAT_BY_SUFFIX[path.suffix]


# --------------------------------------------------------------------------- writing


def write_frame(df: pl.DataFrame, target: str | BinaryIO, fmt: str, compression: str) -> None:
    """Write one file; module-level so tests can simulate a crash mid-write."""
    if fmt == "parquet":
        df.write_parquet(target, compression=compression, statistics=True)  # type: ignore[arg-type]
    else:
        df.write_ipc(target, compression=compression)  # type: ignore[arg-type]


@dataclass
class StagedWrite:
    """A file written to a temp name next to its target, waiting for ``commit``.

    Local: the temp file lives in the target's directory and ``commit`` is ``os.replace`` (atomic;
    on POSIX, readers that memory-mapped the old file keep its inode, so replacing is safe).
    S3 (``s3://``): no temp object. The file is a multipart upload to the target key itself
    (``upload``, an s3fs file opened with ``autocommit=False``); ``commit`` completes it
    (CompleteMultipartUpload: the new object appears whole, atomically) and ``abort`` aborts
    it. Until then the key keeps its previous object; a writer killed mid-upload leaves an
    incomplete upload that is never visible (a bucket lifecycle rule
    ``AbortIncompleteMultipartUpload`` reclaims its parts).
    Other remote fsspec: the temp is a sibling key and ``commit`` is ``fs.mv`` (a server-side
    copy + delete on object stores; the copy is atomic per object, so readers see the old or the
    new object, never a partial one).
    """

    target: UPath
    temp: UPath
    byte_size: int
    fsync: bool
    upload: Any = None

    def commit(self) -> None:
        if self.upload is not None:
            self.upload.commit()
            self.upload = None
        elif is_local(self.target):
            dst = local_path(self.target)
            os.replace(local_path(self.temp), dst)
            if self.fsync:
                _fsync_dir(dst.parent)
        else:
            self.target.fs.mv(self.temp.path, self.target.path)

    def abort(self) -> None:
        if self.upload is not None:
            _discard(self.upload)
            self.upload = None
        elif self.temp != self.target:
            remove_quietly(self.temp)


def is_s3(path: UPath) -> bool:
    return path.protocol in ("s3", "s3a")


def _discard(upload: Any) -> None:
    """Abort an uncommitted multipart upload (best effort: S3 reclaims it by lifecycle)."""
    with contextlib.suppress(Exception):
        upload.discard()
    upload.closed = True


def _stage_s3(
    df: pl.DataFrame, target: UPath, fmt: str, compression: str, writer: Callable[..., None]
) -> StagedWrite:
    """Write ``df`` as an uncommitted multipart upload to ``target`` (see :class:`StagedWrite`)."""
    upload = target.fs.open(target.path, "wb", autocommit=False)
    try:
        writer(df, upload, fmt, compression)
        size = int(upload.tell())
        upload.close()  # uploads the last part; the upload stays open (not completed)
    except BaseException:
        _discard(upload)
        raise
    return StagedWrite(target=target, temp=target, byte_size=size, fsync=False, upload=upload)


def stage(
    df: pl.DataFrame,
    target: UPath,
    fmt: str,
    compression: str,
    *,
    fsync: bool = False,
    writer: Callable[..., None] | None = None,
) -> StagedWrite:
    """Write ``df`` to a temp sibling of ``target``; on any error the temp file is removed."""
    writer = writer or write_frame
    if is_s3(target):
        return _stage_s3(df, target, fmt, compression, writer)
    # The writer's pid in the name lets mlx_resources.leftovers remove a killed writer's temps.
    temp = target.with_name(f".{target.name}{TEMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:12]}")
    try:
        if is_local(target):
            tmp_local = local_path(temp)
            tmp_local.parent.mkdir(parents=True, exist_ok=True)
            # Native path: polars writes with its own buffered Rust IO, no Python round trips.
            writer(df, str(tmp_local), fmt, compression)
            if fsync:
                fd = os.open(tmp_local, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            size = tmp_local.stat().st_size
        else:
            fs = target.fs
            fs.makedirs(target.parent.path, exist_ok=True)
            with fs.open(temp.path, "wb") as fh:
                writer(df, fh, fmt, compression)
            size = int(fs.size(temp.path))
    except BaseException:
        remove_quietly(temp)
        raise
    return StagedWrite(target=target, temp=temp, byte_size=size, fsync=fsync)


def remove_quietly(path: UPath) -> None:
    try:
        if is_local(path):
            local_path(path).unlink(missing_ok=True)
        elif path.fs.exists(path.path):
            path.fs.rm(path.path)
    except OSError:
        pass


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- OS errors

_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)")
_ERRNO_KIND = {
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.EROFS: "read_only",
    errno.EAGAIN: "transient",
    errno.EINTR: "transient",
    errno.EBUSY: "transient",
    errno.ETIMEDOUT: "transient",
    errno.ECONNRESET: "transient",
    errno.ECONNABORTED: "transient",
    errno.ECONNREFUSED: "transient",
    errno.EPIPE: "transient",
    errno.ESTALE: "transient",
}


def os_error_kind(exc: BaseException) -> str | None:
    """``no_space`` | ``permission`` | ``read_only`` | ``transient`` | None (anything else).

    Reads ``errno`` of an ``OSError`` or, for polars (whose IO errors carry the OS error only in
    their text, e.g. ``No space left on device (os error 28)``), the number in the message;
    ``ConnectionError`` and ``TimeoutError`` without an errno count as transient.
    """
    code = getattr(exc, "errno", None)
    if code is None:
        m = _OS_ERROR_IN_TEXT.search(str(exc))
        code = int(m.group(1)) if m else None
    if code is None:
        return "transient" if isinstance(exc, ConnectionError | TimeoutError) else None
    return _ERRNO_KIND.get(code)


# --------------------------------------------------------------------------- dtypes


def unstorable_columns(schema: Mapping[str, pl.DataType]) -> list[tuple[str, pl.DataType]]:
    """Columns whose dtype (at any nesting depth) no file format can store: ``pl.Object``.

    Every other polars dtype round-trips through both formats (tests/io_managers/
    test_polars_io_dtypes.py); Arrow IPC files with 128-bit integers are read by polars itself.
    """
    return [(name, dtype) for name, dtype in schema.items() if _contains_object(dtype)]


def _contains_object(dtype: Any) -> bool:
    if dtype == pl.Object:
        return True
    inner = getattr(dtype, "inner", None)
    if inner is not None and _contains_object(inner):
        return True
    fields = getattr(dtype, "fields", None)
    return bool(fields) and any(_contains_object(f.dtype) for f in fields)


# --------------------------------------------------------------------------- reading


def open_lazy(path: UPath) -> pl.LazyFrame:
    """A LazyFrame over one stored file, validating its structure up front.

    Local Arrow IPC is memory-mapped through pyarrow and handed to polars zero-copy (polars
    2.x ``read_ipc``/``scan_ipc`` copy the whole file into memory), so reading costs page faults
    only for the columns actually touched; compressed IPC is decompressed by the same call.
    Local parquet is ``scan_parquet`` after a footer check. Remote files are fetched whole via
    fsspec (the code path is protocol-agnostic; polars' native object-store reader could later
    stream S3 without a download).
    """
    fmt = format_of(path)
    if is_local(path):
        p = str(local_path(path))
        if fmt == "ipc":
            mapped = pa.memory_map(p, "r")
            try:
                return _ipc_frame(mapped).lazy()
            except pa.ArrowNotImplementedError:
                # Types polars writes but pyarrow can't read (Int128/UInt128, also nested):
                # polars' own reader (a copy, not a mapping) reads them back identically.
                return pl.read_ipc(p).lazy()
            finally:
                mapped.close()  # the arrays keep the mapping alive; this frees the descriptor
        pl.read_parquet_schema(p)  # footer check: truncated / foreign files fail here
        return pl.scan_parquet(p)
    data = path.fs.cat_file(path.path)
    if fmt == "ipc":
        try:
            return _ipc_frame(pa.BufferReader(data)).lazy()
        except pa.ArrowNotImplementedError:
            return pl.read_ipc(io.BytesIO(data)).lazy()
    return pl.read_parquet(io.BytesIO(data)).lazy()


def _ipc_frame(source: Any) -> pl.DataFrame:
    table = pa_ipc.open_file(source).read_all()
    table.validate()
    frame = pl.from_arrow(table, rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    return frame


# --------------------------------------------------------------------------- hashing


def content_hash(df: pl.DataFrame) -> str:
    """Deterministic content fingerprint of a frame: schema + row count + ordered row hashes.

    Uses polars ``hash_rows`` (seeded, multi-threaded, independent of chunk layout and of the
    storage format), then SHA-256 over the u64 row hashes. Row order matters. Stable within a
    polars version; an upgrade may change it once (downstream assets then look stale once).
    """
    return digest(df.schema, df.height, df.hash_rows(seed=0) if df.width else None)


def digest(schema: Mapping[str, Any], height: int, row_hashes: pl.Series | None) -> str:
    h = hashlib.sha256(b"mlx-polars-v1\0")
    h.update(repr([(name, str(dtype)) for name, dtype in schema.items()]).encode())
    h.update(height.to_bytes(8, "little"))
    if row_hashes is not None and len(row_hashes):
        h.update(memoryview(row_hashes.cast(pl.UInt64).to_numpy()))
    return h.hexdigest()[:32]

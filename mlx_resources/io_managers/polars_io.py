"""``PolarsIOManager``: polars frames as one file per (asset, partition), on any fsspec path.

Layout under ``base_path`` (local folder or any UPath/fsspec URL such as ``s3://bucket/prefix``)::

    <asset/key/path>.<ext>                          unpartitioned
    <asset/key/path>/<partition_key>.<ext>          partitioned
    <asset/key/path>/<dim_a>=<key_a>/<dim_b>=<key_b>.<ext>   multi-dimensional partitions

Writes are atomic (temp file + rename), every materialization records row count, schema, byte
size, path and a content hash, and the hash becomes the asset's data version, so re-materializing
identical data does not make downstream assets stale. See docs/io_manager.md.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field, PrivateAttr

from mlx_resources.io_managers._formats import EXTENSIONS, Compression, Format
from mlx_resources.io_managers._partition_split import (
    SplitError,
    assign_partition_keys,
    missing_partition_values,
)
from mlx_resources.io_managers.frames import is_lazy_frame_type

if TYPE_CHECKING:
    from types import ModuleType

    import polars as pl
    from upath import UPath

    from mlx_plugins.kernel.base import HealthStatus


def _files() -> ModuleType:
    """The file machinery (pyarrow, fsspec), imported on first IO, not at code-location load."""
    from mlx_resources.io_managers import _polars_files

    return _polars_files


# Asset definition metadata: the column (or ``{dimension: column}``) holding each row's partition.
PARTITION_EXPR_KEY = "partition_expr"
# Input metadata: skip, rather than fail on, missing upstream partitions of a multi-partition load.
ALLOW_MISSING_PARTITIONS_KEY = "allow_missing_partitions"


def content_hash(df: pl.DataFrame) -> str:
    """Deterministic hash of a frame's schema and values (the data version)."""
    return str(_files().content_hash(df))


_KEY_COL = "__mlx_partition_key"
_HASH_COL = "__mlx_row_hash"


class PolarsIOManagerError(dg.Failure):
    """A stored frame can't be read or written; names the asset, partition, path and the fix."""

    retryable: bool = False
    """Whether a step retry policy may retry it (only transient storage errors)."""

    def __init__(
        self,
        problem: str,
        *,
        asset: str,
        partition: str | None,
        path: str,
        fix: str,
    ) -> None:
        where = f"asset '{asset}'" + (f" partition '{partition}'" if partition is not None else "")
        super().__init__(
            description=f"PolarsIOManager: {where}: {problem} (path: {path}). Fix: {fix}",
            metadata={"asset": asset, "partition": partition or "", "path": path},
            allow_retries=self.retryable,
        )
        self.asset = asset
        self.partition = partition
        self.path = path


class MissingPartitionFileError(PolarsIOManagerError):
    """No stored file for an asset (partition) that an input needs."""


class CorruptPartitionFileError(PolarsIOManagerError):
    """A stored file exists but is not a readable parquet / Arrow IPC file."""


class PartitionSchemaMismatchError(PolarsIOManagerError):
    """The partitions of a multi-partition input don't share one schema."""


class PartitionSplitError(PolarsIOManagerError):
    """A multi-partition output can't be split into its partitions."""


class StorageWriteError(PolarsIOManagerError):
    """Writing failed in a way retrying can't fix: out of space, permission denied, read-only."""


class TransientStorageError(PolarsIOManagerError):
    """Writing kept failing with a transient error (EAGAIN, EINTR, connection reset...)."""

    retryable = True


class StorageAccessError(PolarsIOManagerError):
    """The object store refused the credentials, has no such bucket, or denied access; names
    the bucket and the fix. Not retried (a retry can't fix credentials)."""


class UnstorableDtypeError(PolarsIOManagerError):
    """A column's dtype can't be stored in a file (``pl.Object``); refused before any write."""


def polars_output(
    df: pl.DataFrame | pl.LazyFrame, *, metadata: Mapping[str, Any] | None = None, **kwargs: Any
) -> dg.Output[pl.DataFrame]:
    """``dg.Output`` with ``data_version`` = the frame's content hash.

    ``PolarsIOManager`` already does this by itself; use this from assets stored by another IO
    manager (or with ``data_version_from_content=False``) to get content-based data versions.
    """
    import polars as pl

    frame = df.collect() if isinstance(df, pl.LazyFrame) else df
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # Output(data_version=...) is "beta"
        return dg.Output(
            frame, metadata=metadata, data_version=_data_version(content_hash(frame)), **kwargs
        )


class PolarsIOManager(dg.ConfigurableIOManager):
    """Stores polars DataFrames, one file per partition, atomically, with content data versions.

    Asset contract:
      * return a ``pl.DataFrame`` (a ``pl.LazyFrame`` is collected);
      * annotate an input ``LazyFrame`` (``mlx_resources.io_managers.frames``, which keeps
        polars out of code-location load) or ``pl.LazyFrame`` to get a lazy scan, anything else
        gets a DataFrame;
        an input spanning several upstream partitions is one concatenated frame (in key order);
      * an output covering several partitions (a single-run backfill) needs
        ``metadata={"partition_expr": "<column>"}`` (``{dim: column}`` for multi-dimensional
        partitions); rows are split into one file per key. With a single key the column, if
        named, is validated the same way.
    """

    base_path: str = Field(
        description="Root folder or fsspec URL (e.g. /data/mlx, s3://bucket/mlx, memory://x)."
    )
    format: Format = Field(
        default="ipc",
        description=(
            "'ipc' (Arrow IPC, memory-mapped zero-copy reads when local and uncompressed) or "
            "'parquet' (smaller files; better for remote storage)."
        ),
    )
    compression: Compression = Field(
        default="uncompressed",
        description="'zstd', 'lz4' or 'uncompressed'. Compressed IPC can't be memory-mapped.",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "fsspec options for a remote base_path (s3fs: endpoint_url, key, secret, token, "
            "default_block_size...); a value may be {env: NAME}, read when the IO manager is "
            "first used and kept secret."
        ),
    )
    fsync: bool = Field(
        default=False,
        description=(
            "fsync local files (and their folder) before/after the rename. The rename alone is "
            "atomic against process crashes; fsync adds durability against power loss."
        ),
    )
    data_version_from_content: bool = Field(
        default=True,
        description="Set each materialization's data version to the frame's content hash.",
    )

    _root: UPath | None = PrivateAttr(default=None)

    # ------------------------------------------------------------------ paths

    def _base(self) -> UPath:
        if self._root is None:
            from upath import UPath

            from mlx_plugins.kernel.object_store import resolve

            self._root = UPath(self.base_path, **resolve(self.storage_options))
        return self._root

    def _stem(
        self,
        key_path: Sequence[str],
        partitions_def: dg.PartitionsDefinition | None,
        partition_key: str | None,
    ) -> UPath:
        dims: list[tuple[str | None, str]] | None = None
        if partition_key is not None:
            if isinstance(partition_key, dg.MultiPartitionKey):
                dims = sorted(partition_key.keys_by_dimension.items())
            elif isinstance(partitions_def, dg.MultiPartitionsDefinition):
                mk = partitions_def.get_partition_key_from_str(partition_key)
                dims = sorted(mk.keys_by_dimension.items())
            else:
                dims = [(None, partition_key)]
        return self._base().joinpath(*_files().relative_stem(key_path, dims))

    def _target(self, stem: UPath) -> UPath:
        return _files().with_format(stem, self.format)

    def _existing(self, stem: UPath) -> UPath | None:
        """The stored file for ``stem``: the configured format first, then the other one (so
        switching ``format`` doesn't orphan data written before)."""
        for fmt in (self.format, *(f for f in EXTENSIONS if f != self.format)):
            candidate = _files().with_format(stem, fmt)
            if _files().exists(candidate):
                return candidate
        return None

    # ------------------------------------------------------------------ output

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        import polars as pl

        label = _label(context)
        if isinstance(obj, pl.LazyFrame):
            obj = obj.collect()
        if not isinstance(obj, pl.DataFrame):
            raise PolarsIOManagerError(
                f"expected a polars DataFrame or LazyFrame, got {type(obj).__name__}",
                asset=label,
                partition=None,
                path=str(self._base()),
                fix="return a pl.DataFrame, or give this output another io_manager_key",
            )
        df = obj
        self._refuse_unstorable(df, label)
        if context.has_asset_key:
            key_path = list(context.asset_key.path)
        else:
            key_path = _op_identifier(context)
        # plan: (partition key, stem, frame, content hash or None) per file to write
        total_hash: str | None = None
        if context.has_asset_key and context.has_asset_partitions:
            partitions_def = context.asset_partitions_def
            parts, total_hash = self._split(
                context, df, list(context.asset_partition_keys), partitions_def, label
            )
            plan = [
                (k, self._stem(key_path, partitions_def, k), part, h)
                for k, (part, h) in parts.items()
            ]
        else:
            plan = [(None, self._stem(key_path, None, None), df, None)]

        with ThreadPoolExecutor(max_workers=1) as pool:
            # An unsplit frame is hashed while it is written (polars and hashlib release the GIL);
            # split outputs were hashed row by row in _split.
            pending = pool.submit(_files().content_hash, df) if total_hash is None else None
            staged = self._stage_all([(k, stem, part) for k, stem, part, _ in plan], label)
            if pending is not None:
                total_hash = pending.result()
                plan = [(plan[0][0], plan[0][1], df, total_hash)]
        assert total_hash is not None
        # Every file is written before any is published, so a failure above leaves all previous
        # files intact; each rename below is atomic (the set of renames is not).
        for i, ((key, stem, _, _), s) in enumerate(zip(plan, staged, strict=True)):
            try:
                _with_retries(s.commit)
            except BaseException as e:
                for rest in staged[i:]:
                    rest.abort()
                raise _write_error(e, label, key, str(s.target)) from e
            self._remove_other_formats(stem)

        metadata: dict[str, Any] = {
            "dagster/row_count": dg.MetadataValue.int(df.height),
            "dagster/column_schema": dg.MetadataValue.table_schema(_table_schema(df)),
            "byte_size": dg.MetadataValue.int(sum(s.byte_size for s in staged)),
            "content_hash": dg.MetadataValue.text(total_hash),
            "format": dg.MetadataValue.text(f"{self.format}/{self.compression}"),
            "path": dg.MetadataValue.path(
                str(staged[0].target) if len(staged) == 1 else str(staged[0].target.parent)
            ),
        }
        if len(plan) > 1:
            metadata["partition_count"] = dg.MetadataValue.int(len(plan))
            for (key, _, part, part_hash), s in zip(plan, staged, strict=True):
                _add_partition_metadata(
                    context,
                    key,
                    {
                        "dagster/row_count": dg.MetadataValue.int(part.height),
                        "byte_size": dg.MetadataValue.int(s.byte_size),
                        "content_hash": dg.MetadataValue.text(part_hash or ""),
                        "path": dg.MetadataValue.path(str(s.target)),
                    },
                )
        from mlx_plugins.kernel.telemetry import TRACE_TAG, current_trace_id

        if trace_id := current_trace_id():  # the run's trace (mlx_resources.telemetry)
            metadata[TRACE_TAG] = dg.MetadataValue.text(trace_id)
        context.add_output_metadata(metadata)
        if self.data_version_from_content and context.has_asset_key:
            _set_data_version(context, total_hash)
            if len(plan) > 1:
                _set_partition_data_versions(
                    context, {key: h for key, _, _, h in plan if key is not None and h}
                )

    def check_health(self) -> HealthStatus:
        """Write, read back and delete a 2-byte probe object under ``base_path``
        (``<base_path>/.mlx-health/<uuid>``), as ``mlx health`` does for every plugin.

        Returns
        -------
        HealthStatus
            ``healthy`` and a one-line ``detail`` naming the location (the URL without any
            ``user:password@``, and ``endpoint_url`` when given); an S3 credential, bucket or
            permission error, or an endpoint that does not answer, names the bucket and the
            fix. Never raises; secrets are redacted.
        """
        import uuid

        from mlx_plugins.kernel.base import HealthStatus
        from mlx_plugins.kernel.object_store import describe_s3_error, describe_s3_unreachable
        from mlx_plugins.kernel.secrets import redact

        where = _public_location(self.base_path, self.storage_options)
        start = time.perf_counter()
        try:
            probe = self._base() / ".mlx-health" / uuid.uuid4().hex
            if "://" not in self.base_path or self.base_path.startswith("file://"):
                probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            if probe.read_bytes() != b"ok":
                raise OSError(f"read back something else than was written to {probe}")
            probe.unlink()
            healthy, detail = True, f"io_manager {where}: write, read and delete ok"
        except Exception as exc:
            described = describe_s3_error(exc, self.base_path) or describe_s3_unreachable(
                exc, self.base_path
            )
            healthy = False
            detail = described or (
                f"io_manager {where}: cannot write there ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}). Fix: create the folder or "
                "bucket and grant write access, or change plugins.io_manager.config.base_path"
            )
        return HealthStatus(
            healthy=healthy,
            detail=redact(detail),
            latency_ms=(time.perf_counter() - start) * 1000,
        )

    def _refuse_unstorable(self, df: pl.DataFrame, label: str) -> None:
        """Refuse, before any file or data version is written, what could not be read back."""
        bad = _files().unstorable_columns(df.schema)
        if bad:
            column, dtype = bad[0]
            raise UnstorableDtypeError(
                f"column {column!r} has dtype {dtype}, which neither Arrow IPC nor parquet can "
                f"store (python objects)"
                + (f"; also {', '.join(repr(c) for c, _ in bad[1:])}" if len(bad) > 1 else ""),
                asset=label,
                partition=None,
                path=str(self._base()),
                fix=(
                    f"convert {column!r} to a storable dtype before returning the frame (e.g. "
                    f"pl.col({column!r}).map_elements(str, return_dtype=pl.String), or a Struct "
                    "of its fields), or give this output an io_manager_key of a pickling IO manager"
                ),
            )

    def _split(
        self,
        context: dg.OutputContext,
        df: pl.DataFrame,
        keys: list[str],
        partitions_def: dg.PartitionsDefinition,
        label: str,
    ) -> tuple[dict[str, tuple[pl.DataFrame, str | None]], str | None]:
        """Frame and content hash per partition key, plus the whole frame's hash.

        Row hashes are computed once; each part's hash equals ``content_hash(part)``. An unsplit
        frame (one key, no ``partition_expr``) comes back unhashed (None), hashed by the caller.
        """
        expr = context.definition_metadata.get(PARTITION_EXPR_KEY)
        where = str(self._stem(list(context.asset_key.path), None, None))
        if expr is None:
            if len(keys) == 1:
                return {keys[0]: (df, None)}, None
            raise PartitionSplitError(
                f"this run covers {len(keys)} partitions ({keys[0]} .. {keys[-1]}) but the asset "
                f"has no '{PARTITION_EXPR_KEY}' metadata to split the frame by",
                asset=label,
                partition=f"{keys[0]}..{keys[-1]}",
                path=where,
                fix=(
                    f"add metadata={{'{PARTITION_EXPR_KEY}': '<column>'}} to the asset (a Date or "
                    "string column holding each row's partition key), or run one partition per run"
                ),
            )
        try:
            assigned = assign_partition_keys(df, partitions_def, keys, expr)
        except SplitError as e:
            raise PartitionSplitError(
                f"can't split the frame into partitions: {e}",
                asset=label,
                partition=keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]}",
                path=where,
                fix=f"return a frame with the column(s) named in metadata '{PARTITION_EXPR_KEY}'",
            ) from e
        missing = missing_partition_values(df, expr)  # rows of no partition: a data error
        if missing:
            raise PartitionSplitError(
                f"rows have no value in the '{PARTITION_EXPR_KEY}' column(s) (rows: {missing}), "
                "so they belong to no partition",
                asset=label,
                partition=keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]}",
                path=where,
                fix="give every row its partition value where the frame is built (a missing "
                "value is an error in the data or its source, not rows to filter away)",
            )
        outside = assigned.is_null()
        n_outside = int(outside.sum())
        if n_outside:
            columns = [expr] if isinstance(expr, str) else list(expr.values())
            bad_rows = df.filter(outside).select(columns).unique(maintain_order=True).head(5)
            examples = ["|".join(str(v) for v in row) for row in bad_rows.rows()]
            raise PartitionSplitError(
                f"{n_outside} of {df.height} rows have '{PARTITION_EXPR_KEY}' {expr!r} values "
                f"outside the run's {len(keys)} partition key(s) {keys[0]} .. {keys[-1]} "
                f"(e.g. {examples})",
                asset=label,
                partition=keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]}",
                path=where,
                fix=(
                    "filter the frame to the run's partitions (context.partition_keys / "
                    "context.partition_time_window) before returning it"
                ),
            )
        import polars as pl

        row_hashes = df.hash_rows(seed=0) if df.width else pl.Series(dtype=pl.UInt64)
        whole = _files().digest(df.schema, df.height, row_hashes)
        tagged = df.with_columns(assigned.alias(_KEY_COL), row_hashes.alias(_HASH_COL))
        groups = {
            str(k[0] if isinstance(k, tuple) else k): g
            for k, g in tagged.partition_by(_KEY_COL, as_dict=True, maintain_order=True).items()
        }
        out: dict[str, tuple[pl.DataFrame, str | None]] = {}
        for key in keys:
            group = groups.get(str(key))
            if group is None:
                _log(context, "info", f"partition {key} has no rows; storing an empty frame")
                part, part_hashes = df.clear(), None
            else:
                part = group.drop(_KEY_COL, _HASH_COL)
                part_hashes = group.get_column(_HASH_COL)
            out[key] = (part, _files().digest(part.schema, part.height, part_hashes))
        return out, whole

    def _stage_all(
        self, items: list[tuple[str | None, UPath, pl.DataFrame]], label: str
    ) -> list[Any]:
        """Write every file to its temp name; on any failure remove the temps written so far.

        Transient OS errors are retried (``_with_retries``); the rest become the IO manager's own
        error naming the path and the fix (``_write_error``).
        """
        staged: list[Any] = []
        try:
            for key, stem, part in items:
                target = self._target(stem)
                try:
                    staged.append(
                        _with_retries(
                            lambda part=part, target=target: _files().stage(
                                part, target, self.format, self.compression, fsync=self.fsync
                            )
                        )
                    )
                except Exception as e:
                    error = _write_error(e, label, key, str(target))
                    if error is e:
                        raise
                    raise error from e
        except BaseException:
            for s in staged:
                s.abort()
            raise
        return staged

    def _remove_other_formats(self, stem: UPath) -> None:
        for fmt in EXTENSIONS:
            if fmt != self.format:
                other = _files().with_format(stem, fmt)
                if _files().exists(other):
                    _files().remove_quietly(other)

    # ------------------------------------------------------------------ input

    def load_input(self, context: dg.InputContext) -> pl.DataFrame | pl.LazyFrame:
        import polars as pl

        label = _label(context)
        if context.has_asset_key:
            key_path = list(context.asset_key.path)
        else:
            key_path = _op_identifier(_upstream(context))
        lazy = _wants_lazy(context)
        allow_missing = bool(context.definition_metadata.get(ALLOW_MISSING_PARTITIONS_KEY, False))

        wanted: list[tuple[str | None, UPath]]
        if context.has_asset_key and context.has_asset_partitions:
            partitions_def = context.asset_partitions_def
            keys = list(context.asset_partition_keys)
            wanted = [(k, self._stem(key_path, partitions_def, k)) for k in keys]
        else:
            keys = []
            wanted = [(None, self._stem(key_path, None, None))]

        found: list[tuple[str | None, UPath]] = []
        for key, stem in wanted:
            try:
                path = self._existing(stem)
            except OSError as e:
                denied = _access_error(e, label, key, str(self._target(stem)))
                if denied is None:
                    raise
                raise denied from e
            if path is not None:
                found.append((key, path))
                continue
            if allow_missing and len(wanted) > 1:
                _log(context, "warning", f"skipping missing partition {key} of {label}")
                continue
            raise MissingPartitionFileError(
                "no stored file",
                asset=label,
                partition=key,
                path=str(self._target(stem)),
                fix=_missing_fix(label, key, len(wanted) > 1),
            )

        frames = [self._open(key, path, label) for key, path in found]
        if not frames:
            _log(context, "warning", f"no stored partitions of {label} found; loading empty frame")
            return pl.LazyFrame() if lazy else pl.DataFrame()
        self._check_same_schema(frames, found, label)
        try:
            if all(isinstance(f, pl.DataFrame) for f in frames):
                result = pl.concat(frames, rechunk=False) if len(frames) > 1 else frames[0]
                return result.lazy() if lazy else result  # type: ignore[union-attr]
            scan = pl.concat([f.lazy() for f in frames]) if len(frames) > 1 else frames[0].lazy()
            return scan if lazy else scan.collect()
        except pl.exceptions.PolarsError as e:
            raise CorruptPartitionFileError(
                f"reading failed ({type(e).__name__}: {e})",
                asset=label,
                partition=found[0][0] if len(found) == 1 else None,
                path=", ".join(str(p) for _, p in found[:5]),
                fix="re-materialize the asset (partitions) to rewrite the file(s)",
            ) from e

    @staticmethod
    def _check_same_schema(
        frames: list[pl.DataFrame | pl.LazyFrame],
        found: list[tuple[str | None, UPath]],
        label: str,
    ) -> None:
        """Partitions written by different code versions may disagree; say which, up front."""
        first = frames[0].collect_schema()
        for frame, (key, path) in zip(frames[1:], found[1:], strict=True):
            schema = frame.collect_schema()
            if schema != first:
                raise PartitionSchemaMismatchError(
                    f"partition schemas differ, so they can't be concatenated: '{found[0][0]}' "
                    f"has {dict(first)}, this one has {dict(schema)}",
                    asset=label,
                    partition=key,
                    path=str(path),
                    fix="re-materialize the partitions written with the old schema",
                )

    def _open(self, key: str | None, path: UPath, label: str) -> pl.DataFrame | pl.LazyFrame:
        """Open one file: a DataFrame for Arrow IPC (zero-copy mmap), a LazyFrame for parquet."""
        import polars as pl

        try:
            lf = _files().open_lazy(path)
            if _files().format_of(path) == "ipc" or not _files().is_local(path):
                return lf.collect()  # already in memory / mapped: collecting is free
            return lf
        except FileNotFoundError as e:  # deleted between the existence check and the read
            raise MissingPartitionFileError(
                "stored file disappeared while loading",
                asset=label,
                partition=key,
                path=str(path),
                fix=_missing_fix(label, key, False),
            ) from e
        except (OSError, ValueError, pl.exceptions.PolarsError) as e:
            # pyarrow.ArrowInvalid is a ValueError; polars raises ComputeError for bad parquet.
            if (denied := _access_error(e, label, key, str(path))) is not None:
                raise denied from e
            raise CorruptPartitionFileError(
                f"stored file is unreadable ({type(e).__name__}: {e}); it is truncated, "
                "corrupt or not written by PolarsIOManager",
                asset=label,
                partition=key,
                path=str(path),
                fix=(
                    "re-materialize "
                    + (f"partition '{key}' of " if key is not None else "")
                    + f"asset '{label}' (the bad file is replaced atomically): `mlx lifecycle` "
                    f"or `{materialize_command(label, key)}`"
                ),
            ) from e


# ---------------------------------------------------------------------- helpers


def _label(context: dg.OutputContext | dg.InputContext) -> str:
    if context.has_asset_key:
        return context.asset_key.to_user_string()
    return "/".join(_op_identifier(context))


def _upstream(context: dg.InputContext) -> dg.OutputContext:
    upstream = context.upstream_output
    if upstream is None:
        raise dg.DagsterInvariantViolationError(
            "PolarsIOManager can only load inputs that come from an asset or an upstream op output"
        )
    return upstream


def _op_identifier(context: dg.OutputContext | dg.InputContext) -> list[str]:
    if isinstance(context, dg.InputContext):
        context = _upstream(context)
    return list(context.get_identifier())


def _wants_lazy(context: dg.InputContext) -> bool:
    """An input typed ``LazyFrame`` (``mlx_resources.io_managers.frames``) or ``pl.LazyFrame``."""
    return is_lazy_frame_type(context.dagster_type)


def materialize_command(label: str, key: str | None) -> str:
    """A shell command that re-materializes ``label`` (at partition ``key``) on the local instance,
    as printed in fixes; it works as written from any folder with the venv's ``dagster``."""
    part = f" --partition {key}" if key is not None else ""
    return (
        "DAGSTER_HOME=$(mlx home) dagster asset materialize -m mlx_assets.definitions "
        f"--select {label}{part}"
    )


def _missing_fix(label: str, key: str | None, multi: bool) -> str:
    if key is None:
        command = materialize_command(label, None)
        return f"materialize asset '{label}' first: `mlx lifecycle` or `{command}`"
    fix = (
        f"materialize partition '{key}' of asset '{label}' first: `mlx lifecycle` "
        f"(it re-materializes missing and bad partitions) or `{materialize_command(label, key)}`"
    )
    if multi:
        fix += f", or set input metadata {{'{ALLOW_MISSING_PARTITIONS_KEY}': True}} to skip gaps"
    return fix


def _table_schema(df: pl.DataFrame) -> dg.TableSchema:
    return _schema_record([(name, str(dtype)) for name, dtype in df.schema.items()])


def _schema_record(columns: list[tuple[str, str]]) -> dg.TableSchema:
    # Keep big objects out of this frame: Dagster's @record classes (TableSchema, DataVersion, ...)
    # compile their constructor on first use and keep the *caller's locals* alive for the life of
    # the process; from a frame holding the DataFrame, that leaks the whole frame.
    return dg.TableSchema(columns=[dg.TableColumn(name=n, type=t) for n, t in columns])


def _data_version(value: str) -> dg.DataVersion:
    return dg.DataVersion(value)  # see _schema_record: no large locals here


def _step_context(context: dg.OutputContext) -> Any | None:
    """The step context, absent for contexts built by ``dg.build_output_context``."""
    try:
        return context.step_context
    except dg.DagsterInvariantViolationError:
        return None


def _set_data_version(context: dg.OutputContext, value: str) -> None:
    """Make ``value`` the materialization's data version.

    Dagster 1.13 reads a step's data-version cache when it builds the materialization event,
    which happens after ``handle_output`` returns; this is the same cache that
    ``AssetExecutionContext.set_data_version`` writes. An explicit ``Output(data_version=...)``
    from the asset still takes precedence. The version is per asset per step: for a
    multi-partition output it is the whole frame's hash, and ``_set_partition_data_versions``
    replaces it on each partition's event by that partition's own hash.
    """
    step = _step_context(context)
    if step is not None:
        step.set_data_version(context.asset_key, _data_version(value))


def _set_partition_data_versions(context: dg.OutputContext, versions: Mapping[str, str]) -> None:
    """Give each partition of a multi-partition output its own data version (its content hash).

    Dagster 1.13 has no public way to do this in one step; the contained hook is in
    ``_dagster_partition_versions`` (which says why, and what happens if Dagster changes).
    """
    step = _step_context(context)
    if step is not None and versions:
        from mlx_resources.io_managers._dagster_partition_versions import (
            set_partition_data_versions,
        )

        set_partition_data_versions(step, context.asset_key, versions)


def _add_partition_metadata(
    context: dg.OutputContext, partition_key: str | None, metadata: Mapping[str, Any]
) -> None:
    """Per-partition values (overriding the run totals) on each partition's materialization."""
    step = _step_context(context)
    if step is not None and partition_key is not None:
        step.add_asset_metadata(metadata, asset_key=context.asset_key, partition_key=partition_key)


_RETRY_DELAYS_S = (0.05, 0.2, 0.5)


def _with_retries(fn: Any) -> Any:
    """Call ``fn``; retry after a short pause while it fails with a transient OS error."""
    for delay in (*_RETRY_DELAYS_S, None):
        try:
            return fn()
        except Exception as e:
            if delay is None or _files().os_error_kind(e) != "transient":
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


_WRITE_FIXES = {
    "no_space": (
        "the file system is full (out of disk space or quota)",
        "free space on that file system (or raise the quota), or point the IO manager's "
        "base_path at a file system with room; nothing was published, the previous files are "
        "intact",
    ),
    "permission": (
        "permission denied",
        "give the user running Dagster write access to that folder (and its parents), or point "
        "the IO manager's base_path at a folder it can write",
    ),
    "read_only": (
        "the file system is read-only",
        "remount it read-write, or point the IO manager's base_path at a writable file system",
    ),
}


def _access_error(
    exc: BaseException, label: str, partition: str | None, path: str
) -> StorageAccessError | None:
    """An object store's refusal (credentials, bucket, permission) as the IO manager's error
    naming the bucket and the fix; None for other errors."""
    from mlx_plugins.kernel.object_store import describe_s3_error

    described = describe_s3_error(exc, path)
    if described is None:
        return None
    problem, _, fix = described.partition(" Fix: ")
    return StorageAccessError(
        problem.rstrip("."), asset=label, partition=partition, path=path, fix=fix
    )


def _write_error(exc: BaseException, label: str, partition: str | None, path: str) -> BaseException:
    """The IO manager's own error for an OS-level write failure; other errors pass through."""
    if (denied := _access_error(exc, label, partition, path)) is not None:
        return denied
    kind = _files().os_error_kind(exc)
    if kind in _WRITE_FIXES:
        problem, fix = _WRITE_FIXES[kind]
        return StorageWriteError(
            f"writing failed: {problem} ({type(exc).__name__}: {exc})",
            asset=label,
            partition=partition,
            path=path,
            fix=fix,
        )
    if kind == "transient":
        return TransientStorageError(
            f"writing failed {len(_RETRY_DELAYS_S) + 1} times with a transient error "
            f"({type(exc).__name__}: {exc})",
            asset=label,
            partition=partition,
            path=path,
            fix="re-run the step (a retry policy retries it); check the storage's health",
        )
    return exc


def _log(context: dg.OutputContext | dg.InputContext, level: str, msg: str) -> None:
    log = getattr(context, "log", None)
    if log is not None:
        getattr(log, level)(msg)


def _public_location(base_path: str, storage_options: Mapping[str, Any]) -> str:
    """``base_path`` without ``user:password@``, with the endpoint of an S3-compatible store."""
    import re

    userinfo = re.compile(r"(?<=://)[^/@]*@")
    where = userinfo.sub("", base_path)
    endpoint = storage_options.get("endpoint_url") or (
        storage_options.get("client_kwargs") or {}
    ).get("endpoint_url")
    if isinstance(endpoint, str):
        where += f" (endpoint {userinfo.sub('', endpoint)})"
    return where

"""``files``: tables from a folder or glob of parquet, CSV or Arrow IPC files, on any fsspec URL.

Each table is a folder (all files of its format below it), a glob (``data/*.parquet``) or one
file, either hive-partitioned (``day=2024-01-01/part-0.parquet``; the partition key is a
column) or with a date column in the files. Reads are lazy polars scans: a hive layout opens
only the files of the days asked for (the others are never opened), and the date filter and
the column selection are pushed into each file's scan (parquet row groups outside the range
are skipped; :meth:`FilesSource.scan` lets a caller select columns before anything is read).

The schema is declared in the config (``columns: {name: dtype}``) or inferred once from the
first file (sorted by path) and then enforced: every file a read opens must have exactly those
columns with those dtypes, or the read fails with :class:`FileSchemaError` naming the file,
the column, and the expected and found types.

Example composition entry::

    data_source:
      - name: customers
        plugin: files
        config:
          files:                                 # table name -> its files
            customer_features:
              path: s3://bucket/features/        # or a local folder, or data/*.csv
              format: parquet
              date_column: day
              hive: true
              columns: {day: Date, customer_id: Int64, spend: Float64, segment: String}
"""

from __future__ import annotations

import functools
import re
from datetime import date
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast, get_args

from pydantic import Field, PrivateAttr, field_validator

from mlx_plugins.data_sources.base import DataSource, TableInfo
from mlx_plugins.kernel.base import PluginConfig
from mlx_plugins.kernel.metadata import PluginMetadata

if TYPE_CHECKING:
    import polars as pl

Format = Literal["parquet", "csv", "ipc"]
_EXTENSIONS: dict[str, Format] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".arrow": "ipc",
    ".ipc": "ipc",
    ".feather": "ipc",
}
_GLOB = re.compile(r"[*?\[]")
_HIVE = re.compile(r"^([^/=]+)=([^/]*)$")


@functools.cache
def _dtypes() -> dict[str, pl.DataType]:
    """Schema dtype names -> polars dtypes (polars is imported when a schema is first read)."""
    import polars as pl

    return {
        "Boolean": pl.Boolean(),
        "Int8": pl.Int8(),
        "Int16": pl.Int16(),
        "Int32": pl.Int32(),
        "Int64": pl.Int64(),
        "UInt8": pl.UInt8(),
        "UInt16": pl.UInt16(),
        "UInt32": pl.UInt32(),
        "UInt64": pl.UInt64(),
        "Float32": pl.Float32(),
        "Float64": pl.Float64(),
        "String": pl.String(),
        "Utf8": pl.String(),
        "Categorical": pl.Categorical(),
        "Date": pl.Date(),
        "Datetime": pl.Datetime("us"),
        "Datetime(ms)": pl.Datetime("ms"),
        "Datetime(us)": pl.Datetime("us"),
        "Datetime(ns)": pl.Datetime("ns"),
        "Datetime(us, UTC)": pl.Datetime("us", "UTC"),
        "Duration": pl.Duration("us"),
        "Time": pl.Time(),
    }


class FileSchemaError(ValueError):
    """A file whose columns or dtypes differ from the table's schema; the message names the
    table, the file, the column, the expected and the found type, and the fix."""


class FileReadError(ValueError):
    """A file that can't be read as its format (truncated, not parquet...); the message names
    the table, the file and the format."""


class FileTable(PluginConfig):
    """One table of the ``files`` source."""

    path: str = Field(
        description="Folder, glob or file: a local path or an fsspec URL (file://, s3://...)."
    )
    format: str | None = Field(
        default=None,
        description="parquet, csv or ipc (Arrow IPC / Feather); default: from the extension.",
    )
    date_column: str | None = Field(
        default=None,
        description="Date column that daily partitions are cut on (a Date, a Datetime, or an "
        "ISO date text); with hive: true, the partition key (day=2024-01-01/...). None: an "
        "unpartitioned table.",
    )
    hive: bool = Field(default=False, description="Folders are hive partitions (key=value).")
    columns: dict[str, str] | None = Field(
        default=None,
        description="The schema, column -> polars dtype name (Int64, Float64, String, Date, "
        "Datetime(us), ...), hive keys included; default: inferred from the first file.",
    )
    description: str = ""

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str | None) -> str | None:
        if value is not None and value not in get_args(Format):
            raise ValueError(f"format {value!r} is not one of: parquet, csv, ipc")
        return value


def _dtype(table: str, column: str, name: str) -> pl.DataType:
    try:
        return _dtypes()[name]
    except KeyError:
        raise ValueError(
            f"files table {table!r}: column {column!r} has unknown dtype {name!r}; use one of: "
            f"{', '.join(_dtypes())}"
        ) from None


class FilesSource(DataSource):
    """Tables read from files (see the module doc)."""

    metadata: ClassVar[PluginMetadata] = PluginMetadata(
        name="files",
        kind="data_source",
        version="1.0.0",
        capabilities=("tables", "parquet", "csv", "ipc", "hive", "fsspec", "lazy"),
        description="Folders or globs of parquet, CSV or Arrow IPC files, read lazily.",
    )

    files: dict[str, FileTable] = Field(
        description="Table name -> where its files are and how to read them."
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="fsspec/s3fs options for remote paths (endpoint_url, key, secret, token, "
        "region); values may be {env: NAME}. Translated for polars' own S3 reader "
        "(mlx_plugins.kernel.object_store).",
        json_schema_extra={"secret": True},  # holds credentials: never echoed in an error
    )

    _schemas: dict[str, dict[str, pl.DataType]] = PrivateAttr(default_factory=dict)

    # -- the kind's methods ----------------------------------------------------------------

    def tables(self) -> dict[str, TableInfo]:
        return {
            name: TableInfo(name=name, description=t.description, partition_column=t.date_column)
            for name, t in self.files.items()
        }

    def schema(self, table: str) -> dict[str, pl.DataType]:
        """Column -> dtype of ``table`` as :meth:`read` returns it (declared, or inferred once
        from the first file; hive keys included, the date key as ``Date``).

        Raises:
            KeyError: no such table. FileNotFoundError: no file matches the table's path.
        """
        self.table_info(table)
        if table not in self._schemas:
            self._schemas[table] = self._make_schema(table)
        return dict(self._schemas[table])

    def read(self, table: str, start: date | None = None, end: date | None = None) -> pl.DataFrame:
        """Rows of ``table``; for a partitioned table those with ``start <= day <= end``
        (either bound may be None). Returns a frame with exactly :meth:`schema`'s columns and
        dtypes, rows in file order (files sorted by path).

        Raises:
            KeyError: no such table.
            FileNotFoundError: no file matches the table's path.
            FileSchemaError: a file opened has other columns or dtypes than the schema.
            FileReadError: a file opened can't be read as its format.
        """
        return self.scan(table, start, end).collect()

    def scan(self, table: str, start: date | None = None, end: date | None = None) -> pl.LazyFrame:
        """:meth:`read` as a polars ``LazyFrame``: select columns or filter further before
        ``collect()``, and only those columns and rows are read. The files of the days asked
        for (hive) are opened, and their schema checked, here; the rest never are."""
        import polars as pl

        info = self.table_info(table)
        spec = self.files[table]
        expected = self.schema(table)
        files = self._files(table)
        if spec.hive and spec.date_column:
            files = [
                (f, keys) for f, keys in files if _in_range(keys.get(spec.date_column), start, end)
            ]
        frames = []
        for path, keys in files:
            frames.append(self._scan_file(table, path, keys, expected))
        if not frames:
            return pl.LazyFrame(schema=expected)
        lf = pl.concat(frames, how="vertical")
        col = info.partition_column
        if col and (start is not None or end is not None):
            day = pl.col(col)
            if expected[col] != pl.Date():
                day = day.dt.date()
            if start is not None:
                lf = lf.filter(day >= start)
            if end is not None:
                lf = lf.filter(day <= end)
        return lf

    def _probe(self) -> str:
        counts = {name: len(self._files(name)) for name in self.files}
        return ", ".join(f"{name}: {n} files" for name, n in counts.items())

    # -- internals -------------------------------------------------------------------------

    def _fs(self, path: str) -> tuple[Any, str]:
        from fsspec.core import url_to_fs

        from mlx_plugins.kernel.object_store import resolve

        return url_to_fs(path, **resolve(self.storage_options))

    def _polars_options(self, path: str) -> dict[str, str] | None:
        """Storage options for polars' scan of ``path``: none for local files, the s3fs ones
        translated for ``s3://``, as given for other protocols."""
        from mlx_plugins.kernel.object_store import is_s3, polars_options, resolve

        if "://" not in path or path.startswith("file://") or not self.storage_options:
            return None
        options = resolve(self.storage_options)
        return polars_options(options) if is_s3(path) else {k: str(v) for k, v in options.items()}

    def _access_error(self, table: str, exc: BaseException, url: str) -> OSError | None:
        """An S3 credentials / bucket / permission error as one clear ``PermissionError``; an
        endpoint that does not answer as a ``ConnectionError`` (a retry may get through)."""
        from mlx_plugins.kernel.object_store import describe_s3_error, describe_s3_unreachable

        if described := describe_s3_error(exc, url):
            return PermissionError(f"files table {table!r}: {described}")
        if unreachable := describe_s3_unreachable(exc, url):
            return ConnectionError(f"files table {table!r}: {unreachable}")
        return None

    def _format(self, table: str, file: str) -> Format:
        spec = self.files[table]
        if spec.format:
            return cast(Format, spec.format)
        for ext, fmt in _EXTENSIONS.items():
            if file.lower().endswith(ext):
                return fmt
        raise ValueError(
            f"files table {table!r}: can't tell the format of {file} from its extension; set "
            f"format: parquet, csv or ipc"
        )

    def _files(self, table: str) -> list[tuple[str, dict[str, str]]]:
        """(path, hive keys) of every file of ``table``, sorted by path."""
        spec = self.files[table]
        try:
            return self._list(table, spec)
        except Exception as exc:  # s3fs: OSErrors; botocore's EndpointConnectionError is not one
            clear = self._access_error(table, exc, spec.path)
            if clear is None:
                raise
            raise clear from exc

    def _list(self, table: str, spec: FileTable) -> list[tuple[str, dict[str, str]]]:
        fs, root = self._fs(spec.path)
        if _GLOB.search(root):
            found = fs.glob(root)
            base = root[: _GLOB.search(root).start()].rsplit("/", 1)[0]  # type: ignore[union-attr]
        elif fs.isdir(root):
            found = fs.find(root)
            base = root.rstrip("/")
        else:
            found = [root] if fs.exists(root) else []
            base = root.rsplit("/", 1)[0]
        exts = (
            [e for e, f in _EXTENSIONS.items() if f == spec.format]
            if spec.format
            else list(_EXTENSIONS)
        )
        files = sorted(
            f
            for f in found
            if any(f.lower().endswith(e) for e in exts)
            and not any(part.startswith((".", "_")) for part in f[len(base) :].split("/"))
        )
        if not files:
            raise FileNotFoundError(
                f"files table {table!r}: no {spec.format or 'parquet, csv or ipc'} file at "
                f"{spec.path!r}{_no_bucket(fs, spec.path)}; fix the path (a folder, a glob such "
                "as data/*.parquet, or a file)"
            )
        out = []
        for f in files:
            keys = {}
            for part in f[len(base) :].split("/")[:-1]:
                if m := _HIVE.match(part):
                    keys[m.group(1)] = m.group(2)
            if spec.hive and spec.date_column and spec.date_column not in keys:
                raise ValueError(
                    f"files table {table!r}: file {f} is not under a {spec.date_column}=<date> "
                    f"folder; fix the layout, or set hive: false"
                )
            out.append((fs.unstrip_protocol(f) if _remote(fs) else f, keys))
        return out

    def _file_schema(self, table: str, path: str) -> dict[str, pl.DataType]:
        """The file's own schema (read from its metadata or header only).

        Raises:
            FileReadError: the file can't be read as its format; names table, file, format.
        """
        import polars as pl

        fmt = self._format(table, path)
        try:
            return self._read_schema(table, path, fmt)
        except (pl.exceptions.PolarsError, OSError) as exc:
            if (clear := self._access_error(table, exc, path)) is not None:
                raise clear from exc
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FileReadError(
                f"files table {table!r}: file {path} can't be read as {fmt}: {first}. Fix or "
                "remove the file"
            ) from exc

    def _read_schema(self, table: str, path: str, fmt: Format) -> dict[str, pl.DataType]:
        import polars as pl

        opts = self._polars_options(path)
        if fmt == "parquet":
            return dict(pl.scan_parquet(path, storage_options=opts).collect_schema())
        if fmt == "ipc":
            return dict(pl.scan_ipc(path, storage_options=opts).collect_schema())
        declared = self.files[table].columns
        overrides = {c: _dtype(table, c, t) for c, t in declared.items()} if declared else None
        return dict(
            pl.scan_csv(
                path, schema_overrides=overrides, try_parse_dates=True, storage_options=opts
            ).collect_schema()
        )

    def _hive_dtypes(self, table: str) -> dict[str, pl.DataType]:
        import polars as pl

        spec = self.files[table]
        keys = self._files(table)[0][1] if spec.hive else {}
        return {k: (pl.Date() if k == spec.date_column else pl.String()) for k in keys}

    def _make_schema(self, table: str) -> dict[str, pl.DataType]:
        import polars as pl

        spec = self.files[table]
        if spec.columns:
            schema = {c: _dtype(table, c, t) for c, t in spec.columns.items()}
        else:
            first, _ = self._files(table)[0]
            schema = {**self._file_schema(table, first), **self._hive_dtypes(table)}
        if spec.date_column and spec.date_column not in schema:
            raise ValueError(
                f"files table {table!r}: date_column {spec.date_column!r} is not a column "
                f"(columns: {', '.join(schema)}); fix date_column"
            )
        if spec.date_column and not isinstance(schema[spec.date_column], (pl.Date, pl.Datetime)):
            schema[spec.date_column] = pl.Date()  # ISO text, parsed when read
        return schema

    def _scan_file(
        self, table: str, path: str, keys: dict[str, str], expected: dict[str, pl.DataType]
    ) -> pl.LazyFrame:
        import polars as pl

        spec = self.files[table]
        hive = {k for k in keys if k in expected} if spec.hive else set()
        found = self._file_schema(table, path)
        want = {c: t for c, t in expected.items() if c not in hive}
        date_text = (
            spec.date_column
            if spec.date_column in found and found[spec.date_column] == pl.String()
            else None
        )
        for column, dtype in want.items():
            if column not in found:
                raise FileSchemaError(
                    f"files table {table!r}: file {path}: column {column!r} (expected {dtype}) "
                    f"is missing; found columns: {', '.join(found)}. Fix the file, or the "
                    "table's columns"
                )
            if found[column] != dtype and not (column == date_text and dtype == pl.Date()):
                raise FileSchemaError(
                    f"files table {table!r}: file {path}: column {column!r} has type "
                    f"{found[column]}, expected {dtype}. Fix the file, or declare "
                    f"columns: {{{column}: ...}} for the table"
                )
        extra = [c for c in found if c not in want]
        if extra:
            raise FileSchemaError(
                f"files table {table!r}: file {path}: unexpected column {extra[0]!r} (type "
                f"{found[extra[0]]}); the schema has: {', '.join(expected)}. Fix the file, or "
                "add it to the table's columns"
            )
        fmt = self._format(table, path)
        opts = self._polars_options(path)
        if fmt == "parquet":
            lf = pl.scan_parquet(path, storage_options=opts, hive_partitioning=False)
        elif fmt == "ipc":
            lf = pl.scan_ipc(path, storage_options=opts, hive_partitioning=False)
        else:
            overrides = {c: t for c, t in want.items() if c != date_text}
            lf = pl.scan_csv(path, schema_overrides=overrides, storage_options=opts)
        if date_text:
            lf = lf.with_columns(pl.col(date_text).str.to_date("%Y-%m-%d"))
        for k in hive:
            value = keys[k]
            lit = (
                pl.lit(value).str.to_date("%Y-%m-%d")
                if expected[k] == pl.Date()
                else pl.lit(value).cast(expected[k])
            )
            lf = lf.with_columns(lit.alias(k))
        return lf.select(list(expected))


def _in_range(value: str | None, start: date | None, end: date | None) -> bool:
    if value is None:
        return False
    day = date.fromisoformat(value)
    return (start is None or day >= start) and (end is None or day <= end)


def _no_bucket(fs: Any, url: str) -> str:
    """For an ``s3://`` URL whose bucket can't be seen: a clause saying so."""
    from mlx_plugins.kernel.object_store import bucket_of, is_s3

    if not is_s3(url):
        return ""
    bucket = bucket_of(url)
    try:
        if fs.exists(bucket):
            return ""
    except OSError:
        pass
    return f" (S3 bucket '{bucket}' does not exist, or these credentials can't list it)"


def _remote(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol not in ("file", "local")

"""``snowflake``: tables and queries of a Snowflake warehouse, on dagster-snowflake.

Reads push the day range and the column list into the SQL the warehouse runs, so only the rows
of the days asked for and only the needed columns leave the warehouse::

    SELECT "DAY", "CUSTOMER_ID", "SPEND" FROM "ANALYTICS"."PUBLIC"."CUSTOMER_FEATURES"
    WHERE "DAY" >= ? AND "DAY" < ?                       -- bound: (start, end + 1 day)

Results come back as Arrow batches (``cursor.fetch_arrow_batches``) and go straight into polars,
no pandas. :meth:`SnowflakeSource.write` writes predictions or scores back to a table,
idempotently per day range (delete + insert in one transaction). The connection is dagster-
snowflake's ``SnowflakeResource.get_connection()`` (the official ``snowflake-connector-python``),
opened on first use and closed with the plugin; a query still running when the step is
interrupted (terminated run, Ctrl-C) or the plugin is closed is cancelled in the warehouse.

Identifiers from the composition (tables, schemas, columns) follow Snowflake SQL: a plain name
(``customer_features``, letters, digits, ``_`` and ``$``) is case-insensitive (stored upper case);
a name in double quotes (``'"Mixed Case"'``) is exact. Anything else is refused, and every
identifier is sent quoted, so no name can inject SQL. Values (days, rows) are bound parameters.

Example composition entry::

    data_source:
      - name: warehouse
        plugin: snowflake
        config:
          account: xy12345.eu-west-1
          user: MLX_SERVICE
          password: {env: SNOWFLAKE_PASSWORD}     # or private_key: {env: SNOWFLAKE_PRIVATE_KEY}
          warehouse: ML_WH
          database: ANALYTICS
          schema_name: PUBLIC
          read_tables:
            customer_features: {table: customer_features, date_column: day}
            segments: {query: "SELECT segment, label FROM ref.segments"}
          write_tables:
            scores: {table: customer_scores, date_column: day}
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import time
from collections.abc import Sequence
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, PrivateAttr, field_validator, model_validator

from mlx_plugins.data_sources.base import DataSource, TableInfo
from mlx_plugins.kernel.base import PluginConfig
from mlx_plugins.kernel.metadata import PluginMetadata

if TYPE_CHECKING:
    import polars as pl
    from snowflake.connector import SnowflakeConnection
    from snowflake.connector.cursor import SnowflakeCursor

_SECRET = {"secret": True}
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_QUOTED = re.compile(r'"((?:[^"]|"")+)"')
_MAX_IDENTIFIER = 255
_INSERT_CHUNK = 10_000
_AUTH_CODES = {390100, 390101, 390102, 390144, 390186, 390190, 390191, 390318, 394304, 394400}
"""Snowflake's codes for a refused login: wrong user or password, invalid JWT (key-pair), locked
or disabled user, expired password..."""


class SnowflakeError(RuntimeError):
    """A Snowflake read or write failed; the message names the table, the warehouse's reason
    and the fix."""


class SnowflakeCredentialsError(SnowflakeError):
    """The warehouse refused the login (wrong user, password or key); names account, user,
    method and the fix."""


class SnowflakeUnreachableError(SnowflakeError, ConnectionError):
    """The login got no answer (wrong account or host, DNS, network) after every attempt; names
    the account, the address tried and the fix. A ``ConnectionError``: a run's retry policy
    may try again later."""


class IdentifierError(ValueError):
    """A table, schema or column name that is not a Snowflake identifier; names the field, the
    value and the fix."""


# -- identifiers ------------------------------------------------------------------------------


def _identifier_value(name: str, where: str) -> str:
    """The identifier as Snowflake stores it: a plain name upper-cased, a quoted one exact."""
    if _PLAIN.fullmatch(name):
        value = name.upper()
    elif m := _QUOTED.fullmatch(name):
        value = m.group(1).replace('""', '"')
    else:
        raise IdentifierError(
            f"snowflake: {where} {name!r} is not a Snowflake identifier; write a plain name "
            "(letters, digits, _ and $, not starting with a digit) or put the exact name in double "
            'quotes, with any " inside doubled (e.g. \'"Mixed Case"\')'
        )
    if len(value) > _MAX_IDENTIFIER or any(ord(c) < 32 for c in value) or not value.strip():
        raise IdentifierError(
            f"snowflake: {where} {name!r} is not a Snowflake identifier (empty, longer than "
            f"{_MAX_IDENTIFIER} characters, or with control characters); fix the name"
        )
    return value


def quote_identifier(name: str, where: str = "identifier") -> str:
    """SQL text of one identifier, always double-quoted (``"`` doubled inside).

    Parameters
    ----------
    name
        ``customer_id`` (case-insensitive: sent as ``"CUSTOMER_ID"``) or ``'"Exact Name"'``.
    where
        What the name is, for the error (``tables.scores.date_column``).

    Raises
    ------
    IdentifierError
        Anything else (``x; DROP TABLE y``, ``a"b``, an empty or over-long name).
    """
    return '"' + _identifier_value(name, where).replace('"', '""') + '"'


def quote_qualified(name: str, where: str = "table") -> str:
    """SQL text of ``table``, ``schema.table`` or ``database.schema.table``, each part as
    :func:`quote_identifier` (dots inside double quotes are part of the name)."""
    parts: list[str] = []
    pos = 0
    complete = False
    while (m := _QUOTED.match(name, pos) or _PLAIN.match(name, pos)) is not None:
        parts.append(m.group(0))
        pos = m.end()
        complete = pos == len(name)
        if complete or name[pos] != ".":
            break
        pos += 1  # a dot: another part must follow
    if not complete or not 1 <= len(parts) <= 3:
        raise IdentifierError(
            f"snowflake: {where} {name!r} is not a table name; write table, schema.table or "
            "database.schema.table, each part a plain name or an exact name in double quotes"
        )
    return ".".join(quote_identifier(p, where) for p in parts)


def _output_name(name: str, lowercase: bool) -> str:
    value = _identifier_value(name, "column")
    return value.lower() if lowercase and _PLAIN.fullmatch(name) else value


# -- config -----------------------------------------------------------------------------------


class SnowflakeTable(PluginConfig):
    """One table of the ``snowflake`` source: a table (or view) or a query."""

    table: str | None = Field(
        default=None,
        description="table, schema.table or database.schema.table (plain names are "
        'case-insensitive; "Quoted" ones exact).',
    )
    query: str | None = Field(
        default=None,
        description="A SELECT whose result is the table; the day range and the columns are "
        "applied around it (SELECT cols FROM (query) WHERE day in range), and Snowflake pushes "
        "them into the query's own scan.",
    )
    date_column: str | None = Field(
        default=None,
        description="DATE (or TIMESTAMP) column that daily partitions are cut on; None: an "
        "unpartitioned table, read whole.",
    )
    columns: list[str] | None = Field(
        default=None,
        description="Only these columns are selected (default: all of the table's).",
    )
    description: str = ""

    @model_validator(mode="after")
    def _table_or_query(self) -> SnowflakeTable:
        if (self.table is None) == (self.query is None):
            raise ValueError("give either table: or query:, not both and not neither")
        return self

    @field_validator("query")
    @classmethod
    def _one_select(cls, value: str | None) -> str | None:
        if value is not None and ";" in value.strip().rstrip(";"):
            raise ValueError("query: must be a single SELECT statement (found ';' inside it)")
        return value.strip().rstrip(";") if value is not None else None


class SnowflakeWriteTable(PluginConfig):
    """A table that :meth:`SnowflakeSource.write` replaces day ranges of."""

    table: str = Field(description="table, schema.table or database.schema.table.")
    date_column: str = Field(description="DATE column of the frames written; the day range.")
    create: bool = Field(
        default=True,
        description="Create the table from the first frame's schema when it does not exist.",
    )


@functools.cache
def _snowflake_types() -> dict[type[pl.DataType], str]:
    """polars dtype classes -> the Snowflake column type written for them."""
    import polars as pl

    return {
        pl.Boolean: "BOOLEAN",
        pl.Int8: "NUMBER(38,0)",
        pl.Int16: "NUMBER(38,0)",
        pl.Int32: "NUMBER(38,0)",
        pl.Int64: "NUMBER(38,0)",
        pl.UInt8: "NUMBER(38,0)",
        pl.UInt16: "NUMBER(38,0)",
        pl.UInt32: "NUMBER(38,0)",
        pl.UInt64: "NUMBER(38,0)",
        pl.Float32: "FLOAT",
        pl.Float64: "FLOAT",
        pl.String: "VARCHAR",
        pl.Categorical: "VARCHAR",
        pl.Date: "DATE",
        pl.Datetime: "TIMESTAMP_NTZ",
        pl.Time: "TIME",
        pl.Binary: "BINARY",
    }


def _polars_type(type_name: str, precision: int | None, scale: int | None) -> pl.DataType:
    """The polars dtype a Snowflake result column becomes (``ResultMetadata`` type name)."""
    import polars as pl

    t = type_name.upper()
    if t == "FIXED":
        return pl.Int64() if not scale else pl.Float64()
    if t in ("REAL", "FLOAT", "DOUBLE", "DECFLOAT"):
        return pl.Float64()
    if t in ("TEXT", "VARIANT", "OBJECT", "ARRAY", "GEOGRAPHY", "GEOMETRY"):
        return pl.String()
    if t == "BOOLEAN":
        return pl.Boolean()
    if t == "DATE":
        return pl.Date()
    if t == "TIMESTAMP_NTZ":
        return pl.Datetime("us")
    if t in ("TIMESTAMP_LTZ", "TIMESTAMP_TZ"):
        return pl.Datetime("us", "UTC")
    if t == "TIME":
        return pl.Time()
    if t == "BINARY":
        return pl.Binary()
    return pl.String()


class SnowflakeSource(DataSource):
    """Tables and queries of a Snowflake warehouse (see the module doc).

    ``read`` returns exactly :meth:`schema`'s columns and dtypes: NUMBER(p,0) -> Int64,
    NUMBER(p,s>0)/FLOAT -> Float64, VARCHAR/VARIANT -> String, DATE -> Date, TIMESTAMP_NTZ ->
    Datetime(us), TIMESTAMP_LTZ/TZ -> Datetime(us, UTC), BOOLEAN, TIME, BINARY; the partition
    column is ``Date``. Column names are lower-cased (``lowercase_columns``) unless quoted.
    """

    metadata: ClassVar[PluginMetadata] = PluginMetadata(
        name="snowflake",
        kind="data_source",
        version="1.0.0",
        capabilities=("tables", "query", "pushdown", "arrow", "write_back", "partitioned:daily"),
        description="Snowflake tables and queries on dagster-snowflake, read as Arrow into polars.",
    )

    account: str = Field(description="Account identifier (xy12345.eu-west-1, org-account).")
    user: str = Field(description="Login name.")
    password: str | None = Field(
        default=None, json_schema_extra=_SECRET, description="Password ({env: NAME})."
    )
    private_key: str | None = Field(
        default=None,
        json_schema_extra=_SECRET,
        description="Key-pair login: the PEM private key, or its base64 ({env: NAME}).",
    )
    private_key_path: str | None = Field(
        default=None,
        description="Key-pair login from a file (a mounted secret): path of the PEM private key.",
    )
    private_key_password: str | None = Field(
        default=None, json_schema_extra=_SECRET, description="Passphrase of an encrypted key."
    )
    role: str | None = None
    warehouse: str | None = None
    database: str | None = None
    schema_name: str | None = Field(default=None, description="Default schema.")
    read_tables: dict[str, SnowflakeTable] = Field(description="Table name -> what to read.")
    write_tables: dict[str, SnowflakeWriteTable] = Field(
        default_factory=dict, description="Name -> table that write() replaces day ranges of."
    )
    lowercase_columns: bool = Field(
        default=True, description="Plain (unquoted) column names come back in lower case."
    )
    login_timeout_s: int = Field(default=30, ge=1, description="Seconds to log in.")
    query_timeout_s: int = Field(
        default=3600, ge=1, description="A query running longer is cancelled in the warehouse."
    )
    retries: int = Field(
        default=3, ge=1, le=10, description="Attempts on transient errors (network, 5xx)."
    )
    connection_args: dict[str, Any] = Field(
        default_factory=dict,
        description="More snowflake.connector.connect arguments (host, port, protocol, "
        "session_parameters...).",
    )

    _conn: Any = PrivateAttr(default=None)
    _stack: Any = PrivateAttr(default=None)
    _schemas: dict[str, dict[str, pl.DataType]] = PrivateAttr(default_factory=dict)
    _running: set[str] = PrivateAttr(default_factory=set)
    _lock: Any = PrivateAttr(default_factory=threading.RLock)
    _last_sql: dict[str, tuple[str, str | None]] = PrivateAttr(default_factory=dict)
    _names: dict[str, dict[str, str]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _validate(self) -> SnowflakeSource:
        given = [
            f
            for f in ("password", "private_key", "private_key_path")
            if getattr(self, f) is not None
        ]
        if len(given) > 1:
            raise ValueError(f"give one of password, private_key, private_key_path, not {given}")
        if not given and not self.connection_args.get("authenticator"):
            raise ValueError(
                "give password: {env: NAME} or private_key: {env: NAME} (or private_key_path) "
                "for a key-pair login, or connection_args.authenticator for SSO/OAuth"
            )
        for name, t in self.read_tables.items():
            if t.table is not None:
                quote_qualified(t.table, f"read_tables.{name}.table")
            if t.date_column is not None:
                quote_identifier(t.date_column, f"read_tables.{name}.date_column")
            for c in t.columns or ():
                quote_identifier(c, f"read_tables.{name}.columns")
            stored = {_identifier_value(c, "column") for c in t.columns or ()}
            if stored and t.date_column and _identifier_value(t.date_column, "") not in stored:
                raise ValueError(
                    f"read_tables.{name}.columns must include its date_column {t.date_column!r}"
                )
        for name, w in self.write_tables.items():
            quote_qualified(w.table, f"write_tables.{name}.table")
            quote_identifier(w.date_column, f"write_tables.{name}.date_column")
        for what in ("role", "warehouse", "database", "schema_name"):
            value = getattr(self, what)
            if isinstance(value, str):
                quote_identifier(value, what)
        return self

    # -- lifecycle --------------------------------------------------------------------------

    def open(self) -> None:
        """Nothing is connected here: the first query logs in (so a wrong password is a
        health-check result, not an error while the plugin opens)."""

    def close(self) -> None:
        """Cancel queries still running, then close the connection. Idempotent."""
        with self._lock:
            conn, stack = self._conn, self._stack
            self._conn = self._stack = None
            running = list(self._running)
            self._running.clear()
        if conn is None:
            return
        for qid in running:
            self._cancel(conn, qid)
        with contextlib.suppress(Exception):
            conn.close()
        with contextlib.suppress(Exception):
            stack.close()

    # -- the kind's methods -----------------------------------------------------------------

    def tables(self) -> dict[str, TableInfo]:
        return {
            name: TableInfo(
                name=name,
                description=t.description,
                partition_column=(
                    _output_name(t.date_column, self.lowercase_columns) if t.date_column else None
                ),
            )
            for name, t in self.read_tables.items()
        }

    def schema(self, table: str) -> dict[str, pl.DataType]:
        """Column -> polars dtype of ``table`` as :meth:`read` returns it, from the result
        metadata of its SELECT (described, not run: nothing is scanned).

        Raises:
            KeyError: no such table. SnowflakeError: the warehouse can't describe it (missing
            table or column; the message names it). SnowflakeCredentialsError: login refused.
        """

        self.table_info(table)
        if table not in self._schemas:
            self._schemas[table] = self._describe(table)
        return dict(self._schemas[table])

    def read(
        self,
        table: str,
        start: date | None = None,
        end: date | None = None,
        *,
        columns: Sequence[str] | None = None,
    ) -> pl.DataFrame:
        """Rows of ``table`` for ``start <= day <= end`` (either may be None), filtered in the
        warehouse; only ``columns`` (output names, default all of :meth:`schema`) are selected.

        Returns
        -------
        polars.DataFrame
            Columns and dtypes of :meth:`schema` (or its ``columns`` subset), in warehouse order
            (rows ordered by nothing: add ORDER BY in a ``query:`` if order matters).

        Raises
        ------
        KeyError
            No such table, or a column not in :meth:`schema`.
        SnowflakeError
            The query failed; names the table, the warehouse's message and the query id.
        SnowflakeCredentialsError
            The warehouse refused the login.
        """

        full = self.schema(table)
        wanted = list(full) if columns is None else list(columns)
        missing = [c for c in wanted if c not in full]
        if missing:
            raise KeyError(
                f"snowflake table {table!r} has no column {missing[0]!r}; it has: {', '.join(full)}"
            )
        sql, params = self.select_sql(table, start, end, columns=wanted)
        schema = {c: full[c] for c in wanted}
        frames = self._with_retries(lambda: self._fetch(table, sql, params))
        return _conform(frames, schema, table)

    # -- SQL --------------------------------------------------------------------------------

    def select_sql(
        self,
        table: str,
        start: date | None = None,
        end: date | None = None,
        *,
        columns: Sequence[str] | None = None,
    ) -> tuple[str, list[Any]]:
        """The SELECT :meth:`read` sends and its bound parameters (qmark style).

        ``columns`` are output names (default: the configured columns, or ``*``). The day range
        becomes ``"DAY" >= ? AND "DAY" < ?`` bound to ``start`` and ``end + 1 day`` (a
        half-open range, right for DATE and TIMESTAMP columns alike, and prunable by
        Snowflake's micro-partition metadata).
        """
        spec = self.read_tables[self.table_info(table).name]
        by_output = self._column_names(table)
        if columns is not None:
            select = ", ".join(by_output.get(c) or quote_identifier(c, "column") for c in columns)
        elif spec.columns:
            select = ", ".join(
                quote_identifier(c, f"read_tables.{table}.columns") for c in spec.columns
            )
        else:
            select = "*"
        source = (
            quote_qualified(spec.table, f"read_tables.{table}.table")
            if spec.table is not None
            else f'({spec.query}) AS "MLX_QUERY"'
        )
        sql = f"SELECT {select} FROM {source}"
        params: list[Any] = []
        if spec.date_column and (start is not None or end is not None):
            day = quote_identifier(spec.date_column, f"read_tables.{table}.date_column")
            where = []
            if start is not None:
                where.append(f"{day} >= ?")
                params.append(start)
            if end is not None:
                where.append(f"{day} < ?")
                params.append(end + timedelta(days=1))
            sql += " WHERE " + " AND ".join(where)
        return sql, params

    def _column_names(self, table: str) -> dict[str, str]:
        """Output column name -> its SQL text (the stored name, quoted), once described."""
        return self._names.get(table, {})

    # -- writing ----------------------------------------------------------------------------

    def write(self, target: str, frame: pl.DataFrame, start: date, end: date) -> int:
        """Replace the rows of days ``start..end`` (inclusive) of write table ``target`` by
        ``frame``, in one transaction: a re-run of the same range leaves the same rows, and a
        failure leaves the previous rows.

        Parameters
        ----------
        target
            A key of ``write_tables``.
        frame
            The rows; its date column (``write_tables.<target>.date_column``, as output name)
            must be ``Date`` with every value inside ``start..end``. Column names map to
            Snowflake as identifiers do (plain names case-insensitive).

        Returns
        -------
        int
            Rows inserted.

        Raises
        ------
        KeyError
            No such write table.
        ValueError
            The frame has no date column, nulls or days outside the range.
        SnowflakeError
            The transaction failed (rolled back); names the table and the reason.
        """
        import polars as pl

        if target not in self.write_tables:
            raise KeyError(
                f"snowflake has no write table {target!r}; it has: "
                f"{', '.join(self.write_tables) or 'none (add write_tables: to the config)'}"
            )
        spec = self.write_tables[target]
        date_col = _output_name(spec.date_column, self.lowercase_columns)
        if date_col not in frame.columns:
            raise ValueError(
                f"snowflake write {target!r}: the frame has no date column {date_col!r} "
                f"(columns: {', '.join(frame.columns)})"
            )
        days = frame.get_column(date_col)
        if days.dtype != pl.Date:
            raise ValueError(
                f"snowflake write {target!r}: column {date_col!r} is {days.dtype}, expected Date"
            )
        outside = frame.filter(days.is_null() | (days < start) | (days > end))
        if outside.height:
            bad = outside.get_column(date_col)[0]
            raise ValueError(
                f"snowflake write {target!r}: {outside.height} rows have {date_col} = {bad}, "
                f"outside {start}..{end}; filter the frame to the range written"
            )
        table_sql = quote_qualified(spec.table, f"write_tables.{target}.table")
        day_sql = quote_identifier(spec.date_column, f"write_tables.{target}.date_column")
        cols = [self._write_identifier(c) for c in frame.columns]
        insert = (
            f"INSERT INTO {table_sql} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
        )
        delete = f"DELETE FROM {table_sql} WHERE {day_sql} >= ? AND {day_sql} < ?"
        create = None
        if spec.create:
            create = (
                f"CREATE TABLE IF NOT EXISTS {table_sql} ("
                + ", ".join(
                    f"{c} {_snowflake_type(frame.schema[name], target, name)}"
                    for c, name in zip(cols, frame.columns, strict=True)
                )
                + ")"
            )
        rows = frame.rows()

        def transaction() -> int:
            conn = self._connection()
            cur = conn.cursor()
            try:
                if create is not None:
                    self._execute(cur, create, None)
                self._execute(cur, "BEGIN", None)
                try:
                    self._execute(cur, delete, [start, end + timedelta(days=1)])
                    for i in range(0, len(rows), _INSERT_CHUNK):
                        cur.executemany(insert, rows[i : i + _INSERT_CHUNK])
                    self._execute(cur, "COMMIT", None)
                except BaseException:
                    with contextlib.suppress(Exception):
                        cur.execute("ROLLBACK")
                    raise
            finally:
                cur.close()
            return len(rows)

        try:
            return int(self._with_retries(transaction))
        except SnowflakeError:
            raise
        except Exception as exc:
            raise _sql_error(exc, f"writing {target!r} ({spec.table}) for {start}..{end}") from exc

    def _write_identifier(self, column: str) -> str:
        if _PLAIN.fullmatch(column):
            return quote_identifier(column, "column")
        return '"' + column.replace('"', '""') + '"'  # an exact name from code, quoted

    # -- health -----------------------------------------------------------------------------

    def _probe(self) -> str:
        conn = self._connection()
        cur = conn.cursor()
        try:
            self._execute(cur, "SELECT 1", None)
        finally:
            cur.close()
        described = [f"{name} ({len(self.schema(name))} columns)" for name in self.read_tables]
        return f"logged in to {self.account} as {self.user}; tables: {', '.join(described)}"

    # -- internals --------------------------------------------------------------------------

    def _connection(self) -> SnowflakeConnection:
        with self._lock:
            if self._conn is None:
                try:
                    self._conn, self._stack = self._with_retries(self._connect)
                except SnowflakeError:
                    raise
                except Exception as exc:
                    if not _transient(exc):
                        raise
                    raise SnowflakeUnreachableError(self._unreachable(exc)) from exc
            return self._conn

    def _unreachable(self, exc: BaseException) -> str:
        """The message for a login that never got an answer (DNS, refused, timed out)."""
        args = self.connection_args
        where = (
            f"{args.get('protocol', 'https')}://{args['host']}:{args.get('port', 443)}"
            if args.get("host")
            else f"{self.account}.snowflakecomputing.com"
        )
        return (
            f"snowflake: cannot reach account {self.account!r} at {where} after {self.retries} "
            f"attempt(s): {type(exc).__name__}: {_message(exc)}. Fix: check account (the "
            "account identifier, e.g. xy12345.eu-west-1 or myorg-myaccount), connection_args "
            "host/port if set, and that this machine can reach Snowflake (proxy, firewall); "
            "login_timeout_s bounds each attempt"
        )

    def _connect(self) -> tuple[Any, contextlib.ExitStack]:
        from dagster_snowflake import SnowflakeResource
        from snowflake.connector.errors import DatabaseError

        resource = SnowflakeResource(
            account=self.account,
            user=self.user,
            password=self.password,
            private_key=self.private_key,
            private_key_path=self.private_key_path,
            private_key_password=self.private_key_password,
            role=self.role,
            warehouse=self.warehouse,
            database=self.database,
            schema=self.schema_name,
            autocommit=True,
            paramstyle="qmark",
            login_timeout=self.login_timeout_s,
            authenticator=self.connection_args.get("authenticator"),
            additional_snowflake_connection_args=dict(self.connection_args) or None,
        )
        stack = contextlib.ExitStack()
        try:
            conn = stack.enter_context(resource.get_connection())
        except DatabaseError as exc:
            stack.close()
            if getattr(exc, "errno", None) in _AUTH_CODES or _refused(exc):
                key_pair = self.private_key is not None or self.private_key_path is not None
                method = "key pair" if key_pair else "password"
                fix_field = "the private key (and private_key_password)" if key_pair else "password"
                raise SnowflakeCredentialsError(
                    f"snowflake: account {self.account!r} refused the login of user "
                    f"{self.user!r} by {method}: {_message(exc)}. Fix: check user and "
                    f"{fix_field} in the composition (or the environment variable it reads "
                    "with {env: ...}); for a key pair, the user's RSA_PUBLIC_KEY must match"
                ) from None
            raise
        except (ValueError, OSError) as exc:  # dagster-snowflake: a key it can't read or load
            stack.close()
            if self.private_key is None and self.private_key_path is None:
                raise
            where = (
                f"private_key_path {self.private_key_path!r}"
                if self.private_key_path
                else "private_key"
            )
            raise SnowflakeCredentialsError(
                f"snowflake: the {where} for user {self.user!r} can't be read or loaded ({exc}). "
                "Fix: give the PEM text (or its base64) of a PKCS#8 key, or the path of a "
                "readable PEM file, and private_key_password if it is encrypted"
            ) from None
        return conn, stack

    def _with_retries(self, fn: Any) -> Any:
        import tenacity

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retries),
            wait=tenacity.wait_exponential(multiplier=0.5, max=10) + tenacity.wait_random(0, 0.5),
            retry=tenacity.retry_if_exception(_transient),
            before_sleep=self._reset_after_error,
            reraise=True,
        )
        return retrying(fn)

    def _reset_after_error(self, state: Any) -> None:
        """Before a retry: drop the connection (it may be the broken part)."""
        self.close()

    def _execute(self, cur: SnowflakeCursor, sql: str, params: Sequence[Any] | None) -> None:
        cur.execute(sql, params, timeout=self.query_timeout_s)

    def _fetch(self, table: str, sql: str, params: list[Any]) -> list[pl.DataFrame]:
        """Run ``sql`` asynchronously, wait (cancelling it if interrupted), fetch Arrow."""

        conn = self._connection()
        cur = conn.cursor()
        qid: str | None = None
        try:
            try:
                submitted = cur.execute_async(sql, params, timeout=self.query_timeout_s)
                qid = str(submitted["queryId"])
                self._last_sql[table] = (sql, qid)
                with self._lock:
                    self._running.add(qid)
                self._wait(conn, qid)
                cur.get_results_from_sfqid(qid)
                frames = [
                    _from_arrow(batch)
                    for batch in cur.fetch_arrow_batches(force_microsecond_precision=True)
                ]
            except BaseException as exc:
                if qid is not None and not isinstance(exc, Exception):
                    self._cancel(conn, qid)  # interrupted (step terminated, Ctrl-C)
                if isinstance(exc, Exception) and not _transient(exc):
                    raise _sql_error(exc, f"reading table {table!r}", qid) from exc
                raise
            finally:
                if qid is not None:
                    with self._lock:
                        self._running.discard(qid)
        finally:
            with contextlib.suppress(Exception):
                cur.close()
        return frames

    def _wait(self, conn: Any, qid: str) -> None:
        delay = 0.02
        deadline = time.monotonic() + self.query_timeout_s
        while conn.is_still_running(conn.get_query_status_throw_if_error(qid)):
            if time.monotonic() > deadline:
                self._cancel(conn, qid)
                raise SnowflakeError(
                    f"snowflake: query {qid} ran longer than query_timeout_s="
                    f"{self.query_timeout_s} and was cancelled; raise query_timeout_s or read "
                    "fewer days per run"
                )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    @staticmethod
    def _cancel(conn: Any, qid: str) -> None:
        """Ask the warehouse to stop ``qid`` (best effort: the step is going away anyway)."""
        with contextlib.suppress(Exception):
            conn.cursor().abort_query(qid)

    def _describe(self, table: str) -> dict[str, pl.DataType]:
        import polars as pl

        spec = self.read_tables[table]
        sql, _ = self.select_sql(table)

        def describe() -> list[Any]:
            cur = self._connection().cursor()
            try:
                return list(cur.describe(sql) or [])
            finally:
                cur.close()

        try:
            meta = self._with_retries(describe)
        except SnowflakeError:
            raise
        except Exception as exc:
            raise _sql_error(exc, f"describing table {table!r}") from exc
        from snowflake.connector.constants import FIELD_ID_TO_NAME

        out: dict[str, pl.DataType] = {}
        stored: dict[str, str] = {}
        for col in meta:
            plain = _PLAIN.fullmatch(col.name) and col.name == col.name.upper()
            name = col.name.lower() if self.lowercase_columns and plain else col.name
            if name in out:
                raise SnowflakeError(
                    f"snowflake table {table!r}: two columns are named {name!r} once lower-cased;"
                    " set lowercase_columns: false or rename one in a query:"
                )
            type_name = FIELD_ID_TO_NAME.get(col.type_code, "TEXT")
            out[name] = _polars_type(type_name, col.precision, col.scale)
            stored[name] = '"' + col.name.replace('"', '""') + '"'
        if spec.date_column:
            date_name = _output_name(spec.date_column, self.lowercase_columns)
            if date_name not in out:
                raise SnowflakeError(
                    f"snowflake table {table!r}: date_column {spec.date_column!r} is not one of "
                    f"its columns ({', '.join(out)}); fix date_column"
                )
            out[date_name] = pl.Date()
        self._names[table] = stored
        return out

    def read_lineage(self, table: str) -> dict[str, Any] | None:
        """``{"sql": ..., "query_id": ..., "account": ..., "database": ...}`` of the last read
        of ``table`` (the pushed-down SQL as sent, its parameters not included)."""
        last = self.last_query(table)
        if last is None:
            return None
        sql, query_id = last
        return {
            "sql": sql,
            "query_id": query_id,
            "account": self.account,
            "database": self.database,
        }

    def last_query(self, table: str) -> tuple[str, str | None] | None:
        """(SQL, Snowflake query id) of the last read of ``table`` in this session, for
        lineage; None before the first read."""
        return self._last_sql.get(table)


# -- helpers ----------------------------------------------------------------------------------


def _from_arrow(batch: Any) -> pl.DataFrame:
    import polars as pl

    frame = pl.from_arrow(batch, rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _conform(
    frames: list[pl.DataFrame], schema: dict[str, pl.DataType], table: str
) -> pl.DataFrame:
    import polars as pl

    if not frames:
        return pl.DataFrame(schema=schema)
    out = []
    for f in frames:
        f = f.rename(dict(zip(f.columns, schema, strict=True)))
        casts = []
        for name, dtype in schema.items():
            col = pl.col(name)
            if dtype == pl.Date() and isinstance(f.schema[name], pl.Datetime):
                casts.append(col.dt.date())  # a TIMESTAMP partition column
            else:
                casts.append(col.cast(dtype))
        try:
            out.append(f.select(casts))
        except pl.exceptions.PolarsError as exc:
            raise SnowflakeError(
                f"snowflake table {table!r}: a result column does not fit the schema "
                f"{schema}: {exc}"
            ) from exc
    return pl.concat(out, how="vertical", rechunk=False) if len(out) > 1 else out[0]


def _snowflake_type(dtype: pl.DataType, target: str, column: str) -> str:

    for base, sql in _snowflake_types().items():
        if isinstance(dtype, base):
            return sql
    raise ValueError(
        f"snowflake write {target!r}: column {column!r} has dtype {dtype}, which has no "
        "Snowflake column type here; cast it (to String, Float64...) or create the table first "
        "and set create: false"
    )


def _message(exc: BaseException) -> str:
    msg = getattr(exc, "raw_msg", None) or getattr(exc, "msg", None) or str(exc)
    return str(msg).strip().splitlines()[0] if str(msg).strip() else type(exc).__name__


def _refused(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "incorrect username or password" in text or "jwt token is invalid" in text


def _transient(exc: BaseException) -> bool:
    """Network trouble and the warehouse's 5xx / throttling: worth another attempt. A refused
    login, a SQL error or a bad value is not."""
    if isinstance(exc, (SnowflakeCredentialsError, SnowflakeUnreachableError, IdentifierError)):
        return False
    try:
        from snowflake.connector import errors
    except ImportError:  # pragma: no cover - the snowflake extra is not installed
        return False
    if getattr(exc, "errno", None) in _AUTH_CODES or _refused(exc):
        return False
    http = (
        errors.ServiceUnavailableError,
        errors.GatewayTimeoutError,
        errors.InternalServerError,
        errors.BadGatewayError,
        errors.OtherHTTPRetryableError,
    )
    return isinstance(exc, (errors.OperationalError, *http, ConnectionError, TimeoutError))


def _sql_error(exc: BaseException, doing: str, qid: str | None = None) -> SnowflakeError:
    where = f" (query id {qid})" if qid else ""
    if isinstance(exc, SnowflakeError):
        return exc
    return SnowflakeError(
        f"snowflake: {doing} failed{where}: {type(exc).__name__}: {_message(exc)}. Fix: check "
        "that the table and columns exist and the role can use them (mlx health describes every "
        "table)"
    )


__all__ = [
    "IdentifierError",
    "SnowflakeCredentialsError",
    "SnowflakeError",
    "SnowflakeSource",
    "SnowflakeTable",
    "SnowflakeUnreachableError",
    "SnowflakeWriteTable",
    "quote_identifier",
    "quote_qualified",
]

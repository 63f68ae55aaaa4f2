"""The audit log: every plugin call, append-only, in a SQL database (SQLAlchemy).

Where: ``MLX_AUDIT_URL`` (any SQLAlchemy URL, e.g. ``postgresql+psycopg://.../mlx``) or, by
default, SQLite at ``<MLX home>/audit/audit.sqlite``. One row per plugin call (see
:class:`mlx_plugins.kernel.telemetry.PluginCall`): who (user, sensor or schedule), run id, job,
plugin, kind, version, method, asset, partition, when (UTC), outcome, duration, rows/bytes of a
frame result, trace id, and the redacted error text. Never arguments, results or config values.

Append-only: :class:`AuditLog` has no update or delete; on SQLite, triggers ``RAISE(ABORT)`` on
any ``UPDATE`` or ``DELETE`` of ``mlx_audit`` (on Postgres, grant the writer ``INSERT, SELECT``
only, see ``docs/observability.md``).
"""

from __future__ import annotations

import atexit
import datetime as dt
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from mlx_plugins.kernel import telemetry as kt
from mlx_plugins.kernel.secrets import redact

METADATA = sa.MetaData()
AUDIT = sa.Table(
    "mlx_audit",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("who", sa.String(200), nullable=False),
    sa.Column("run_id", sa.String(64), index=True),
    sa.Column("job", sa.String(200)),
    sa.Column("plugin", sa.String(100), nullable=False, index=True),
    sa.Column("kind", sa.String(50), nullable=False),
    sa.Column("version", sa.String(50), nullable=False),
    sa.Column("method", sa.String(100), nullable=False),
    sa.Column("asset", sa.String(200)),
    sa.Column("partition", sa.String(100)),
    sa.Column("outcome", sa.String(10), nullable=False),
    sa.Column("duration_s", sa.Float, nullable=False),
    sa.Column("rows", sa.BigInteger),
    sa.Column("bytes", sa.BigInteger),
    sa.Column("trace_id", sa.String(32)),
    sa.Column("error", sa.Text),
)

_SQLITE_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS mlx_audit_no_update BEFORE UPDATE ON mlx_audit "
    "BEGIN SELECT RAISE(ABORT, 'mlx_audit is append-only: rows cannot be updated'); END",
    "CREATE TRIGGER IF NOT EXISTS mlx_audit_no_delete BEFORE DELETE ON mlx_audit "
    "BEGIN SELECT RAISE(ABORT, 'mlx_audit is append-only: rows cannot be deleted'); END",
)

COLUMNS = tuple(c.name for c in AUDIT.columns)


def default_url(home: str | os.PathLike[str] | None = None) -> str:
    """``MLX_AUDIT_URL`` if set, else SQLite at ``<home>/audit/audit.sqlite`` (``home``
    defaults to the MLX home)."""
    if os.environ.get("MLX_AUDIT_URL"):
        return os.environ["MLX_AUDIT_URL"]
    if home is None:
        from mlx_resources.platform import Platform

        home = Platform(home="").home_path
    path = Path(home) / "audit" / "audit.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def safe_url(url: str) -> str:
    """``url`` with its password hidden (``postgresql://mlx:***@db/mlx``), for messages."""
    try:
        return redact(sa.make_url(url).render_as_string(hide_password=True))
    except Exception:
        return "<audit database URL>"


class AuditUrlError(ValueError):
    """The audit database cannot be opened: the message names ``MLX_AUDIT_URL`` (password
    hidden) or the default SQLite file, why, and the fix. Never includes credentials."""


def _where(url: str) -> str:
    if os.environ.get("MLX_AUDIT_URL") == url:
        return f"MLX_AUDIT_URL={safe_url(url)}"
    return f"the audit database {safe_url(url)}"


def _open_error(url: str, exc: BaseException) -> AuditUrlError:
    """``exc`` (raised opening ``url``) as one clear line; the URL's password is never in it
    (SQLAlchemy repeats an unparseable URL whole in its message, so that one is not quoted)."""
    where = _where(url)
    example = "e.g. sqlite:////var/lib/mlx/audit.sqlite or postgresql+psycopg://mlx:...@db/mlx"
    if isinstance(exc, sa.exc.ArgumentError) and not isinstance(exc, sa.exc.NoSuchModuleError):
        return AuditUrlError(
            f"{where} is not a database URL SQLAlchemy can parse; fix: set MLX_AUDIT_URL to a "
            f"URL ({example}), or unset it for the default SQLite file under the MLX home"
        )
    try:
        parsed = sa.make_url(url)
    except Exception:
        parsed = None
    driver = parsed.drivername if parsed is not None else "?"
    if isinstance(exc, sa.exc.NoSuchModuleError):
        return AuditUrlError(
            f"{where}: SQLAlchemy has no dialect {driver!r}; fix: use a known scheme ({example})"
            ", or install the package that provides that dialect"
        )
    if isinstance(exc, ImportError):
        module = getattr(exc, "name", None) or "its driver"
        return AuditUrlError(
            f"{where}: the database driver for {driver!r} is not installed ({module}); fix: "
            f"pip install {module}, or use another URL ({example})"
        )
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    text = reason[0] if reason else type(exc).__name__
    if parsed is not None and parsed.password:
        text = text.replace(str(parsed.password), "***")
    text = redact(text)
    if parsed is not None and parsed.get_backend_name() == "sqlite":
        fix = (
            f"point MLX_AUDIT_URL at a SQLite file whose folder exists and is writable "
            f"(database: {parsed.database!r})"
        )
    else:
        fix = "check the host, port, database name and credentials of MLX_AUDIT_URL"
    return AuditUrlError(f"{where} cannot be opened ({type(exc).__name__}: {text}); fix: {fix}")


class AuditLog:
    """Append-only access to the audit table at ``url`` (created on first use).

    Methods: :meth:`record` (one :class:`~mlx_plugins.kernel.telemetry.PluginCall`),
    :meth:`query` (filters), :meth:`listener` (install as a kernel call listener). There is
    deliberately no update or delete.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        try:
            self._open(url)
        except Exception as exc:
            raise _open_error(url, exc) from None

    def _open(self, url: str) -> None:
        self._engine = sa.create_engine(url, future=True)
        if self._engine.dialect.name == "sqlite":

            @sa.event.listens_for(self._engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA busy_timeout=10000")
                cur.close()

        METADATA.create_all(self._engine)
        if self._engine.dialect.name == "sqlite":
            with self._engine.begin() as conn:
                for ddl in _SQLITE_TRIGGERS:
                    conn.exec_driver_sql(ddl)

    BATCH = 256
    """Rows buffered before a write; :meth:`flush` (each step's end, the run's end, process
    exit) writes the rest. One transaction per batch keeps a call's cost in microseconds."""

    def record(self, call: kt.PluginCall) -> None:
        """Append one row for ``call`` (string fields redacted); written by :meth:`flush`,
        at the latest when :attr:`BATCH` rows are pending."""
        ctx = call.context
        row = {
            "at": dt.datetime.fromtimestamp(call.started_at, tz=dt.UTC),
            "who": redact(ctx.get("who") or f"user:{os.environ.get('USER', 'unknown')}"),
            "run_id": ctx.get("run_id"),
            "job": ctx.get("job"),
            "plugin": call.plugin,
            "kind": call.kind,
            "version": call.version,
            "method": call.method,
            "asset": ctx.get("asset"),
            "partition": ctx.get("partition"),
            "outcome": call.outcome,
            "duration_s": call.duration_s,
            "rows": call.rows,
            "bytes": call.bytes,
            "trace_id": call.trace_id,
            "error": redact(call.error) if call.error else None,
        }
        with self._lock:
            self._pending.append(row)
            full = len(self._pending) >= self.BATCH
        if full:
            self.flush()

    def flush(self) -> None:
        """Write the pending rows in one transaction."""
        with self._lock:
            rows, self._pending = self._pending, []
            if rows:
                with self._engine.begin() as conn:
                    conn.execute(AUDIT.insert(), rows)

    def query(
        self,
        *,
        plugin: str | None = None,
        run_id: str | None = None,
        since: dt.datetime | None = None,
        outcome: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Rows (dicts keyed by :data:`COLUMNS`, oldest first) matching every given filter;
        ``since`` is inclusive and timezone-aware (naive means UTC)."""
        self.flush()
        q = sa.select(AUDIT).order_by(AUDIT.c.id)
        if plugin:
            q = q.where(AUDIT.c.plugin == plugin)
        if run_id:
            q = q.where(AUDIT.c.run_id == self.resolve_run(run_id))
        if outcome:
            q = q.where(AUDIT.c.outcome == outcome)
        if since is not None:
            if since.tzinfo is None:
                since = since.replace(tzinfo=dt.UTC)
            q = q.where(AUDIT.c.at >= since)
        if limit:
            q = q.limit(limit)
        with self._engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def resolve_run(self, run_id: str) -> str:
        """The full run id that ``run_id`` (whole, or a prefix such as the 8 characters the
        console prints) names; ``run_id`` itself when no recorded run starts with it. Raises
        ``ValueError`` listing the candidates when the prefix names several runs."""
        with self._engine.connect() as conn:
            exact = conn.execute(
                sa.select(AUDIT.c.run_id).where(AUDIT.c.run_id == run_id).limit(1)
            ).first()
            if exact is not None:
                return run_id
            found = sorted(
                r[0]
                for r in conn.execute(
                    sa.select(AUDIT.c.run_id)
                    .where(AUDIT.c.run_id.startswith(run_id, autoescape=True))
                    .distinct()
                    .limit(6)
                )
            )
        if len(found) > 1:
            shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
            raise ValueError(
                f"--run {run_id!r} is the start of several runs ({shown}); fix: give more of "
                "the run id"
            )
        return found[0] if found else run_id

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.query())

    def dispose(self) -> None:
        """Write pending rows, then close the engine's connections."""
        self.flush()
        self._engine.dispose()


_INSTALLED: dict[str, AuditLog] = {}
_LOCK = threading.Lock()


def install(url: str | None = None) -> AuditLog:
    """Record every plugin call of this process in the audit log at ``url`` (default
    :func:`default_url`); idempotent per URL. Returns the log."""
    url = url or default_url()
    with _LOCK:
        log = _INSTALLED.get(url)
        if log is None:
            for old in _INSTALLED.values():  # one sink at a time: the latest home wins
                kt.remove_call_listener(old.record)
            log = _INSTALLED[url] = AuditLog(url)
        kt.add_call_listener(log.record)
        return log


def install_for_run(home: Path | None, warn: Any = None) -> AuditLog | None:
    """:func:`install` for a run of the platform whose MLX home is ``home`` (``None``: the
    default home). A database that cannot be opened is reported through ``warn`` and the run
    goes on without an audit log (``None``)."""
    try:
        return install(default_url(home))
    except Exception as exc:
        if warn is not None:
            warn(f"audit log unavailable: {redact(str(exc))}")
        return None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``--since``: an ISO date or time (``2026-11-30``, ``2026-11-30T05:00``, naive = UTC) or
    an age (``90s``, ``30m``, ``2h``, ``7d``). Raises ``ValueError`` naming the value and the
    accepted forms."""
    now = now or dt.datetime.now(dt.UTC)
    t = text.strip()
    if len(t) > 1 and t[-1] in _UNITS and t[:-1].isdigit():
        return now - dt.timedelta(seconds=int(t[:-1]) * _UNITS[t[-1]])
    try:
        when = dt.datetime.fromisoformat(t)
    except ValueError:
        raise ValueError(
            f"--since {text!r} is neither an ISO date/time nor an age; use e.g. "
            "2026-11-30, 2026-11-30T05:00 or 30m, 2h, 7d"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def audit_command(
    *,
    plugin: str | None,
    run: str | None,
    since: str | None,
    outcome: str | None,
    as_json: bool,
    limit: int | None = None,
    out: Any = None,
) -> int:
    """``mlx audit``: print matching rows (a table, or JSON lines with ``--json``); ``run`` may
    be a unique prefix of the run id. Exit code 0, or 2 with one line for a bad ``--since``, an
    ambiguous ``--run`` prefix or an audit database that cannot be opened (``MLX_AUDIT_URL``)."""
    import json
    import sys

    out = out or sys.stdout
    try:
        when = parse_since(since) if since else None
    except ValueError as exc:
        print(f"mlx audit: {exc}", file=sys.stderr)
        return 2
    try:
        rows = AuditLog(default_url()).query(
            plugin=plugin, run_id=run, since=when, outcome=outcome, limit=limit
        )
    except AuditUrlError as exc:
        print(f"mlx audit: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # an ambiguous --run prefix
        print(f"mlx audit: {exc}", file=sys.stderr)
        return 2
    except sa.exc.SQLAlchemyError as exc:
        print(f"mlx audit: {_open_error(default_url(), exc)}", file=sys.stderr)
        return 2
    if as_json:
        for r in rows:
            out.write(json.dumps({**r, "at": r["at"].isoformat()}) + "\n")
        return 0
    for r in rows:
        target = r["asset"] or "-"
        if r["partition"]:
            target += f"[{r['partition']}]"
        size = f" rows={r['rows']}" if r["rows"] is not None else ""
        out.write(
            f"{r['at']:%Y-%m-%d %H:%M:%S} {r['outcome']:<5} {r['kind']}.{r['plugin']}."
            f"{r['method']} {target} {r['duration_s'] * 1000:.1f}ms{size} "
            f"{r['who']} run={r['run_id'] or '-'} trace={r['trace_id'] or '-'}\n"
        )
    if not rows:
        out.write("no audit rows match\n")
    return 0


def flush_all() -> None:
    """Write every installed log's pending rows (a step's or run's end, process exit)."""
    for log in list(_INSTALLED.values()):
        try:
            log.flush()
        except Exception as exc:  # reported, never fails the run
            import logging

            logging.getLogger("mlx.telemetry").warning(
                "could not write audit rows to %s: %s", safe_url(log.url), redact(str(exc))
            )


atexit.register(flush_all)


def uninstall() -> None:
    """Stop recording (tests)."""
    with _LOCK:
        for log in _INSTALLED.values():
            kt.remove_call_listener(log.record)
            log.dispose()
        _INSTALLED.clear()


__all__ = [
    "AUDIT",
    "COLUMNS",
    "AuditLog",
    "AuditUrlError",
    "audit_command",
    "default_url",
    "flush_all",
    "install",
    "install_for_run",
    "parse_since",
    "safe_url",
    "uninstall",
]

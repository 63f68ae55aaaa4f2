"""A local weighted router: nginx from the system package manager, in a run folder of its own.

:class:`NginxRouter` writes an nginx configuration from a :class:`~.table.RoutingTable` (one
``upstream`` per served version, ``split_clients`` on the request id for the percent split),
starts nginx on a loopback port, changes the split by rewriting the configuration atomically and
reloading (SIGHUP to the master, as ``nginx -s reload`` does: new workers take new requests at
once, old workers finish the requests they hold, so no connection is dropped), and stops it.

Everything nginx writes stays under the run folder, never in root-owned paths::

    <run_dir>/nginx.conf            the live configuration (replaced atomically)
    <run_dir>/nginx.conf.candidate  the last configuration tried (kept when nginx refused it)
    <run_dir>/nginx.pid             the master's pid (nginx writes it)
    <run_dir>/router.json           host, port, master identity and routing table (for attach)
    <run_dir>/last_port             the last router's port, reused by the next start when free
    <run_dir>/logs/error.log        nginx's own log
    <run_dir>/logs/access.log       one line a request: time, status, version, upstream, seconds
    <run_dir>/temp/                 request and response buffers

Every answer carries ``X-MLX-Version: <version>``, the version that served it. ``GET
/_mlx/router`` answers nginx's ``stub_status`` (active connections: the router's in-flight
requests + 1).

The router outlives the process that started it (an asset starts it, a later run changes its
weights or stops it): :meth:`NginxRouter.attach` finds a running one from its run folder.
"""

from __future__ import annotations

import contextlib
import math
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mlx_plugins.kernel.atomic import atomic_open
from mlx_plugins.model_servers.ports import free_port, port_is_free
from mlx_plugins.model_servers.routing.table import RoutingTable

STATUS_PATH = "/_mlx/router"
VERSION_HEADER = "X-MLX-Version"
_ERROR_LINE = re.compile(
    r"\[(emerg|alert|crit|error)\] (?P<msg>.*?) in (?P<file>/\S+):(?P<line>\d+)"
)
_EXTRA_DIRECTIVE = re.compile(r"^[^{}#\n]+;$")


class RouterError(RuntimeError):
    """nginx is missing, could not start, did not reload in time, or is not running; the message
    names the run folder or log file and what to do."""


class NginxConfigError(RouterError):
    """nginx refused a configuration (``nginx -t``).

    Attributes
    ----------
    file
        The configuration file nginx named (kept on disk for inspection).
    line
        1-based line number in ``file`` (0 when nginx named none).
    detail
        nginx's own message, e.g. ``unknown directive "proxy_bogus"``.
    """

    def __init__(self, message: str, file: str, line: int, detail: str) -> None:
        super().__init__(message)
        self.file = file
        self.line = line
        self.detail = detail


class NginxSettings(BaseModel):
    """How the router's nginx runs (all times in seconds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    binary: str = "nginx"
    """The nginx executable (a name on PATH or a path); ``apt-get install -y nginx``."""
    worker_processes: int = Field(default=1, ge=1, le=64)
    worker_connections: int = Field(default=1024, ge=16)
    connect_timeout_s: float = Field(default=2.0, gt=0)
    """Connecting to a replica; a refused or timed-out connect is retried on the version's other
    replicas (``proxy_next_upstream``)."""
    read_timeout_s: float = Field(default=60.0, gt=0)
    """Waiting for a replica's answer."""
    upstream_keepalive: int = Field(default=0, ge=0)
    """Idle connections kept open to each version's replicas (0: a connection per request; on
    loopback that costs ~0.1 ms and rules out races with a replica closing an idle one)."""
    client_keepalive_s: float = Field(default=0.0, ge=0)
    """How long a client's idle connection stays open. 0 (default): one request per connection
    (``Connection: close``). With keep-alive, a reload makes the old workers close their idle
    client connections, and a client that sends on one at that very moment gets "server
    disconnected" (HTTP/1.1's close race) - not a lost request to a client that retries, but a
    failure to one that does not; on loopback a new connection costs ~0.1 ms."""
    reload_timeout_s: float = Field(default=10.0, gt=0)
    """How long a reload may take until the new workers serve."""
    drain_timeout_s: float = Field(default=30.0, gt=0)
    """How long old workers may take to finish their requests after a reload (nginx's
    ``worker_shutdown_timeout``: after it, their remaining connections are closed)."""
    start_timeout_s: float = Field(default=10.0, gt=0)
    access_log: bool = True
    failover_to_other_versions: bool = True
    """A version whose every replica refuses connections (it died) has its requests served by
    the other routed versions (nginx ``backup`` servers) instead of answered 502; its 5xx
    answers are never retried elsewhere."""
    max_inflight_per_replica: int | None = Field(default=None, ge=1)
    """Load shedding at the router: a version holds at most this many requests per replica
    (nginx ``limit_conn`` keyed by the version the split chose; client connections carry one
    request each by default); one more is answered at once by nginx itself with ``503``,
    ``Retry-After: 1``, ``X-MLX-Shed: router`` and a JSON body, without reaching Python (a
    fraction of the cost of a refusal by the worker). Shed requests are in the access log
    (status 503, no upstream). None (default): no limit; the workers' own ``max_inflight``
    still sheds."""
    max_body_mb: float = Field(default=16.0, gt=0)
    """The largest request body the router passes on, in MiB (nginx ``client_max_body_size``;
    nginx's own default, 1 MiB, is below what a server's ``max_request_rows`` allows: a valid
    full batch was refused). A larger body is answered by nginx: 413 with a JSON ``error``
    naming this setting; below it, each server applies its own limit (its JSON 413)."""
    extra_http_directives: tuple[str, ...] = ()
    """Extra directives for the ``http`` block, each one line ending in ``;`` (e.g.
    ``client_max_body_size 8m;``)."""


@dataclass(frozen=True)
class Reload:
    """What one configuration change did (times are Unix seconds)."""

    config: str
    """The configuration file now live."""
    requested_at: float
    switched_at: float
    """When nginx's new workers were up: every new request is routed by the new table."""
    drained_at: float | None
    """When the old workers had finished their requests (None: not waited for, or they were
    cut off by ``drain_timeout_s``)."""

    @property
    def switch_s(self) -> float:
        return self.switched_at - self.requested_at


def find_nginx(binary: str = "nginx") -> str:
    """Absolute path of the nginx executable.

    Raises
    ------
    RouterError
        Not installed: the message gives the install command.
    """
    found = shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/usr/local/sbin/{binary}") if os.access(p, os.X_OK)),
        None,
    )
    if not found:
        raise RouterError(
            f"nginx executable {binary!r} not found on PATH or in /usr/sbin: install it with "
            "'apt-get install -y nginx' (./dev test does this), or set the router's binary"
        )
    return found


def _q(value: str) -> str:
    """An nginx string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_nginx_conf(
    table: RoutingTable,
    *,
    run_dir: str | os.PathLike[str],
    host: str,
    port: int,
    settings: NginxSettings | None = None,
) -> str:
    """The nginx configuration serving ``table`` (pure: nothing is written or started).

    Raises
    ------
    ValueError
        An ``extra_http_directives`` entry that is not one directive ending in ``;``.
    """
    s = settings or NginxSettings()
    run = Path(run_dir).resolve()
    for d in s.extra_http_directives:
        if not _EXTRA_DIRECTIVE.match(d.strip()):
            raise ValueError(
                f"extra_http_directives entry {d!r} must be one directive ending in ';' "
                "(no braces, comments or newlines)"
            )
    upstream = {r.version: f"mlx_v{i}" for i, r in enumerate(table.routes)}
    lines = [
        "# Written by mlx_plugins.model_servers.routing.nginx: replaced on every routing change.",
        "daemon off;",
        "master_process on;",
        f"worker_processes {s.worker_processes};",
        f"pid {run / 'nginx.pid'};",
        f"error_log {run / 'logs' / 'error.log'} warn;",
        f"worker_shutdown_timeout {s.drain_timeout_s:g}s;",
    ]
    if os.geteuid() == 0:
        # As root, nginx would run its workers as `nobody`, who cannot enter a private run
        # folder: keep them the caller's own user (never more privilege than the caller has).
        lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name};")
    lines += [
        f"events {{ worker_connections {s.worker_connections}; }}",
        "http {",
        # '|'-separated: $upstream_addr lists every replica tried, separated by ", "
        "    log_format mlx '$msec|$status|$mlx_served|$upstream_addr|$upstream_status|"
        "$request_time|$mlx_version|$request';",
        (
            f"    access_log {run / 'logs' / 'access.log'} mlx;"
            if s.access_log
            else "    access_log off;"
        ),
        f"    client_body_temp_path {run / 'temp' / 'client_body'};",
        f"    proxy_temp_path {run / 'temp' / 'proxy'};",
        f"    fastcgi_temp_path {run / 'temp' / 'fastcgi'};",
        f"    uwsgi_temp_path {run / 'temp' / 'uwsgi'};",
        f"    scgi_temp_path {run / 'temp' / 'scgi'};",
        "    server_tokens off;",
        f"    keepalive_timeout {s.client_keepalive_s:g}s;",
        *(f"    {d.strip()}" for d in s.extra_http_directives),
    ]
    if not any(d.strip().startswith("client_max_body_size") for d in s.extra_http_directives):
        lines.append(f"    client_max_body_size {math.ceil(s.max_body_mb * 1024)}k;")
    for r in table.routes:
        lines.append(f"    upstream {upstream[r.version]} {{  # {r.version}, {r.weight:g}%")
        # A version with no replicas (weight 0) still needs a server line to be a valid
        # upstream: a closed port marked down, which nginx never tries.
        for server in r.servers or ("127.0.0.1:9",):
            down = "" if r.servers else " down"
            lines.append(f"        server {server} max_fails=1 fail_timeout=2s{down};")
        if s.failover_to_other_versions:
            # When every replica of this version refuses connections (it died), serve the
            # request from the other routed versions' replicas rather than answer 502. A
            # replica's 5xx answers are not retried: a broken version stays visible.
            others = [
                a
                for o in table.routes
                if o.version != r.version and o.weight > 0
                for a in o.servers
                if a not in r.servers
            ]
            for server in dict.fromkeys(others):
                lines.append(f"        server {server} backup;")
        if s.upstream_keepalive:
            lines.append(f"        keepalive {s.upstream_keepalive};")
            lines.append("        keepalive_timeout 2s;")  # below uvicorn's 5 s idle close
        lines.append("    }")
    limits: list[str] = []
    if s.max_inflight_per_replica is not None:
        # one zone per version, keyed by "1" when the split chose it and "" otherwise (nginx
        # does not count an empty key), so each version's limit follows its replica count
        for r in table.routes:
            if not r.servers:
                continue
            name = upstream[r.version]
            lines.append(f'    map $mlx_upstream $limit_{name} {{ {name} 1; default ""; }}')
            lines.append(f"    limit_conn_zone $limit_{name} zone=limit_{name}:1m;")
            limits.append(
                f"            limit_conn limit_{name} "
                f"{s.max_inflight_per_replica * len(r.servers)};"
            )
    weighted = [r for r in table.routes if r.weight > 0]
    lines.append("    split_clients $request_id $mlx_upstream {")
    for r in weighted[:-1]:
        lines.append(f"        {r.weight:g}% {upstream[r.version]};")
    lines.append(f"        * {upstream[weighted[-1].version]};")
    lines.append("    }")
    lines.append("    map $mlx_upstream $mlx_version {")
    lines.append('        default "";')
    for r in table.routes:
        lines.append(f"        {upstream[r.version]} {_q(r.version)};")
    lines.append("    }")
    # The version that actually answered (the last address tried), for the response header.
    lines.append("    map $upstream_addr $mlx_served {")
    lines.append("        default $mlx_version;")
    for r in table.routes:
        for server in r.servers:
            lines.append(f"        {_q('~(^|, )' + re.escape(server) + '$')} {_q(r.version)};")
    lines.append("    }")
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines += [
        "    server {",
        f"        listen {listen};",
        f"        location = {STATUS_PATH} {{ stub_status; access_log off; }}",
    ]
    if limits:
        shed = _q(
            '{"error":"overloaded: every replica of this version holds '
            f"{s.max_inflight_per_replica} requests (router max_inflight_per_replica); "
            'retry after 1 s"}'
        )
        lines += [
            "        location @mlx_shed {",
            "            default_type application/json;",
            "            add_header Retry-After 1 always;",
            "            add_header X-MLX-Shed router always;",
            f"            add_header {VERSION_HEADER} $mlx_version always;",
            f"            return 503 {shed};",
            "        }",
        ]
    too_large = _q(
        '{"error":"request body larger than the router accepts (max_body_mb '
        f'{s.max_body_mb:g} MiB, nginx client_max_body_size); split the batch"}}'
    )
    lines += [
        "        location @mlx_too_large {",
        "            default_type application/json;",
        f"            return 413 {too_large};",
        "        }",
        "        location / {",
        "            error_page 413 @mlx_too_large;",  # nginx's own 413 only (no intercept)
        *limits,
        *(
            [
                "            limit_conn_status 503;",
                "            limit_conn_log_level info;",  # below error_log's warn
                "            error_page 503 @mlx_shed;",  # nginx's own 503s only (no intercept)
            ]
            if limits
            else []
        ),
        "            proxy_pass http://$mlx_upstream;",
        "            proxy_http_version 1.1;",
        '            proxy_set_header Connection "";',
        "            proxy_set_header Host $host;",
        "            proxy_set_header X-Request-ID $request_id;",
        f"            proxy_connect_timeout {s.connect_timeout_s:g}s;",
        f"            proxy_read_timeout {s.read_timeout_s:g}s;",
        # Predictions are pure functions of the request, so a request whose replica failed
        # (refused, reset) is safe to send to another replica of the same version.
        "            proxy_next_upstream error timeout non_idempotent;",
        "            proxy_next_upstream_tries 3;",
        f"            add_header {VERSION_HEADER} $mlx_served always;",
        "        }",
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)


class _State(BaseModel):
    """``router.json``: what :meth:`NginxRouter.attach` needs."""

    host: str
    port: int
    pid: int
    process: str
    table: RoutingTable
    settings: NginxSettings


class NginxRouter:
    """A weighted HTTP router on loopback: nginx in ``run_dir``, routing by a
    :class:`RoutingTable`.

    Parameters
    ----------
    run_dir
        Folder for the configuration, pid, logs and temp files (created). One router per
        folder.
    host
        Interface to listen on (loopback by default).
    port
        TCP port; None picks, at :meth:`start`, the port of this folder's last router when it
        is free (so a restarted router keeps its URL), else a free one.
    settings
        :class:`NginxSettings`.

    Examples
    --------
    >>> router = NginxRouter(tmp / "router").start(RoutingTable.single("v0001", [addr1]))
    >>> router.apply(router.table.with_version("v0002", [addr2]).with_weights(
    ...     {"v0001": 90, "v0002": 10}))
    >>> router.stop()
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        settings: NginxSettings | None = None,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.host = host
        self._port = port
        self.settings = settings or NginxSettings()
        self._table: RoutingTable | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._process: str | None = None
        self._lock = threading.Lock()

    # -- paths and state ------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.run_dir / "nginx.conf"

    @property
    def candidate_path(self) -> Path:
        return self.run_dir / "nginx.conf.candidate"

    @property
    def error_log(self) -> Path:
        return self.run_dir / "logs" / "error.log"

    @property
    def access_log(self) -> Path:
        return self.run_dir / "logs" / "access.log"

    @property
    def state_path(self) -> Path:
        return self.run_dir / "router.json"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RouterError(f"router in {self.run_dir} has no port yet: start() it first")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:38400``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def table(self) -> RoutingTable:
        """The routing table nginx serves now."""
        if self._table is None:
            raise RouterError(f"router in {self.run_dir} is not started")
        return self._table

    @property
    def pid(self) -> int | None:
        """The nginx master's pid (None before start)."""
        return self._pid

    @classmethod
    def attach(cls, run_dir: str | os.PathLike[str]) -> NginxRouter:
        """The router running in ``run_dir`` (started by this or another process).

        Raises
        ------
        RouterError
            No ``router.json`` there, or its nginx is not running any more.
        """
        run = Path(run_dir).resolve()
        try:
            state = _State.model_validate_json((run / "router.json").read_text())
        except FileNotFoundError:
            raise RouterError(f"no router in {run} (no router.json): start one first") from None
        router = cls(run, host=state.host, port=state.port, settings=state.settings)
        router._pid, router._process, router._table = state.pid, state.process, state.table
        if not router.running():
            raise RouterError(
                f"the router in {run} (nginx pid {state.pid}) is not running any more; "
                f"see {router.error_log}"
            )
        return router

    def running(self) -> bool:
        """Whether this router's nginx master still runs."""
        if self._process is None:
            return False
        if self._proc is not None and self._proc.poll() is not None:
            return False
        from mlx_plugins.kernel.process_identity import ProcessIdentity, is_alive

        return is_alive(ProcessIdentity.decode(self._process)) is not False

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, table: RoutingTable) -> NginxRouter:
        """Write the configuration for ``table``, start nginx and wait until it accepts
        connections. Returns ``self``.

        Raises
        ------
        NginxConfigError
            nginx refused the configuration (names the file and line).
        RouterError
            nginx is missing, already running here, exited (the error log's tail says why,
            e.g. the port is in use) or did not listen within ``start_timeout_s``.
        """
        with self._lock:
            if self.running():
                raise RouterError(f"the router in {self.run_dir} is already running")
            try:
                other: NginxRouter | None = NginxRouter.attach(self.run_dir)
            except RouterError:
                other = None
            if other is not None:
                raise RouterError(
                    f"a router already runs in {self.run_dir} (nginx pid {other.pid}, "
                    f"{other.url}): use NginxRouter.attach() to change it, or stop() it first"
                )
            nginx = find_nginx(self.settings.binary)
            for sub in ("logs", "temp"):
                (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
            if self._port is None:
                # the port this folder's router had before (stopped, or the machine restarted),
                # so saved URLs and curl lines keep working; else any free one
                last = self._last_port()
                self._port = last if last is not None else free_port(self.host)
            self._write_checked(table)
            os.replace(self.candidate_path, self.config_path)
            err_offset = self._log_size()
            out = open(self.run_dir / "logs" / "nginx.out", "ab")  # noqa: SIM115
            try:
                self._proc = subprocess.Popen(
                    [nginx, *self._args()],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                )
            finally:
                out.close()
            from mlx_plugins.kernel.process_identity import identity

            self._pid = self._proc.pid
            self._process = identity(self._pid).encode()
            self._table = table
            deadline = time.monotonic() + self.settings.start_timeout_s
            while True:
                if self._proc.poll() is not None:
                    tail = self._log_since(err_offset)
                    self._pid = self._process = None
                    raise RouterError(
                        f"nginx exited at start (code {self._proc.returncode}) on "
                        f"{self.host}:{self._port}: {tail or 'no message'} (log: "
                        f"{self.error_log})"
                    )
                if self._accepts() and self._workers():
                    break
                if time.monotonic() > deadline:
                    self._kill_group()
                    raise RouterError(
                        f"nginx did not listen on {self.host}:{self._port} within "
                        f"{self.settings.start_timeout_s:g} s (log: {self.error_log})"
                    )
                time.sleep(0.02)
            self._save_state()
            return self

    def apply(self, table: RoutingTable, *, wait_drained: bool = True) -> Reload:
        """Route by ``table`` from now on: rewrite the configuration atomically, check it with
        ``nginx -t``, reload (SIGHUP to the master, as ``nginx -s reload`` does), and wait until
        the new workers serve (and, with ``wait_drained``, until the old workers finished their
        requests, so a version that lost all its weight can be stopped without cutting a
        request off).

        Returns
        -------
        Reload
            When the switch happened and when the old workers were drained.

        Raises
        ------
        NginxConfigError
            nginx refused the new configuration; the running router keeps the previous one.
        RouterError
            The router is not running, or nginx did not switch within ``reload_timeout_s``
            (the error log's new lines say why).
        """
        with self._lock, self._file_lock():
            if not self.running():
                raise RouterError(
                    f"the router in {self.run_dir} is not running: start() it (log: "
                    f"{self.error_log})"
                )
            requested = time.time()
            self._write_checked(table)
            old = self._workers()
            err_offset = self._log_size()
            os.replace(self.candidate_path, self.config_path)
            # SIGHUP to the master is what `nginx -s reload` sends (it reads the pid file and
            # signals): sent directly, the switch costs no process start.
            assert self._pid is not None
            try:
                os.kill(self._pid, signal.SIGHUP)
            except ProcessLookupError:
                raise RouterError(
                    f"the router in {self.run_dir} (nginx pid {self._pid}) is gone; see "
                    f"{self.error_log}"
                ) from None
            deadline = time.monotonic() + self.settings.reload_timeout_s
            while True:
                workers = self._workers()
                fresh = workers - old
                # switched: the new workers are up AND no old worker still holds the listening
                # socket (an old worker closes it when it takes the graceful-shutdown signal;
                # until then it may still accept a connection and route it by the old table)
                if len(fresh) >= self.settings.worker_processes and not self._listening(
                    old & workers
                ):
                    break
                if time.monotonic() > deadline:
                    raise RouterError(
                        f"nginx did not switch to the new configuration within "
                        f"{self.settings.reload_timeout_s:g} s: "
                        f"{self._log_since(err_offset) or 'no message'} (log: {self.error_log})"
                    )
                time.sleep(0.005)
            switched = time.time()
            self._table = table
            self._save_state()
            drained: float | None = None
            if wait_drained:
                deadline = time.monotonic() + self.settings.drain_timeout_s + 1
                while old & self._workers() and time.monotonic() < deadline:
                    time.sleep(0.01)
                drained = None if old & self._workers() else time.time()
            return Reload(str(self.config_path), requested, switched, drained)

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop nginx gracefully (``SIGQUIT``: requests in flight are finished), then kill what
        is left after ``timeout_s`` seconds. Idempotent; True when it was running."""
        with self._lock:
            if self._pid is None:
                return False
            was_running = self.running()
            if was_running:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(self._pid, signal.SIGQUIT)
                deadline = time.monotonic() + timeout_s
                while self.running() and time.monotonic() < deadline:
                    time.sleep(0.02)
            self._kill_group()
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
            self._pid = self._process = None
            return was_running

    def __enter__(self) -> NginxRouter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation ------------------------------------------------------------------------------
    def in_flight(self, timeout_s: float = 1.0) -> int:
        """Requests the router holds now (``stub_status`` active connections minus the probe's
        own; keep-alive client connections count while open).

        Raises
        ------
        RouterError
            The status page did not answer.
        """
        from mlx_plugins.model_servers.base import http_get

        status, body = http_get(self.url + STATUS_PATH, timeout_s)
        m = re.search(r"Active connections:\s*(\d+)", body)
        if status != 200 or not m:
            raise RouterError(f"{self.url}{STATUS_PATH} answered {status}: {body[:200]}")
        return max(int(m.group(1)) - 1, 0)

    # -- internals --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Serialise configuration changes across processes (each holds its own handle)."""
        import fcntl

        with open(self.run_dir / "router.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _args(self) -> list[str]:
        return ["-p", f"{self.run_dir}/", "-c", str(self.config_path), "-e", str(self.error_log)]

    def _write_checked(self, table: RoutingTable) -> None:
        """Write ``table``'s configuration to the candidate file and ``nginx -t`` it."""
        text = render_nginx_conf(
            table, run_dir=self.run_dir, host=self.host, port=self.port, settings=self.settings
        )
        with atomic_open(self.candidate_path, "w") as fh:
            fh.write(text)
        nginx = find_nginx(self.settings.binary)
        done = subprocess.run(
            [
                nginx,
                "-t",
                "-q",
                "-p",
                f"{self.run_dir}/",
                "-c",
                str(self.candidate_path),
                "-e",
                str(self.error_log),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode == 0:
            return
        out = (done.stderr or done.stdout).strip()
        m = _ERROR_LINE.search(out)
        if m:
            file, line, detail = m.group("file"), int(m.group("line")), m.group("msg")
            text_lines = Path(file).read_text().splitlines() if Path(file).exists() else []
            quoted = text_lines[line - 1].strip() if 0 < line <= len(text_lines) else ""
            raise NginxConfigError(
                f"nginx refused the router configuration: {detail} at {file}:{line}"
                + (f" ({quoted!r})" if quoted else "")
                + "; the router keeps its previous configuration",
                file,
                line,
                detail,
            )
        raise NginxConfigError(
            f"nginx refused the router configuration {self.candidate_path}: {out[-500:]}",
            str(self.candidate_path),
            0,
            out[-500:],
        )

    def _workers(self) -> set[int]:
        """Pids of the master's worker processes (old ones still draining included)."""
        if self._pid is None:
            return set()
        import psutil

        try:
            return {
                c.pid
                for c in psutil.Process(self._pid).children()
                if c.status() != psutil.STATUS_ZOMBIE
            }
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return set()

    def _listening(self, pids: set[int]) -> set[int]:
        """Those of ``pids`` that still hold the router's listening socket."""
        import psutil

        holding = set()
        for pid in pids:
            try:
                conns = psutil.Process(pid).net_connections(kind="tcp")
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            except psutil.AccessDenied:  # cannot look: assume it still listens until it exits
                holding.add(pid)
                continue
            if any(
                c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port
                for c in conns
            ):
                holding.add(pid)
        return holding

    def _accepts(self) -> bool:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            return s.connect_ex((self.host, self.port)) == 0

    def _log_size(self) -> int:
        try:
            return self.error_log.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.error_log, "rb") as fh:
                fh.seek(offset)
                text = fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        lines = [
            ln
            for ln in text.splitlines()
            if "[emerg]" in ln or "[alert]" in ln or "[crit]" in ln or "[error]" in ln
        ]
        return " | ".join(lines[-3:])[-800:]

    def _kill_group(self) -> None:
        """SIGKILL what is left of nginx's process group: only processes named nginx in it
        (the group id is the master's pid, which may be reused once the group is empty)."""
        if self._pid is None:
            return
        import psutil

        for proc in psutil.process_iter(["name"]):
            with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
                if proc.info["name"] == "nginx" and os.getpgid(proc.pid) == self._pid:
                    proc.kill()
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)

    @property
    def last_port_path(self) -> Path:
        """``<run_dir>/last_port``: the port of this folder's last router (kept by ``stop``)."""
        return self.run_dir / "last_port"

    def _last_port(self) -> int | None:
        try:
            port = int(self.last_port_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return port if 0 < port < 65536 and port_is_free(self.host, port) else None

    def _save_state(self) -> None:
        assert self._pid is not None and self._process is not None and self._table is not None
        state = _State(
            host=self.host,
            port=self.port,
            pid=self._pid,
            process=self._process,
            table=self._table,
            settings=self.settings,
        )
        with atomic_open(self.state_path, "w") as fh:
            fh.write(state.model_dump_json(indent=2))
        with atomic_open(self.last_port_path, "w") as fh:
            fh.write(f"{self.port}\n")

    def describe(self) -> dict[str, Any]:
        """Plain data for asset metadata: URL, run folder, pid and the weights."""
        return {
            "url": self.url,
            "run_dir": str(self.run_dir),
            "pid": self._pid,
            "weights": self.table.weights if self._table is not None else {},
        }


def read_access_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Parse the router's access log: one dict per request with ``time`` (Unix s, at the
    answer), ``status``, ``version`` (the version that answered), ``routed`` (the version the
    split chose; differs when its replicas were down and another version's took over),
    ``upstream`` (the last replica tried), ``upstreams`` (every replica tried),
    ``upstream_status``, ``seconds`` and ``request``."""
    out: list[dict[str, Any]] = []
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("|", 7)
            if len(parts) < 8:
                continue
            t, status, served, upstreams, ustatus, secs, routed, request = parts
            tried = [u.strip() for u in upstreams.split(",") if u.strip() and u.strip() != "-"]
            out.append(
                {
                    "time": float(t),
                    "status": int(status),
                    "version": served,
                    "routed": routed,
                    "upstream": tried[-1] if tried else "",
                    "upstreams": tried,
                    "upstream_status": ustatus,
                    "seconds": float(secs) if secs not in ("", "-") else 0.0,
                    "request": request,
                }
            )
    return out

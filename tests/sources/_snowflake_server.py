"""A loopback Snowflake for tests: fakesnow's server (Snowflake SQL on DuckDB, speaking the
Snowflake REST protocol the official connector uses), wrapped to do what fakesnow leaves out:

- login checks the password, or the key-pair JWT against a registered public key, and answers
  a wrong one as Snowflake does (code 390100 / 390144, HTTP 200, ``success: false``);
- every SQL text the connector sends is recorded (``statements``), with its bindings, so a
  test asserts on the SQL that was executed (pushdown, quoting);
- ``hold_queries`` makes the query-status endpoint say RUNNING, so an async query looks
  long-running; abort requests (``/queries/<id>/abort-request``) are recorded in ``aborted``.

Started on a free 127.0.0.1 port by :func:`snowflake_server`, stopped on exit (also on failure).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send


@dataclass
class Server:
    host: str
    port: int
    user: str = "MLX_TEST"
    password: str = "correct-horse-battery"
    public_key_pem: bytes | None = None
    statements: list[tuple[str, Any]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    hold_queries: threading.Event = field(default_factory=threading.Event)
    status_polled: threading.Event = field(default_factory=threading.Event)
    logins: int = 0

    def connection_args(self, database: str) -> dict[str, Any]:
        """``connection_args`` for the plugin: where the server is, plain HTTP, no telemetry."""
        return {
            "host": self.host,
            "port": self.port,
            "protocol": "http",
            "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
        }

    def sql(self, needle: str = "") -> list[str]:
        return [s for s, _ in self.statements if needle.upper() in s.upper()]


def _error(code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"data": {"errorCode": code}, "code": code, "message": message, "success": False}
    )


class _Wrapper:
    def __init__(self, app: ASGIApp, server: Server) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        request = Request(scope, receive)
        if path.startswith("/queries/") and path.endswith("/abort-request"):
            self.server.aborted.append(path.split("/")[2])
            await JSONResponse({"data": None, "success": True})(scope, receive, send)
            return
        if path.startswith("/monitoring/queries/") and self.server.hold_queries.is_set():
            self.server.status_polled.set()
            body = {"data": {"queries": [{"status": "RUNNING"}]}, "success": True}
            await JSONResponse(body)(scope, receive, send)
            return
        if path in ("/session/v1/login-request", "/queries/v1/query-request"):
            raw = await request.body()
            text = (
                gzip.decompress(raw) if request.headers.get("Content-Encoding") == "gzip" else raw
            )
            payload = json.loads(text)
            if path.endswith("login-request"):
                refusal = self._refuse_login(payload["data"])
                if refusal is not None:
                    await refusal(scope, receive, send)
                    return
                self.server.logins += 1
            else:
                self.server.statements.append((payload["sqlText"], payload.get("bindings")))

            async def replay() -> dict[str, Any]:
                return {"type": "http.request", "body": raw, "more_body": False}

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)

    def _refuse_login(self, data: dict[str, Any]) -> JSONResponse | None:
        if data.get("LOGIN_NAME") != self.server.user:
            return _error("390100", "Incorrect username or password was specified.")
        if data.get("AUTHENTICATOR") == "SNOWFLAKE_JWT":
            import jwt

            if self.server.public_key_pem is None:
                return _error("390144", "JWT token is invalid.")
            try:
                jwt.decode(data.get("TOKEN", ""), self.server.public_key_pem, algorithms=["RS256"])
            except jwt.PyJWTError:
                return _error("390144", "JWT token is invalid.")
            return None
        if data.get("PASSWORD") != self.server.password:
            return _error("390100", "Incorrect username or password was specified.")
        return None


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def snowflake_server(public_key_pem: bytes | None = None) -> Iterator[Server]:
    import fakesnow.server
    import uvicorn

    server = Server(host="127.0.0.1", port=_free_port(), public_key_pem=public_key_pem)
    config = uvicorn.Config(
        _Wrapper(fakesnow.server.app, server),
        host=server.host,
        port=server.port,
        log_level="warning",
        lifespan="off",
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name="snowflake test server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            uv.should_exit = True
            raise RuntimeError("the fakesnow test server did not start")
        time.sleep(0.02)
    try:
        yield server
    finally:
        uv.should_exit = True
        thread.join(timeout=30)


def unique_database() -> str:
    """A database name of its own per test (fakesnow's in-memory store is per process)."""
    return f"MLX_TEST_{uuid.uuid4().hex[:10].upper()}"

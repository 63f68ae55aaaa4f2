"""An in-flight limit on one path, enforced as the outermost layer of a worker's ASGI app.

BentoML wraps every request in its own middlewares (metrics, OpenTelemetry, timeout, context)
before an app mounted on its server sees it; answering 503 from inside the mounted app costs
about three quarters of a success for a small model (``docs/serving.md``), so shedding there
does not relieve an overloaded worker. :class:`InflightLimit` wraps the whole server app
(``bentoml_service`` installs it around what ``Service.to_asgi`` returns), counts the requests
to ``path`` it holds, and answers one more with a pre-encoded 503 (``Retry-After``) without
calling the app at all: the cost of a refusal is uvicorn's parsing plus two ``send`` calls.

Everything else (other paths, lifespan, websockets) passes through untouched.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SHED_HEADER = b"x-mlx-shed"
"""Header on a refused request's answer naming where it was shed (``worker``)."""


class InflightLimit:
    """ASGI wrapper: at most ``limit`` requests to ``path`` inside ``app`` at once (per process);
    one more is answered ``503`` at once, counted in :attr:`shed` and passed to ``on_shed``.

    Parameters
    ----------
    app
        The ASGI app to protect (BentoML's whole server app).
    limit
        Requests to ``path`` held at once (>= 1).
    path
        The exact request path limited (``/predict``); every other path passes.
    retry_after_s
        The ``Retry-After`` header of a refusal (whole seconds).
    on_shed
        Called once per refused request (e.g. a Prometheus counter); must not raise.

    Raises
    ------
    ValueError
        ``limit`` or ``retry_after_s`` below 1.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        path: str = "/predict",
        retry_after_s: int = 1,
        on_shed: Callable[[], None] | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"max_inflight must be at least 1, got {limit}")
        if retry_after_s < 1:
            raise ValueError(f"retry_after_s must be at least 1, got {retry_after_s}")
        self.app = app
        self.limit = limit
        self.path = path
        self.on_shed = on_shed
        self.inflight = 0
        """Requests to ``path`` inside the app now."""
        self.shed = 0
        """Requests refused since the start."""
        body = json.dumps(
            {
                "error": f"overloaded: this worker already holds {limit} prediction requests "
                f"(max_inflight); retry after {retry_after_s} s"
            },
            separators=(",", ":"),
        ).encode()
        self._headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(retry_after_s).encode()),
            (SHED_HEADER, b"worker"),
        ]
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            self.shed += 1
            if self.on_shed is not None:
                self.on_shed()
            await send({"type": "http.response.start", "status": 503, "headers": self._headers})
            await send({"type": "http.response.body", "body": self._body})
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


__all__ = ["SHED_HEADER", "InflightLimit"]

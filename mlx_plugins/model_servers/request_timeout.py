"""A per-request timeout whose timer ends with the request, in place of BentoML's.

BentoML 1.4's ``TimeoutMiddleware`` (``bentoml._internal.server.http.traffic``) arms
``loop.call_later(timeout, ...)`` for every request and never cancels it: each answered request
leaves a timer handle, a future, a context and a bound method alive for the whole timeout
(30-60 s). At a few thousand requests a second a worker holds hundreds of thousands of them, and
since they outlive the young generations, Python's full garbage collections scan them all: pauses
of 0.1-0.5 s that stop the worker's event loop (``docs/serving.md``, "Why the direct tails were
wrong"). :class:`RequestTimeout` has the same contract (an answer not begun within the timeout is
replaced by a 504) with :func:`asyncio.timeout`, whose timer is cancelled as soon as the answer
starts; :func:`replace_bentoml_timeout` swaps it into the app BentoML builds for a worker.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestTimeout:
    """ASGI middleware: an HTTP request whose answer has not begun within ``timeout_s`` seconds
    is cancelled and answered ``504`` ``{"error": ...}`` naming ``request_timeout_s``; once the
    answer begins the request is no longer timed. Non-HTTP scopes pass through untimed.

    Parameters
    ----------
    app
        The ASGI app to time.
    timeout_s
        Seconds from the request's arrival to the start of its answer (> 0).

    Raises
    ------
    ValueError
        ``timeout_s`` not above 0.
    """

    def __init__(self, app: ASGIApp, *, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"request_timeout_s must be above 0 seconds, got {timeout_s}")
        self.app = app
        self.timeout_s = float(timeout_s)
        body = json.dumps(
            {
                "error": f"no answer within {self.timeout_s:g} s (request_timeout_s); retry, "
                "or raise request_timeout_s in the model_server config"
            },
            separators=(",", ":"),
        ).encode()
        self._start: Message = {
            "type": "http.response.start",
            "status": 504,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
        self._body: Message = {"type": "http.response.body", "body": body}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        timer: asyncio.Timeout | None = None

        async def send_started(message: Message) -> None:
            nonlocal started
            if not started:
                started = True
                if timer is not None:
                    timer.reschedule(None)  # the answer has begun: no longer timed
            await send(message)

        try:
            async with asyncio.timeout(self.timeout_s) as timer:
                await self.app(scope, receive, send_started)
        except TimeoutError:
            if started or timer is None or not timer.expired():
                raise  # the app's own TimeoutError, or one after the answer began
            await send(self._start)
            await send(self._body)


def replace_bentoml_timeout(app: Any) -> int:
    """Replace BentoML's ``TimeoutMiddleware`` in the Starlette app of a BentoML worker
    (``Service.to_asgi``) by :class:`RequestTimeout` with the same timeout, before the app
    serves its first request. Returns how many were replaced (0: none in the app)."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware
    from starlette.middleware import Middleware

    stack = getattr(app, "user_middleware", None)
    if stack is None:
        return 0
    if getattr(app, "middleware_stack", None) is not None:
        raise RuntimeError("the app already serves: replace its timeout before the first request")
    replaced = 0
    for i, middleware in enumerate(stack):
        if middleware.cls is TimeoutMiddleware:
            stack[i] = Middleware(RequestTimeout, timeout_s=middleware.kwargs["timeout"])
            replaced += 1
    return replaced


__all__ = ["RequestTimeout", "replace_bentoml_timeout"]

"""What kept a served worker's event loop stopped for 0.1-0.5 s at a time (docs/serving.md, "Why
the direct tails were wrong"), each tested so that it could come back:

- the heap a worker holds after loading (torch, BentoML, the model: ~0.4 million objects) is
  frozen out of the garbage collector's full collections (``gc.freeze``), seen in the real
  server's ``mlx_serving_gc_frozen_objects``;
- BentoML's ``TimeoutMiddleware`` leaves a live timer (handle, future, context) per answered
  request for the whole timeout; MLX's ``RequestTimeout`` leaves none, with the same 504
  contract, and it is the timeout the real server applies (its 504 names request_timeout_s).
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlx_plugins.model_servers.bentoml_server import BentoMLServer
from mlx_plugins.model_servers.request_timeout import RequestTimeout, replace_bentoml_timeout
from tests.serving.test_bentoml_server import _metric, example_row_tiny


def _live_timers() -> int:
    return sum(
        1 for o in gc.get_objects() if isinstance(o, asyncio.TimerHandle) and not o.cancelled()
    )


async def _ok(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def _app(middleware: list[Middleware]) -> Starlette:
    return Starlette(routes=[Route("/predict", _ok, methods=["POST"])], middleware=middleware)


def _timers_left_after(app: Any, requests: int) -> tuple[list[int], int]:
    async def run() -> tuple[list[int], int]:
        before = _live_timers()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            codes = [(await client.post("/predict")).status_code for _ in range(requests)]
        return codes, _live_timers() - before

    return asyncio.run(run())


def test_bentoml_timeout_leaves_a_live_timer_per_request_and_ours_none() -> None:
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    codes, left = _timers_left_after(_app([Middleware(TimeoutMiddleware, timeout=60)]), 200)
    assert codes == [200] * 200
    # BentoML 1.4's defect, pinned: if this fails, BentoML cancels its timers now and
    # replace_bentoml_timeout may go
    assert left >= 200
    codes, left = _timers_left_after(_app([Middleware(RequestTimeout, timeout_s=60)]), 200)
    assert codes == [200] * 200
    assert left == 0


def test_an_answer_not_begun_in_time_is_a_504_naming_the_setting() -> None:
    async def never(request: Request) -> JSONResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    app = Starlette(
        routes=[Route("/predict", never, methods=["POST"])],
        middleware=[Middleware(RequestTimeout, timeout_s=0.05)],
    )

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/predict")

    answer = asyncio.run(run())
    assert answer.status_code == 504
    assert "request_timeout_s" in answer.json()["error"]


def test_an_answer_begun_in_time_is_not_cut_off() -> None:
    async def slow_body(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.2)  # longer than the timeout, after the answer began
        await send({"type": "http.response.body", "body": b"whole"})

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=RequestTimeout(slow_body, timeout_s=0.05))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/predict")

    answer = asyncio.run(run())
    assert (answer.status_code, answer.content) == (200, b"whole")


def test_replace_swaps_bentoml_timeout_keeping_its_seconds_and_refuses_a_serving_app() -> None:
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    app = _app([Middleware(TimeoutMiddleware, timeout=7.5)])
    assert replace_bentoml_timeout(app) == 1
    assert [(m.cls, m.kwargs) for m in app.user_middleware] == [
        (RequestTimeout, {"timeout_s": 7.5})
    ]
    assert replace_bentoml_timeout(_app([])) == 0
    app.middleware_stack = app.build_middleware_stack()
    with pytest.raises(RuntimeError, match="before the first request"):
        replace_bentoml_timeout(app)
    with pytest.raises(ValueError, match="request_timeout_s must be above 0"):
        RequestTimeout(_app([]), timeout_s=0)


def test_the_served_worker_froze_its_loaded_heap(tiny_served) -> None:
    text = tiny_served.metrics_text()
    # torch, BentoML and the model alone are well over 100,000 objects
    assert _metric(text, "mlx_serving_gc_frozen_objects") > 100_000, text[-2000:]


def test_the_served_worker_times_requests_out_with_mlx_timeout(
    serving_home, tiny_version, tiny_registry, start_server
) -> None:
    server = BentoMLServer(
        home=str(serving_home / "bentoml"), request_timeout_s=1.0, die_with_caller=True
    )
    package = server.package(tiny_version, tiny_registry)
    handle = start_server(package, server=server, workers=1)
    body = json.dumps({"rows": [example_row_tiny()]}).encode()
    host, port = handle.url.removeprefix("http://").split(":")
    # headers and part of the body, the rest withheld: the request waits in the app
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body[:5]
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"504", data[:500]
    assert "request_timeout_s" in json.loads(payload)["error"]  # MLX's, not BentoML's message
    assert httpx.post(f"{handle.url}/predict", content=body, timeout=30).status_code == 200

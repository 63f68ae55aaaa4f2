"""The worker's in-flight limit (``max_inflight``): requests within it all pass, a burst beyond
it is answered 503 with Retry-After at once (while the admitted ones are still held) and counted
apart from errors; in process on a real Starlette app, then on a real ``bentoml serve``."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlx_plugins.model_servers.bentoml_server import BentoMLServer
from mlx_plugins.model_servers.inflight import InflightLimit
from tests.serving.conftest import post
from tests.serving.test_bentoml_server import _metric, example_row_tiny


class _HeldApp:
    """A real Starlette app whose ``/predict`` waits until :attr:`release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

        async def predict(request: Request) -> JSONResponse:
            self.entered += 1
            await request.body()
            await self.release.wait()
            return JSONResponse({"ok": True})

        async def schema(request: Request) -> JSONResponse:
            return JSONResponse({"schema": True})

        self.app = Starlette(
            routes=[
                Route("/predict", predict, methods=["POST"]),
                Route("/schema", schema, methods=["GET"]),
            ]
        )


async def _burst(limit: int, n: int) -> dict[str, Any]:
    held = _HeldApp()
    shed_calls: list[int] = []
    limited = InflightLimit(held.app, limit=limit, on_shed=lambda: shed_calls.append(1))
    transport = httpx.ASGITransport(app=limited)
    async with httpx.AsyncClient(transport=transport, base_url="http://mlx") as client:
        tasks = [asyncio.create_task(client.post("/predict", json={"rows": []})) for _ in range(n)]
        # let every request reach the limit or the app (bounded by turns of the loop, not time)
        for _ in range(1000):
            await asyncio.sleep(0)
            if held.entered + sum(t.done() for t in tasks) >= n:
                break
        early = [t.result() for t in tasks if t.done()]
        entered_while_held = held.entered
        inflight_while_held = limited.inflight
        other_path = await client.get("/schema")  # not limited, even while full
        held.release.set()
        answers = await asyncio.gather(*tasks)
    return {
        "early": early,
        "entered": entered_while_held,
        "inflight": inflight_while_held,
        "answers": answers,
        "shed": limited.shed,
        "shed_calls": len(shed_calls),
        "other_path": other_path.status_code,
        "inflight_after": limited.inflight,
    }


def test_a_burst_beyond_the_limit_is_shed_at_once_and_counted() -> None:
    out = asyncio.run(_burst(limit=4, n=10))
    # the 6 over the limit were answered while the 4 admitted ones were still held
    assert len(out["early"]) == 6 and out["entered"] == 4 and out["inflight"] == 4
    for resp in out["early"]:
        assert resp.status_code == 503
        assert resp.headers["retry-after"] == "1"
        assert resp.headers["x-mlx-shed"] == "worker"
        assert "max_inflight" in resp.json()["error"]
    assert sorted(r.status_code for r in out["answers"]) == [200] * 4 + [503] * 6
    assert out["shed"] == out["shed_calls"] == 6
    assert out["other_path"] == 200
    assert out["inflight_after"] == 0


def test_requests_within_the_limit_all_pass() -> None:
    out = asyncio.run(_burst(limit=4, n=4))
    assert out["early"] == [] and out["entered"] == 4
    assert [r.status_code for r in out["answers"]] == [200] * 4
    assert out["shed"] == 0 and out["shed_calls"] == 0


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_inflight must be at least 1, got 0"):
        InflightLimit(_HeldApp().app, limit=0)


def _hold_a_slot(url: str, body: bytes) -> socket.socket:
    """A /predict request whose headers are sent and body withheld: the worker holds it (it is
    inside the app, waiting for the body) until the rest is sent."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    sock.sendall(head + body[:5])
    return sock


def _finish(sock: socket.socket, body: bytes) -> int:
    sock.sendall(body[5:])
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return int(data.split(b" ", 2)[1])


def test_the_served_worker_sheds_beyond_max_inflight_and_counts_it(
    serving_home, tiny_version, tiny_registry, start_server
) -> None:
    server = BentoMLServer(home=str(serving_home / "bentoml"), max_inflight=1, die_with_caller=True)
    package = server.package(tiny_version, tiny_registry)
    handle = start_server(package, server=server, workers=1)
    url = f"{handle.url}/predict"
    body = json.dumps({"rows": [example_row_tiny()]}).encode()
    # within the limit, one after the other: every request passes
    assert [post(url, body)[0] for _ in range(3)] == [200, 200, 200]
    held = _hold_a_slot(handle.url, body)
    try:
        # wait (bounded in scrapes, not time) until the worker holds the request
        for _ in range(200):
            text = handle.metrics_text()
            if _metric(text, "bentoml_service_request_in_progress", endpoint="/predict") >= 1:
                break
        else:
            pytest.fail(f"the held request never reached the worker:\n{text[-2000:]}")
        shed = [httpx.post(url, content=body, timeout=30) for _ in range(3)]
    finally:
        held_status = _finish(held, body)
    assert [r.status_code for r in shed] == [503, 503, 503]
    assert all(r.headers["retry-after"] == "1" for r in shed)
    assert held_status == 200
    assert post(url, body)[0] == 200  # the slot is free again
    text = handle.metrics_text()
    version = package.version_label
    assert _metric(text, "mlx_serving_shed_requests_total", reason="inflight", version=version) == 3
    assert _metric(text, "mlx_serving_requests_total", status="503", version=version) == 3
    assert _metric(text, "mlx_serving_requests_total", status="200", version=version) == 5
    assert _metric(text, "mlx_serving_requests_total", status="500", version=version) == 0

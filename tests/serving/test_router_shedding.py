"""Load shedding at the router (``NginxSettings.max_inflight_per_replica``): real nginx in front
of a real loopback backend that holds its requests until released. Requests within the limit
all pass; a burst beyond it is answered 503 by nginx itself (Retry-After, ``X-MLX-Shed:
router``) while the admitted ones are still held, and the access log counts them apart."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from mlx_plugins.model_servers.routing import (
    NginxRouter,
    NginxSettings,
    RouterError,
    RoutingTable,
    find_nginx,
    read_access_log,
)

try:
    find_nginx()
    HAVE_NGINX = True
except RouterError:
    HAVE_NGINX = False
pytestmark = pytest.mark.skipif(
    not HAVE_NGINX, reason="nginx not installed (./dev test installs it: apt-get install nginx)"
)


class _HeldBackend:
    """A loopback HTTP server whose POSTs wait until :attr:`release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                with outer.lock:
                    outer.entered += 1
                outer.release.wait(60)
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def held(tmp_path: Path) -> Iterator[tuple[_HeldBackend, NginxRouter]]:
    backend = _HeldBackend()
    router = NginxRouter(tmp_path / "router", settings=NginxSettings(max_inflight_per_replica=2))
    try:
        router.start(RoutingTable.single("v0001", [backend.address]))
        yield backend, router
    finally:
        router.stop()
        backend.close()


def _burst(
    backend: _HeldBackend, router: NginxRouter, n: int, admitted: int
) -> tuple[list[httpx.Response], list[httpx.Response]]:
    """``n`` concurrent POSTs; once ``admitted`` are held by the backend and the others are
    answered, release the backend. (answered before the release, every answer)."""
    url = f"{router.url}/predict"
    with ThreadPoolExecutor(n) as pool:
        futures: list[Future[httpx.Response]] = [
            pool.submit(httpx.post, url, content=b"{}", timeout=60) for _ in range(n)
        ]
        # a condition, not a time: (bounded by the requests' own 60 s timeout)
        while True:
            done = [f for f in futures if f.done()]
            if backend.entered >= admitted and len(done) >= n - admitted:
                break
            wait(futures, timeout=0.05, return_when=FIRST_COMPLETED)
        early = [f.result() for f in done]
        backend.release.set()
        return early, [f.result() for f in futures]


def test_a_burst_beyond_the_limit_is_shed_by_nginx_and_logged(held) -> None:
    backend, router = held
    early, answers = _burst(backend, router, n=6, admitted=2)
    assert backend.entered == 2  # the 4 shed requests never reached the backend
    assert len(early) == 4
    for resp in early:
        assert resp.status_code == 503
        assert resp.headers["retry-after"] == "1"
        assert resp.headers["x-mlx-shed"] == "router"
        assert resp.headers["x-mlx-version"] == "v0001"
        assert "max_inflight_per_replica" in resp.json()["error"]
    assert sorted(r.status_code for r in answers) == [200, 200, 503, 503, 503, 503]
    log = read_access_log(router.run_dir / "logs" / "access.log")
    shed = [e for e in log if e["status"] == 503]
    assert len(shed) == 4 and all(e["upstreams"] == [] for e in shed)  # counted apart
    assert sorted(e["status"] for e in log if e["upstreams"]) == [200, 200]


def test_requests_within_the_limit_all_pass(held) -> None:
    backend, router = held
    early, answers = _burst(backend, router, n=2, admitted=2)
    assert early == []
    assert [r.status_code for r in answers] == [200, 200]
    # and the slots are free again afterwards
    assert httpx.post(f"{router.url}/predict", content=b"{}", timeout=60).status_code == 200


def test_without_the_setting_nothing_is_shed(tmp_path: Path) -> None:
    backend = _HeldBackend()
    router = NginxRouter(tmp_path / "router")
    try:
        router.start(RoutingTable.single("v0001", [backend.address]))
        early, answers = _burst(backend, router, n=4, admitted=4)
        assert early == [] and [r.status_code for r in answers] == [200] * 4
    finally:
        router.stop()
        backend.close()

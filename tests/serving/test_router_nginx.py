"""The local weighted router: real nginx in a run folder, real loopback HTTP backends."""

from __future__ import annotations

import collections
import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import pytest
from pydantic import ValidationError

from mlx_plugins.kernel.process_identity import identity
from mlx_plugins.model_servers.base import ServerHandle
from mlx_plugins.model_servers.rollout import RolloutController, ServedVersion
from mlx_plugins.model_servers.routing import (
    VERSION_HEADER,
    NginxConfigError,
    NginxRouter,
    NginxSettings,
    RouterError,
    RoutingError,
    RoutingTable,
    find_nginx,
    free_port,
    read_access_log,
    render_nginx_conf,
)
from tests.serving._rollout_support import LoadDriver

try:
    find_nginx()
    HAVE_NGINX = True
except RouterError:
    HAVE_NGINX = False
needs_nginx = pytest.mark.skipif(
    not HAVE_NGINX, reason="nginx not installed (./dev test installs it: apt-get install nginx)"
)


class _Backend:
    """A loopback HTTP server answering every POST with its name."""

    def __init__(self, name: str) -> None:
        body = name.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backends() -> Iterator[tuple[_Backend, _Backend]]:
    a, b = _Backend("A"), _Backend("B")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def router_dir(tmp_path: Path) -> Iterator[Path]:
    run = tmp_path / "router"
    yield run
    # whatever a test did, no nginx of its run folder survives it
    with contextlib.suppress(RouterError):
        NginxRouter.attach(run).stop(timeout_s=2)


def _nginx_pids(master: int) -> set[int]:
    try:
        p = psutil.Process(master)
        return {master, *(c.pid for c in p.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


# -- the table and the configuration (no nginx needed) ---------------------------------------
def test_table_refuses_bad_weights_and_names() -> None:
    with pytest.raises(ValidationError, match="weights must sum to 100"):
        RoutingTable.split({"v1": 60, "v2": 30}, {"v1": ["127.0.0.1:1"], "v2": ["127.0.0.1:2"]})
    with pytest.raises(ValidationError, match="not a valid served version name"):
        RoutingTable.single("v 1; evil", ["127.0.0.1:1"])
    with pytest.raises(ValidationError, match=r"has weight 100\.0% but no servers"):
        RoutingTable.single("v1", [])
    with pytest.raises(ValidationError, match="is not host:port"):
        RoutingTable.single("v1", ["localhost"])
    table = RoutingTable.single("v1", ["127.0.0.1:1"]).with_version("v2", ["127.0.0.1:2"])
    with pytest.raises(RoutingError, match=r"while it has weight 100\.0%"):
        table.without("v1")
    with pytest.raises(RoutingError, match="unknown version"):
        table.with_weights({"v3": 100})
    with pytest.raises(RoutingError, match="in the routing table already"):
        table.with_version("v2", ["127.0.0.1:3"])
    assert table.with_weights({"v2": 100}).without("v1").weights == {"v2": 100.0}


def test_config_keeps_everything_in_the_run_folder(tmp_path: Path) -> None:
    table = RoutingTable.split(
        {"v0001": 87.5, "v0002": 12.5}, {"v0001": ["127.0.0.1:1001"], "v0002": ["127.0.0.1:1002"]}
    )
    text = render_nginx_conf(table, run_dir=tmp_path, host="127.0.0.1", port=1234)
    assert "listen 127.0.0.1:1234;" in text
    assert "87.5% mlx_v0;" in text and "* mlx_v1;" in text
    assert 'mlx_v1 "v0002";' in text
    # every path nginx writes to is under the run folder (no /var/log, /run, /var/lib)
    writers = (
        "pid",
        "error_log",
        "access_log",
        "client_body_temp_path",
        "proxy_temp_path",
        "fastcgi_temp_path",
        "uwsgi_temp_path",
        "scgi_temp_path",
    )
    paths = [
        ln.split()[1] for ln in text.splitlines() if ln.split()[:1] and ln.split()[0] in writers
    ]
    assert len(paths) == len(writers)
    assert all(p.startswith(str(tmp_path.resolve()) + "/") for p in paths), paths
    with pytest.raises(ValueError, match="must be one directive ending in ';'"):
        render_nginx_conf(
            table,
            run_dir=tmp_path,
            host="127.0.0.1",
            port=1234,
            settings=NginxSettings(extra_http_directives=("server { listen 80; }",)),
        )


# -- real nginx --------------------------------------------------------------------------------
@needs_nginx
def test_weighted_split_and_reload_lose_no_request(
    backends: tuple[_Backend, _Backend], router_dir: Path
) -> None:
    a, b = backends
    router = NginxRouter(router_dir).start(RoutingTable.single("v1", [a.address]))
    master = router.pid
    assert master is not None
    with httpx.Client(timeout=5) as client:
        answers = [client.post(router.url + "/predict", content=b"{}") for _ in range(40)]
    assert {(r.status_code, r.text, r.headers[VERSION_HEADER]) for r in answers} == {
        (200, "A", "v1")
    }

    table = router.table.with_version("v2", [b.address])
    router.apply(table.with_weights({"v1": 80, "v2": 20}))
    with httpx.Client(timeout=5) as client:
        split = collections.Counter(
            client.post(router.url + "/predict", content=b"{}").text for _ in range(400)
        )
    # 20% of 400 = 80; binomial sd 8: a wide band that a wrong split (0, 50%, 100%) misses
    assert 40 <= split["B"] <= 130 and split["A"] + split["B"] == 400, split

    # flip the weights back and forth under load: every request is answered
    with LoadDriver(router.url, threads=4, max_requests=3000, max_seconds=60) as load:
        for i in range(8):
            load.wait_for(100 * (i + 1), timeout_s=20)
            weights = {"v1": 10, "v2": 90} if i % 2 == 0 else {"v1": 90, "v2": 10}
            reload = router.apply(table.with_weights(weights))
            assert reload.drained_at is not None
        outcomes = load.stop()
    assert len(outcomes) >= 800
    failed = [o for o in outcomes if o.status != 200]
    assert failed == [], failed[:5]
    assert {o.version for o in outcomes} == {"v1", "v2"}
    logged = read_access_log(router.access_log)
    assert len(logged) >= len(outcomes) and {e["version"] for e in logged} == {"v1", "v2"}

    pids = _nginx_pids(master)
    assert len(pids) >= 2  # master and its worker
    assert router.stop() is True
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)
    assert router.stop() is False  # idempotent


@needs_nginx
def test_once_apply_returns_every_new_request_follows_the_new_table(
    backends: tuple[_Backend, _Backend], router_dir: Path
) -> None:
    """Seen in CI under load: a request sent after a rollback's switch still reached the old
    version, because an old worker had not yet closed its listening socket. ``apply`` returns
    only when no old worker can accept a connection, even without waiting for the drain."""
    a, b = backends
    router = NginxRouter(router_dir).start(RoutingTable.single("v1", [a.address]))
    table = router.table.with_version("v2", [b.address])
    with LoadDriver(router.url, threads=4, max_requests=20_000, max_seconds=60) as load:
        load.wait_for(50, timeout_s=20)
        for i in range(10):
            only = "v2" if i % 2 == 0 else "v1"
            router.apply(table.with_weights({only: 100}), wait_drained=False)
            with httpx.Client(timeout=5) as client:
                versions = {
                    client.post(router.url + "/predict", content=b"{}").headers[VERSION_HEADER]
                    for _ in range(10)
                }
            assert versions == {only}, (i, versions)
        outcomes = load.stop()
    assert [o for o in outcomes if o.status != 200] == []
    router.stop()


@needs_nginx
def test_refused_config_names_file_and_line_and_keeps_routing(
    backends: tuple[_Backend, _Backend], router_dir: Path
) -> None:
    a, _ = backends
    router = NginxRouter(router_dir).start(RoutingTable.single("v1", [a.address]))
    live_before = router.config_path.read_text()
    router.settings = NginxSettings(extra_http_directives=("proxy_bogus_directive on;",))
    with pytest.raises(NginxConfigError) as err:
        router.apply(router.table)
    e = err.value
    assert e.file == str(router.candidate_path) and e.line > 0
    assert 'unknown directive "proxy_bogus_directive"' in str(e)
    assert f"{e.file}:{e.line}" in str(e)
    # the file nginx named is still there, with the offending directive on that line
    assert "proxy_bogus_directive" in Path(e.file).read_text().splitlines()[e.line - 1]
    # the live configuration and the routing are untouched
    assert router.config_path.read_text() == live_before
    assert httpx.post(router.url + "/predict", content=b"{}", timeout=5).text == "A"
    router.stop()


@needs_nginx
def test_start_on_a_busy_port_says_so_and_leaves_nothing(
    backends: tuple[_Backend, _Backend], router_dir: Path
) -> None:
    a, _ = backends
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        router = NginxRouter(router_dir, port=port)
        with pytest.raises(RouterError, match="Address already in use"):
            router.start(RoutingTable.single("v1", [a.address]))
    assert not router.running()
    with pytest.raises(RouterError, match="no router"):
        NginxRouter.attach(router_dir)


@needs_nginx
def test_attach_from_another_handle_changes_and_stops_it(
    backends: tuple[_Backend, _Backend], router_dir: Path
) -> None:
    a, b = backends
    first = NginxRouter(router_dir).start(RoutingTable.single("v1", [a.address]))
    other = NginxRouter.attach(router_dir)
    assert (other.url, other.pid, other.table) == (first.url, first.pid, first.table)
    other.apply(RoutingTable.single("v2", [b.address]))
    assert httpx.post(first.url + "/x", content=b"{}", timeout=5).text == "B"
    assert other.in_flight() == 0
    assert other.stop() is True
    assert not first.running()
    with pytest.raises(RouterError, match="not running"):
        first.apply(RoutingTable.single("v1", [a.address]))


@needs_nginx
def test_a_restarted_router_keeps_its_url_unless_the_port_was_taken(
    backends: tuple[_Backend, _Backend], router_dir: Path
) -> None:
    a, _ = backends
    first = NginxRouter(router_dir).start(RoutingTable.single("v1", [a.address]))
    url = first.url
    first.stop()
    # stopped (mlx serving stop, or the machine restarted): the next router takes its port,
    # so a saved URL or curl line still works
    second = NginxRouter(router_dir).start(RoutingTable.single("v1", [a.address]))
    assert second.url == url
    assert httpx.post(url + "/x", content=b"{}", timeout=5).text == "A"
    second.stop()
    # someone else listens there now: a free port instead of failing
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        busy.bind(("127.0.0.1", second.port))
        busy.listen(1)
        third = NginxRouter(router_dir).start(RoutingTable.single("v1", [a.address]))
        assert third.port != second.port
        assert httpx.post(third.url + "/x", content=b"{}", timeout=5).text == "A"
    third.stop()
    # the next one goes back to the newest port this folder's router had
    fourth = NginxRouter(router_dir).start(RoutingTable.single("v1", [a.address]))
    assert fourth.port == third.port


@needs_nginx
def test_second_router_in_one_folder_is_refused(
    backends: tuple[_Backend, _Backend], router_dir: Path
) -> None:
    a, _ = backends
    first = NginxRouter(router_dir).start(RoutingTable.single("v1", [a.address]))
    with pytest.raises(RouterError, match=r"a router already runs in .*attach\(\)"):
        NginxRouter(router_dir).start(RoutingTable.single("v1", [a.address]))
    assert first.running()
    assert httpx.post(first.url + "/x", content=b"{}", timeout=5).text == "A"


@needs_nginx
def test_a_full_batch_passes_and_a_body_too_large_gets_a_json_413(
    backends: tuple[_Backend, _Backend], router_dir: Path
) -> None:
    """nginx's own default (1 MiB) refused a valid 1024-row request of 1.1 MB with an HTML
    page; the router's limit is its ``max_body_mb`` and a larger body gets JSON naming it."""
    a, _ = backends
    router = NginxRouter(router_dir).start(RoutingTable.single("v1", [a.address]))
    full_batch = b" " * (1_200_000)  # what the backend does with it is its business
    assert httpx.post(router.url + "/predict", content=full_batch, timeout=10).text == "A"
    router.stop()
    small = NginxRouter(router_dir, settings=NginxSettings(max_body_mb=0.01)).start(
        RoutingTable.single("v1", [a.address])
    )
    assert httpx.post(small.url + "/predict", content=b" " * 5_000, timeout=5).text == "A"
    resp = httpx.post(small.url + "/predict", content=b" " * 20_000, timeout=5)
    assert resp.status_code == 413
    assert resp.headers["content-type"] == "application/json"
    assert "max_body_mb 0.01 MiB" in resp.json()["error"]
    small.stop()


@dataclass
class _Replica:
    """A replica address for the router (the rollout below never scrapes or stops it)."""

    url: str

    def metrics_text(self, timeout_s: float = 2.0) -> str:
        raise AssertionError("not scraped: the canary is refused before any step")

    def stop(self, timeout_s: float = 10.0) -> bool:
        raise AssertionError("the stable version is never stopped by a rollback")


@needs_nginx
def test_rollout_refuses_a_canary_that_is_down_before_any_traffic(
    backends: tuple[_Backend, _Backend], router_dir: Path
) -> None:
    a, _ = backends
    # a canary whose server died after it started: its handle names a process that is gone
    gone = subprocess.Popen(["sleep", "30"])
    dead = ServerHandle(
        model="m",
        version=2,
        package_tag="m:v0002",
        host="127.0.0.1",
        port=free_port(),
        pid=gone.pid,
        process=identity(gone.pid).encode(),
        workers=1,
        started_at=time.time(),
    )
    gone.kill()
    gone.wait()
    stable = ServedVersion("v1", [_Replica(f"http://{a.address}")])
    router = NginxRouter(router_dir).start(RoutingTable.single("v1", stable.servers))
    result = RolloutController(router).run(stable, ServedVersion("v2", [dead]))
    assert result.decision == "rolled_back" and result.steps == []
    assert "not healthy before any traffic" in result.reason and "/healthz" in result.reason
    assert router.table.weights == {"v1": 100.0}
    assert [e.event for e in result.timeline] == ["started", "canary_stopped", "rolled_back"]
    router.stop()

"""mlx_resources.hot_swap's refusals, each leaving the served composition as it was.

The webserver here is a loopback HTTP server speaking the two things the swap uses: the
``/server_info`` page and the GraphQL ``reloadRepositoryLocation`` answer (driven by Dagster's
official GraphQL client); the full stack is tests/deploy/test_hot_swap.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlx_resources.hot_swap import HotSwapError, main, reload_code_location
from tests.deploy.conftest import small_composition_text


class _Webserver(BaseHTTPRequestHandler):
    answer: dict = {}
    posts: list[dict] = []

    def do_GET(self) -> None:
        self._send(200, {"dagster_webserver_version": "1.13.27"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).posts.append(json.loads(body))
        self._send(200, type(self).answer)

    def _send(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webserver() -> Iterator[str]:
    _Webserver.posts = []
    _Webserver.answer = {
        "data": {
            "reloadRepositoryLocation": {
                "__typename": "RepositoryLocationNotFound",
                "message": "Location mlx does not exist",
            }
        }
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Webserver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def served(tmp_path: Path) -> Path:
    path = tmp_path / "mlx.yaml"
    path.write_text(small_composition_text())
    return path


def _env(served: Path) -> dict[str, str]:
    import os

    return {**os.environ, "MLX_COMPOSITION": str(served)}


def test_an_unreachable_webserver_changes_nothing(served, tmp_path):
    before = served.read_text()
    candidate = tmp_path / "next.yaml"
    candidate.write_text(before.replace("scale: 0.05", "scale: 0.04"))
    with pytest.raises(HotSwapError, match=r"cannot reach the Dagster webserver at .*nothing"):
        reload_code_location("http://127.0.0.1:9", composition=candidate, env=_env(served))
    assert served.read_text() == before


def test_a_missing_candidate_is_named(served, webserver, tmp_path):
    with pytest.raises(HotSwapError, match=r"nope\.yaml does not exist"):
        reload_code_location(webserver, composition=tmp_path / "nope.yaml", env=_env(served))
    assert _Webserver.posts == []


def test_a_bad_candidate_is_refused_before_any_reload(
    served, webserver, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("MLX_COMPOSITION", str(served))  # the command reads its environment
    before = served.read_text()
    candidate = tmp_path / "next.yaml"
    candidate.write_text(before.replace("epochs: 2", "epochs: 0"))
    code = main(["--url", webserver, "--composition", str(candidate)])
    err = capsys.readouterr().err
    assert code == 1
    assert "plugins.ml_platform.config.epochs" in err and "fix:" in err, err
    assert f"{served} is unchanged" in err
    assert served.read_text() == before
    assert _Webserver.posts == []  # no reload was asked for


def test_a_failed_reload_puts_the_served_file_back(served, webserver, tmp_path):
    before = served.read_text()
    candidate = tmp_path / "next.yaml"
    candidate.write_text(before.replace("scale: 0.05", "scale: 0.04"))
    with pytest.raises(HotSwapError) as failed:
        reload_code_location(webserver, "mlx", composition=candidate, env=_env(served))
    message = str(failed.value)
    assert "Location mlx does not exist" in message, message
    assert f"{served} is restored" in message
    assert served.read_text() == before
    (post,) = _Webserver.posts
    assert "reloadRepositoryLocation" in post["query"]
    assert post["variables"] == {"repositoryLocationName": "mlx"}


def test_the_check_ignores_the_last_good_fallback(served, webserver, tmp_path, capsys, monkeypatch):
    """Seen in a trial: with MLX_LAST_GOOD_COMPOSITION in hot_swap's environment (the
    Kubernetes code-server pod has it), a candidate that does not load was checked as the saved
    composition, passed, and was installed."""
    snapshot = tmp_path / "last_good.yaml"
    snapshot.write_text(served.read_text())
    monkeypatch.setenv("MLX_COMPOSITION", str(served))
    monkeypatch.setenv("MLX_LAST_GOOD_COMPOSITION", str(snapshot))
    before = served.read_text()
    candidate = tmp_path / "next.yaml"
    candidate.write_text(before.replace("epochs: 2", "epochs: true"))
    assert main(["--url", webserver, "--composition", str(candidate)]) == 1
    assert "plugins.ml_platform.config.epochs" in capsys.readouterr().err
    assert served.read_text() == before and _Webserver.posts == []
    assert main(["--check-only", "--composition", str(candidate)]) == 1
    assert "do not load with" in capsys.readouterr().err


def test_check_only_changes_nothing_and_reads_a_candidate_from_stdin(
    served, tmp_path, capsys, monkeypatch
):
    import io

    monkeypatch.setenv("MLX_COMPOSITION", str(served))
    before = served.read_text()
    monkeypatch.setattr("sys.stdin", io.StringIO(before.replace("epochs: 2", "epochs: 3")))
    assert main(["--check-only", "--composition", "-"]) == 0
    assert "the definitions load with" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO(before.replace("epochs: 2", "epoch: 3")))
    assert main(["--check-only", "--composition", "-"]) == 1
    assert "did you mean 'epochs'" in capsys.readouterr().err
    assert served.read_text() == before


def test_a_read_only_served_file_is_a_clear_refusal(served, webserver, tmp_path):
    """A ConfigMap mount cannot be written: the swap says how to change it instead. sysfs is
    a real read-only place here, for root too."""
    import os

    candidate = tmp_path / "next.yaml"
    candidate.write_text(served.read_text().replace("scale: 0.05", "scale: 0.04"))
    env = {**os.environ, "MLX_COMPOSITION": "/sys/mlx.yaml"}
    with pytest.raises(HotSwapError) as refused:
        reload_code_location(webserver, composition=candidate, env=env)
    message = str(refused.value)
    assert "cannot be installed over /sys/mlx.yaml" in message and "--check-only" in message
    assert "Traceback" not in message
    assert not os.path.exists("/sys/mlx.yaml") and _Webserver.posts == []

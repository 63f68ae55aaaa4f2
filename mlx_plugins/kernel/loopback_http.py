"""The HTTP plumbing of MLX's loopback stand-ins for services that cannot run here (the LLM
vendors' APIs, Databricks): a threaded server on ``127.0.0.1`` and a free port, started and
stopped by its owner, that hands each request to the owner's ``_dispatch(handler, method)``.

Subclasses implement ``_dispatch`` (read ``handler.path``, headers and body; write the answer)
and call ``super().__init__()``; the official clients are then pointed at :attr:`url`.
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class QuietHTTPServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` for loopback tests.

    Clients that hang up (timeouts, cancelled hedges, closed keep-alives) are normal here and
    not printed. The listen backlog is 128, not ``socketserver``'s 5: a batch opening a few
    dozen connections at once would otherwise overflow it, and the kernel drops the extra
    SYNs, which the client resends only after 1 s, then 3 s (a delay that is the test
    server's, not the code's under test).
    """

    request_queue_size = 128
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class LoopbackHTTPServer:
    """Base of a loopback service: :meth:`start` / :meth:`stop` (or ``with``), :attr:`url`.

    Requests of the methods in ``METHODS`` go to ``self._dispatch(handler, method)`` on the
    server's threads (HTTP/1.1, keep-alive). ``poll_interval_s``: how often the serving loop
    checks for :meth:`stop` (seconds).
    """

    METHODS: tuple[str, ...] = ("GET", "POST")
    poll_interval_s: float = 0.05

    def __init__(self) -> None:
        self._httpd: QuietHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _dispatch(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        """Listen on a free loopback port and serve in a daemon thread. Returns ``self``."""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        for method in self.METHODS:

            def do(handler: BaseHTTPRequestHandler, _method: str = method) -> None:
                owner._dispatch(handler, _method)

            setattr(Handler, f"do_{method}", do)
        self._httpd = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(self.poll_interval_s,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port. Idempotent."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (the server must be started)."""
        assert self._httpd is not None, "start the server first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"


__all__ = ["LoopbackHTTPServer", "QuietHTTPServer"]

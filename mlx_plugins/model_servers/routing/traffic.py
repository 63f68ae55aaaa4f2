"""Bounded HTTP traffic through a router: a rollout needs requests to judge a canary by.

:class:`TrafficGenerator` runs ``threads`` clients (httpx, one connection each) POSTing
prediction bodies (cycled) to ``<url>/predict`` until stopped, ``max_requests`` answered or
``max_seconds`` elapsed, and records every :class:`Outcome` (times, status, the
``X-MLX-Version`` of the version that answered). Use it to replay held-out rows through the
router during a rollout where no live traffic exists (the local lifecycle), or to drive tests
and benchmarks. Needs httpx (BentoML's dependency: the ``serving`` extra).
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlx_plugins.model_servers.routing.nginx import VERSION_HEADER


@dataclass(frozen=True)
class Outcome:
    """One request: sent and answered at (Unix s), HTTP status (0: no answer), the version
    that answered (``X-MLX-Version``; "" without), and the client error when no answer."""

    sent: float
    done: float
    status: int
    version: str
    error: str = ""


class TrafficGenerator:
    """Clients POSTing ``bodies`` to ``url + path`` in threads, bounded in count and time.

    Parameters
    ----------
    url
        Base URL (the router's ``url``).
    bodies
        JSON bodies sent in turn (e.g. ``{"rows": [row]}`` per held-out row); at least one.
    threads
        Concurrent clients.
    max_requests, max_seconds
        Bounds: the generator stops by itself at either.
    pause_s
        Pause of a client between two of its requests (seconds).
    timeout_s
        Per-request timeout (seconds).

    Use as a context manager (``with TrafficGenerator(...) as traffic: ...``): the clients
    start on entry and stop on exit.
    """

    def __init__(
        self,
        url: str,
        bodies: Sequence[dict[str, Any]],
        *,
        threads: int = 4,
        max_requests: int = 20_000,
        max_seconds: float = 120.0,
        pause_s: float = 0.002,
        timeout_s: float = 15.0,
        path: str = "/predict",
    ) -> None:
        if not bodies:
            raise ValueError("TrafficGenerator needs at least one request body")
        if threads < 1 or max_requests < 1 or max_seconds <= 0:
            raise ValueError(
                f"threads ({threads}), max_requests ({max_requests}) and max_seconds "
                f"({max_seconds}) must be positive"
            )
        self.url = url.rstrip("/") + path
        self.bodies = list(bodies)
        self.threads = threads
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.pause_s = pause_s
        self.timeout_s = timeout_s
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._next = itertools.cycle(range(len(self.bodies)))
        self._workers: list[threading.Thread] = []
        self._deadline = 0.0

    def __enter__(self) -> TrafficGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> TrafficGenerator:
        self._deadline = time.monotonic() + self.max_seconds
        for i in range(self.threads):
            t = threading.Thread(target=self._loop, name=f"mlx-traffic-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> list[Outcome]:
        """Stop the clients (each finishes its request in flight); returns the outcomes."""
        self._stop.set()
        for t in self._workers:
            t.join(self.timeout_s + 5)
        return self.outcomes

    @property
    def count(self) -> int:
        return len(self.outcomes)

    def wait_for(self, n: int, timeout_s: float = 60.0) -> bool:
        """Block until ``n`` requests were answered; False when ``timeout_s`` passed first or
        the generator stopped."""
        deadline = time.monotonic() + timeout_s
        while self.count < n:
            if time.monotonic() > deadline or self._stop.is_set():
                return False
            time.sleep(0.05)
        return True

    def summary(self) -> dict[str, int]:
        """Counts by ``"<version> <status>"`` (``" 0"``: no answer), e.g. ``{"v0003 200": 812}``."""
        return dict(collections.Counter(f"{o.version} {o.status}" for o in list(self.outcomes)))

    def _loop(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout_s) as client:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                with self._lock:
                    if len(self.outcomes) >= self.max_requests:
                        return
                    body = self.bodies[next(self._next)]
                sent = time.time()
                try:
                    r = client.post(self.url, json=body)
                    o = Outcome(sent, time.time(), r.status_code, r.headers.get(VERSION_HEADER, ""))
                except httpx.HTTPError as exc:
                    o = Outcome(sent, time.time(), 0, "", f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self.outcomes.append(o)
                if self.pause_s:
                    self._stop.wait(self.pause_s)

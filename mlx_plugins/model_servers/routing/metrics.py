"""Request counts and latency quantiles from a model server's own Prometheus ``/metrics``.

A server's counters are cumulative since it started, so every figure here is a difference of
two scrapes (a *window*): :func:`scrape` takes a :class:`Snapshot`, ``later - earlier`` gives
the window's counts, and :meth:`Snapshot.window` turns them into a :class:`VersionWindow`
(requests, errors, shed requests, error rate, p95 and p99). Parsing uses ``prometheus_client``'s
text parser. A counter that went down (the server restarted) counts from zero again.

Status classes: 2xx ok; 503 *shed* (adaptive batching's load shedding: counted apart, never as
an error); other 5xx *errors*; 4xx *client errors* (the request's fault: not the model's).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel, ConfigDict


class MetricNames(BaseModel):
    """Which Prometheus series hold the request counts and latencies.

    The defaults are BentoML 1.4's own (``bentoml_service_request_total`` counter and
    ``bentoml_service_request_duration_seconds`` histogram, labelled ``endpoint`` and
    ``http_response_code``), which every ``bentoml serve`` process exposes;
    :meth:`mlx_serving` gives the ``bentoml`` plugin's own series (finer latency buckets).
    :func:`detect_names` picks one of the two from a scrape.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests_total: str = "bentoml_service_request_total"
    duration_seconds: str = "bentoml_service_request_duration_seconds"
    """A histogram (``_bucket`` series with ``le``), in seconds."""
    in_progress: str | None = "bentoml_service_request_in_progress"
    """A gauge of requests being handled (None: not exposed)."""
    status_label: str = "http_response_code"
    endpoint_label: str | None = "endpoint"
    """Label naming the endpoint; series without it always count."""
    endpoints: tuple[str, ...] = ("/predict",)
    """Endpoints that count; empty: every endpoint but ``/metrics``, ``/healthz``, ``/livez``
    and ``/readyz``."""

    @classmethod
    def bentoml_stock(cls) -> MetricNames:
        """BentoML's own series (the defaults)."""
        return cls()

    @classmethod
    def mlx_serving(cls) -> MetricNames:
        """The ``bentoml`` model_server plugin's series (``mlx_serving_requests_total`` and
        ``mlx_serving_request_duration_seconds`` by ``status``; ``/predict`` only). Its
        in-flight gauge is BentoML's."""
        return cls(
            requests_total="mlx_serving_requests_total",
            duration_seconds="mlx_serving_request_duration_seconds",
            status_label="status",
            endpoint_label=None,
            endpoints=(),
        )


def detect_names(text: str) -> MetricNames:
    """:meth:`MetricNames.mlx_serving` when the scrape comes from the ``bentoml`` plugin's
    service (it has ``mlx_serving_*`` series, e.g. ``mlx_serving_model_info`` from the start),
    else BentoML's.

    A server's request counters only appear with its first request: detect once per server
    and keep the answer (:func:`scrape` with a ``detected`` cache does), or two scrapes of one
    server could be read with different names."""
    if "\nmlx_serving_" in "\n" + text:
        return MetricNames.mlx_serving()
    return MetricNames.bentoml_stock()


_PROBES = ("/metrics", "/healthz", "/livez", "/readyz")


class MetricsSource(Protocol):
    """Anything with a base URL and a Prometheus ``/metrics`` (a :class:`~.base.ServerHandle`)."""

    @property
    def url(self) -> str: ...

    def metrics_text(self, timeout_s: float = 2.0) -> str: ...


@dataclass
class Snapshot:
    """Cumulative counts of one or more servers at one moment.

    ``requests[status]`` is a request count; ``buckets[status][le]`` a cumulative histogram
    count (``le`` in seconds, ``math.inf`` for ``+Inf``); ``in_progress`` the requests being
    handled at the scrape.
    """

    requests: dict[int, float] = field(default_factory=dict)
    buckets: dict[int, dict[float, float]] = field(default_factory=dict)
    in_progress: float = 0.0
    duration_sum: float = 0.0
    """Seconds spent in requests (the histogram's ``_sum``, every status)."""

    def __add__(self, other: Snapshot) -> Snapshot:
        out = Snapshot(dict(self.requests), {k: dict(v) for k, v in self.buckets.items()})
        for status, n in other.requests.items():
            out.requests[status] = out.requests.get(status, 0.0) + n
        for status, bs in other.buckets.items():
            mine = out.buckets.setdefault(status, {})
            for le, n in bs.items():
                mine[le] = mine.get(le, 0.0) + n
        out.in_progress = self.in_progress + other.in_progress
        out.duration_sum = self.duration_sum + other.duration_sum
        return out

    def __sub__(self, earlier: Snapshot) -> Snapshot:
        """Counts since ``earlier`` (a series that went down restarted: its new value counts)."""

        def delta(now: float, then: float) -> float:
            return now - then if now >= then else now

        out = Snapshot(in_progress=self.in_progress)
        ds = self.duration_sum - earlier.duration_sum
        out.duration_sum = ds if ds >= 0 else self.duration_sum
        for status, n in self.requests.items():
            out.requests[status] = delta(n, earlier.requests.get(status, 0.0))
        for status, bs in self.buckets.items():
            old = earlier.buckets.get(status, {})
            out.buckets[status] = {le: delta(n, old.get(le, 0.0)) for le, n in bs.items()}
        return out

    def window(self) -> VersionWindow:
        """Counts and quantiles of this snapshot, read as a window (a difference of two)."""
        total = sum(self.requests.values())
        shed = self.requests.get(503, 0.0)
        errors = sum(n for s, n in self.requests.items() if s >= 500 and s != 503)
        client = sum(n for s, n in self.requests.items() if 400 <= s < 500)
        handled = total - shed
        merged: dict[float, float] = {}
        for status, bs in self.buckets.items():
            if status == 503:  # shed requests answer at once: they would flatter the latency
                continue
            for le, n in bs.items():
                merged[le] = merged.get(le, 0.0) + n
        return VersionWindow(
            requests=round(total),
            errors=round(errors),
            shed=round(shed),
            client_errors=round(client),
            error_rate=errors / handled if handled > 0 else 0.0,
            p95_ms=_quantile_ms(0.95, merged),
            p99_ms=_quantile_ms(0.99, merged),
            in_progress=self.in_progress,
            busy_s=self.duration_sum,
        )


class VersionWindow(BaseModel):
    """What one version's servers answered during a window.

    Attributes
    ----------
    requests
        Every answered request (all statuses).
    errors
        5xx answers other than 503.
    shed
        503 answers (load shedding; not errors).
    client_errors
        4xx answers (bad requests; not errors).
    error_rate
        ``errors / (requests - shed)`` (0.0 when nothing was handled).
    p95_ms, p99_ms
        Latency quantiles in milliseconds over the non-shed requests, interpolated in the
        histogram's buckets as Prometheus' ``histogram_quantile`` does (None without requests;
        the top finite bucket bound when the quantile lies beyond it).
    in_progress
        Requests in flight at the end of the window (a gauge, not a difference).
    busy_s
        See the field.
    """

    model_config = ConfigDict(frozen=True)

    requests: int = 0
    errors: int = 0
    shed: int = 0
    client_errors: int = 0
    error_rate: float = 0.0
    p95_ms: float | None = None
    p99_ms: float | None = None
    in_progress: float = 0.0
    busy_s: float = 0.0
    """Seconds spent in requests during the window (summed over requests: divided by the
    window's length it is the mean number of requests in flight, by Little's law)."""

    @property
    def handled(self) -> int:
        """Requests the model handled (``requests - shed``)."""
        return self.requests - self.shed


def _quantile_ms(q: float, buckets: dict[float, float]) -> float | None:
    """``histogram_quantile(q)`` of cumulative ``{le: count}`` buckets, in milliseconds."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return prev_bound * 1000.0  # beyond the top finite bucket: its bound
            if count == prev_count:
                return le * 1000.0
            frac = (rank - prev_count) / (count - prev_count)
            return (prev_bound + (le - prev_bound) * frac) * 1000.0
        prev_bound, prev_count = le, count
    return prev_bound * 1000.0


def parse_metrics(text: str, names: MetricNames | None = None) -> Snapshot:
    """A :class:`Snapshot` from one Prometheus text exposition (``names`` None: detected with
    :func:`detect_names`).

    Raises
    ------
    ValueError
        The text is not Prometheus' text format (prometheus_client's parser message).
    """
    from prometheus_client.parser import text_string_to_metric_families

    n = names or detect_names(text)
    snap = Snapshot()

    def counted(labels: dict[str, str]) -> bool:
        endpoint = labels.get(n.endpoint_label) if n.endpoint_label else None
        if endpoint is None:
            return True
        if n.endpoints:
            return endpoint in n.endpoints
        return not endpoint.startswith(_PROBES)

    def status_of(labels: dict[str, str]) -> int | None:
        try:
            return int(float(labels[n.status_label]))
        except (KeyError, ValueError):
            return None

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == n.requests_total and counted(sample.labels):
                status = status_of(sample.labels)
                if status is not None:
                    snap.requests[status] = snap.requests.get(status, 0.0) + sample.value
            elif sample.name == n.duration_seconds + "_bucket" and counted(sample.labels):
                status = status_of(sample.labels)
                if status is None:
                    continue
                le = float(sample.labels["le"])  # "+Inf" -> inf
                bs = snap.buckets.setdefault(status, {})
                bs[le] = bs.get(le, 0.0) + sample.value
            elif sample.name == n.duration_seconds + "_sum" and counted(sample.labels):
                snap.duration_sum += sample.value
            elif n.in_progress and sample.name == n.in_progress and _predict_gauge(sample.labels):
                snap.in_progress += sample.value
    return snap


def _predict_gauge(labels: dict[str, str]) -> bool:
    endpoint = labels.get("endpoint")
    return endpoint is None or not endpoint.startswith(_PROBES)


def scrape(
    sources: Iterable[MetricsSource],
    names: MetricNames | None = None,
    timeout_s: float = 2.0,
    detected: dict[str, MetricNames] | None = None,
) -> Snapshot:
    """The sum of the servers' current counts (one ``/metrics`` GET each).

    ``names`` None: detected per server (:func:`detect_names`) on its first scrape and kept in
    ``detected`` (server URL -> names) for the next ones.

    Raises
    ------
    mlx_plugins.model_servers.base.ServingError
        A server did not answer (names its URL).
    ValueError
        A server's answer is not Prometheus text.
    """
    total = Snapshot()
    for source in sources:
        text = source.metrics_text(timeout_s)
        n = names
        if n is None:
            cache = detected if detected is not None else {}
            n = cache.setdefault(source.url, detect_names(text))
        total = total + parse_metrics(text, n)
    return total

"""The platform's one place for OpenTelemetry traces and Prometheus metrics.

* :func:`configure` builds the tracer and meter providers. Spans are exported only when asked:
  an exporter passed in (tests, benchmarks) or the standard ``OTEL_*`` variables
  (``OTEL_EXPORTER_OTLP_ENDPOINT``/``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
  ``OTEL_TRACES_EXPORTER=otlp``; needs ``opentelemetry-exporter-otlp-proto-http``).
  ``OTEL_SDK_DISABLED=true`` turns tracing off entirely. With nothing configured the run and
  step spans get ids (the run's trace id), plugin calls make no spans, and nothing is exported.
* :func:`plugin_call` is what the plugin base (:mod:`mlx_plugins.kernel.base`) runs around every
  public plugin method: a span ``<kind>.<plugin>.<method>``, the Prometheus counter and
  histogram, and the call listeners (the audit log, :mod:`mlx_resources.telemetry.audit`).
* :func:`traced` / :func:`traced_span` are the helpers for users' own code.
* :func:`write_run_metrics` writes the registry in the Prometheus text format (the format a
  pushgateway accepts) to ``<home>/metrics/<run_id>.prom``; :func:`serve_metrics` exposes it on
  an HTTP port for long-lived processes.

Attribute values are redacted (:func:`mlx_plugins.kernel.secrets.redact`) and never carry data:
only names, counts and sizes.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mlx_plugins.kernel.secrets import redact

_log = logging.getLogger("mlx.telemetry")
F = TypeVar("F", bound=Callable[..., Any])

TRACE_TAG = "mlx/trace_id"
"""Run tag (and materialization metadata key) holding the run's 32-hex-digit trace id."""

# -- Prometheus ---------------------------------------------------------------------------------
REGISTRY = CollectorRegistry(auto_describe=True)
"""The platform's Prometheus registry (not the client's global one, so a host process's own
metrics never mix in)."""

PLUGIN_CALLS = Counter(
    "mlx_plugin_calls",
    "Plugin method calls, by plugin, kind, method and outcome (ok or error).",
    ["plugin", "kind", "method", "outcome"],
    registry=REGISTRY,
)
PLUGIN_CALL_DURATION = Histogram(
    "mlx_plugin_call_duration_seconds",
    "Duration of plugin method calls in seconds.",
    ["plugin", "kind", "method"],
    registry=REGISTRY,
)
TRAINING_DURATION = Histogram(
    "mlx_training_duration_seconds",
    "Wall time of one model training in seconds.",
    ["plugin"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, float("inf")),
    registry=REGISTRY,
)
TRAINING_THROUGHPUT = Gauge(
    "mlx_training_throughput_samples_per_second",
    "Training samples (rows x epochs) per second of the last training.",
    ["plugin"],
    registry=REGISTRY,
)
DRIFT_SHARE = Gauge(
    "mlx_drift_share_ratio",
    "Share of drifted features (0..1) per model and day.",
    ["model", "day"],
    registry=REGISTRY,
)
TRACED_DURATION = Histogram(
    "mlx_traced_duration_seconds",
    "Duration of user code wrapped by @traced / traced_span, in seconds.",
    ["name", "outcome"],
    registry=REGISTRY,
)


# -- providers ----------------------------------------------------------------------------------
def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def _otlp_requested() -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or "otlp" in os.environ.get("OTEL_TRACES_EXPORTER", "").lower()
    )


def _traces_exporters() -> set[str]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names (comma-separated, lower case)."""
    return {
        name.strip().lower()
        for name in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if name.strip()
    }


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tracer: trace.Tracer | None = None
        self.provider: Any = None
        self.meter_provider: Any = None
        self.exporting = False  # whether spans go anywhere (else plugin calls make none)


_STATE = _State()


def configure(span_exporter: Any = None, *, force: bool = False) -> trace.Tracer:
    """Build (once) the tracer and meter providers and return the platform's tracer.

    ``span_exporter``: an OpenTelemetry ``SpanExporter`` to send spans to synchronously (e.g.
    ``InMemorySpanExporter`` in tests); replaces the current providers. Without it, spans go to
    OTLP only when the ``OTEL_*`` variables ask for it (batched, in the background).

    Raises ``RuntimeError`` naming the package to install when OTLP is requested but the exporter
    package is not installed.
    """
    with _STATE.lock:
        if _STATE.tracer is not None and span_exporter is None and not force:
            return _STATE.tracer
        if _STATE.provider is not None:
            _STATE.provider.shutdown()
        _STATE.exporting = False
        if _truthy("OTEL_SDK_DISABLED"):
            _STATE.provider = None
            _STATE.tracer = trace.NoOpTracer()
            return _STATE.tracer
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "mlx")})
        provider = TracerProvider(resource=resource)
        if span_exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(span_exporter))
            _STATE.exporting = True
        elif _otlp_requested():
            provider.add_span_processor(BatchSpanProcessor(_otlp_span_exporter()))
            _STATE.meter_provider = _otlp_meter_provider(resource)
            _STATE.exporting = True
        if "console" in _traces_exporters() and span_exporter is None:
            # OTEL_TRACES_EXPORTER=console (alone or beside otlp): each span as JSON on stdout
            import sys

            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            # the stdout of now (its default is the one of when opentelemetry was imported)
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))
            _STATE.exporting = True
        unknown = _traces_exporters() - {"otlp", "console", "none"}
        if unknown:
            _log.warning(
                "OTEL_TRACES_EXPORTER names %s, which MLX does not export to; fix: use otlp "
                "and/or console (or none)",
                ", ".join(sorted(unknown)),
            )
        _STATE.provider = provider
        _STATE.tracer = provider.get_tracer("mlx")
        return _STATE.tracer


def _otlp_span_exporter() -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise RuntimeError(
            "OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_TRACES_EXPORTER=otlp) asks for OTLP export, "
            "but the exporter is not installed; fix: pip install "
            "'opentelemetry-exporter-otlp-proto-http>=1.30,<2' or unset the variable"
        ) from exc
    return OTLPSpanExporter()  # reads the OTEL_EXPORTER_OTLP_* variables itself


def _otlp_meter_provider(resource: Any) -> Any:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    return MeterProvider(resource=resource, metric_readers=[reader])


def tracer() -> trace.Tracer:
    """The platform's tracer (configuring the providers on first use)."""
    t = _STATE.tracer
    return t if t is not None else configure()


def shutdown() -> None:
    """Flush and stop the exporters (end of a process); later calls reconfigure."""
    with _STATE.lock:
        if _STATE.provider is not None:
            _STATE.provider.shutdown()
        if _STATE.meter_provider is not None:
            _STATE.meter_provider.shutdown()
        _STATE.provider = _STATE.tracer = _STATE.meter_provider = None
        _STATE.exporting = False


# -- the run / step context -----------------------------------------------------------------------
_RUN_CONTEXT: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "mlx_run_context", default=None
)
_IN_CALL: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar(
    "mlx_in_plugin_call", default=frozenset()
)


def run_context() -> Mapping[str, str]:
    """What is known about the current execution: ``run_id``, ``asset``, ``partition``,
    ``who`` (user, sensor or schedule), ``job``; empty outside a run."""
    return _RUN_CONTEXT.get() or {}


@contextlib.contextmanager
def bound_run_context(**values: str | None) -> Iterator[None]:
    """Add ``values`` (``None`` ones left out) to :func:`run_context` inside the block."""
    token = _RUN_CONTEXT.set({**run_context(), **{k: v for k, v in values.items() if v}})
    try:
        yield
    finally:
        _RUN_CONTEXT.reset(token)


def current_trace_id() -> str | None:
    """The current span's trace id as 32 hex digits, or ``None`` without a recording span."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def traceparent_env() -> dict[str, str]:
    """``{"TRACEPARENT": ...}`` (W3C) for the current span, to hand to a child process; empty
    when there is no span. :func:`attach_parent_from_env` in the child joins the trace."""
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return {"TRACEPARENT": carrier["traceparent"]} if "traceparent" in carrier else {}


def attach_parent_from_env(environ: Mapping[str, str] | None = None) -> object | None:
    """In a child process: make the ``TRACEPARENT`` variable's span the current parent.
    Returns the context token (or ``None`` when the variable is absent)."""
    value = (os.environ if environ is None else environ).get("TRACEPARENT")
    if not value:
        return None
    ctx = TraceContextTextMapPropagator().extract({"traceparent": value})
    return otel_context.attach(ctx)


def detach(token: object) -> None:
    """Undo :func:`attach_parent_from_env`."""
    otel_context.detach(token)  # type: ignore[arg-type]


def trace_api() -> Any:
    """The ``opentelemetry.trace`` module (for plugins that annotate the current span)."""
    return trace


def epoch_span(plugin: str, epoch: int, seconds: float, samples_per_second: float) -> None:
    """Record a finished training epoch as a child span ``<plugin>.epoch`` of the current span
    (start = now - ``seconds``), with the epoch number, seconds and samples per second."""
    end = time.time_ns()
    span = tracer().start_span(
        f"{plugin}.epoch",
        start_time=end - int(seconds * 1e9),
        attributes={
            "mlx.epoch": epoch,
            "mlx.seconds": seconds,
            "mlx.samples_per_second": samples_per_second,
        },
    )
    span.end(end_time=end)


def observe_training(plugin: str, seconds: float, samples: int) -> None:
    """Training metrics: ``seconds`` of wall time, ``samples`` = rows x epochs trained."""
    TRAINING_DURATION.labels(plugin).observe(seconds)
    if seconds > 0:
        TRAINING_THROUGHPUT.labels(plugin).set(samples / seconds)


def observe_drift_share(model: str, day: str, share: float) -> None:
    """The drift share (0..1, drifted features / features) of ``model`` on ``day``."""
    DRIFT_SHARE.labels(model, day).set(share)


# -- plugin calls --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PluginCall:
    """One finished plugin call, as handed to the call listeners (the audit log).

    ``duration_s`` in seconds; ``rows``/``bytes`` only when the result is a polars frame
    (``bytes`` is polars' estimate); ``error`` is the redacted exception text.
    """

    plugin: str
    kind: str
    version: str
    method: str
    outcome: str
    started_at: float
    duration_s: float
    trace_id: str | None
    context: Mapping[str, str] = field(default_factory=dict)
    rows: int | None = None
    bytes: int | None = None
    error: str | None = None


_LISTENERS: list[Callable[[PluginCall], None]] = []


def add_call_listener(listener: Callable[[PluginCall], None]) -> None:
    """Call ``listener`` with a :class:`PluginCall` after every plugin call (idempotent)."""
    if listener not in _LISTENERS:
        _LISTENERS.append(listener)


def remove_call_listener(listener: Callable[[PluginCall], None]) -> None:
    """Undo :func:`add_call_listener` (no error when absent)."""
    with contextlib.suppress(ValueError):
        _LISTENERS.remove(listener)


def _summary(result: Any) -> tuple[int | None, int | None]:
    height = getattr(result, "height", None)
    size = getattr(result, "estimated_size", None)
    if isinstance(height, int) and callable(size):
        try:
            return height, int(size())
        except Exception:
            return height, None
    return None, None


_METRIC_CHILDREN: dict[tuple[str, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, cached (the client's lookup is a large share of a call)."""
    key = (metric._name, *labels)
    child = _METRIC_CHILDREN.get(key)
    if child is None:
        child = _METRIC_CHILDREN[key] = metric.labels(*labels)
    return child


class _CallScope:
    """The span, metrics and listeners of one plugin call (``None``: a nested call)."""

    __slots__ = ("current", "key", "meta", "method", "span", "span_cm", "start", "token", "wall")

    def __init__(self, plugin: Any, method: str, current: bool = True) -> None:
        self.meta = type(plugin).metadata
        self.method = method
        self.key = id(plugin)
        self.current = current
        self.token: contextvars.Token[frozenset[int]] | None = None
        self.span_cm: contextlib.AbstractContextManager[Any] | None = None
        self.span: Any = None

    def __enter__(self) -> _CallScope:
        if self.current:
            self.token = _IN_CALL.set(_IN_CALL.get() | {self.key})
        if _STATE.tracer is None:
            configure()
        if _STATE.exporting:  # else nothing would see the span: metrics and listeners only
            meta = self.meta
            attrs: dict[str, Any] = {
                "mlx.plugin.name": meta.name,
                "mlx.plugin.kind": meta.kind,
                "mlx.plugin.version": meta.version,
                "mlx.plugin.method": self.method,
            }
            for k, v in run_context().items():
                attrs[f"mlx.{k}"] = redact(v)
            name = f"{meta.kind}.{meta.name}.{self.method}"
            tr = tracer()
            if self.current:
                self.span_cm = tr.start_as_current_span(
                    name, attributes=attrs, record_exception=False, set_status_on_exception=False
                )
                self.span = self.span_cm.__enter__()
            else:
                self.span = tr.start_span(
                    name, attributes=attrs, record_exception=False, set_status_on_exception=False
                )
        self.wall = time.time()
        self.start = time.perf_counter()
        return self

    def finish(self, result: Any, exc: BaseException | None) -> None:
        """End the call: ``result`` (``None`` on error) or the (redacted) exception ``exc``."""
        duration = time.perf_counter() - self.start
        meta = self.meta
        outcome = "ok" if exc is None else "error"
        rows, size = _summary(result) if exc is None else (None, None)
        error = redact(f"{type(exc).__name__}: {exc}") if exc is not None else None
        try:
            trace_id = self._end_span(outcome, rows, size, error)
        finally:
            if self.token is not None:
                _IN_CALL.reset(self.token)
        if meta.kind == "drift_detector" and exc is None:
            share = getattr(result, "drift_share", None)
            if isinstance(share, float):
                ctx = run_context()
                observe_drift_share(
                    ctx.get("model") or ctx.get("asset") or meta.name,
                    ctx.get("partition") or "",
                    share,
                )
        _child(PLUGIN_CALLS, meta.name, meta.kind, self.method, outcome).inc()
        _child(PLUGIN_CALL_DURATION, meta.name, meta.kind, self.method).observe(duration)
        if _LISTENERS:
            call = PluginCall(
                plugin=meta.name,
                kind=meta.kind,
                version=meta.version,
                method=self.method,
                outcome=outcome,
                started_at=self.wall,
                duration_s=duration,
                trace_id=trace_id,
                context=dict(run_context()),
                rows=rows,
                bytes=size,
                error=error,
            )
            for listener in list(_LISTENERS):
                try:
                    listener(call)
                except Exception as exc2:  # a sink's failure never fails the plugin call
                    _log.warning("mlx telemetry: call listener %r failed: %s", listener, exc2)

    def _end_span(
        self, outcome: str, rows: int | None, size: int | None, error: str | None
    ) -> str | None:
        span = self.span
        if span is None:
            return current_trace_id()
        try:
            span.set_attribute("mlx.outcome", outcome)
            if rows is not None:
                span.set_attribute("mlx.rows", rows)
            if size is not None:
                span.set_attribute("mlx.bytes", size)
            if error is not None:
                span.set_status(trace.Status(trace.StatusCode.ERROR, error))
                span.add_event("exception", {"exception.message": error})
            ctx = span.get_span_context()
            return format(ctx.trace_id, "032x") if ctx.is_valid else None
        finally:
            if self.span_cm is not None:
                self.span_cm.__exit__(None, None, None)
            else:
                span.end()


def plugin_call(plugin: Any, method: str, current: bool = True) -> _CallScope | None:
    """The telemetry scope of a call of ``plugin.method``; ``None`` when the call is nested in
    another call of the same plugin (helpers such as ``loop_config`` inside ``train`` are part
    of the outer call, not calls of their own) or the class has no metadata.

    ``current=False`` (generators) leaves the span out of the current context.
    Use: ``scope = plugin_call(p, "read")``, ``scope.__enter__()``, then exactly once
    ``scope.finish(result, exc)``.
    """
    if id(plugin) in _IN_CALL.get() or getattr(type(plugin), "metadata", None) is None:
        return None
    return _CallScope(plugin, method, current)


# -- helpers for users' code ----------------------------------------------------------------------
@contextlib.contextmanager
def traced_span(name: str, **attributes: str | int | float | bool) -> Iterator[Any]:
    """A span ``name`` (child of the current one) and an observation of
    ``mlx_traced_duration_seconds{name,outcome}`` around the block. Yields the span, so the
    block can add attributes (never raw data or secrets: string values are redacted).

    ``with traced_span("join_weather", rows=n): ...``
    """
    attrs = {k: redact(v) if isinstance(v, str) else v for k, v in attributes.items()}
    start = time.perf_counter()
    outcome = "ok"
    with tracer().start_as_current_span(name, attributes=attrs) as span:
        try:
            yield span
        except BaseException:
            outcome = "error"
            raise
        finally:
            TRACED_DURATION.labels(name, outcome).observe(time.perf_counter() - start)


def traced(name: str | None = None) -> Callable[[F], F]:
    """Decorator: run the function inside :func:`traced_span` named ``name`` (default: the
    function's qualified name).

    ``@traced("feature_engineering")``
    """

    def decorate(fn: F) -> F:
        span_name = name or fn.__qualname__

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with traced_span(span_name):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


# -- exposition ------------------------------------------------------------------------------------
def metrics_text() -> bytes:
    """The registry in the Prometheus text exposition format (what a pushgateway accepts)."""
    return generate_latest(REGISTRY)


MetricsSnapshot = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""Sample (name, sorted labels) -> value of the registry at one moment."""

_CUMULATIVE = {"counter", "histogram", "summary"}


def metrics_snapshot() -> MetricsSnapshot:
    """The registry's cumulative samples now (counters, histograms, summaries), to take the
    metrics of one run as the difference from its start (:func:`write_run_metrics`)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in REGISTRY.collect()
        if family.type in _CUMULATIVE
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def _run_registry(since: MetricsSnapshot) -> CollectorRegistry:
    """A registry whose counters and histograms are the registry's minus ``since`` (gauges as
    they are), so that several runs in one process (``mlx lifecycle``) each report their own."""
    from prometheus_client.metrics_core import Metric

    class _Delta:
        def collect(self) -> Iterator[Metric]:
            for family in REGISTRY.collect():
                out = Metric(family.name, family.documentation, family.type, family.unit)
                for sample in family.samples:
                    if family.type in _CUMULATIVE and sample.name.endswith("_created"):
                        continue
                    value = sample.value
                    if family.type in _CUMULATIVE:
                        value -= since.get((sample.name, tuple(sorted(sample.labels.items()))), 0.0)
                    out.add_sample(sample.name, sample.labels, value, sample.timestamp)
                yield out

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Delta())
    return registry


def write_run_metrics(
    home: str | os.PathLike[str], run_id: str, since: MetricsSnapshot | None = None
) -> Path:
    """Write the metrics of run ``run_id`` in the Prometheus text format (what a pushgateway
    accepts) to ``<home>/metrics/<run_id>.prom`` atomically; returns the path.

    ``since``: :func:`metrics_snapshot` taken when the run started; counters and histograms are
    then this run's own (the registry's values minus the snapshot), so files of several runs of
    one process add up to the process's totals and are never counted twice. None: the process's
    totals. Gauges (drift shares) are their last value either way.
    """
    from mlx_plugins.kernel.atomic import atomic_write_bytes

    if not run_id or "/" in run_id or run_id.startswith("."):
        raise ValueError(f"run_id {run_id!r} is not a plain file name; pass Dagster's run id")
    path = Path(home) / "metrics" / f"{run_id}.prom"
    text = metrics_text() if since is None else generate_latest(_run_registry(since))
    atomic_write_bytes(path, text)
    return path


def serve_metrics(port: int = 9464, addr: str = "127.0.0.1") -> Any:
    """Expose the registry on ``http://addr:port/metrics`` from a background thread (for
    long-lived processes: the daemon, the UI, a serving process). Returns the server."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    return server


__all__ = [
    "DRIFT_SHARE",
    "PLUGIN_CALLS",
    "PLUGIN_CALL_DURATION",
    "REGISTRY",
    "TRACE_TAG",
    "TRAINING_DURATION",
    "TRAINING_THROUGHPUT",
    "PluginCall",
    "add_call_listener",
    "attach_parent_from_env",
    "bound_run_context",
    "configure",
    "current_trace_id",
    "detach",
    "epoch_span",
    "metrics_snapshot",
    "metrics_text",
    "observe_drift_share",
    "observe_training",
    "plugin_call",
    "remove_call_listener",
    "run_context",
    "serve_metrics",
    "shutdown",
    "trace_api",
    "traced",
    "traced_span",
    "traceparent_env",
    "tracer",
    "write_run_metrics",
]

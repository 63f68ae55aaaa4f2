"""``@traced`` / ``traced_span`` for users' code, and the off-by-default export."""

from __future__ import annotations

import os

import pytest

from mlx_plugins.kernel import telemetry


def _count(name: str, outcome: str) -> float:
    value = telemetry.REGISTRY.get_sample_value(
        "mlx_traced_duration_seconds_count", {"name": name, "outcome": outcome}
    )
    return value or 0.0


def test_traced_decorator_adds_a_span_and_a_duration(spans):
    @telemetry.traced("feature_engineering")
    def fe(x: int) -> int:
        return x + 1

    before = _count("feature_engineering", "ok")
    with telemetry.tracer().start_as_current_span("outer") as outer:
        assert fe(1) == 2
    span = next(s for s in spans.get_finished_spans() if s.name == "feature_engineering")
    assert span.parent.span_id == outer.get_span_context().span_id
    assert _count("feature_engineering", "ok") == before + 1


def test_traced_span_records_errors_and_redacts_attributes(spans):
    from mlx_plugins.kernel.secrets import register_secret

    register_secret("s3cr3t-value-for-traced-span")
    before = _count("join", "error")
    with (
        pytest.raises(ValueError),
        telemetry.traced_span("join", source="s3cr3t-value-for-traced-span"),
    ):
        raise ValueError("boom")
    span = next(s for s in spans.get_finished_spans() if s.name == "join")
    assert span.attributes["source"] == "***"
    assert not span.status.is_ok
    assert _count("join", "error") == before + 1


def test_nothing_configured_exports_nothing(monkeypatch):
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    telemetry.shutdown()
    try:
        telemetry.configure()
        processors = telemetry._STATE.provider._active_span_processor._span_processors
        assert processors == ()
    finally:
        telemetry.shutdown()


def test_otlp_requested_without_the_exporter_names_the_package(monkeypatch):
    pytest.importorskip("opentelemetry.sdk")
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the OTLP exporter is installed")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    telemetry.shutdown()
    try:
        with pytest.raises(
            RuntimeError, match="pip install 'opentelemetry-exporter-otlp-proto-http"
        ):
            telemetry.configure()
    finally:
        telemetry.shutdown()


def test_write_run_metrics_refuses_a_path_as_run_id(tmp_path):
    with pytest.raises(ValueError, match="run_id"):
        telemetry.write_run_metrics(tmp_path, "../x")
    path = telemetry.write_run_metrics(tmp_path, "abc")
    assert path == tmp_path / "metrics" / "abc.prom"
    assert b"# TYPE mlx_plugin_calls_total counter" in path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["abc.prom"]  # no temp file left


def test_drift_share_gauge_per_model_and_day():
    import numpy as np
    import polars as pl

    from mlx_plugins.drift_detectors.polars_drift import PolarsDriftDetector

    rng = np.random.default_rng(0)
    reference = pl.DataFrame({"a": rng.normal(0, 1, 2000), "b": rng.normal(0, 1, 2000)})
    current = pl.DataFrame({"a": rng.normal(5, 1, 2000), "b": rng.normal(0, 1, 2000)})
    detector = PolarsDriftDetector()
    with (
        detector.session() as live,
        telemetry.bound_run_context(model="delay_model", partition="2013-07-01"),
    ):
        report = live.compare(reference, current, numeric=["a", "b"])
    value = telemetry.REGISTRY.get_sample_value(
        "mlx_drift_share_ratio", {"model": "delay_model", "day": "2013-07-01"}
    )
    assert value == report.drift_share
    assert 0 < value < 1  # one of two columns drifted


def test_audit_url_password_is_hidden_in_messages():
    from mlx_resources.telemetry.audit import safe_url

    shown = safe_url("postgresql+psycopg://mlx:hunter2-pw@db:5432/mlx")
    assert "hunter2-pw" not in shown and "db:5432/mlx" in shown


def test_generator_method_calls_are_counted_once_and_early_close_is_ok():
    from typing import ClassVar

    from mlx_plugins.data_sources.base import DataSource
    from mlx_plugins.kernel.metadata import PluginMetadata

    class GenSource(DataSource):
        metadata: ClassVar[PluginMetadata] = PluginMetadata(
            name="gen_probe", kind="data_source", version="0.0.1", capabilities=("tables",)
        )

        def tables(self):  # type: ignore[no-untyped-def]
            return {}

        def schema(self, table):  # type: ignore[no-untyped-def]
            return {}

        def read(self, table, start=None, end=None):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        def chunks(self, n: int):  # type: ignore[no-untyped-def]
            yield from range(n)

    labels = {"plugin": "gen_probe", "kind": "data_source", "method": "chunks"}
    plugin = GenSource()
    assert list(plugin.chunks(3)) == [0, 1, 2]
    gen = plugin.chunks(10)
    next(gen)
    gen.close()
    ok = telemetry.REGISTRY.get_sample_value("mlx_plugin_calls_total", {**labels, "outcome": "ok"})
    err = telemetry.REGISTRY.get_sample_value(
        "mlx_plugin_calls_total", {**labels, "outcome": "error"}
    )
    assert ok == 2 and not err


def test_console_exporter_prints_spans_and_an_unknown_exporter_is_named(
    monkeypatch, capsys, caplog
):
    """Seen in a trial: OTEL_TRACES_EXPORTER=console exported nothing, silently."""
    import json

    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console,zipkin")
    telemetry.shutdown()
    try:
        with telemetry.traced_span("console_probe"):
            pass
        telemetry.shutdown()  # flushes
        out = capsys.readouterr().out
        printed = json.loads(out[out.index("{") : out.rindex("}") + 1])
        assert printed["name"] == "console_probe"
        assert "zipkin, which MLX does not export to" in caplog.text
    finally:
        monkeypatch.delenv("OTEL_TRACES_EXPORTER")
        telemetry.shutdown()


def test_who_names_the_account_when_user_is_not_set(monkeypatch):
    """Seen in a trial: audit rows said `user:unknown` in a shell without $USER."""
    import pwd

    from mlx_resources.telemetry import who

    for name in ("USER", "LOGNAME", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    assert who({}) == f"user:{pwd.getpwuid(os.getuid()).pw_name}"
    assert who({"dagster/user": "ada"}) == "user:ada"
    assert who({"dagster/sensor_name": "drift_retrain_sensor"}) == "sensor:drift_retrain_sensor"

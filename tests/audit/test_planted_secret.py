"""A planted secret is absent from every sink of a real run (issue 12, "Done when").

The secret is a config value read from the environment (``data_dir: {env: ...}``) that the
source puts in its error: the run fails with it in the exception. Then every place the run
wrote to is searched for it: the spans (attributes, status, events), the Prometheus registry
and the run's ``.prom`` file, the audit rows, the audit database's files and ``mlx audit``'s
output, the Dagster event log (log lines, error messages, metadata) and the run record (tags,
config), every file of the instance (event and run storage, compute logs) and of the MLX home,
and the Python log records and stdout/stderr of the process that ran it.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._serdes import serialize_value
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mlx_plugins.kernel import telemetry
from mlx_resources.telemetry import audit
from mlx_resources.telemetry.audit import AuditLog, default_url
from tests.telemetry.test_run_telemetry import LEAKY, SECRET_VAR, leaky_reference_job

pytestmark = pytest.mark.slow


def _files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_a_planted_secret_is_in_no_sink(tmp_path, monkeypatch, caplog, capfd):
    secret = f"/nonexistent/mlx-planted-{uuid.uuid4().hex}"
    home = tmp_path / "home"
    monkeypatch.setenv("MLX_HOME", str(home))
    monkeypatch.setenv(SECRET_VAR, secret)
    comp = tmp_path / "mlx.yaml"
    comp.write_text(LEAKY)
    monkeypatch.setenv("MLX_COMPOSITION", str(comp))
    caplog.set_level(logging.DEBUG)
    (tmp_path / "instance").mkdir()
    spans = InMemorySpanExporter()
    telemetry.configure(spans)
    try:
        with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:
            result = dg.execute_job(
                dg.reconstructable(leaky_reference_job), instance=instance, raise_on_error=False
            )
            assert not result.success  # the source failed with the secret in its error
            run_id = result.run_id
            records = instance.all_logs(run_id)
            run = instance.get_run_by_id(run_id)
            assert run is not None
            failures = [
                e.dagster_event.step_failure_data.error
                for e in records
                if e.dagster_event is not None
                and e.dagster_event.event_type == dg.DagsterEventType.STEP_FAILURE
            ]
            events = "\n".join(serialize_value(e) for e in records)
            run_record = serialize_value(run)
    finally:
        telemetry.shutdown()
    sinks: dict[str, Any] = {}

    # error messages: the step failure (the redaction marker shows the error was recorded)
    assert failures and failures[0] is not None
    error_text = json.dumps(
        [serialize_value(f) for f in failures]  # message, cause chain, stack
    )
    assert "***" in error_text
    sinks["step failure (message, cause, stack)"] = error_text
    # logs and metadata: every event of the run (log lines, metadata, failures) and its record
    sinks["event log"] = events
    sinks["run record (tags, config)"] = run_record
    # spans
    finished = spans.get_finished_spans()
    assert any(s.attributes.get("mlx.outcome") == "error" for s in finished)
    sinks["spans"] = "\n".join(
        serialize_value(dict(s.attributes))
        + str(s.status.description)
        + "".join(str(dict(e.attributes)) for e in s.events)
        + s.name
        for s in finished
    )
    # metrics: the registry and the run's metrics file
    sinks["metrics registry"] = telemetry.metrics_text().decode()
    prom = list((home / "metrics").glob("*.prom"))
    assert [p.stem for p in prom] == [run_id]
    sinks["metrics file"] = prom[0].read_text()
    # audit rows, and `mlx audit` (table and JSON)
    rows = AuditLog(default_url(str(home))).query(run_id=run_id)
    assert any(r["outcome"] == "error" and "***" in (r["error"] or "") for r in rows)
    sinks["audit rows"] = str(rows)
    from mlx_assets.cli import main

    capfd.readouterr()
    assert main(["audit", "--run", run_id, "--json"]) == 0
    assert main(["audit", "--run", run_id]) == 0
    out = capfd.readouterr()
    assert run_id in out.out
    sinks["mlx audit output"] = out.out + out.err
    audit.uninstall()
    # Python logging records of this process (Dagster's, the platform's)
    sinks["log records"] = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
    )
    leaked = [name for name, text in sinks.items() if secret in text]
    assert leaked == [], f"the planted secret is in: {leaked}"
    # every byte written under the instance (runs, events, compute logs) and the MLX home
    for root in (tmp_path / "instance", home):
        assert sum(1 for p in root.rglob("*") if p.is_file()) >= 2  # storage, audit, metrics
        assert _files_containing(root, secret.encode()) == []
    # the secret's value really was used (the run failed on it): the test is not vacuous
    assert os.environ[SECRET_VAR] == secret

"""The Databricks trainer continues the caller's trace: the W3C traceparent travels as a Pipes
extra (the cluster's environment is its own), the cluster's span is exported from the task
process (the loopback Databricks server runs it as a real subprocess) with the caller's trace
id and the plugin-call span as its parent, and the caller records the id the cluster joined."""

from __future__ import annotations

import pytest

from mlx_plugins.kernel import telemetry
from mlx_plugins.ml_platforms.databricks_loopback import LoopbackDatabricks
from tests.plugins.test_databricks import TOKEN, _run_asset, make_plugin, spec_for
from tests.telemetry._collector import running_collector

pytestmark = pytest.mark.slow


def test_the_clusters_spans_share_the_runs_trace_id(spans, tmp_path):
    with (
        running_collector() as collector,
        LoopbackDatabricks(token=TOKEN, max_run_s=300) as server,
    ):
        cluster_env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_SERVICE_NAME": "mlx-databricks-cluster",
        }
        plugin = make_plugin(server, new_cluster={"spark_env_vars": cluster_env})
        with telemetry.tracer().start_as_current_span("step model") as step:
            result, _messages = _run_asset(plugin, spec_for(tmp_path))
        assert result.success
        remote = [s for s in collector.spans() if s.name == "databricks.train.remote"]
    trace_id = format(step.get_span_context().trace_id, "032x")
    call = next(s for s in spans.get_finished_spans() if s.name == "ml_platform.databricks.train")
    assert format(call.context.trace_id, "032x") == trace_id
    assert call.attributes["mlx.databricks_trace_id"] == trace_id
    # the cluster's own span, exported from the task process: same trace, child of the call
    [span] = remote
    assert span.trace_id.hex() == trace_id
    assert int.from_bytes(span.parent_span_id, "big") == call.context.span_id

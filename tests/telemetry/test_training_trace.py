"""The training child joins the caller's trace; epochs are sub-spans; training metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_plugins.kernel import telemetry
from mlx_plugins.ml_platforms.base import TrainingSpec
from mlx_plugins.ml_platforms.local_torch import LocalTorchPlatform
from tests.faults._driver import tiny_frames


def _spec(tmp_path: Path) -> TrainingSpec:
    return TrainingSpec(
        numeric_features=["a", "b"],
        categorical_features=["c"],
        target="y",
        artifact_dir=str(tmp_path),
    )


@pytest.mark.slow
def test_trace_id_propagates_into_the_training_child(spans, tmp_path):
    train, valid = tiny_frames()
    plugin = LocalTorchPlatform(epochs=2, batch_size=64, hidden=[4], isolation="process")
    with telemetry.tracer().start_as_current_span("step model") as step, plugin.session():
        plugin.train(train, valid, _spec(tmp_path))
    trace_id = format(step.get_span_context().trace_id, "032x")
    call = next(s for s in spans.get_finished_spans() if s.name == "ml_platform.local_torch.train")
    assert format(call.context.trace_id, "032x") == trace_id
    # the child (another process) read TRACEPARENT and its span is in the same trace
    assert call.attributes["mlx.child_trace_id"] == trace_id


def test_epochs_are_sub_spans_and_training_is_measured(spans, tmp_path):
    train, valid = tiny_frames()
    plugin = LocalTorchPlatform(epochs=3, batch_size=64, hidden=[4], isolation="none")
    before = telemetry.REGISTRY.get_sample_value(
        "mlx_training_duration_seconds_count", {"plugin": "local_torch"}
    )
    with plugin.session():
        plugin.train(train, valid, _spec(tmp_path))
    finished = spans.get_finished_spans()
    call = next(s for s in finished if s.name == "ml_platform.local_torch.train")
    epochs = [s for s in finished if s.name == "local_torch.epoch"]
    numbers = [s.attributes["mlx.epoch"] for s in epochs]
    assert len(numbers) == 3 and numbers == sorted(set(numbers))
    assert all(s.parent.span_id == call.context.span_id for s in epochs)
    after = telemetry.REGISTRY.get_sample_value(
        "mlx_training_duration_seconds_count", {"plugin": "local_torch"}
    )
    assert after == (before or 0) + 1
    rate = telemetry.REGISTRY.get_sample_value(
        "mlx_training_throughput_samples_per_second", {"plugin": "local_torch"}
    )
    assert rate is not None and rate > 0

"""The torchrun/DDP workers continue the caller's trace (W3C TRACEPARENT through the
environment), inside a real materialize with two gloo ranks on the CPU."""

import dagster as dg
import pytest

from mlx_plugins.kernel import telemetry
from mlx_plugins.ml_platforms.base import TrainingSpec
from mlx_plugins.ml_platforms.local_torch import LocalTorchPlatform
from tests.plugins.test_ddp import learnable_frame


@pytest.mark.slow
def test_ddp_workers_spans_have_the_parents_trace_id(spans, tmp_path):
    train, valid = learnable_frame(600, 1), learnable_frame(200, 2)
    spec = TrainingSpec(
        numeric_features=("x", "noise"),
        categorical_features=("cat",),
        target="y",
        artifact_dir=str(tmp_path / "model"),
    )

    @dg.asset
    def ddp_model(
        context: dg.AssetExecutionContext, ml_platform: LocalTorchPlatform
    ) -> dg.MaterializeResult:
        model = ml_platform.train(train, valid, spec, context=context)
        return dg.MaterializeResult(metadata={"device": model.device})

    platform = LocalTorchPlatform(
        distributed="always",
        nproc_per_node=2,
        device="cpu",
        epochs=1,
        hidden=[4],
        batch_size=128,
        num_threads=1,
    )
    with telemetry.tracer().start_as_current_span("step ddp_model") as step:
        result = dg.materialize(
            [ddp_model],
            resources={"ml_platform": platform},
            instance=dg.DagsterInstance.ephemeral(),
        )
    assert result.success
    trace_id = format(step.get_span_context().trace_id, "032x")
    call = next(s for s in spans.get_finished_spans() if s.name == "ml_platform.local_torch.train")
    assert format(call.context.trace_id, "032x") == trace_id
    # rank 0's span (another process, under torchrun) is in the same trace
    assert call.attributes["mlx.ddp_trace_id"] == trace_id

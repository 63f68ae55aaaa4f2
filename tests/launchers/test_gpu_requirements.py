"""GPU needs are read from the run's execution plan (op tags never reach run tags)."""

from __future__ import annotations

import pytest
from dagster import instance_for_test

from mlx_resources.launchers.gpu_requirements import (
    GpuRequest,
    GpuRequirementError,
    gpu_request_for_run,
    gpu_steps_for_run,
)
from tests.launchers.helpers import create_run


@pytest.fixture(scope="module")
def instance():
    with instance_for_test() as instance:
        yield instance


def test_gpu_asset_declares_its_need_through_op_tags(instance):
    run = create_run(instance, "gpu_job")
    assert "mlx/gpu" not in run.tags  # dagster does not copy op tags onto the run
    assert gpu_request_for_run(instance, run) == GpuRequest(gpus=1, gpu_type="h100", memory_gb=40.0)


def test_cpu_only_run_needs_no_gpu(instance):
    assert gpu_request_for_run(instance, create_run(instance, "cpu_job")) is None


def test_pool_alone_means_one_gpu(instance):
    assert gpu_request_for_run(instance, create_run(instance, "pool_only_job")) == GpuRequest(
        gpus=1, gpu_type=None, memory_gb=None
    )


def test_asset_selection_is_respected(instance):
    run = create_run(instance, "mixed_job", asset_selection={"cpu_features"})
    assert gpu_request_for_run(instance, run) is None
    run = create_run(instance, "mixed_job")
    assert set(gpu_steps_for_run(instance, run)) == {"train_model"}
    assert gpu_request_for_run(instance, run).gpus == 1


def test_run_level_tags_override_field_by_field(instance):
    run = create_run(instance, "gpu_job", tags={"mlx/gpu": "3"})
    assert gpu_request_for_run(instance, run) == GpuRequest(gpus=3, gpu_type="h100", memory_gb=40.0)
    run = create_run(instance, "cpu_job", tags={"mlx/gpu-type": "L4"})
    assert gpu_request_for_run(instance, run) == GpuRequest(gpus=1, gpu_type="l4", memory_gb=None)


def test_zero_gpus_is_a_clear_error(instance):
    run = create_run(instance, "zero_gpu_job")
    with pytest.raises(GpuRequirementError) as err:
        gpu_request_for_run(instance, run)
    message = str(err.value)
    assert run.run_id in message
    assert "zero_gpu_model" in message
    assert "mlx/gpu" in message and "Fix:" in message


def test_non_integer_gpus_is_a_clear_error(instance):
    run = create_run(instance, "fractional_gpu_job")
    with pytest.raises(GpuRequirementError, match=r"fractional_gpu_model.*not an integer"):
        gpu_request_for_run(instance, run)


@pytest.mark.parametrize(
    ("tags", "key"),
    [
        ({"mlx/gpu": "-1"}, "mlx/gpu"),
        ({"mlx/gpu": "two"}, "mlx/gpu"),
        ({"mlx/gpu-memory-gb": "40GB"}, "mlx/gpu-memory-gb"),
        ({"mlx/gpu-memory-gb": "0"}, "mlx/gpu-memory-gb"),
    ],
)
def test_bad_run_level_tags_name_run_and_key(instance, tags, key):
    run = create_run(instance, "cpu_job", tags=tags)
    with pytest.raises(GpuRequirementError) as err:
        gpu_request_for_run(instance, run)
    assert run.run_id in str(err.value)
    assert "run-level tags" in str(err.value)
    assert key in str(err.value)


def test_steps_with_different_gpu_types_conflict(instance):
    run = create_run(instance, "conflicting_types_job")
    with pytest.raises(GpuRequirementError, match=r"'big_model' \(a100\).*'train_model' \(h100\)"):
        gpu_request_for_run(instance, run)
    # ...unless the run settles the type.
    run = create_run(instance, "conflicting_types_job", tags={"mlx/gpu-type": "a100"})
    assert gpu_request_for_run(instance, run) == GpuRequest(gpus=2, gpu_type="a100", memory_gb=40.0)

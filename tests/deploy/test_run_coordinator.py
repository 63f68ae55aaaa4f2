"""MlxQueuedRunCoordinator (the production queue) tags runs from their execution plans, so that
``tag_concurrency_limits`` can count GPU runs and training runs."""

from __future__ import annotations

import dagster as dg
import pytest

from mlx_resources.run_coordinator import (
    GPU_RUN_TAG,
    JOB_TAG,
    MlxQueuedRunCoordinator,
    queue_tags,
)
from tests.launchers.helpers import create_run

OVERRIDES = {
    "run_coordinator": {
        "module": "mlx_resources.run_coordinator",
        "class": "MlxQueuedRunCoordinator",
    }
}


@pytest.fixture
def instance():
    with dg.instance_for_test(overrides=OVERRIDES) as inst:
        assert isinstance(inst.run_coordinator, MlxQueuedRunCoordinator)
        yield inst


def _queue(instance: dg.DagsterInstance, job: str, **kwargs) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The tags a run of ``job`` has once queued: its own plus what the coordinator adds (the
    queueing itself, through a real daemon, is tests/deploy/test_daemon_restart.py)."""
    run = create_run(instance, job, **kwargs)
    return {**run.tags, **queue_tags(instance, run)}


def test_a_run_with_a_gpu_step_is_tagged_as_a_gpu_run(instance):
    tags = _queue(instance, "gpu_job")
    assert tags[GPU_RUN_TAG] == "true"
    assert tags[JOB_TAG] == "gpu_job"


def test_a_cpu_run_is_not_a_gpu_run(instance):
    tags = _queue(instance, "cpu_job")
    assert GPU_RUN_TAG not in tags
    assert tags[JOB_TAG] == "cpu_job"


def test_the_cpu_subset_of_a_mixed_job_is_not_a_gpu_run(instance):
    tags = _queue(instance, "mixed_job", asset_selection={"cpu_features"})
    assert GPU_RUN_TAG not in tags
    assert GPU_RUN_TAG in _queue(instance, "mixed_job")


def test_a_users_tag_wins(instance):
    tags = _queue(instance, "gpu_job", tags={JOB_TAG: "nightly"})
    assert tags[JOB_TAG] == "nightly"


def test_an_invalid_gpu_declaration_is_queued_untagged_for_the_launcher_to_fail(instance, caplog):
    tags = _queue(instance, "zero_gpu_job")
    assert GPU_RUN_TAG not in tags
    assert "mlx/gpu='0'" in caplog.text

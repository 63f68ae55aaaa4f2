"""The queued run coordinator that labels runs so tag concurrency limits can count them.

Dagster's ``concurrency.runs.tag_concurrency_limits`` count *run* tags, but a GPU need is
declared on the asset (``pool="gpu"``, op tags ``mlx/gpu*``; docs/gpu.md) and Dagster does not
copy op tags to runs. :class:`MlxQueuedRunCoordinator` is Dagster's ``QueuedRunCoordinator``
(same config, same queue, same daemon) that adds two tags to each run as it is queued:

* ``mlx/gpu-run: "true"`` when a step the run executes needs a GPU, read from the run's stored
  execution plan by :func:`~mlx_resources.launchers.gpu_requirements.gpu_request_for_run`, the
  function both GPU run launchers place runs with (so the queue and the launcher agree);
* ``mlx/job: <job name>`` (``training``, ``daily``, ...), so a limit can name a job.

A production ``dagster.yaml`` (deploy/dagster.prod.yaml) then limits them::

    run_coordinator:
      module: mlx_resources.run_coordinator
      class: MlxQueuedRunCoordinator
    concurrency:
      runs:
        tag_concurrency_limits:
          - {key: mlx/gpu-run, value: "true", limit: 4}    # GPU runs at once
          - {key: mlx/job, value: training, limit: 2}      # training runs at once

A run whose GPU declaration is invalid is queued untagged; the run launcher then fails it with
the error that names the step, the tag and the fix (docs/gpu.md, "Validation").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from dagster._core.run_coordinator import SubmitRunContext
from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator
from dagster._core.storage.dagster_run import DagsterRun

GPU_RUN_TAG = "mlx/gpu-run"
"""Run tag set to ``"true"`` on runs with a step that needs a GPU."""
JOB_TAG = "mlx/job"
"""Run tag holding the run's job name."""

_log = logging.getLogger(__name__)


def queue_tags(instance: object, run: DagsterRun) -> dict[str, str]:
    """The tags :class:`MlxQueuedRunCoordinator` adds to ``run`` (only those it lacks).

    Args:
        instance: the ``DagsterInstance`` holding the run and its execution plan snapshot.
        run: the run being queued.

    Returns:
        ``{"mlx/job": name}`` and, for a run that needs a GPU, ``{"mlx/gpu-run": "true"}``;
        tags the run already carries are left out (a user's tag wins).
    """
    from mlx_resources.launchers.gpu_requirements import GpuRequirementError, gpu_request_for_run

    tags: dict[str, str] = {JOB_TAG: run.job_name}
    try:
        if gpu_request_for_run(instance, run) is not None:  # type: ignore[arg-type]
            tags[GPU_RUN_TAG] = "true"
    except GpuRequirementError as exc:
        # The launcher fails this run with the same message; the queue only cannot count it.
        _log.warning("run %s is queued without %s: %s", run.run_id, GPU_RUN_TAG, exc)
    return {k: v for k, v in tags.items() if k not in run.tags}


class MlxQueuedRunCoordinator(QueuedRunCoordinator):
    """``QueuedRunCoordinator`` that tags each run with ``mlx/job`` and, when it needs a GPU,
    ``mlx/gpu-run`` before queueing it (module docstring). Config: exactly
    ``QueuedRunCoordinator``'s."""

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        tags: Mapping[str, str] = queue_tags(self._instance, run)
        if tags:
            self._instance.add_run_tags(run.run_id, dict(tags))
            refreshed = self._instance.get_run_by_id(run.run_id)
            if refreshed is not None:
                context = SubmitRunContext(refreshed, context.workspace)
        return super().submit_run(context)

"""Run liveness: which process executes a run, whether it is still alive, and failing dead runs.

Runs executed in-process (``mlx lifecycle``, ``dagster asset materialize``) record no run worker
Dagster can check, so a ``kill -9`` left them STARTED forever, each holding a
``max_concurrent_runs`` slot. Here:

* :data:`liveness_in_process_executor` (the jobs' executor) records the executing process as run
  tags when the run starts: pid, the process's start time (so a reused pid is not mistaken for
  it), host and boot id.
* :func:`worker_death` decides from those tags whether the process is gone (same host only; a
  run from another host is never judged here).
* :func:`sweep_dead_runs` marks such runs FAILURE with ``instance.report_run_failed``; the
  lifecycle CLI calls it before planning.
* :class:`LivenessRunLauncher` is Dagster's ``DefaultRunLauncher`` whose
  ``check_run_worker_health`` answers from the same tags, so the daemon's run monitoring
  (``run_monitoring: enabled`` in dagster.yaml) fails dead runs on its own.
* :func:`~mlx_resources.process_identity.die_with_parent` makes a child process (the forked
  training child, torchrun and its workers) die with the process that started it. Process
  identities and their tags are exported by :mod:`mlx_resources.process_identity` only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus

if TYPE_CHECKING:
    from mlx_resources.leftovers import CleanReport

# The process identities (mlx_plugins.kernel.process_identity) and the leftovers' cleaning
# (mlx_resources.leftovers) are imported by the functions that run them: the code location
# loads this module for its executor only, at every load (docs/lifecycle_component.md, "Load
# time").

__all__ = [
    "TAG_RUN",
    "LivenessRunLauncher",
    "liveness_in_process_executor",
    "record_run_worker",
    "sweep_dead_runs",
    "worker_death",
]


TAG_RUN = "mlx/worker_run"
"""The run that recorded the worker tags. Dagster copies a run's tags to its retries and
re-executions; those carry the parent's (dead) worker until their own executor records theirs,
and must not be judged by it."""


def worker_death(run: dg.DagsterRun) -> str | None:
    """Why the process recorded on ``run`` is known to be gone, or None (alive or unknown)."""
    from mlx_plugins.kernel.process_identity import ProcessIdentity, is_alive

    if run.tags.get(TAG_RUN) != run.run_id:
        return None  # no worker recorded by this run itself
    who = ProcessIdentity.from_tags(run.tags)
    if who is None or is_alive(who) is not False:
        return None
    return (
        f"the process that executed run {run.run_id} (pid {who.pid} on {who.host}) is gone "
        "(killed or crashed) and the run never finished; marked failed so it no longer holds a "
        "run slot. Re-run what it was doing (e.g. `mlx lifecycle`)."
    )


IN_PROGRESS = (
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)


def sweep_dead_runs(instance: dg.DagsterInstance, log: Callable[[str], None] = print) -> list[str]:
    """Mark FAILURE every in-progress run whose recorded process on this host is gone.

    Returns the run ids it failed. Runs without liveness tags, or from another host, are left
    alone (run monitoring's timeouts cover those).
    """
    failed: list[str] = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=list(IN_PROGRESS))):
        reason = worker_death(run)
        if reason is None:
            continue
        fresh = instance.get_run_by_id(run.run_id)
        if fresh is None or fresh.status not in IN_PROGRESS:
            continue  # finished meanwhile
        instance.report_run_failed(fresh, reason)
        log(
            f"run {run.run_id[:8]} ({run.job_name}) was left {run.status.value} by a dead "
            "process; marked failed"
        )
        failed.append(run.run_id)
    return failed


def record_run_worker(instance: dg.DagsterInstance, run_id: str) -> None:
    """Tag ``run_id`` with this process's identity (see
    :class:`~mlx_plugins.kernel.process_identity.ProcessIdentity`)."""
    from mlx_plugins.kernel.process_identity import identity

    instance.add_run_tags(run_id, {**identity().tags(), TAG_RUN: run_id})


# -- the executor that records the worker ------------------------------------------------------
class _LivenessExecutor:
    """Wraps an executor: records the executing process on the run, fails runs left by dead
    processes (so ``dagster asset materialize`` frees their slots too) and, for the platform's
    jobs, cleans their leftovers (``mlx_resources.leftovers``), then delegates."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[Any]:
        instance = plan_context.instance
        record_run_worker(instance, plan_context.run_id)
        home = None
        try:
            sweep_dead_runs(instance, plan_context.log.info)
            home = _platform_home(plan_context.reconstructable_job.get_definition())
            if home is not None:
                from mlx_resources.leftovers import clean_leftovers

                clean_leftovers(instance, home, log=plan_context.log.info)
        except Exception as exc:  # never fail this run because of another run's leftovers
            plan_context.log.warning(f"could not recover after dead processes: {exc!r}")
        # run > step spans, trace id tag, audit log, metrics file (mlx_resources.telemetry)
        from mlx_resources.telemetry import traced_execution
        from mlx_resources.telemetry.audit import install_for_run

        install_for_run(home, plan_context.log.warning)
        events = self._inner.execute(plan_context, execution_plan)
        yield from traced_execution(plan_context, events, home)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _platform_home(job_def: Any) -> Path | None:
    """The MLX home of a job that uses the ``platform`` resource (None for other jobs)."""
    from mlx_resources.platform import Platform

    rdef = job_def.resource_defs.get("platform")
    if rdef is None:
        return None
    home = ""
    field = getattr(rdef, "config_field", None)
    if field is not None and field.default_provided and isinstance(field.default_value, dict):
        home = str(field.default_value.get("home") or "")
    return Platform(home=home).home_path


def _make_executor_class() -> type:
    from dagster._core.executor.base import Executor

    class LivenessExecutor(_LivenessExecutor, Executor):
        @property
        def retries(self):  # type: ignore[override]
            return self._inner.retries

        @property
        def step_dependency_config(self):  # type: ignore[override]
            return self._inner.step_dependency_config

    return LivenessExecutor


@dg.executor(
    name="in_process",
    config_schema=dg.in_process_executor.config_schema,
)
def liveness_in_process_executor(init_context: Any) -> Any:
    """Dagster's in-process executor that first records the run's process as run tags.

    Same config as ``in_process_executor``; adds tags ``mlx/worker_pid``, ``mlx/worker_start``,
    ``mlx/worker_host``, ``mlx/worker_boot`` so a dead run can be told from a live one.
    """
    inner = dg.in_process_executor.executor_creation_fn(init_context)  # type: ignore[misc]
    return _make_executor_class()(inner)


# -- run monitoring in the daemon --------------------------------------------------------------
class LivenessRunLauncher(DefaultRunLauncher):
    """``DefaultRunLauncher`` whose worker health check also covers runs executed in-process.

    Run monitoring calls ``check_run_worker_health`` for every STARTED run; a run whose recorded
    process (see :func:`worker_death`) is gone is reported FAILED, and the daemon marks it
    failed. Every other run reads as RUNNING, so this never fails a run it cannot judge.
    """

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        reason = worker_death(run)
        if reason is not None:
            return CheckRunHealthResult(WorkerStatus.FAILED, reason)
        return CheckRunHealthResult(WorkerStatus.RUNNING)


def recover(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    log: Callable[[str], None] = print,
    grace_s: float | None = None,
) -> CleanReport:
    """Before a lifecycle: fail runs whose process died, then clean what they left.

    The MLX home is the ``platform`` resource's (``MLX_HOME`` or ``settings.home``). Leftovers
    younger than ``grace_s`` seconds (default ``mlx_resources.leftovers.GRACE_S``) stay (the
    next lifecycle removes them): the pid check is per host, and the grace keeps a writer on
    another host sharing the folder safe.
    """
    from mlx_resources.leftovers import GRACE_S, clean_leftovers
    from mlx_resources.platform import Platform

    if grace_s is None:
        grace_s = GRACE_S

    sweep_dead_runs(instance, log)
    platform = (defs.resources or {}).get("platform")
    home = platform.home_path if isinstance(platform, Platform) else Platform().home_path
    return clean_leftovers(instance, home, grace_s=grace_s, log=log)

"""Which runs need a GPU, read from the run's execution plan.

An asset declares its GPU need once, on its op::

    @asset(pool="gpu", op_tags={"mlx/gpu": "1", "mlx/gpu-type": "h100", "mlx/gpu-memory-gb": "40"})

Dagster does not copy op tags onto run tags, so run launchers cannot see them on the
``DagsterRun``. This module reads the steps the run will actually execute (respecting asset /
step selection and re-execution) from the stored execution plan snapshot and folds their tags
into one :class:`GpuRequest` per run. Run-level ``mlx/gpu*`` tags, set by a user on a launch,
override the step-derived values field by field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from dagster import DagsterInstance, DagsterRun
    from dagster._core.snap import JobSnap
    from dagster._core.snap.dep_snapshot import DependencyStructureSnapshot

GPU_TAG = "mlx/gpu"
GPU_TYPE_TAG = "mlx/gpu-type"
GPU_MEMORY_TAG = "mlx/gpu-memory-gb"
GPU_TAGS = (GPU_TAG, GPU_TYPE_TAG, GPU_MEMORY_TAG)
GPU_POOL = "gpu"
# Before `pool=` existed, ops joined a pool via this tag; dagster still honours it.
LEGACY_POOL_TAG = "dagster/concurrency_key"

RUN_LEVEL = "<run tags>"

_INT_RE = re.compile(r"^[+-]?\d+$")
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_DYNAMIC_SUFFIX_RE = re.compile(r"\[.*\]$")


class GpuRequirementError(ValueError):
    """A GPU declaration on a run or step is invalid; the message names run, step, key and fix."""


class GpuRequest(BaseModel):
    """One run's need: ``gpus`` devices of ``gpu_type``, ``memory_gb`` GPU memory each."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpus: int = Field(ge=1, strict=True)
    gpu_type: str | None = None
    memory_gb: float | None = Field(default=None, gt=0)

    @field_validator("gpu_type")
    @classmethod
    def _normalise_type(cls, value: str | None) -> str | None:
        # GPU type names are matched case-insensitively ("H100" == "h100").
        if value is None:
            return None
        value = value.strip().lower()
        if not value:
            raise ValueError("gpu_type must not be empty")
        return value


def _describe(run_id: str, step: str) -> str:
    where = "run-level tags" if step == RUN_LEVEL else f"step '{step}'"
    return f"Run {run_id}: {where}"


def _fix_hint(step: str, key: str, example: str) -> str:
    if step == RUN_LEVEL:
        return f"Fix: set the run tag {key}={example!r}, or remove it."
    return f'Fix: declare it on the asset as op_tags={{"{key}": "{example}"}}, or remove the tag.'


def _parse_gpus(value: str, run_id: str, step: str) -> int:
    text = str(value).strip()
    if not _INT_RE.match(text):
        raise GpuRequirementError(
            f"{_describe(run_id, step)} has {GPU_TAG}={value!r}, which is not an integer "
            f"number of GPUs. {_fix_hint(step, GPU_TAG, '1')}"
        )
    count = int(text)
    if count <= 0:
        raise GpuRequirementError(
            f"{_describe(run_id, step)} has {GPU_TAG}={value!r}; the GPU count must be at least "
            f"1 (to run on CPU, drop {GPU_TAG} and pool='{GPU_POOL}'). "
            f"{_fix_hint(step, GPU_TAG, '1')}"
        )
    return count


def _parse_memory(value: str, run_id: str, step: str) -> float:
    text = str(value).strip()
    if not _NUMBER_RE.match(text) or float(text) <= 0:
        raise GpuRequirementError(
            f"{_describe(run_id, step)} has {GPU_MEMORY_TAG}={value!r}; it must be a positive "
            f"number of gigabytes without a unit. {_fix_hint(step, GPU_MEMORY_TAG, '40')}"
        )
    return float(text)


def _parse_type(value: str, run_id: str, step: str) -> str:
    text = str(value).strip().lower()
    if not text:
        raise GpuRequirementError(
            f"{_describe(run_id, step)} has an empty {GPU_TYPE_TAG}. "
            f"{_fix_hint(step, GPU_TYPE_TAG, 'h100')}"
        )
    return text


def _is_gpu_step(tags: Mapping[str, str], pool: str | None) -> bool:
    pools = {pool, tags.get(LEGACY_POOL_TAG)}
    return GPU_POOL in pools or any(key in tags for key in GPU_TAGS)


def gpu_request_from_tags(
    tags: Mapping[str, str], *, run_id: str, step: str, pool: str | None = None
) -> GpuRequest | None:
    """The request declared by one step's tags (or the run's, with ``step=RUN_LEVEL``).

    ``pool="gpu"`` without an ``mlx/gpu`` tag means one GPU; any ``mlx/gpu*`` tag marks the
    step as a GPU step even without the pool.
    """
    if not _is_gpu_step(tags, pool):
        return None
    gpus = _parse_gpus(tags[GPU_TAG], run_id, step) if GPU_TAG in tags else 1
    gpu_type = _parse_type(tags[GPU_TYPE_TAG], run_id, step) if GPU_TYPE_TAG in tags else None
    memory = _parse_memory(tags[GPU_MEMORY_TAG], run_id, step) if GPU_MEMORY_TAG in tags else None
    return GpuRequest(gpus=gpus, gpu_type=gpu_type, memory_gb=memory)


def _base_step_key(step_key: str) -> str:
    # Dynamic-mapped steps are stored as "op[?]" in the plan and "op[key]" when resolved.
    return _DYNAMIC_SUFFIX_RE.sub("", step_key)


def _selected(step_key: str, selected: set[str] | None) -> bool:
    return selected is None or _base_step_key(step_key) in selected


def _steps_from_plan_snapshot(
    instance: DagsterInstance, run: DagsterRun
) -> list[tuple[str, Mapping[str, str], str | None]] | None:
    if not run.execution_plan_snapshot_id:
        return None
    snapshot = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    if snapshot is None:
        return None
    selected = None
    if snapshot.step_keys_to_execute:
        selected = {_base_step_key(k) for k in snapshot.step_keys_to_execute}
    if run.step_keys_to_execute:
        run_selected = {_base_step_key(k) for k in run.step_keys_to_execute}
        selected = run_selected if selected is None else selected & run_selected
    return [
        (step.key, step.tags or {}, step.pool)
        for step in snapshot.steps
        if _selected(step.key, selected)
    ]


def _walk_job_snapshot(
    job_snap: JobSnap, deps: DependencyStructureSnapshot, prefix: str
) -> Iterator[tuple[str, Mapping[str, str], str | None]]:
    ops = {op.name: op for op in job_snap.node_defs_snapshot.op_def_snaps}
    graphs = {graph.name: graph for graph in job_snap.node_defs_snapshot.graph_def_snaps}
    for invocation in deps.node_invocation_snaps:
        handle = f"{prefix}{invocation.node_name}"
        if invocation.node_def_name in graphs:
            graph = graphs[invocation.node_def_name]
            yield from _walk_job_snapshot(job_snap, graph.dep_structure_snapshot, f"{handle}.")
        elif invocation.node_def_name in ops:
            op = ops[invocation.node_def_name]
            yield handle, {**op.tags, **(invocation.tags or {})}, op.pool


def _steps_from_job_snapshot(
    instance: DagsterInstance, run: DagsterRun
) -> list[tuple[str, Mapping[str, str], str | None]] | None:
    """Fallback for runs stored without an execution plan (rare: hand-made or very old runs)."""
    if not run.job_snapshot_id:
        return None
    job_snap = instance.get_job_snapshot(run.job_snapshot_id)
    selected = (
        {_base_step_key(k) for k in run.step_keys_to_execute} if run.step_keys_to_execute else None
    )
    return [
        step
        for step in _walk_job_snapshot(job_snap, job_snap.dep_structure_snapshot, "")
        if _selected(step[0], selected)
    ]


def _combine(
    run_id: str, requests: Mapping[str, GpuRequest], *, type_set_on_run: bool
) -> GpuRequest | None:
    if not requests:
        return None
    types = {step: req.gpu_type for step, req in requests.items() if req.gpu_type}
    if len(set(types.values())) > 1 and not type_set_on_run:
        listing = ", ".join(f"'{step}' ({gpu_type})" for step, gpu_type in sorted(types.items()))
        raise GpuRequirementError(
            f"Run {run_id}: steps ask for different GPU types in one run ({listing}) via "
            f"{GPU_TYPE_TAG}. A run gets one kind of GPU. Fix: give those assets the same "
            f"{GPU_TYPE_TAG}, launch them in separate runs, or set {GPU_TYPE_TAG} on the run."
        )
    memories = [req.memory_gb for req in requests.values() if req.memory_gb is not None]
    return GpuRequest(
        gpus=max(req.gpus for req in requests.values()),
        gpu_type=next(iter(types.values()), None),
        memory_gb=max(memories) if memories else None,
    )


def gpu_steps_for_run(instance: DagsterInstance, run: DagsterRun) -> dict[str, GpuRequest]:
    """Per-step GPU requests of the steps this run executes (empty for a CPU-only run)."""
    steps = _steps_from_plan_snapshot(instance, run)
    if steps is None:
        steps = _steps_from_job_snapshot(instance, run) or []
    requests: dict[str, GpuRequest] = {}
    for step_key, tags, pool in steps:
        request = gpu_request_from_tags(tags, run_id=run.run_id, step=step_key, pool=pool)
        if request is not None:
            requests[step_key] = request
    return requests


def _apply_run_tags(run: DagsterRun, combined: GpuRequest | None) -> GpuRequest | None:
    tags = {key: run.tags[key] for key in GPU_TAGS if key in run.tags}
    if not tags:
        return combined
    from_run = gpu_request_from_tags(tags, run_id=run.run_id, step=RUN_LEVEL)
    assert from_run is not None  # tags is non-empty, so this is a GPU request
    if combined is None:
        return from_run
    return GpuRequest(
        gpus=from_run.gpus if GPU_TAG in tags else combined.gpus,
        gpu_type=from_run.gpu_type if GPU_TYPE_TAG in tags else combined.gpu_type,
        memory_gb=from_run.memory_gb if GPU_MEMORY_TAG in tags else combined.memory_gb,
    )


def gpu_request_for_run(instance: DagsterInstance, run: DagsterRun) -> GpuRequest | None:
    """The GPUs ``run`` needs, or ``None`` when none of its steps (nor its tags) asks for one.

    Steps fold together as the maximum GPU count and memory; run-level ``mlx/gpu*`` tags then
    override field by field. Raises :class:`GpuRequirementError` on invalid declarations.
    """
    steps = gpu_steps_for_run(instance, run)
    combined = _combine(run.run_id, steps, type_set_on_run=GPU_TYPE_TAG in run.tags)
    return _apply_run_tags(run, combined)


def describe_steps(steps: Iterable[str], limit: int = 5) -> str:
    """Short human list of step keys for log lines."""
    steps = sorted(steps)
    shown = ", ".join(steps[:limit])
    return shown + (f" (+{len(steps) - limit} more)" if len(steps) > limit else "")

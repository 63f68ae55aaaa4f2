"""Run the whole lifecycle on the local instance, recomputing only what is missing or stale.

Order: reference tables, then the daily partitions (one run over the range of missing or stale
days), then training -> evaluation -> registration when anything upstream changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg


@dataclass
class LifecyclePlan:
    reference: list[str] = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)
    training: list[str] = field(default_factory=list)
    monitoring: list[str] = field(default_factory=list)
    """Days whose drift is missing or stale."""

    @property
    def empty(self) -> bool:
        return not (self.reference or self.partitions or self.training or self.monitoring)


def _resolver(instance: dg.DagsterInstance, defs: dg.Definitions):
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._time import get_current_datetime

    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    return CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)


def _job_keys(defs: dg.Definitions, job_name: str) -> list[dg.AssetKey]:
    from mlx_assets.jobs import JOB_ASSETS

    return [dg.AssetKey(k) for k in JOB_ASSETS[job_name]]


def plan(
    instance: dg.DagsterInstance, defs: dg.Definitions, partitions: list[str] | None = None
) -> LifecyclePlan:
    from dagster._core.definitions.data_version import StaleStatus

    todo = (StaleStatus.MISSING, StaleStatus.STALE)
    resolver = _resolver(instance, defs)
    out = LifecyclePlan()
    out.reference = [
        k.to_user_string() for k in _job_keys(defs, "reference") if resolver.get_status(k) in todo
    ]
    daily_keys = _job_keys(defs, "daily")
    all_days = partitions or defs.resolve_job_def("daily").partitions_def.get_partition_keys()  # type: ignore[union-attr]
    # Missing partitions in bulk from the instance; staleness per day only where materialized.
    done: set[str] | None = None
    for key in daily_keys:
        have = instance.get_materialized_partitions(key)
        done = have if done is None else done & have
    done = done or set()
    for day in all_days:
        if day not in done or any(resolver.get_status(k, day) in todo for k in daily_keys):
            out.partitions.append(day)
    if out.reference or out.partitions:
        out.training = [k.to_user_string() for k in _job_keys(defs, "training")]
    else:
        out.training = [
            k.to_user_string()
            for k in _job_keys(defs, "training")
            if resolver.get_status(k) in todo
        ]
    drift = dg.AssetKey("feature_drift")
    monitored = instance.get_materialized_partitions(drift)
    retrain = bool(out.training)
    from mlx_assets.monitoring.coverage import lifecycle_monitoring_days

    # up to the model's test end; later days arrive through the `arrival` schedule
    out.monitoring = [
        d
        for d in lifecycle_monitoring_days(defs.resources["platform"], all_days)
        if retrain or d not in monitored or resolver.get_status(drift, d) in todo
    ]
    return out


def _run(
    instance: dg.DagsterInstance,
    job: str,
    log: Callable[[str], None],
    tags: dict[str, str] | None = None,
    asset_keys: list[str] | None = None,
) -> None:
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    recon = ReconstructableRepository.for_module(
        "mlx_assets.definitions", "defs", working_directory=None
    ).get_reconstructable_job(job)
    start = time.perf_counter()
    selection = [dg.AssetKey.from_user_string(k) for k in asset_keys] if asset_keys else None
    with dg.execute_job(recon, instance, tags=tags, asset_selection=selection) as result:
        status = "succeeded" if result.success else "FAILED"
        log(f"run {result.run_id[:8]} ({job}) {status} in {time.perf_counter() - start:.1f}s")
        if not result.success:
            raise SystemExit(f"the {job} run failed; see `dagster dev` (Runs) or the log above")


def run_lifecycle(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    log: Callable[[str], None] = print,
    partitions: list[str] | None = None,
) -> LifecyclePlan:
    todo = plan(instance, defs, partitions)
    if todo.empty:
        log("everything is up to date; nothing to recompute")
        return todo
    if todo.reference:
        log(f"reference tables: {', '.join(todo.reference)}")
        _run(instance, "reference", log)
    if todo.partitions:
        first, last = todo.partitions[0], todo.partitions[-1]
        log(f"daily partitions: {len(todo.partitions)} days, {first}..{last}, in one run")
        _run(
            instance,
            "daily",
            log,
            tags={
                "dagster/asset_partition_range_start": first,
                "dagster/asset_partition_range_end": last,
            },
        )
    if todo.training:
        log(f"training: {', '.join(todo.training)}")
        _run(instance, "training", log, asset_keys=todo.training)
    if todo.monitoring:
        first, last = todo.monitoring[0], todo.monitoring[-1]
        log(f"drift monitoring: {len(todo.monitoring)} days, {first}..{last}, in one run")
        _run(
            instance,
            "monitoring",
            log,
            asset_keys=["feature_drift"],
            tags={
                "dagster/asset_partition_range_start": first,
                "dagster/asset_partition_range_end": last,
            },
        )
    return todo

"""Which input partitions a downstream asset must not use because their latest blocking check
failed.

The raw assets validate before they store anything, so a failed check normally leaves no
stored partition behind. Data stored by older code (which stored first and checked after),
or a day whose source later went bad after an earlier good copy was stored, can still be on
disk; a downstream asset asks :func:`failed_check_partitions` before it uses its inputs.

A check evaluation applies to the partitions of the run that produced it (the run's
``dagster/partition`` tag, its partition range tags, or its partitions subset); the newest
evaluation of each check per partition decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)

HISTORY_LIMIT = 500
"""Evaluations read per check (newest first); older ones are superseded in practice."""


def _run_partitions(
    instance: dg.DagsterInstance,
    run_id: str,
    partitions_def: dg.PartitionsDefinition,
    cache: dict[str, set[str]],
) -> set[str]:
    if run_id in cache:
        return cache[run_id]
    run = instance.get_run_by_id(run_id)
    keys: set[str] = set()
    if run is not None:
        tags = run.tags
        if PARTITION_NAME_TAG in tags:
            keys = {tags[PARTITION_NAME_TAG]}
        elif ASSET_PARTITION_RANGE_START_TAG in tags and ASSET_PARTITION_RANGE_END_TAG in tags:
            key_range = dg.PartitionKeyRange(
                tags[ASSET_PARTITION_RANGE_START_TAG], tags[ASSET_PARTITION_RANGE_END_TAG]
            )
            keys = set(partitions_def.get_partition_keys_in_range(key_range))
        elif run.partitions_subset is not None:
            keys = set(run.partitions_subset.get_partition_keys())
    cache[run_id] = keys
    return keys


def failed_check_partitions(
    instance: dg.DagsterInstance,
    checks: Mapping[str, Sequence[str]],
    partition_keys: Iterable[str],
    partitions_def: dg.PartitionsDefinition,
) -> dict[str, dict[str, list[str]]]:
    """``{asset: {partition: [check names]}}``: of ``partition_keys``, those whose newest
    evaluation of a check in ``checks`` (``{asset: [check name, ...]}``) failed. Partitions
    never checked, or whose newest evaluation passed, are left out; so is everything when no
    check failed (one history query per check, one run lookup per failed or newer run)."""
    wanted = set(partition_keys)
    runs: dict[str, set[str]] = {}
    out: dict[str, dict[str, list[str]]] = {}
    storage = instance.event_log_storage
    for asset, names in checks.items():
        for name in names:
            key = dg.AssetCheckKey(dg.AssetKey.from_user_string(asset), name)
            records = storage.get_asset_check_execution_history(key, limit=HISTORY_LIMIT)
            if not any(r.status == AssetCheckExecutionRecordStatus.FAILED for r in records):
                continue
            decided: set[str] = set()
            for record in sorted(records, key=lambda r: r.id, reverse=True):
                if record.status not in (
                    AssetCheckExecutionRecordStatus.SUCCEEDED,
                    AssetCheckExecutionRecordStatus.FAILED,
                ):
                    continue  # planned or skipped: not an evaluation
                covered = _run_partitions(instance, record.run_id, partitions_def, runs)
                fresh = (covered & wanted) - decided
                decided |= fresh
                if record.status == AssetCheckExecutionRecordStatus.FAILED:
                    for partition in fresh:
                        out.setdefault(asset, {}).setdefault(partition, []).append(name)
                if decided == wanted:
                    break
    return out


def describe_failed(failed: Mapping[str, Mapping[str, Sequence[str]]], limit: int = 10) -> str:
    """``raw_flights 2013-01-05 (no_null_keys), ...`` for an error message."""
    items = [
        f"{asset} {partition} ({', '.join(names)})"
        for asset, partitions in sorted(failed.items())
        for partition, names in sorted(partitions.items())
    ]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more

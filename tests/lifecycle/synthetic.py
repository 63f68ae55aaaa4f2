"""A consistent materialization history of the lifecycle's assets, written straight to an instance.

Running the real pipeline for 300 days takes minutes; the planner only reads the event log and
the files it names, so these tests write what a real run records (code versions, data versions,
input provenance tags, ``path`` and ``byte_size`` of a real file) in a few batched writes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import dagster as dg

ORDER = (
    "planes",
    "raw_flights",
    "raw_weather",
    "flight_features",
    "training_set",
    "model",
    "model_evaluation",
    "registered_model",
    "feature_drift",
    "drift_incident_summary",
)


def _entry(key: dg.AssetKey, partition: str | None, tags: dict, metadata: dict):
    from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
    from dagster._core.events.log import EventLogEntry
    from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

    mat = dg.AssetMaterialization(key, partition=partition, tags=tags, metadata=metadata)
    event = DagsterEvent(
        event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
        event_specific_data=StepMaterializationData(mat),
        job_name=RUNLESS_JOB_NAME,
    )
    return EventLogEntry(
        user_message="",
        level=logging.INFO,
        job_name=RUNLESS_JOB_NAME,
        run_id=RUNLESS_RUN_ID,
        error_info=None,
        timestamp=time.time(),
        step_key=None,
        dagster_event=event,
    )


def write_history(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    days: list[str],
    files: Path,
    version: str = "v1",
    window: list[str] | None = None,
) -> dict[tuple[str, str | None], Path]:
    """Materialize every lifecycle asset (each of ``days`` for the daily ones) in the event log.

    Each materialization names a real file under ``files`` (its ``path`` and ``byte_size``);
    returns ``(asset, partition) -> file``. The training set records ``window`` (default all
    ``days``) as the days it read.
    """
    graph = defs.resolve_asset_graph()
    versions: dict[tuple[str, str | None], str] = {}
    latest_id: dict[str, int] = {}
    out: dict[tuple[str, str | None], Path] = {}
    for name in ORDER:
        key = dg.AssetKey(name)
        node = graph.get(key)
        parts: list[str | None] = list(days) if node.is_partitioned else [None]
        entries = []
        for p in parts:
            tags = {
                "dagster/code_version": node.code_version or "none",
                "dagster/data_version": f"{name}-{p}-{version}",
            }
            for dep in node.parent_keys:
                d = dep.to_user_string()
                dep_node = graph.get(dep)
                if dep_node.is_partitioned and p is not None:
                    dv = versions[(d, p)]
                elif dep_node.is_partitioned:
                    dv = versions[(d, days[-1])]
                else:
                    dv = versions[(d, None)]
                tags[f"dagster/input_data_version/{d}"] = dv
                tags[f"dagster/input_event_pointer/{d}"] = str(latest_id[d])
            versions[(name, p)] = tags["dagster/data_version"]
            path = files / name / f"{p or name}.arrow"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * (100 + len(entries)))
            out[(name, p)] = path
            metadata: dict = {
                "byte_size": dg.MetadataValue.int(path.stat().st_size),
                "path": dg.MetadataValue.path(str(path)),
            }
            if name == "training_set":
                metadata["partition_data_versions"] = dg.MetadataValue.json(
                    {d: versions[("flight_features", d)] for d in (window or days)}
                )
            if name == "feature_drift":
                metadata["severity"] = dg.MetadataValue.text("ok")
            entries.append(_entry(key, p, tags, metadata))
        instance.event_log_storage.store_event_batch(entries)
        latest_id[name] = instance.fetch_materializations(key, limit=1).records[0].storage_id
    return out


def rematerialize(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    name: str,
    partition: str | None,
    data_version: str,
    file: Path,
) -> None:
    """A new materialization of one asset partition (root asset: no inputs) with this version."""
    node = defs.resolve_asset_graph().get(dg.AssetKey(name))
    tags = {
        "dagster/code_version": node.code_version or "none",
        "dagster/data_version": data_version,
    }
    metadata = {
        "byte_size": dg.MetadataValue.int(file.stat().st_size),
        "path": dg.MetadataValue.path(str(file)),
    }
    instance.event_log_storage.store_event_batch([_entry(node.key, partition, tags, metadata)])

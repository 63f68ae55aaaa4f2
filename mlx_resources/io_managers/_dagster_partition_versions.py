"""Per-partition data versions for a multi-partition (single-run backfill) output.

Why this module exists: Dagster 1.13 gives every partition event of one output the same tags
(``dagster._core.execution.plan.execute_step._get_output_asset_events`` builds the data-version,
code-version and input-provenance tags once per asset and copies them to each partition), and it
has no public per-partition data version for materializations (``DataVersionsByPartition`` is for
observable source assets only). The public alternatives were measured and rejected:

* the asset yields one ``AssetMaterialization`` per partition and no ``Output``: the IO manager is
  not called and every downstream step of the same run is skipped (our ``daily`` and
  ``monitoring`` jobs materialize raw -> features -> drift in one run);
* ``Output`` first, then per-partition ``AssetMaterialization`` events: two materializations per
  partition per run (double event-log writes; the UI lists each partition twice);
* one run per partition (chunked runs): one run start per day (see ``bench_lifecycle``).

So this is the one private hook of MLX, kept to this file: it wraps ``_get_output_asset_events``
and, for the partitions that an IO manager registered a version for, replaces on each
partition's event

* ``dagster/data_version`` with that partition's own version (user-provided), and
* ``dagster/input_data_version/<dep>`` of each partitioned dependency with the data version of the
  dependency partition(s) this partition maps to (the input event pointer stays the storage id
  Dagster recorded, which is what ``CachingStaleStatusResolver`` uses as its cursor).

Everything else (code version, run-level tags, metadata) is Dagster's. An explicit
``Output(data_version=...)`` from the asset still wins. If Dagster changes the hooked function,
``install()`` warns once and the outputs fall back to Dagster's behaviour (every partition gets the
range's version: more recomputation, never a wrong "fresh");
``tests/io_managers/test_partition_data_versions.py::test_hook_matches_dagster`` fails loudly.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import threading
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg

_EXPECTED_PARAMS = (
    "asset_key",
    "asset_partitions",
    "output",
    "output_def",
    "io_manager_metadata",
    "step_context",
    "execution_type",
)
_ATTR = "_mlx_partition_data_versions"
_lock = threading.Lock()
_installed: bool | None = None  # None: not tried yet; False: Dagster changed, hook unavailable


def _target() -> Any:
    from dagster._core.execution.plan import execute_step

    return execute_step


def hook_signature_matches() -> bool:
    """Whether Dagster's ``_get_output_asset_events`` still has the parameters this hook wraps."""
    fn = getattr(_target(), "_get_output_asset_events", None)
    if fn is None:
        return False
    fn = getattr(fn, "__wrapped__", fn)
    return tuple(inspect.signature(fn).parameters) == _EXPECTED_PARAMS


def install() -> bool:
    """Wrap Dagster's per-output event builder once per process; True when the hook is active."""
    global _installed
    if _installed is not None:
        return _installed
    with _lock:
        if _installed is not None:
            return _installed
        module = _target()
        original = getattr(module, "_get_output_asset_events", None)
        if original is None or not hook_signature_matches():
            warnings.warn(
                "MLX: this Dagster version changed execute_step._get_output_asset_events; "
                "multi-partition outputs get one data version for all their partitions",
                stacklevel=2,
            )
            _installed = False
            return False
        if not getattr(original, "_mlx_hook", False):
            module._get_output_asset_events = _wrap(original)
        _installed = True
        return True


def set_partition_data_versions(
    step_context: Any, asset_key: dg.AssetKey, versions: Mapping[str, str]
) -> bool:
    """Record ``{partition_key: data_version}`` for ``asset_key``'s events in this step.

    Args:
        step_context: Dagster's ``StepExecutionContext`` of the running step.
        asset_key: the output's asset key.
        versions: one data version string per partition key of the output.

    Returns:
        True when the versions will be applied; False when the hook is unavailable (warned).
    """
    if not install():
        return False
    table: dict[dg.AssetKey, dict[str, str]] = step_context.__dict__.setdefault(_ATTR, {})
    table[asset_key] = dict(versions)
    return True


def _wrap(original: Any) -> Any:
    @functools.wraps(original)
    def _get_output_asset_events(
        asset_key: dg.AssetKey,
        asset_partitions: Any,
        output: Any,
        output_def: Any,
        io_manager_metadata: Any,
        step_context: Any,
        execution_type: Any,
    ) -> Iterator[Any]:
        events = original(
            asset_key,
            asset_partitions,
            output,
            output_def,
            io_manager_metadata,
            step_context,
            execution_type,
        )
        table = step_context.__dict__.get(_ATTR, {})
        versions = table.pop(asset_key, None)
        if not versions or getattr(output, "data_version", None) is not None:
            yield from events
            return
        inputs = _InputVersions(step_context, asset_key, [str(p) for p in versions])
        for event in events:
            partition = getattr(event, "partition", None)
            if (
                isinstance(event, dg.AssetMaterialization)
                and partition is not None
                and str(partition) in versions
            ):
                yield _retag(event, versions[str(partition)], inputs.tags_for(str(partition)))
            else:
                yield event

    _get_output_asset_events._mlx_hook = True  # type: ignore[attr-defined]
    return _get_output_asset_events


def _retag(
    event: dg.AssetMaterialization, version: str, input_tags: Mapping[str, str]
) -> dg.AssetMaterialization:
    from dagster._core.definitions.data_version import (
        DATA_VERSION_IS_USER_PROVIDED_TAG,
        DATA_VERSION_TAG,
    )

    tags = dict(event.tags or {})
    if DATA_VERSION_TAG not in tags:  # not a versioned materialization: leave it alone
        return event
    tags[DATA_VERSION_TAG] = version
    tags[DATA_VERSION_IS_USER_PROVIDED_TAG] = "true"
    tags.update({k: v for k, v in input_tags.items() if k in tags})
    return event._replace(tags=tags)


class _InputVersions:
    """Data versions of the partitioned dependencies, mapped to each output partition.

    On first use: each output partition's parent partitions (through the asset graph's partition
    mapping), then one event-log query per partitioned dependency for the latest data-version
    tags of exactly those parent partitions.
    """

    def __init__(self, step_context: Any, asset_key: dg.AssetKey, partitions: list[str]) -> None:
        self._step = step_context
        self._key = asset_key
        self._partitions = partitions
        self._tags: dict[str, dict[str, str]] | None = None

    def _load(self) -> dict[str, dict[str, str]]:
        from dagster._core.definitions.data_version import (
            DATA_VERSION_TAG,
            get_input_data_version_tag,
        )
        from dagster._core.events import DagsterEventType

        out: dict[str, dict[str, str]] = {p: {} for p in self._partitions}
        try:
            graph = self._step.job_def.asset_layer.asset_graph
            storage = self._step.instance.event_log_storage
            for dep in graph.get(self._key).parent_keys:
                if not graph.get(dep).is_partitioned:
                    continue
                parents = {
                    p: sorted(
                        graph.get_parent_partition_keys_for_child(
                            p, dep, self._key
                        ).partitions_subset.get_partition_keys()
                    )
                    for p in self._partitions
                }
                wanted = sorted({q for qs in parents.values() for q in qs})
                if not wanted:
                    continue
                latest = storage.get_latest_tags_by_partition(
                    dep,
                    DagsterEventType.ASSET_MATERIALIZATION,
                    [DATA_VERSION_TAG],
                    asset_partitions=wanted,
                )
                versions = {
                    q: t[DATA_VERSION_TAG] for q, t in latest.items() if DATA_VERSION_TAG in t
                }
                for p, qs in parents.items():
                    found = [versions[q] for q in qs if q in versions]
                    if not found or len(found) != len(qs):
                        continue  # keep Dagster's value for this input
                    # one parent: its version; several: the combination Dagster uses
                    value = (
                        found[0]
                        if len(found) == 1
                        else hashlib.sha256("".join(found).encode()).hexdigest()
                    )
                    out[p][get_input_data_version_tag(dep)] = value
        except Exception:  # keep Dagster's aggregate input versions rather than fail the step
            return {p: {} for p in self._partitions}
        return out

    def tags_for(self, partition: str) -> dict[str, str]:
        if self._tags is None:
            self._tags = self._load()
        return self._tags.get(partition, {})

"""What the instance knows about each asset partition, read in a few queries per asset.

The lifecycle planner needs, for every asset partition it may recompute: the latest
materialization's data version, code version, input provenance (the input data versions and event
pointers Dagster records as tags) and the stored file's recorded ``path`` and ``byte_size``.
Dagster's ``CachingStaleStatusResolver`` reads these one partition at a time (2,555 queries for a
year of four daily assets); :class:`AssetState` reads them per asset:

- unpartitioned assets: one ``get_asset_records`` call for all of them;
- partitioned assets: the latest storage id of every partition (one grouped query), then those
  records by storage id (one query per 500 partitions), and, only where an input partition was
  re-materialized after a consumer read it, that input's data versions as of the consumer's read
  (one query per distinct read).

So the number of queries grows with the number of assets, not with partitions x assets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

_CHUNK = 500  # storage ids per query (SQLite allows 32,766 host parameters; stay well below)


_SCALAR_FIELDS = ("value", "path", "text", "md_str", "data", "url")
"""Where stored metadata entries keep their value (int/float/bool, path, text, md, json, url);
entries without one of these (table schemas, tables) are not read by the fast path."""


@dataclass(frozen=True)
class Latest:
    """The facts of one asset partition's latest materialization.

    Attributes:
        storage_id: the event's storage id in the event log (monotonic per instance).
        data_version: the ``dagster/data_version`` tag, or None when absent.
        code_version: the ``dagster/code_version`` tag (None: no provenance recorded).
        input_versions: input asset key -> data version that this materialization read.
        input_pointers: input asset key -> storage id of the input's latest event when it was read.
        path: the stored file (``path`` metadata written by the IO manager), or None.
        byte_size: the file's size in bytes at write time (``byte_size`` metadata), or None.
        metadata: the raw metadata values (for readers of asset-specific metadata).
    """

    storage_id: int
    data_version: str | None
    code_version: str | None
    input_versions: Mapping[dg.AssetKey, str] = field(default_factory=dict)
    input_pointers: Mapping[dg.AssetKey, int | None] = field(default_factory=dict)
    path: str | None = None
    byte_size: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Any) -> Latest:
        """Build from an ``EventLogRecord`` of an ``ASSET_MATERIALIZATION``."""
        mat = record.asset_materialization
        tags = mat.tags or {}
        meta = {k: getattr(v, "value", v) for k, v in (mat.metadata or {}).items()}
        return cls._from_tags(record.storage_id, tags, meta)

    @classmethod
    def _from_tags(cls, storage_id: int, tags: Mapping[str, str], meta: dict[str, Any]) -> Latest:
        """Build from a materialization's tags and its metadata values."""
        provenance = dg.DataProvenance.from_tags(tags)
        size = meta.get("byte_size")
        return cls(
            storage_id=storage_id,
            data_version=tags.get("dagster/data_version"),
            code_version=provenance.code_version if provenance else None,
            input_versions=(
                {k: v.value for k, v in provenance.input_data_versions.items()}
                if provenance
                else {}
            ),
            input_pointers=dict(provenance.input_storage_ids) if provenance else {},
            path=str(meta["path"]) if meta.get("path") else None,
            byte_size=int(size) if isinstance(size, int) else None,
            metadata=meta,
        )

    @classmethod
    def from_stored_json(cls, storage_id: int, text: str) -> tuple[str | None, Latest]:
        """``(partition, Latest)`` from an event's stored JSON, without building Dagster objects.

        Building the objects (``deserialize_value``) costs about 3 ms per event here, mostly for
        the column schema; this reads only the tags and the scalar metadata from the stored
        (serdes) form, which Dagster keeps readable across versions because old events must stay
        loadable. Raises ``KeyError``/``TypeError``/``ValueError`` if the layout is not the
        expected one (the caller then deserializes the record the documented way).
        """
        entry = json.loads(text)
        mat = entry["dagster_event"]["event_specific_data"]["materialization"]
        if mat["__class__"] != "AssetMaterialization":
            raise ValueError(f"not a materialization: {mat['__class__']}")
        tags: dict[str, str] = dict(mat.get("tags") or {})
        meta: dict[str, Any] = {}
        for item in mat.get("metadata_entries") or []:
            data = item["entry_data"]
            for field_name in _SCALAR_FIELDS:
                if field_name in data:
                    meta[item["label"]] = data[field_name]
                    break
        return mat.get("partition"), cls._from_tags(storage_id, tags, meta)

    @property
    def has_provenance(self) -> bool:
        return self.code_version is not None

    def file_problem(self) -> str | None:
        """Why the stored file does not match what was recorded at write time, or None.

        A cheap check (one ``stat``): the file named by the ``path`` metadata must exist and have
        the recorded ``byte_size``. Only local files of the IO manager are checked (a folder, a
        remote URL or an entry without both values is skipped).
        """
        if self.path is None or self.byte_size is None:
            return None
        path = self.path.removeprefix("file://")
        if "://" in path or not os.path.isabs(path):
            return None
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return f"file missing: {path}"
        except OSError as exc:
            return f"file unreadable ({exc.strerror}): {path}"
        if os.path.isdir(path):
            return None
        if st.st_size != self.byte_size:
            return f"file has {st.st_size:,} bytes, {self.byte_size:,} were written: {path}"
        return None


class AssetState:
    """Latest materialization facts for a set of assets, loaded once (see the module docstring).

    Args:
        instance: the Dagster instance.
        graph: the asset graph (``defs.resolve_asset_graph()``).
        keys: the assets to load; partitioned assets load every partition that has one.
    """

    def __init__(
        self, instance: dg.DagsterInstance, graph: Any, keys: Iterable[dg.AssetKey]
    ) -> None:
        self._instance = instance
        self._graph = graph
        self.latest: dict[dg.AssetKey, dict[str | None, Latest]] = {}
        self._as_of: dict[tuple[dg.AssetKey, int], dict[str, str]] = {}
        keys = list(dict.fromkeys(keys))
        plain = [k for k in keys if not graph.get(k).is_partitioned]
        if plain:
            for rec in instance.get_asset_records(plain):
                last = rec.asset_entry.last_materialization_record
                if last is not None:
                    self.latest[rec.asset_entry.asset_key] = {None: Latest.from_record(last)}
        for key in keys:
            if graph.get(key).is_partitioned:
                self.latest[key] = self._load_partitions(key)

    def _load_partitions(self, key: dg.AssetKey) -> dict[str | None, Latest]:
        from dagster._core.events import DagsterEventType

        ids = self._instance.event_log_storage.get_latest_storage_id_by_partition(
            key, DagsterEventType.ASSET_MATERIALIZATION
        )
        wanted = sorted(ids.values())
        out: dict[str | None, Latest] = {}
        for i in range(0, len(wanted), _CHUNK):
            chunk = wanted[i : i + _CHUNK]
            slow: list[int] = []
            for storage_id, text in self._stored_json(chunk):
                try:
                    partition, latest = Latest.from_stored_json(storage_id, text)
                except (KeyError, TypeError, ValueError):
                    slow.append(storage_id)
                else:
                    out[partition] = latest
            if slow:
                result = self._instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=key, storage_ids=slow), limit=len(slow)
                )
                for record in result.records:
                    out[record.asset_materialization.partition] = Latest.from_record(record)
        return out

    def _stored_json(self, storage_ids: Sequence[int]) -> list[tuple[int, str]]:
        """``(storage id, stored event JSON)`` for these events, in one query.

        Reads the event log's SQL table directly (Dagster's SQL storages: SQLite, Postgres,
        MySQL all keep events in ``event_logs``); another storage yields ``(id, "")`` pairs,
        which the caller then loads through ``fetch_materializations``.
        """
        storage = self._instance.event_log_storage
        connect = getattr(storage, "index_connection", None)
        if connect is None:
            return [(i, "") for i in storage_ids]
        import sqlalchemy as db
        from dagster._core.storage.event_log.schema import SqlEventLogStorageTable

        table = SqlEventLogStorageTable
        query = db.select(table.c.id, table.c.event).where(table.c.id.in_(list(storage_ids)))
        with connect() as conn:
            return [(int(r[0]), str(r[1])) for r in conn.execute(query).fetchall()]

    def get(self, key: dg.AssetKey, partition: str | None = None) -> Latest | None:
        """The latest materialization of ``key`` (at ``partition``), or None if there is none."""
        return self.latest.get(key, {}).get(partition)

    def versions_as_of(
        self, key: dg.AssetKey, cursor: int, partitions: Sequence[str]
    ) -> dict[str, str]:
        """Data versions of ``key``'s partitions as of event ``cursor`` (inclusive).

        One query per (asset, cursor), cached; a partition without a materialization up to the
        cursor is absent from the result.
        """
        from dagster._core.events import DagsterEventType

        cached = self._as_of.get((key, cursor))
        if cached is None:
            tags = self._instance.event_log_storage.get_latest_tags_by_partition(
                key,
                DagsterEventType.ASSET_MATERIALIZATION,
                ["dagster/data_version"],
                before_cursor=cursor + 1,
            )
            cached = {p: t["dagster/data_version"] for p, t in tags.items()}
            self._as_of[(key, cursor)] = cached
        return {p: cached[p] for p in partitions if p in cached}

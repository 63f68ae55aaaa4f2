"""Run the whole lifecycle on the local instance, recomputing only what is missing, stale or bad.

Order: reference tables, then the daily partitions (one run per contiguous range of days that
need the same assets), then training -> evaluation -> registration, then drift monitoring. The
plan is made again before each stage, so a stage runs only if what the previous stages wrote
changed its inputs (a re-materialized partition with identical content changes nothing
downstream).

An asset partition is recomputed when it is

- **missing**: never materialized;
- **bad**: its stored file is gone or its size differs from the ``byte_size`` recorded at write
  time (a truncated or replaced file; one ``stat`` per file);
- **stale**: its code version changed, or an input it read has a new data version since (Dagster's
  staleness rules, computed per partition from the recorded provenance tags
  ``dagster/code_version``, ``dagster/input_data_version/<key>`` and
  ``dagster/input_event_pointer/<key>``; for the training set, from the per-day data versions
  it recorded as ``partition_data_versions``);
- **upstream**: something it reads is recomputed in this plan.

The facts are read by :class:`mlx_assets.asset_state.AssetState` in a few queries per asset, so a
no-op plan costs the same for 30 days as for 300.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from mlx_assets.component.spec import Lifecycle
from mlx_assets.console import Console

MISSING, BAD, STALE, UPSTREAM = "missing", "bad", "stale", "upstream"
CALL_TAG = "mlx/lifecycle_call"
"""Run tag that lets the console find the run ``execute_job`` creates (to follow its events)."""


@dataclass(frozen=True)
class Finding:
    """Why one asset partition is recomputed.

    Attributes:
        asset: asset key as a user string (``flight_features``).
        partition: partition key (``2013-03-04``) or None for an unpartitioned asset.
        status: ``missing`` | ``bad`` | ``stale`` | ``upstream``.
        reason: a short human-readable reason (for ``bad``: what is wrong with which file).
    """

    asset: str
    partition: str | None
    status: str
    reason: str

    def describe(self) -> str:
        where = f"{self.asset} {self.partition}" if self.partition else self.asset
        return f"{where}: {self.reason}"


@dataclass
class LifecyclePlan:
    """What a lifecycle recomputes, by stage (asset names as user strings, days ``YYYY-MM-DD``).

    ``reference`` and ``training`` list unpartitioned assets; ``partitions``/``daily_assets``
    and ``monitoring`` list days; ``findings`` says why, one per asset partition.
    """

    reference: list[str] = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)
    """Days on which at least one daily asset is recomputed, in partition order."""
    daily_assets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Day -> the daily assets recomputed on that day (in job order)."""
    training: list[str] = field(default_factory=list)
    monitoring: list[str] = field(default_factory=list)
    """Days whose drift is missing, stale or bad."""
    findings: list[Finding] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.reference or self.partitions or self.training or self.monitoring)

    @property
    def bad(self) -> list[Finding]:
        """Stored files found missing or not matching their recorded size."""
        return [f for f in self.findings if f.status == BAD]

    def daily_runs(self) -> list[tuple[tuple[str, ...], list[str]]]:
        """``(assets, days)`` per run: contiguous days that need the same daily assets."""
        return _contiguous(self.partitions, self.daily_assets, self._order)

    def monitoring_runs(self) -> list[list[str]]:
        """Contiguous ranges of :attr:`monitoring` days, one run each."""
        days = dict.fromkeys(self.monitoring, ("drift",))
        return [d for _, d in _contiguous(self.monitoring, days, self._order)]

    _order: dict[str, int] = field(default_factory=dict, repr=False)


def _contiguous(
    days: Sequence[str], assets: dict[str, tuple[str, ...]], order: dict[str, int]
) -> list[tuple[tuple[str, ...], list[str]]]:
    runs: list[tuple[tuple[str, ...], list[str]]] = []
    for day in days:
        want = assets[day]
        if (
            runs
            and runs[-1][0] == want
            and order.get(day, -2) == order.get(runs[-1][1][-1], -9) + 1
        ):
            runs[-1][1].append(day)
        else:
            runs.append((want, [day]))
    return runs


class _Assessor:
    """Decides, in dependency order, which asset partitions need recomputing (see module doc)."""

    def __init__(self, graph: Any, state: Any) -> None:
        self.graph = graph
        self.state = state
        self.found: dict[tuple[dg.AssetKey, str | None], Finding] = {}

    def planned(self, key: dg.AssetKey, partition: str | None) -> bool:
        return (key, partition) in self.found

    def assess(self, key: dg.AssetKey, partition: str | None) -> Finding | None:
        finding = self._assess(key, partition)
        if finding is not None:
            self.found[(key, partition)] = finding
        return finding

    def _finding(self, key: dg.AssetKey, p: str | None, status: str, why: str) -> Finding:
        return Finding(key.to_user_string(), p, status, why)

    def _assess(self, key: dg.AssetKey, p: str | None) -> Finding | None:
        latest = self.state.get(key, p)
        if latest is None:
            return self._finding(key, p, MISSING, "never materialized")
        problem = latest.file_problem()
        if problem:
            return self._finding(key, p, BAD, problem)
        node = self.graph.get(key)
        if node.code_version and latest.has_provenance and latest.code_version != node.code_version:
            return self._finding(
                key, p, STALE, _version_change(latest.code_version, node.code_version)
            )
        for dep in sorted(node.parent_keys):
            why = self._dep_cause(key, p, latest, dep)
            if why is not None:
                return self._finding(key, p, *why)
        return None

    def _dep_cause(self, key: dg.AssetKey, p: str | None, latest: Any, dep: dg.AssetKey):
        name = dep.to_user_string()
        dep_node = self.graph.get(dep)
        if not dep_node.is_partitioned:
            current = self.state.get(dep)
            if self.planned(dep, None):
                return UPSTREAM, f"{name} is recomputed"
            if not latest.has_provenance:  # Dagster's fallback: compare event order
                if current is not None and current.storage_id > latest.storage_id:
                    return STALE, f"{name} has a newer materialization"
                return None
            if dep not in latest.input_versions:
                return STALE, f"has a new dependency on {name}"
            if latest.input_versions[dep] != (current.data_version if current else None):
                return STALE, f"{name} has a new data version"
            return None
        if p is None:  # a window of an input's partitions, e.g. training_set <- flight_features
            return self._window_cause(latest, dep)
        days = self._parent_partitions(key, p, dep)
        for q in days:
            if self.planned(dep, q):
                return UPSTREAM, f"{name} {q} is recomputed"
        if not latest.has_provenance:
            newer = [
                q
                for q in days
                if (d := self.state.get(dep, q)) and d.storage_id > latest.storage_id
            ]
            return (STALE, f"{name} {newer[0]} has a newer materialization") if newer else None
        if dep not in latest.input_pointers:
            return STALE, f"has a new dependency on {name}"
        cursor = latest.input_pointers[dep]
        changed = [
            q
            for q in days
            if (d := self.state.get(dep, q)) is not None
            and (cursor is None or d.storage_id > cursor)
        ]
        if changed:
            before = self.state.versions_as_of(dep, cursor, changed) if cursor is not None else {}
            for q in changed:
                if before.get(q) != self.state.get(dep, q).data_version:
                    return STALE, f"{name} {q} has a new data version"
        return None

    def _window_cause(self, latest: Any, dep: dg.AssetKey):
        name = dep.to_user_string()
        recorded = latest.metadata.get("partition_data_versions")
        if isinstance(recorded, dict) and recorded:
            for q in sorted(recorded):
                if self.planned(dep, q):
                    return UPSTREAM, f"{name} {q} is recomputed"
            for q, version in sorted(recorded.items()):
                current = self.state.get(dep, q)
                if current is None or current.data_version != version:
                    return STALE, f"{name} {q} has a new data version"
            return None
        # No per-day record: any partition written after the read makes it stale.
        cursor = latest.input_pointers.get(dep)
        for q, d in (self.state.latest.get(dep) or {}).items():
            if self.planned(dep, q):
                return UPSTREAM, f"{name} {q} is recomputed"
            if cursor is not None and d.storage_id > cursor:
                return STALE, f"{name} {q} has a newer materialization"
        return None

    def _parent_partitions(self, key: dg.AssetKey, p: str, dep: dg.AssetKey) -> list[str]:
        node, dep_node = self.graph.get(key), self.graph.get(dep)
        mapping = self.graph.get_partition_mapping(key, dep)
        if (
            isinstance(mapping, dg.TimeWindowPartitionMapping)
            and mapping.start_offset == 0
            and mapping.end_offset == 0
            and node.partitions_def == dep_node.partitions_def
        ) or isinstance(mapping, dg.IdentityPartitionMapping):
            return [p]
        subset = self.graph.get_parent_partition_keys_for_child(p, dep, key).partitions_subset
        return list(subset.get_partition_keys())


def _instance(defs: dg.Definitions, lc: Lifecycle | None) -> Lifecycle:
    if lc is not None:
        return lc
    from mlx_assets.build import lifecycles_of

    found = lifecycles_of(defs)
    if not found:
        raise ValueError("the code location defines no lifecycle instance")
    return found[0]


def plan(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    partitions: list[str] | None = None,
    lc: Lifecycle | None = None,
) -> LifecyclePlan:
    """What the lifecycle would recompute now, and why (one :class:`Finding` per asset partition).

    Args:
        instance: the Dagster instance whose event log is read (a few queries per asset).
        defs: the code location's definitions (asset graph, jobs, the ``platform`` resource).
        partitions: the daily partition keys (``YYYY-MM-DD``) to consider; default all of them.
        lc: the lifecycle instance; default the first of ``defs``.

    Returns:
        A :class:`LifecyclePlan`; downstream of anything recomputed is planned too (``upstream``),
        although :func:`run_lifecycle` re-plans after each stage and may then skip it.
    """
    from mlx_assets.asset_state import AssetState
    from mlx_assets.monitoring.coverage import lifecycle_monitoring_days

    lc = _instance(defs, lc)
    graph = defs.resolve_asset_graph()
    all_days = partitions or lc.partitions_def.get_partition_keys()
    # up to the model's test end; later days arrive through the `arrival` schedule
    monitor_days = lifecycle_monitoring_days(lc.window, all_days)
    jobs = lc.job_assets
    reference, daily, training = (
        list(jobs["reference"]),
        list(jobs["daily"]),
        list(jobs["training"]),
    )
    drift = lc.drift_key
    incident = lc.incident_key  # runs with drift, in the monitoring job
    ordered = [*reference, *daily, *training, drift, incident]
    parents = {d for k in ordered for d in graph.get(k).parent_keys}
    state = AssetState(instance, graph, [*ordered, *sorted(parents - set(ordered))])
    judge = _Assessor(graph, state)

    out = LifecyclePlan(_order={d: i for i, d in enumerate(all_days)})
    out.reference = [k.to_user_string() for k in reference if judge.assess(k, None)]
    for key in daily:
        for day in all_days:
            if judge.assess(key, day):
                out.daily_assets[day] = (*out.daily_assets.get(day, ()), key.to_user_string())
    out.partitions = [d for d in all_days if d in out.daily_assets]
    out.training = [k.to_user_string() for k in training if judge.assess(k, None)]
    platform = defs.resources.get("platform")
    if lc.serving and platform is not None and not judge.planned(lc.deployment_key, None):
        # fresh by its inputs, but its servers may be gone: the summary would show a dead URL
        from mlx_assets.serving.deployment import not_serving

        why = not_serving(platform.home_path, lc.model_name)
        if why is not None:
            finding = Finding(lc.deployment_key.to_user_string(), None, BAD, why)
            judge.found[(lc.deployment_key, None)] = finding
            out.training.append(finding.asset)
    out.monitoring = [
        d for d in monitor_days if judge.assess(drift, d) or judge.assess(incident, d)
    ]
    out.findings = list(judge.found.values())
    return out


class LifecycleRunFailed(RuntimeError):
    """A run launched by the lifecycle failed; the message names the run and how to see it."""

    def __init__(self, job: str, run_id: str, detail: str) -> None:
        self.job, self.run_id = job, run_id
        super().__init__(
            f"the {job} run {run_id[:8]} failed{detail}; see it with `./dev ui` (Runs -> "
            f"{run_id[:8]}) or re-run with `mlx lifecycle --verbose`"
        )


def _failure_detail(instance: dg.DagsterInstance, run_id: str) -> str:
    """`` at step <key>: <what failed>`` for the run's first step (or run) failure.

    <what failed> is the error's meaningful chain, from Dagster's ``SerializableErrorInfo``
    (``message`` and ``cause``/``context``): Dagster's own wrappers ("Error occurred while
    executing op ...") are skipped, so the real cause shows, e.g. ``RuntimeError: feature
    function failed; cause: ValueError: bad column x (in my_pkg.features:build)``. Each part
    is the first line of its message (a child traceback adds its last line), redacted."""
    from dagster._core.events import DagsterEventType

    records = instance.get_records_for_run(
        run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        error = getattr(event.event_specific_data, "error", None) if event else None
        if event is None:
            continue
        where = f" at step {event.step_key}" if event.step_key else ""
        if error is not None:
            first = _error_chain_text(error)
        else:
            message = record.event_log_entry.user_message or ""
            first = _one_line(message)
        if "blocking asset check" in first:
            first += _failed_checks(instance, run_id)
        return f"{where}: {first}" if first else where
    return ""


_WRAPPER = re.compile(r"^(?:\w+: )?Error occurred while (?:executing|resolving|loading|handling)")


def _error_chain(error: Any) -> list[Any]:
    """``error`` and its causes (``cause``, else ``context``), outermost first."""
    chain: list[Any] = []
    while error is not None and len(chain) < 20:
        chain.append(error)
        error = getattr(error, "cause", None) or getattr(error, "context", None)
    return chain


def _one_line(message: str) -> str:
    """The first line of ``message`` without its exception module path (``Failure: `` dropped:
    a Failure's description says it all); a child traceback in it adds its last line."""
    from mlx_plugins.kernel.secrets import redact

    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    # "dagster._core.definitions.events.Failure: planes: ..." -> "planes: ..."
    first = re.sub(r"^(?:[A-Za-z_]\w*\.)+(?=\w+: )", "", lines[0])
    first = re.sub(r"^Failure: ", "", first).rstrip(":; ")
    if "Traceback (most recent call last)" in message and len(lines) > 1:
        first += f" [child: {lines[-1]}]"
    return redact(first[:500])


def _where_raised(error: Any) -> str:
    """`` (in module:function)`` of the frame that raised ``error``, when it is user code (not
    Dagster's, a library's or the sandbox parent's re-raise)."""
    import sys
    from pathlib import Path

    stack = getattr(error, "stack", None) or []
    if not stack:
        return ""
    found = re.search(r'File "([^"]+)", line (\d+), in (\S+)', stack[-1])
    if found is None:
        return ""
    file, line, func = found.groups()
    if "site-packages" in file or "dist-packages" in file or "mlx_resources/sandbox/" in file:
        return ""
    path = Path(file)
    module = path.stem
    roots = sorted((p for p in sys.path if p), key=len, reverse=True)
    for root in roots:
        try:
            rel = path.with_suffix("").relative_to(Path(root).resolve())
        except ValueError:
            continue
        module = ".".join(rel.parts)
        break
    return f" (in {module}:{func}, line {line})"


def _error_chain_text(error: Any) -> str:
    """The meaningful errors of ``error``'s chain: the outermost one and, when it is another,
    the innermost (the root cause), each ``Type: first line``."""
    chain = [e for e in _error_chain(error) if not _WRAPPER.match(_one_line(e.message or ""))]
    if not chain:
        return _one_line(error.message or "")
    outer, inner = chain[0], chain[-1]
    text = _one_line(outer.message or "")
    if inner is outer:
        return text + _where_raised(outer)
    inner_text = _one_line(inner.message or "")
    if inner_text and inner_text not in text:
        text += f"; cause: {inner_text}{_where_raised(inner)}"
    return text


def _failed_checks(instance: dg.DagsterInstance, run_id: str) -> str:
    """`` (asset check <asset>.<check>: <its description>)`` for each check of the run that
    failed, so the console says why (e.g. which quality-gate rule a model missed)."""
    from dagster._core.events import DagsterEventType

    out = []
    records = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        data = getattr(event, "event_specific_data", None)
        if data is None or getattr(data, "passed", True):
            continue
        name = f"{data.asset_key.to_user_string()}.{data.check_name}"
        out.append(f"{name}: {data.description}" if data.description else name)
    return f" ({'; '.join(out)})" if out else ""


@contextmanager
def _follow(
    instance: dg.DagsterInstance,
    call: str,
    on_materialized: Callable[[str, str | None], None],
    on_step: Callable[[str], None] = lambda step: None,
) -> Iterator[None]:
    """Call ``on_materialized(asset, partition)`` for each materialization of the run tagged
    ``CALL_TAG=call`` while the block runs (the run is found by polling run storage, then followed
    through the instance's event listener, which runs in the executing thread)."""
    from dagster._core.events import DagsterEventType

    seen: set[tuple[str, str | None]] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def handle(key: dg.AssetKey | None, partition: str | None) -> None:
        if key is None:
            return
        item = (key.to_user_string(), partition)
        with lock:
            if item in seen:
                return
            seen.add(item)
        on_materialized(*item)

    def listener(entry: Any) -> None:
        event = entry.dagster_event
        if event is None:
            return
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            handle(event.asset_key, event.partition)
        elif event.event_type == DagsterEventType.STEP_START and event.step_key:
            on_step(event.step_key)

    def watch() -> None:
        while not stop.wait(0.1):
            ids = instance.get_run_ids(dg.RunsFilter(tags={CALL_TAG: call}), limit=1)
            if ids:
                instance.add_event_listener(ids[0], listener)
                # catch up on what happened before the listener was in place
                for r in instance.get_records_for_run(
                    ids[0], of_type=DagsterEventType.ASSET_MATERIALIZATION, limit=100_000
                ).records:
                    mat = r.asset_materialization
                    if mat is not None:
                        handle(mat.asset_key, mat.partition)
                return

    thread = threading.Thread(target=watch, name="mlx-run-follower", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _run(
    instance: dg.DagsterInstance,
    lc: Lifecycle,
    stage: str,
    console: Console,
    label: str,
    total: int,
    tags: dict[str, str] | None = None,
    asset_keys: Sequence[str] | None = None,
) -> str:
    """Execute ``job`` in this process; return the run id. Raises LifecycleRunFailed.

    ``total`` is the number of asset partitions (or unpartitioned assets) it materializes.
    """
    unit = "assets" if stage in ("reference", "training") else "partitions"
    job = lc.job(stage)
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    recon = ReconstructableRepository.for_module(
        "mlx_assets.definitions", "defs", working_directory=None
    ).get_reconstructable_job(job)
    call = uuid.uuid4().hex
    selection = [dg.AssetKey.from_user_string(k) for k in asset_keys] if asset_keys else None
    run_config = (
        {} if console.verbose else {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    )
    start = time.perf_counter()
    with (
        console.progress(label, total, short=stage, unit=unit) as advance,
        _follow(instance, call, lambda _a, _p: advance(1), lambda step: advance(0, step=step)),
        dg.execute_job(
            recon,
            instance,
            run_config=run_config,
            tags={**(tags or {}), CALL_TAG: call},
            asset_selection=selection,
            raise_on_error=False,
        ) as result,
    ):
        run_id, success = result.run_id, result.success
    elapsed = time.perf_counter() - start
    if not success:
        console.line(f"{stage}: FAILED after {elapsed:.1f}s (run {run_id[:8]})")
        raise LifecycleRunFailed(job, run_id, _failure_detail(instance, run_id))
    count = f"{total} {unit if total != 1 else unit.removesuffix('s')}"
    console.line(f"{stage}: done in {elapsed:.1f}s (run {run_id[:8]}, {count})")
    return run_id


def _range_tags(days: Sequence[str]) -> dict[str, str]:
    return {
        "dagster/asset_partition_range_start": days[0],
        "dagster/asset_partition_range_end": days[-1],
    }


def _days(days: Sequence[str]) -> str:
    return f"{len(days)} day{'s' if len(days) != 1 else ''} {days[0]}..{days[-1]}"


def run_lifecycle(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    log: Callable[[str], None] = print,
    partitions: list[str] | None = None,
    console: Console | None = None,
    lc: Lifecycle | None = None,
) -> LifecyclePlan:
    """Materialize what is missing, stale or bad, stage by stage; return the first plan.

    Args:
        instance: the Dagster instance runs are executed on (in this process).
        defs: the code location's definitions.
        log: where plain progress lines go when no ``console`` is given.
        partitions: the daily partition keys to consider (default: all).
        console: progress output (bars on a terminal, plain lines otherwise); default plain
            lines to ``log`` with Dagster's own event lines off.
        lc: the lifecycle instance to run; default the first of ``defs`` (``mlx lifecycle``
            runs each in turn).

    Raises:
        LifecycleRunFailed: a run failed; the message names the run and how to see it.
    """
    console = console or Console(log=log)
    lc = _instance(defs, lc)
    first = plan(instance, defs, partitions, lc)
    if first.empty:
        console.line("everything is up to date; nothing to recompute")
        return first
    if first.bad:
        console.line(f"found {len(first.bad)} bad stored partition(s); re-materializing them:")
        for f in first.bad[:10]:
            console.line(f"  {f.describe()}")
        if len(first.bad) > 10:
            console.line(f"  ... and {len(first.bad) - 10} more")
    todo = first
    if todo.reference:
        _run(
            instance,
            lc,
            "reference",
            console,
            f"reference tables ({', '.join(todo.reference)})",
            len(todo.reference),
        )
        todo = plan(instance, defs, partitions, lc)
    for assets, days in todo.daily_runs():
        _run(
            instance,
            lc,
            "daily",
            console,
            f"daily data ({', '.join(assets)}): {_days(days)}",
            len(assets) * len(days),
            tags=_range_tags(days),
            asset_keys=list(assets),
        )
    if todo.partitions:
        todo = plan(instance, defs, partitions, lc)
    if todo.training:
        _run(
            instance,
            lc,
            "training",
            console,
            f"training ({', '.join(todo.training)})",
            len(todo.training),
            asset_keys=todo.training,
        )
        todo = plan(instance, defs, partitions, lc)
    for days in todo.monitoring_runs():
        _run(
            instance,
            lc,
            "monitoring",
            console,
            f"drift monitoring: {_days(days)}",
            len(days),
            tags=_range_tags(days),
            asset_keys=[lc.drift_key.to_user_string(), lc.incident_key.to_user_string()],
        )
    return first


def _version_change(recorded: str | None, current: str) -> str:
    """Why a code version differs: its source (the part before ``-``) or the composition values
    it depends on (the fingerprint after it; see ``mlx_assets.build.config_fingerprints``)."""
    old_code, _, old_config = (recorded or "").partition("-")
    new_code, _, new_config = current.partition("-")
    if old_code == new_code and old_config != new_config:
        return "its settings in the composition changed"
    return "has a new code version"

"""Cleaning what killed runs leave behind, at the start of the next lifecycle.

A ``kill -9`` skips every ``finally``: temp files of half-done writes stay next to their targets,
the training step's artifact folder stays under ``artifacts/models``, a registration leaves its
staging folder, the training child's scratch folder stays in the system temp dir. Each is
removed only when it is certainly dead:

* temp files: older than ``grace_s`` and, where the name carries the writer's pid
  (:func:`temp_owner`), that pid is not running; temp names without a pid wait ``legacy_grace_s``.
* artifact folders ``artifacts/models/<run_id>-<suffix>``: the run is finished and not successful
  (FAILURE or CANCELED) and never materialized ``model`` (a retry from failure may still load it).
* registry: staging folders ``.vNNNN-*`` and version folders the registry's index does not list
  (a registration killed before it was recorded), older than ``grace_s``.
* system temp dir: ``mlx-train-<pid>-*`` / ``mlx-ddp-<pid>-*`` folders of dead pids.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from mlx_plugins.kernel.process_identity import pid_running

GRACE_S = 120.0
"""A temp file younger than this is never removed, whoever wrote it."""
LEGACY_GRACE_S = 3600.0
"""Temp names that do not carry a pid: removed only once this old."""

# Temp names that carry the writer's pid, e.g. ``.part.parquet.tmp-4711-1a2b3c`` or
# ``.part.parquet.4711.1a2b3c.tmp`` (mlx_resources.atomic), ``.dagster.yaml.4711.1a2b.tmp``.
_PID_TEMPS = (
    re.compile(r"^\..+\.tmp-(?P<pid>\d+)-[0-9A-Za-z_]+$"),
    re.compile(r"^\..+\.(?P<pid>\d+)\.[0-9A-Za-z_]+\.tmp$"),
    re.compile(r"^\..*[.-]p(?P<pid>\d+)[.-].*\.tmp$"),
)
# Temp names without a pid: the IO manager's ``.name.tmp-<hex>``, torch's ``.model-*.tmp``,
# the drift report's ``<day>.html.tmp``.
_PIDLESS_TEMPS = (
    re.compile(r"^\..+\.tmp-[0-9a-f]{6,}$"),
    re.compile(r"^\.model-.+\.tmp$"),
    re.compile(r"^.+\.html\.tmp$"),
    re.compile(r"^\..+\.tmp$"),
)
HOME_FOLDERS = ("data", "objects", "reports", "artifacts", "registry", "dagster")
"""The folders of an MLX home that :func:`clean_leftovers` searches for temp files."""
_SCRATCH = re.compile(r"^mlx-(?:train|ddp)-(?P<pid>\d+)-")
_RUN_FOLDER = re.compile(r"^(?P<run>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})-")
_DONE_BAD = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


@dataclass
class CleanReport:
    """What :func:`clean_leftovers` removed (paths) and kept back (path, reason)."""

    removed: list[Path] = field(default_factory=list)
    kept: list[tuple[Path, str]] = field(default_factory=list)


def temp_owner(name: str) -> tuple[bool, int | None]:
    """Whether ``name`` (a file name, no folder) is a temp file, and its writer's pid if named.

    >>> temp_owner(".2013-01-01.parquet.tmp-4711-ab12")
    (True, 4711)
    >>> temp_owner("2013-01-01.parquet")
    (False, None)
    """
    for rx in _PID_TEMPS:
        m = rx.match(name)
        if m:
            return True, int(m.group("pid"))
    return any(rx.match(name) for rx in _PIDLESS_TEMPS), None


def _age(path: Path, now: float) -> float:
    try:
        return now - path.lstat().st_mtime
    except FileNotFoundError:
        return -1.0


def _remove(path: Path, report: CleanReport) -> bool:
    """Remove a file or folder; a failure is recorded in ``report.kept``, never raised."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:  # cleaning must never stop the lifecycle
        report.kept.append((path, f"could not remove: {exc.strerror or exc}"))
        return False
    report.removed.append(path)
    return True


def clean_temp_files(
    roots: Iterable[Path],
    grace_s: float = GRACE_S,
    legacy_grace_s: float = LEGACY_GRACE_S,
    report: CleanReport | None = None,
) -> CleanReport:
    """Remove dead writers' temp files under ``roots`` (recursively; see the module doc)."""
    report = report or CleanReport()
    now = time.time()
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                is_temp, pid = temp_owner(name)
                if not is_temp:
                    continue
                path = Path(dirpath) / name
                age = _age(path, now)
                if pid is not None:
                    if pid == os.getpid() or pid_running(pid):
                        report.kept.append((path, f"writer pid {pid} is running"))
                        continue
                    if age < grace_s:
                        report.kept.append((path, "younger than the grace period"))
                        continue
                elif age < legacy_grace_s:
                    report.kept.append((path, "no pid in the name; younger than the grace period"))
                    continue
                _remove(path, report)
    return report


def clean_scratch(
    tmp_root: Path | None = None, grace_s: float = GRACE_S, report: CleanReport | None = None
) -> CleanReport:
    """Remove ``mlx-train-<pid>-*`` / ``mlx-ddp-<pid>-*`` folders of dead pids in the temp dir."""
    report = report or CleanReport()
    root = Path(tmp_root or tempfile.gettempdir())
    now = time.time()
    try:
        entries = list(root.iterdir())
    except OSError:
        return report
    for path in entries:
        m = _SCRATCH.match(path.name)
        if not m or not path.is_dir():
            continue
        pid = int(m.group("pid"))
        if pid == os.getpid() or pid_running(pid) or _age(path, now) < grace_s:
            continue
        _remove(path, report)
    return report


def _materialized_model(instance: dg.DagsterInstance, run_id: str) -> bool:
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    return any(
        r.event_log_entry.dagster_event is not None
        and r.event_log_entry.dagster_event.asset_key == dg.AssetKey("model")
        for r in records
    )


def clean_run_artifacts(
    instance: dg.DagsterInstance,
    artifacts: Path,
    grace_s: float = GRACE_S,
    report: CleanReport | None = None,
) -> CleanReport:
    """Remove ``<artifacts>/<run_id>-*`` folders of runs that failed before producing a model."""
    report = report or CleanReport()
    if not artifacts.is_dir():
        return report
    now = time.time()
    for path in sorted(artifacts.iterdir()):
        m = _RUN_FOLDER.match(path.name)
        if not m or not path.is_dir():
            continue
        run = instance.get_run_by_id(m.group("run"))
        if run is None:
            report.kept.append((path, "run not in this instance"))
            continue
        if run.status not in _DONE_BAD:
            continue
        if _age(path, now) < grace_s:
            report.kept.append((path, "younger than the grace period"))
            continue
        if _materialized_model(instance, run.run_id):
            report.kept.append((path, f"run {run.run_id[:8]} materialized model from it"))
            continue
        _remove(path, report)
    return report


def clean_registry(
    registry_root: Path, grace_s: float = GRACE_S, report: CleanReport | None = None
) -> CleanReport:
    """Remove registrations that were killed half-way (see the module doc).

    A staging folder ``<model>/.vNNNN-*``, or a ``vNNNN`` folder the registry's index does not
    list (its number claimed, or its files moved in, but never recorded), older than
    ``grace_s``. Recorded versions are never touched.
    """
    from mlx_resources.model_registry import ModelRegistry

    report = report or CleanReport()
    if not registry_root.is_dir():
        return report
    registry = ModelRegistry(root=str(registry_root))
    now = time.time()
    for model_dir in sorted(p for p in registry_root.iterdir() if p.is_dir()):
        recorded = {v.version for v in registry.versions(model_dir.name)}
        for path in sorted(model_dir.iterdir()):
            staging = re.match(r"^\.v\d+-", path.name)
            claim = re.match(r"^v(\d+)$", path.name)
            if not (staging or (claim and int(claim.group(1)) not in recorded)):
                continue
            if _age(path, now) < grace_s:
                report.kept.append((path, "younger than the grace period"))
                continue
            _remove(path, report)
    return report


def clean_leftovers(
    instance: dg.DagsterInstance,
    home: Path,
    grace_s: float = GRACE_S,
    log: Callable[[str], None] | None = None,
) -> CleanReport:
    """All of the above for the MLX home ``home`` (data, reports, artifacts, registry)."""
    report = CleanReport()
    # Only the platform's own folders: MLX_HOME may be a folder that holds other things too.
    clean_temp_files([home / d for d in HOME_FOLDERS], grace_s=grace_s, report=report)
    clean_run_artifacts(instance, home / "artifacts" / "models", grace_s=grace_s, report=report)
    clean_registry(home / "registry", grace_s=grace_s, report=report)
    clean_scratch(grace_s=grace_s, report=report)
    if log is not None and report.removed:
        shown = ", ".join(str(p) for p in report.removed[:5])
        more = f" and {len(report.removed) - 5} more" if len(report.removed) > 5 else ""
        log(f"removed {len(report.removed)} leftover(s) of killed runs: {shown}{more}")
    return report

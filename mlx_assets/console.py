"""Console output of ``mlx lifecycle``: one line per stage, a progress bar on a terminal, a summary.

On a terminal (``stream.isatty()``) a long stage shows a rich progress bar with partitions
done/total and the elapsed time; otherwise (a pipe, a CI log, a test) only plain lines are
printed, so the output of a whole first run fits on a screen: a stage's start and end, and,
while a stage runs longer than ``heartbeat_s`` (30 s), one line each ``heartbeat_s`` with what
is done and the last step started, so a log never goes silent on long work (training). Dagster's
own event lines are printed only with ``--verbose`` (the lifecycle sets the run's console
logger level).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

PREFIX = "[mlx] "


class Console:
    """Where the lifecycle's progress goes.

    Args:
        stream: text stream for lines and bars (default ``sys.stdout``).
        verbose: keep Dagster's event lines (and never draw a bar, which they would break).
        tty: draw progress bars; default ``stream.isatty()``.
        log: if given, every line goes to this callable (without prefix) and no bar is drawn.
        heartbeat_s: without a bar, a stage still running after this many seconds prints a
            line with its progress, and again each ``heartbeat_s`` (``None``: never).
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        verbose: bool = False,
        tty: bool | None = None,
        log: Callable[[str], None] | None = None,
        heartbeat_s: float | None = 30.0,
    ) -> None:
        self.stream = stream or sys.stdout
        self.verbose = verbose
        self.heartbeat_s = heartbeat_s
        self._write_lock = threading.Lock()
        self._log = log
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty and log is None and not verbose
        self._rich: Any = None
        if self.tty:
            from rich.console import Console as RichConsole

            self._rich = RichConsole(file=self.stream, highlight=False)

    def line(self, message: str) -> None:
        """Print one line (prefixed ``[mlx]`` on a stream)."""
        if self._log is not None:
            self._log(message)
        elif self._rich is not None:
            self._rich.print(f"[bold cyan]\\[mlx][/] {message}", markup=True, soft_wrap=True)
        else:  # one write under a lock: the heartbeat thread prints too
            with self._write_lock:
                self.stream.write(f"{PREFIX}{message}\n")
                self.stream.flush()

    @contextmanager
    def progress(
        self, label: str, total: int, short: str | None = None, unit: str = "partitions"
    ) -> Iterator[Callable[..., None]]:
        """A stage that materializes ``total`` asset partitions; yields ``advance(n, step=None)``
        (``step``: the step now running, shown next to the bar).

        ``label ...`` is printed once when the stage starts; on a terminal a transient bar
        ``short ━━━━ done/total <unit> 0:00:12`` follows it while the stage runs (``short``
        defaults to ``label``); otherwise, while it runs, a line
        ``  short: done/total <unit>, last step started: <step>, 60s`` each ``heartbeat_s``.
        ``advance`` may be called from any thread.
        """
        self.line(f"{label} ...")
        if self._rich is None:
            with self._heartbeat(short or label, total, unit) as advance:
                yield advance
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(
            TextColumn("[bold cyan]\\[mlx][/] {task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn(unit),
            TimeElapsedColumn(),
            console=self._rich,
            transient=True,
        ) as bar:
            name = short or label
            task = bar.add_task(name, total=max(total, 1))

            def advance(n: int, step: str | None = None) -> None:
                if step is not None:
                    bar.update(task, description=f"{name}: {step}")
                bar.advance(task, n)

            yield advance

    @contextmanager
    def _heartbeat(self, name: str, total: int, unit: str) -> Iterator[Callable[..., None]]:
        """Plain progress for a stage: ``advance(n, step=None)`` counts; a daemon thread prints
        a line each ``heartbeat_s`` while the stage runs (none for a shorter stage)."""
        if not self.heartbeat_s:
            yield lambda n, step=None: None
            return
        state: dict[str, Any] = {"done": 0, "step": None}
        lock = threading.Lock()
        stop = threading.Event()
        start = time.monotonic()

        def advance(n: int, step: str | None = None) -> None:
            with lock:
                state["done"] += n
                if step is not None:
                    state["step"] = step

        def beat() -> None:
            while not stop.wait(self.heartbeat_s):
                with lock:
                    done, step = state["done"], state["step"]
                running = f", last step started: {step}" if step else ""
                elapsed = time.monotonic() - start
                self.line(f"  {name}: {done}/{total} {unit}{running}, {elapsed:.0f}s")

        thread = threading.Thread(target=beat, name="mlx-console-heartbeat", daemon=True)
        thread.start()
        try:
            yield advance
        finally:
            stop.set()
            thread.join(timeout=5)


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def summary_lines(instance: Any, defs: Any, lc: Any = None) -> list[str]:
    """The closing summary of ``mlx lifecycle``: where every result is and how good the model is.

    Reads the latest materializations (a few queries): model version and artifact, the
    ``beats_baseline`` gate, ROC AUC / log loss / Brier of the test days, the drift days by
    severity with the report folder, the data, registry and instance folders, and how to open
    the UI. Lines are plain text (no prefix); absent results are said to be absent. ``lc``: the
    lifecycle instance (default the first of ``defs``).
    """
    import dagster as dg

    from mlx_assets.asset_state import AssetState
    from mlx_assets.build import lifecycles_of

    lc = lc or lifecycles_of(defs)[0]
    graph = defs.resolve_asset_graph()
    keys = [lc.evaluation_key, lc.registered_key, lc.drift_key]
    if lc.serving:
        keys.append(lc.deployment_key)  # read with the others: one AssetState
    state = AssetState(instance, graph, keys)
    evaluation = state.get(keys[0])
    registered = state.get(keys[1])
    resources = defs.resources
    registry_root = getattr(resources.get("model_registry"), "root", None)
    data_root = getattr(resources.get("io_manager"), "base_path", None)
    platform = resources.get("platform")
    lines: list[str] = []

    if registered is not None:
        meta = registered.metadata
        tag = meta.get("tag") or f"version {meta.get('version')}"
        lines.append(f"model      {tag}: {meta.get('artifact', '?')}")
    else:
        lines.append("model      no registered version yet")
    check = dg.AssetCheckKey(keys[0], "beats_baseline")
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([check]).get(check)
    status = getattr(getattr(record, "status", None), "value", None)
    gate = {"SUCCEEDED": "passed", "FAILED": "FAILED (the model was not registered)"}.get(
        str(status), "not run" if record is None else str(status).lower()
    )
    lines.append(f"gate       beats_baseline {gate}")
    if evaluation is not None:
        m = evaluation.metadata
        if lc.task == "binary":
            lines.append(
                f"metrics    ROC AUC {_fmt(m.get('roc_auc'))}, log loss {_fmt(m.get('log_loss'))} "
                f"(base rate {_fmt(m.get('baseline_log_loss'))}), Brier {_fmt(m.get('brier'))} "
                "on the test days"
            )
        else:
            names = [k for k in m if not k.startswith("baseline_") and isinstance(m[k], float)]
            shown = ", ".join(
                f"{k} {_fmt(m[k])}"
                + (f" (baseline {_fmt(m['baseline_' + k])})" if f"baseline_{k}" in m else "")
                for k in names[:4]
            )
            lines.append(f"metrics    {shown} on the test days")
    days = state.latest.get(keys[2], {})
    by_severity: dict[str, int] = {}
    report_dirs: set[str] = set()
    for latest in days.values():
        severity = str(latest.metadata.get("severity", "?"))
        by_severity[severity] = by_severity.get(severity, 0) + 1
        report = latest.metadata.get("report")
        if report:
            report_dirs.add(str(report).rsplit("/", 1)[0])
    if days:
        first, last = min(p for p in days if p), max(p for p in days if p)
        others = ", ".join(f"{n} {s}" for s, n in sorted(by_severity.items()) if s != "retrain")
        where = ", ".join(sorted(report_dirs)) or (
            str(platform.path("reports", "drift", *lc.prefix)) if platform is not None else "?"
        )
        lines.append(
            f"drift      {by_severity.get('retrain', 0)} of {len(days)} days {first}..{last} "
            f"drift enough to retrain ({others or 'no others'}); reports: {where}"
        )
    else:
        lines.append("drift      no day monitored yet")
    if lc.serving:
        served = state.get(lc.deployment_key)
        if served is None:
            lines.append("served     not yet (the deployment runs after a registered version)")
        else:
            m = served.metadata
            lines.append(
                f"served     {m.get('served_version')} at {m.get('url')} ({m.get('decision')}: "
                f"{m.get('reason')})"
            )
            curl = str(m.get("curl", "")).strip("`\n ")
            if curl:
                lines.append(f"try        {curl}")
            if platform is not None:
                home = platform.home_path
                lines.append(
                    "stop       mlx serving stop (the servers and router outlive this command; "
                    f"a new run re-attaches); logs: {home / 'bentoml' / 'logs'}/ (servers), "
                    f"{home / 'serving' / lc.model_name / 'router' / 'logs'}/ (router)"
                )
    if data_root:
        lines.append(f"data       {data_root} (one file per asset and day)")
    if registry_root:
        lines.append(f"registry   {registry_root} (numbered versions with lineage)")
    storage = type(instance.run_storage).__name__
    where = (
        f"runs and events in PostgreSQL ({storage}); dagster.yaml"
        if "Postgres" in storage
        else "runs and events"
    )
    lines.append(f"instance   {instance.root_directory} ({where}, DAGSTER_HOME)")
    lines.append("ui         ./dev ui, then open http://127.0.0.1:3000 (PORT=... to change)")
    return lines

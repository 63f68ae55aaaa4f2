"""Run and step telemetry: the span tree ``run > step (asset) > plugin call > sub-operation``.

:func:`traced_execution` wraps an executor's event stream (the jobs' executor,
:mod:`mlx_resources.run_liveness`): one ``run`` span for the run, one ``step`` span per step
(opened at ``STEP_START``, closed at the step's last event), the run's trace id as the run tag
``mlx/trace_id``, the run/asset/partition/who context for the plugin calls' spans and audit rows
(:mod:`mlx_resources.telemetry.audit`), and the run's Prometheus metrics written to
``<home>/metrics/<run_id>.prom`` at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mlx_plugins.kernel import telemetry as kt
from mlx_resources import sandbox as _sandbox  # noqa: F401  (installs the sandbox runner in runs)
from mlx_resources.telemetry.audit import flush_all

_log = logging.getLogger("mlx.telemetry")

_STEP_END = frozenset({"STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED", "STEP_UP_FOR_RETRY"})


def who(tags: Mapping[str, str]) -> str:
    """Who started a run, from its tags: ``sensor:<name>``, ``schedule:<name>``,
    ``user:<name>`` (``dagster/user``, else ``$USER``), ``backfill:<id>``."""
    if tags.get("dagster/sensor_name"):
        return f"sensor:{tags['dagster/sensor_name']}"
    if tags.get("dagster/schedule_name"):
        return f"schedule:{tags['dagster/schedule_name']}"
    if tags.get("dagster/backfill"):
        return f"backfill:{tags['dagster/backfill']}"
    user = tags.get("dagster/user") or _login_name()
    return f"user:{user}"


def _login_name() -> str:
    """The process's user: ``$USER``/``$LOGNAME`` (what getpass reads), else the account of
    the process's uid (a container or service often sets no ``$USER``), else ``uid:<n>``."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no variable and no passwd entry for the uid
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def partition_of(tags: Mapping[str, str]) -> str | None:
    """The run's partition (``2013-01-05``) or range (``2013-01-01...2013-01-31``), if any."""
    if tags.get("dagster/partition"):
        return tags["dagster/partition"]
    start, end = (
        tags.get("dagster/asset_partition_range_start"),
        tags.get("dagster/asset_partition_range_end"),
    )
    return f"{start}...{end}" if start and end else None


def traced_execution(
    plan_context: Any, events: Iterator[Any], home: Path | None = None
) -> Iterator[Any]:
    """``events`` (an executor's stream) inside the run span, with a step span per step.

    Adds the run tag ``mlx/trace_id``. With ``home``, writes the metrics file at the end
    (a failure to write it is logged, never fails the run).
    """
    run = plan_context.dagster_run
    tags = dict(run.tags)
    run_id = plan_context.run_id
    tracer = kt.tracer()
    started = kt.metrics_snapshot()  # this run's metrics are the difference from here
    context = {
        "run_id": run_id,
        "job": run.job_name,
        "partition": partition_of(tags),
        "who": who(tags),
        "model": tags.get("mlx/model"),
    }
    with (
        tracer.start_as_current_span(
            f"run {run.job_name}",
            attributes={f"mlx.{k}": v for k, v in context.items() if v},
        ) as run_span,
        kt.bound_run_context(**context),
    ):
        trace_id = kt.current_trace_id()
        if trace_id:
            with contextlib.suppress(Exception):
                plan_context.instance.add_run_tags(run_id, {kt.TRACE_TAG: trace_id})
        steps: dict[str, contextlib.ExitStack] = {}
        step_spans: dict[str, Any] = {}
        try:
            for event in events:
                kind = getattr(event, "event_type_value", None)
                key = getattr(event, "step_key", None)
                if kind == "STEP_START" and key and key not in steps:
                    stack = contextlib.ExitStack()
                    asset = _asset_of(plan_context, key)
                    step_spans[key] = stack.enter_context(
                        tracer.start_as_current_span(
                            f"step {key}",
                            attributes={"mlx.step": key, "mlx.asset": asset, "mlx.run_id": run_id},
                        )
                    )
                    stack.enter_context(kt.bound_run_context(asset=asset, step=key))
                    steps[key] = stack
                yield event
                if kind in _STEP_END and key in steps:
                    if kind == "STEP_FAILURE":
                        run_span.set_attribute("mlx.outcome", "error")
                        error = getattr(event.event_specific_data, "error", None)
                        mark_failed(step_spans[key], error, key)
                        mark_failed(run_span, error, key)
                    step_spans.pop(key, None)
                    steps.pop(key).close()
                    flush_all()
        finally:
            for stack in reversed(list(steps.values())):  # a stream stopped mid-step
                stack.close()
            run_span.set_attribute("mlx.trace_id", trace_id or "")
            flush_all()
            if home is not None:
                try:
                    kt.write_run_metrics(home, run_id, since=started)
                except Exception as exc:
                    _log.warning("could not write the run's metrics under %s: %s", home, exc)


def mark_failed(span: Any, error: Any, step: str | None = None) -> None:
    """Set ``span``'s status to ERROR and record an ``exception`` event (OpenTelemetry's
    semantic conventions: ``exception.type``, ``.message``, ``.stacktrace``) for ``error``, a
    Dagster ``SerializableErrorInfo`` (``None``: status only). The root cause is recorded: the
    innermost error of its ``cause``/``context`` chain, past Dagster's "Error occurred while
    executing op" wrapper. Every text is redacted."""
    from opentelemetry.trace import Status, StatusCode

    from mlx_plugins.kernel.secrets import redact

    root = error
    seen = 0
    while root is not None and seen < 20:
        inner = getattr(root, "cause", None) or getattr(root, "context", None)
        if inner is None:
            break
        root, seen = inner, seen + 1
    if root is None:
        span.set_status(Status(StatusCode.ERROR, f"step {step} failed" if step else "failed"))
        return
    lines = [line for line in (root.message or "").strip().splitlines() if line.strip()]
    first = lines[0] if lines else root.cls_name
    # "polars.exceptions.ComputeError: conversion failed" -> "conversion failed"
    prefix = re.match(rf"^(?:\w+\.)*{re.escape(root.cls_name or '')}: ", first)
    message = first[prefix.end() :] if prefix else first
    where = f"step {step}: " if step else ""
    span.set_status(Status(StatusCode.ERROR, redact(f"{where}{root.cls_name}: {message}")[:500]))
    span.add_event(
        "exception",
        {
            "exception.type": root.cls_name or "Exception",
            "exception.message": redact(message),
            "exception.stacktrace": redact("".join(root.stack or [])[-8000:]),
            **({"mlx.step": step} if step else {}),
        },
    )


def _asset_of(plan_context: Any, step_key: str) -> str:
    """The asset a step materializes: Dagster names an asset's step after its key
    (``flight_features``; ``a__b`` for ``a/b``)."""
    return step_key.replace("__", "/")


__all__ = ["mark_failed", "partition_of", "traced_execution", "who"]

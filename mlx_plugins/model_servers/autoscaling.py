"""Autoscaling of a served version: a policy, applied locally or rendered for Kubernetes.

:class:`AutoscalingPolicy` holds the seed's rules as defaults: scale *up* (double the
replicas) when any of CPU > 80%, queue depth > 100 requests or p95 > 2,000 ms; scale *down*
(halve) when CPU < 20% and queue depth < 10; between ``min_replicas`` and ``max_replicas``, and
no change within ``cooldown_s`` of the previous one. :func:`decide` is the rule, a pure
function of an :class:`Observation`.

* Locally, :class:`LocalAutoscaler` observes a version's replicas behind an
  :class:`~.routing.NginxRouter` (their own ``/metrics`` and their processes' CPU), decides, and
  starts or stops replicas, updating the router (a replica leaves the router, its requests
  finish, then it stops).
* For Kubernetes, :func:`render_hpa` gives an ``autoscaling/v2`` HorizontalPodAutoscaler and
  :func:`render_keda_scaledobject` a KEDA ``ScaledObject`` (Prometheus triggers).

Queue depth is the mean number of requests in flight per replica over the observation interval
(Little's law: seconds spent in requests / interval / replicas, from the request-duration
histogram's ``_sum``), so a burst between two scrapes is not missed.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlx_plugins.model_servers.rollout import Replica, ServedVersion
from mlx_plugins.model_servers.routing.metrics import MetricNames, Snapshot, scrape
from mlx_plugins.model_servers.routing.nginx import NginxRouter


class AutoscalingPolicy(BaseModel):
    """When and how far a version's replica count changes (seed defaults).

    Attributes
    ----------
    min_replicas, max_replicas
        Bounds of the replica count.
    scale_up_cpu_percent
        Scale up when the replicas' mean CPU exceeds this (percent of one core per replica).
    scale_up_queue_depth
        ... or the mean requests in flight per replica exceed this.
    scale_up_p95_ms
        ... or the p95 latency over the interval exceeds this (milliseconds).
    scale_down_cpu_percent, scale_down_queue_depth
        Scale down when CPU and queue depth are both below these.
    scale_up_factor, scale_down_factor
        Replica multipliers (2.0: double; 0.5: halve); a change is at least one replica.
    cooldown_s
        No change within this many seconds of the previous one (Kubernetes: the scale-down
        stabilization window and the scaling policies' period).
    interval_s
        Seconds between two observations (local autoscaler).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(default=8, ge=1)
    scale_up_cpu_percent: float = Field(default=80.0, gt=0)
    scale_up_queue_depth: float = Field(default=100.0, gt=0)
    scale_up_p95_ms: float = Field(default=2000.0, gt=0)
    scale_down_cpu_percent: float = Field(default=20.0, ge=0)
    scale_down_queue_depth: float = Field(default=10.0, ge=0)
    scale_up_factor: float = Field(default=2.0, gt=1)
    scale_down_factor: float = Field(default=0.5, gt=0, lt=1)
    cooldown_s: float = Field(default=60.0, ge=0)
    interval_s: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> AutoscalingPolicy:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        if self.scale_down_queue_depth >= self.scale_up_queue_depth:
            raise ValueError(
                f"scale_down_queue_depth ({self.scale_down_queue_depth}) must be below "
                f"scale_up_queue_depth ({self.scale_up_queue_depth}), or the count would flap"
            )
        if self.scale_down_cpu_percent >= self.scale_up_cpu_percent:
            raise ValueError(
                f"scale_down_cpu_percent ({self.scale_down_cpu_percent}) must be below "
                f"scale_up_cpu_percent ({self.scale_up_cpu_percent})"
            )
        return self


class Observation(BaseModel):
    """A version's load over one interval.

    Attributes
    ----------
    at
        Unix time (s) of the observation's end.
    replicas
        Replicas observed.
    queue_depth
        Mean requests in flight per replica.
    p95_ms
        p95 latency in milliseconds (None: no request in the interval).
    cpu_percent
        Mean CPU per replica, percent of one core (None: unknown, e.g. remote replicas).
    requests
        Requests answered in the interval.
    """

    model_config = ConfigDict(frozen=True)

    at: float
    replicas: int
    queue_depth: float
    p95_ms: float | None = None
    cpu_percent: float | None = None
    requests: int = 0


class ScaleDecision(BaseModel):
    """What :func:`decide` concluded: ``target`` replicas (== ``current`` for ``hold`` and
    ``cooldown``)."""

    model_config = ConfigDict(frozen=True)

    at: float
    current: int
    target: int
    action: Literal["up", "down", "hold", "cooldown", "bounds"]
    reason: str
    observation: Observation
    applied_at: float | None = None
    """Unix time (s) the change was in place (replicas ready and routed, or stopped); None for
    no change, or before it was applied."""


def decide(
    policy: AutoscalingPolicy,
    current: int,
    obs: Observation,
    last_change: float | None = None,
) -> ScaleDecision:
    """The replica count ``policy`` asks for, given ``obs`` and the time of the last change
    (Unix s; None: never). Pure.

    A count outside the bounds is brought inside at once (``bounds``, cooldown or not).
    """
    p = policy

    def out(target: int, action: str, reason: str) -> ScaleDecision:
        return ScaleDecision(
            at=obs.at,
            current=current,
            target=target,
            action=action,  # type: ignore[arg-type]
            reason=reason,
            observation=obs,
        )

    if current < p.min_replicas or current > p.max_replicas:
        target = min(max(current, p.min_replicas), p.max_replicas)
        return out(
            target, "bounds", f"{current} replicas is outside [{p.min_replicas}, {p.max_replicas}]"
        )
    hot = []
    if obs.cpu_percent is not None and obs.cpu_percent > p.scale_up_cpu_percent:
        hot.append(f"cpu {obs.cpu_percent:.0f}% > {p.scale_up_cpu_percent:g}%")
    if obs.queue_depth > p.scale_up_queue_depth:
        hot.append(f"queue depth {obs.queue_depth:.1f} > {p.scale_up_queue_depth:g}")
    if obs.p95_ms is not None and obs.p95_ms > p.scale_up_p95_ms:
        hot.append(f"p95 {obs.p95_ms:.0f} ms > {p.scale_up_p95_ms:g} ms")
    cold = (
        obs.cpu_percent is None or obs.cpu_percent < p.scale_down_cpu_percent
    ) and obs.queue_depth < p.scale_down_queue_depth
    if hot:
        target = min(p.max_replicas, max(current + 1, math.ceil(current * p.scale_up_factor)))
        action, reason = "up", "; ".join(hot)
    elif cold:
        target = max(p.min_replicas, min(current - 1, math.floor(current * p.scale_down_factor)))
        cpu = "" if obs.cpu_percent is None else f"cpu {obs.cpu_percent:.0f}% and "
        action, reason = "down", f"idle: {cpu}queue depth {obs.queue_depth:.1f}"
    else:
        return out(current, "hold", "load within bounds")
    if target == current:
        return out(current, "hold", f"{reason}, but already at the {action} limit")
    if last_change is not None and obs.at - last_change < p.cooldown_s:
        wait = p.cooldown_s - (obs.at - last_change)
        return out(current, "cooldown", f"{reason}; cooling down {wait:.1f} s more")
    return out(target, action, reason)  # type: ignore[arg-type]


class LocalAutoscaler:
    """Scales one version's replicas behind a local router by :class:`AutoscalingPolicy`.

    Parameters
    ----------
    policy
        :class:`AutoscalingPolicy`.
    router
        The started router serving ``version`` (its table must route ``version``).
    version
        The version and its running replicas (the list is updated in place).
    start_replica
        Starts one more ready replica of the version (e.g. ``lambda:
        server.start(package)``); called from worker threads when scaling up by several.
    metric_names
        Series to read (None: detected per replica).
    on_decision
        Called with every :class:`ScaleDecision` (e.g. a Dagster log line).
    """

    def __init__(
        self,
        policy: AutoscalingPolicy,
        router: NginxRouter,
        version: ServedVersion,
        start_replica: Callable[[], Replica],
        *,
        metric_names: MetricNames | None = None,
        on_decision: Callable[[ScaleDecision], None] | None = None,
    ) -> None:
        self.policy = policy
        self.router = router
        self.version = version
        self.start_replica = start_replica
        self.metric_names = metric_names
        self.on_decision = on_decision
        self.history: list[ScaleDecision] = []
        self.last_change: float | None = None
        self._base: Snapshot | None = None
        self._base_at = 0.0
        self._cpu: dict[int, tuple[float, float]] = {}
        self._detected: dict[str, MetricNames] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def replicas(self) -> int:
        return len(self.version.replicas)

    # -- observation ----------------------------------------------------------------------------
    def observe(self) -> Observation:
        """Load since the previous call (the first call only sets the baseline and reports an
        idle interval of zero length)."""
        now = time.time()
        snap = scrape(self.version.replicas, self.metric_names, detected=self._detected)
        base, base_at = self._base, self._base_at
        self._base, self._base_at = snap, now
        n = max(self.replicas, 1)
        if base is None or now <= base_at:
            return Observation(at=now, replicas=n, queue_depth=0.0, cpu_percent=self._cpu_now())
        w = (snap - base).window()
        return Observation(
            at=now,
            replicas=n,
            queue_depth=w.busy_s / (now - base_at) / n,
            p95_ms=w.p95_ms,
            cpu_percent=self._cpu_now(),
            requests=w.requests,
        )

    def _cpu_now(self) -> float | None:
        """Mean CPU percent per replica since the last call (replicas with a ``pid``)."""
        import psutil

        now = time.monotonic()
        shares = []
        for r in self.version.replicas:
            pid = getattr(r, "pid", None)
            if pid is None:
                continue
            try:
                procs = [psutil.Process(pid)]
                procs += procs[0].children(recursive=True)
                used = sum(sum(p.cpu_times()[:2]) for p in procs)
            except psutil.Error:
                continue
            prev = self._cpu.get(pid)
            self._cpu[pid] = (now, used)
            if prev is not None and now > prev[0]:
                shares.append(max(used - prev[1], 0.0) / (now - prev[0]) * 100.0)
        return sum(shares) / len(shares) if shares else None

    # -- acting ---------------------------------------------------------------------------------
    def step(self) -> ScaleDecision:
        """Observe, decide and apply once. Returns the decision (also in :attr:`history`)."""
        obs = self.observe()
        d = decide(self.policy, self.replicas, obs, self.last_change)
        if d.target > d.current:
            self._scale_up(d.target - d.current)
        elif d.target < d.current:
            self._scale_down(d.current - d.target)
        if d.target != d.current:
            self.last_change = time.time()
            d = d.model_copy(update={"applied_at": self.last_change})
            self._base = None  # the next interval starts with the new replica set
            self.observe()
        self.history.append(d)
        if self.on_decision is not None:
            with contextlib.suppress(Exception):
                self.on_decision(d)
        return d

    def _scale_up(self, n: int) -> None:
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="mlx-scale-up") as pool:
            futures = [pool.submit(self.start_replica) for _ in range(n)]
        started, errors = [], []
        for f in futures:
            try:
                started.append(f.result())
            except Exception as exc:
                errors.append(exc)
        if started:
            self.version.replicas.extend(started)
            self.router.apply(
                self.router.table.with_servers(self.version.version, self.version.servers),
                wait_drained=False,
            )
        if errors:
            raise RuntimeError(
                f"scaling {self.version.version} up: {len(errors)} of {n} replicas did not "
                f"start: {errors[0]}"
            ) from errors[0]

    def _scale_down(self, n: int) -> None:
        leaving = self.version.replicas[-n:]
        keep = self.version.replicas[:-n]
        table = self.router.table.with_servers(
            self.version.version, ServedVersion(self.version.version, keep).servers
        )
        self.router.apply(table, wait_drained=True)  # their requests finish first
        self.version.replicas[:] = keep
        ServedVersion(self.version.version, leaving).stop()

    # -- background loop ------------------------------------------------------------------------
    def start(self) -> LocalAutoscaler:
        """Run :meth:`step` every ``interval_s`` seconds in a daemon thread until :meth:`stop`.
        An exception in a step is recorded (:attr:`errors`) and the loop goes on."""
        self.errors: list[str] = []
        self.observe()

        def loop() -> None:
            while not self._stop.wait(self.policy.interval_s):
                try:
                    self.step()
                except Exception as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")

        self._thread = threading.Thread(target=loop, name="mlx-autoscaler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 120.0) -> None:
        """Stop the loop (after the step in progress, which may be starting replicas)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def replica_counts(self) -> list[int]:
        """The replica count after each change, starting with the count before the first:
        e.g. ``[1, 2, 4, 2]``."""
        counts = [self.history[0].current] if self.history else [self.replicas]
        counts += [d.target for d in self.history if d.target != d.current]
        return counts


# -- Kubernetes --------------------------------------------------------------------------------
def _behavior(p: AutoscalingPolicy) -> dict[str, Any]:
    period = max(1, min(1800, round(p.cooldown_s)))
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [
                {
                    "type": "Percent",
                    "value": round((p.scale_up_factor - 1) * 100),
                    "periodSeconds": period,
                },
                {"type": "Pods", "value": 1, "periodSeconds": period},
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": min(3600, round(p.cooldown_s)),
            "selectPolicy": "Max",
            "policies": [
                {
                    "type": "Percent",
                    "value": round((1 - p.scale_down_factor) * 100),
                    "periodSeconds": period,
                },
                {"type": "Pods", "value": 1, "periodSeconds": period},
            ],
        },
    }


def render_hpa(
    policy: AutoscalingPolicy,
    *,
    name: str,
    deployment: str,
    namespace: str = "default",
    in_flight_metric: str | None = "bentoml_service_request_in_progress",
    p95_metric: str | None = None,
) -> dict[str, Any]:
    """An ``autoscaling/v2`` HorizontalPodAutoscaler for ``deployment``.

    Metrics: CPU utilization (target ``scale_up_cpu_percent`` of the pods' CPU request), the
    per-pod in-flight gauge ``in_flight_metric`` (target ``scale_up_queue_depth``; a Pods
    metric, served by a custom-metrics adapter such as prometheus-adapter), and optionally a
    per-pod p95 gauge ``p95_metric`` in seconds (target ``scale_up_p95_ms``). Behavior: at most
    x ``scale_up_factor`` up and x ``scale_down_factor`` down per ``cooldown_s`` period, with a
    scale-down stabilization window of ``cooldown_s``.

    The HPA scales to *keep* each metric at its target (with Kubernetes' 10% tolerance)
    rather than at two thresholds: the local thresholds' scale-down bounds have no HPA field.

    Raises
    ------
    ManifestError
        The manifest fails kubernetes-validate (strict), naming the field.
    """
    from mlx_plugins.model_servers.routing.manifests import validate_manifest

    metrics: list[dict[str, Any]] = [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {
                    "type": "Utilization",
                    "averageUtilization": round(policy.scale_up_cpu_percent),
                },
            },
        }
    ]
    if in_flight_metric:
        metrics.append(_pods_metric(in_flight_metric, policy.scale_up_queue_depth))
    if p95_metric:
        metrics.append(_pods_metric(p95_metric, policy.scale_up_p95_ms / 1000.0))
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "mlx"},
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
            "minReplicas": policy.min_replicas,
            "maxReplicas": policy.max_replicas,
            "metrics": metrics,
            "behavior": _behavior(policy),
        },
    }
    validate_manifest(hpa)
    return hpa


def _quantity(x: float) -> str:
    """A Kubernetes quantity: integers as is, else milli-units (``0.25`` -> ``250m``)."""
    return str(int(x)) if float(x).is_integer() else f"{round(x * 1000)}m"


def _pods_metric(metric: str, target: float) -> dict[str, Any]:
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": metric},
            "target": {"type": "AverageValue", "averageValue": _quantity(target)},
        },
    }


def render_keda_scaledobject(
    policy: AutoscalingPolicy,
    *,
    name: str,
    deployment: str,
    prometheus_url: str,
    namespace: str = "default",
    selector: str = "",
) -> dict[str, Any]:
    """A KEDA ``ScaledObject`` (``keda.sh/v1alpha1``) with the same rules as :func:`render_hpa`,
    reading Prometheus directly: in-flight requests per pod, p95 from the request-duration
    histogram, and CPU. ``selector`` is a PromQL label selector body (``service="x"``).

    Raises
    ------
    ManifestError
        The manifest fails the vendored ScaledObject CRD schema, naming the field.
    """
    from mlx_plugins.model_servers.routing.manifests import validate_manifest

    sel = f"{{{selector}}}" if selector else ""
    in_flight = f"sum(bentoml_service_request_in_progress{sel})"
    p95 = (
        "histogram_quantile(0.95, sum by (le) "
        f"(rate(bentoml_service_request_duration_seconds_bucket{sel}[1m])))"
    )
    so = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"name": deployment},
            "minReplicaCount": policy.min_replicas,
            "maxReplicaCount": policy.max_replicas,
            "cooldownPeriod": round(policy.cooldown_s),
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(policy)}},
            "triggers": [
                {
                    "type": "prometheus",
                    "metricType": "AverageValue",
                    "metadata": {
                        "serverAddress": prometheus_url,
                        "query": in_flight,
                        "threshold": _num(policy.scale_up_queue_depth),
                    },
                },
                {
                    "type": "prometheus",
                    "metricType": "Value",
                    "metadata": {
                        "serverAddress": prometheus_url,
                        "query": p95,
                        "threshold": _num(policy.scale_up_p95_ms / 1000.0),
                    },
                },
                {
                    "type": "cpu",
                    "metricType": "Utilization",
                    "metadata": {"value": str(round(policy.scale_up_cpu_percent))},
                },
            ],
        },
    }
    validate_manifest(so)
    return so


def _num(x: float) -> str:
    return f"{x:g}"

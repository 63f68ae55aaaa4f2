"""Canary rollout: a new version beside the stable one, stepped traffic, promote or roll back.

:class:`RolloutController` moves traffic on a router (:class:`~.routing.NginxRouter`) from the
stable version to a canary in steps (default 10% -> 50% -> 100%). During each step it reads
every replica's own Prometheus ``/metrics`` (differences over the step: the counters are
cumulative) and checks the :class:`RolloutRule` (defaults: error rate < 0.01 and p99 <
1,000 ms; 503s from load shedding are counted apart, never as errors):

* the rule holds when the step's hold is reached (requests and/or seconds): next step; after
  the last (100%) step the canary is *promoted*: the stable version leaves the router, its
  replicas are stopped and the canary is the new stable version;
* the rule fails - checked at every poll, so a broken canary is caught as soon as it has
  answered ``min_requests`` requests, or at once when its errors alone exceed the step's error
  budget - traffic goes back to the stable version at once (one nginx reload), the requests the
  canary still holds are finished, then its replicas are stopped: *rolled back*.

The result is a :class:`RolloutResult`: the decision, the metrics of every step and a timeline
with Unix timestamps, ready for asset metadata and a blocking asset check.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlx_plugins.model_servers.routing.metrics import (
    MetricNames,
    Snapshot,
    VersionWindow,
    scrape,
)
from mlx_plugins.model_servers.routing.nginx import NginxRouter
from mlx_plugins.model_servers.routing.table import RoutingTable

Decision = Literal["promoted", "rolled_back"]


class Replica(Protocol):
    """One running server of a version: a :class:`~.base.ServerHandle` fits."""

    @property
    def url(self) -> str: ...

    def metrics_text(self, timeout_s: float = 2.0) -> str: ...

    def stop(self, timeout_s: float = 10.0) -> bool: ...


@dataclass
class ServedVersion:
    """A version and its running replicas.

    Attributes
    ----------
    version
        The name the router uses (``v0003``; see :data:`~.routing.table.VERSION_PATTERN`).
    replicas
        Its running servers (at least one).
    """

    version: str
    replicas: list[Replica] = field(default_factory=list)

    @property
    def servers(self) -> list[str]:
        """``host:port`` of each replica."""
        out = []
        for r in self.replicas:
            parts = urlsplit(r.url)
            host = parts.hostname or "127.0.0.1"
            host = f"[{host}]" if ":" in host else host
            out.append(f"{host}:{parts.port}")
        return out

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every replica (errors of one do not keep the others running)."""
        for r in self.replicas:
            with contextlib.suppress(Exception):
                r.stop(timeout_s)


class RolloutRule(BaseModel):
    """When a canary step passes.

    Attributes
    ----------
    max_error_rate
        The step passes only with an error rate strictly below this (errors / handled
        requests; 503 shedding excluded). Seed default 0.01.
    max_p99_ms
        ... and a p99 latency strictly below this, in milliseconds. Seed default 1,000.
    max_shed_rate
        Optional: also fail when more than this share of the canary's requests were shed (503).
    min_requests
        Requests the canary must have handled in a step before a verdict on rates and
        latency (an early failure needs this many too, except when the errors alone exceed
        the step's error budget, ``max_error_rate * hold_requests``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_error_rate: float = Field(default=0.01, gt=0, le=1)
    max_p99_ms: float = Field(default=1000.0, gt=0)
    max_shed_rate: float | None = Field(default=None, ge=0, le=1)
    min_requests: int = Field(default=20, ge=1)

    def violations(self, w: VersionWindow, hold_requests: int | None = None) -> list[str]:
        """Why ``w`` fails the rule (empty when it passes or cannot be judged yet)."""
        out: list[str] = []
        budget = self.max_error_rate * hold_requests if hold_requests else None
        if budget is not None and w.errors > budget and w.errors > 0:
            out.append(
                f"{w.errors} errors already exceed the step's error budget "
                f"({self.max_error_rate:g} x {hold_requests} requests)"
            )
        if w.handled < self.min_requests:
            return out
        if w.error_rate >= self.max_error_rate and not out:
            out.append(
                f"error rate {w.error_rate:.4f} >= {self.max_error_rate:g} ({w.errors}/{w.handled})"
            )
        if w.p99_ms is not None and w.p99_ms >= self.max_p99_ms:
            out.append(f"p99 {w.p99_ms:.0f} ms >= {self.max_p99_ms:g} ms")
        if (
            self.max_shed_rate is not None
            and w.requests
            and w.shed / w.requests > self.max_shed_rate
        ):
            out.append(f"shed rate {w.shed / w.requests:.4f} > {self.max_shed_rate:g}")
        return out


class RolloutPolicy(BaseModel):
    """How a rollout proceeds.

    Attributes
    ----------
    steps
        Canary traffic per step in percent, increasing, ending at 100 (default 10, 50, 100).
    hold_requests
        A step lasts until the canary has handled this many requests (None: not counted).
    hold_seconds
        ... and at least this many seconds (None: not timed). At least one of the two.
    max_step_seconds
        A step that has not reached its hold after this long fails ("not enough traffic").
    rule
        :class:`RolloutRule`.
    poll_interval_s
        Seconds between two scrapes of ``/metrics`` during a step.
    scrape_timeout_s
        Timeout of one scrape; ``scrape_failures`` failed scrapes of the canary in a row fail
        the step (a canary that stopped answering).
    metric_names
        Which series to read (:class:`~.routing.metrics.MetricNames`); None: the ``bentoml``
        plugin's own series where a server has them, else BentoML's
        (:func:`~.routing.metrics.detect_names`).
    stop_timeout_s
        Grace period when stopping replicas (SIGTERM, then SIGKILL).
    early_verdict
        True (default): check the rule at every poll and roll back as soon as it fails.
        False: judge a step only when its hold is reached (the seed's monitor-then-decide;
        the benchmark's baseline).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: tuple[float, ...] = (10.0, 50.0, 100.0)
    hold_requests: int | None = Field(default=200, ge=1)
    hold_seconds: float | None = Field(default=None, gt=0)
    max_step_seconds: float = Field(default=600.0, gt=0)
    rule: RolloutRule = RolloutRule()
    poll_interval_s: float = Field(default=0.2, gt=0, le=10)
    scrape_timeout_s: float = Field(default=2.0, gt=0)
    scrape_failures: int = Field(default=2, ge=1)
    metric_names: MetricNames | None = None
    stop_timeout_s: float = Field(default=10.0, gt=0)
    early_verdict: bool = True

    @model_validator(mode="after")
    def _check(self) -> RolloutPolicy:
        s = self.steps
        if not s or any(not 0 < w <= 100 for w in s) or list(s) != sorted(set(s)) or s[-1] != 100:
            raise ValueError(
                f"steps {list(s)} must be increasing percentages in (0, 100] ending at 100, "
                "e.g. [10, 50, 100]"
            )
        if self.hold_requests is None and self.hold_seconds is None:
            raise ValueError("give hold_requests or hold_seconds (or both): how long a step lasts")
        if self.hold_seconds is not None and self.hold_seconds >= self.max_step_seconds:
            raise ValueError(
                f"hold_seconds ({self.hold_seconds}) must be below max_step_seconds "
                f"({self.max_step_seconds})"
            )
        return self


class TimelineEvent(BaseModel):
    """One thing that happened, at Unix time ``at`` (``elapsed_s`` after the rollout began)."""

    model_config = ConfigDict(frozen=True)

    at: float
    elapsed_s: float
    event: str
    detail: dict[str, Any] = Field(default_factory=dict)


class StepMetrics(BaseModel):
    """One traffic step: its weights, what each version answered, and the verdict."""

    model_config = ConfigDict(frozen=True)

    canary_percent: float
    started_at: float
    ended_at: float
    canary: VersionWindow
    stable: VersionWindow
    passed: bool
    ended_by: Literal["hold", "rule", "timeout", "scrape", "error"]
    reasons: list[str] = Field(default_factory=list)


class RolloutResult(BaseModel):
    """What a rollout decided and why (plain data: JSON-able for asset metadata).

    Attributes
    ----------
    decision
        ``promoted`` (the canary serves all traffic, the old version is stopped) or
        ``rolled_back`` (the stable version serves all traffic, the canary is stopped).
    served_version
        The version serving 100% at the end.
    reason
        One line: why.
    steps
        :class:`StepMetrics` of every step run.
    timeline
        :class:`TimelineEvent` list in order.
    rollback_s
        Seconds from the failing observation to traffic back on stable (None when promoted).
    """

    model_config = ConfigDict(frozen=True)

    decision: Decision
    stable_version: str
    canary_version: str
    served_version: str
    reason: str
    steps: list[StepMetrics]
    timeline: list[TimelineEvent]
    started_at: float
    finished_at: float
    rollback_s: float | None = None
    policy: RolloutPolicy

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"

    def event_time(self, event: str) -> float | None:
        """Unix time of the first ``event`` in the timeline (None if absent)."""
        return next((e.at for e in self.timeline if e.event == event), None)

    def metadata(self) -> dict[str, Any]:
        """Flat, JSON-able figures for asset metadata (the full result is
        ``model_dump(mode="json")``)."""
        out: dict[str, Any] = {
            "decision": self.decision,
            "served_version": self.served_version,
            "stable_version": self.stable_version,
            "canary_version": self.canary_version,
            "reason": self.reason,
            "duration_s": round(self.finished_at - self.started_at, 3),
            "steps_run": len(self.steps),
        }
        if self.rollback_s is not None:
            out["rollback_s"] = round(self.rollback_s, 3)
        for s in self.steps:
            key = f"step_{s.canary_percent:g}pct"
            out[f"{key}_canary_requests"] = s.canary.requests
            out[f"{key}_canary_error_rate"] = round(s.canary.error_rate, 5)
            out[f"{key}_canary_p99_ms"] = s.canary.p99_ms
            out[f"{key}_canary_shed"] = s.canary.shed
            out[f"{key}_stable_errors"] = s.stable.errors
        return out


class RolloutController:
    """Runs canary rollouts on a router.

    Parameters
    ----------
    router
        A started :class:`~.routing.NginxRouter` serving the stable version (any other
        versions in its table keep their weight 0 through the rollout).
    policy
        :class:`RolloutPolicy`.
    on_event
        Called with each :class:`TimelineEvent` as it happens (e.g. a Dagster log).
    """

    def __init__(
        self,
        router: NginxRouter,
        policy: RolloutPolicy | None = None,
        *,
        on_event: Callable[[TimelineEvent], None] | None = None,
    ) -> None:
        self.router = router
        self.policy = policy or RolloutPolicy()
        self.on_event = on_event

    def run(self, stable: ServedVersion, canary: ServedVersion) -> RolloutResult:
        """Roll ``canary`` out beside ``stable`` and promote it or roll it back.

        ``canary``'s replicas must be running and ready; ``stable`` must be in the router's
        table. On return exactly one of the two versions runs and gets all traffic.
        Should anything raise mid-way (a router error, an interrupt), traffic is put back on
        ``stable``, the canary stopped, and the exception re-raised.

        Raises
        ------
        ValueError
            Same version name twice, no canary replicas, or ``stable`` not in the router.
        mlx_plugins.model_servers.routing.RouterError
            The router refused a change (its configuration stays as it was).
        """
        if stable.version == canary.version:
            raise ValueError(f"canary and stable are both {stable.version!r}: give the new one")
        if not canary.replicas:
            raise ValueError(f"canary {canary.version!r} has no running replicas: start one")
        try:
            stable_route = self.router.table.route(stable.version)
        except ValueError as exc:
            raise ValueError(f"stable version not routed: {exc}") from None
        if stable_route.weight <= 0:
            raise ValueError(f"stable version {stable.version!r} has no traffic on the router")
        run = _Run(self, stable, canary)
        try:
            return run.go()
        except BaseException:
            run.emergency_rollback()
            raise


class _ScrapeFailed(Exception):
    pass


class _Run:
    """State of one rollout."""

    def __init__(self, ctl: RolloutController, stable: ServedVersion, canary: ServedVersion):
        self.ctl = ctl
        self.p = ctl.policy
        self.router = ctl.router
        self.stable = stable
        self.canary = canary
        self.start = time.time()
        self.timeline: list[TimelineEvent] = []
        self.steps: list[StepMetrics] = []
        self.finished = False
        self.detected: dict[str, MetricNames] = {}  # replica URL -> its metric names

    def event(self, name: str, at: float | None = None, **detail: Any) -> None:
        t = time.time() if at is None else at
        ev = TimelineEvent(at=t, elapsed_s=round(t - self.start, 4), event=name, detail=detail)
        self.timeline.append(ev)
        if self.ctl.on_event is not None:
            with contextlib.suppress(Exception):
                self.ctl.on_event(ev)

    def scrape(self, version: ServedVersion) -> Snapshot:
        failures = 0
        while True:
            try:
                return scrape(
                    version.replicas, self.p.metric_names, self.p.scrape_timeout_s, self.detected
                )
            except Exception as exc:
                failures += 1
                if failures >= self.p.scrape_failures:
                    raise _ScrapeFailed(f"{version.version} /metrics: {exc}") from exc
                time.sleep(min(self.p.poll_interval_s, 0.1))

    def go(self) -> RolloutResult:
        p, stable, canary = self.p, self.stable, self.canary
        self.event(
            "started",
            stable=stable.version,
            canary=canary.version,
            canary_servers=canary.servers,
            steps=list(p.steps),
        )
        for replica in canary.replicas:  # a ServerHandle can say whether it is ready
            health = getattr(replica, "health", None)
            if callable(health):
                status = health()
                if not getattr(status, "healthy", True):
                    return self.rollback(
                        f"canary {canary.version} is not healthy before any traffic: "
                        f"{getattr(status, 'detail', status)}"
                    )
        for percent in p.steps:
            # The canary's baseline is taken before the switch (nothing it answers in the step
            # is missed); the stable one after the old workers drained (its window holds only
            # requests routed by this step's weights).
            try:
                before_c = self.scrape(canary)
            except _ScrapeFailed as exc:
                return self.rollback(f"canary not answering before step {percent:g}%: {exc}")
            weights = {stable.version: round(100 - percent, 2), canary.version: percent}
            # from the router's current table: replicas an autoscaler added meanwhile stay
            table = self.router.table
            if canary.version in table.weights:
                table = table.with_servers(canary.version, canary.servers)
            else:
                table = table.with_version(canary.version, canary.servers)
            reload = self.router.apply(table.with_weights(weights), wait_drained=True)
            step_start = reload.switched_at
            try:
                before_s = self.scrape(stable)
            except _ScrapeFailed:
                before_s = Snapshot()
            self.event("step_started", at=step_start, canary_percent=percent, weights=weights)
            verdict = self.watch_step(percent, step_start, before_c)
            if not verdict.passed:  # traffic back first; the stable figures can wait
                return self.rollback(
                    f"step {percent:g}%: " + "; ".join(verdict.reasons),
                    failed_at=verdict.ended_at,
                    failed_step=verdict,
                    before_s=before_s,
                )
            verdict = self.stable_window(verdict, before_s)
            self.steps.append(verdict)
            self.step_event(verdict)
        return self.promote()

    def stable_window(self, step: StepMetrics, before_s: Snapshot) -> StepMetrics:
        """``step`` with the stable version's window (from the step's start until now)."""
        try:
            sw = (self.scrape(self.stable) - before_s).window()
        except _ScrapeFailed:
            sw = VersionWindow()
        return step.model_copy(update={"stable": sw})

    def step_event(self, verdict: StepMetrics) -> None:
        self.event(
            "step_passed" if verdict.passed else "step_failed",
            at=verdict.ended_at,
            canary_percent=verdict.canary_percent,
            canary_requests=verdict.canary.requests,
            canary_errors=verdict.canary.errors,
            canary_shed=verdict.canary.shed,
            canary_error_rate=round(verdict.canary.error_rate, 5),
            canary_p99_ms=verdict.canary.p99_ms,
            reasons=verdict.reasons,
        )

    def watch_step(self, percent: float, step_start: float, before_c: Snapshot) -> StepMetrics:
        p = self.p
        hold_requests = p.hold_requests
        # The error budget is per step: a step of 10% of traffic has the same request hold.
        while True:
            time.sleep(p.poll_interval_s)
            now = time.time()
            ended_by: str | None = None
            reasons: list[str] = []
            try:
                cw = (self.scrape(self.canary) - before_c).window()
            except _ScrapeFailed as exc:
                cw, ended_by, reasons = VersionWindow(), "scrape", [f"canary not answering: {exc}"]
            if ended_by is None:
                held = (hold_requests is None or cw.handled >= hold_requests) and (
                    p.hold_seconds is None or now - step_start >= p.hold_seconds
                )
                if p.early_verdict:
                    reasons = p.rule.violations(cw, hold_requests)
                elif held and cw.handled >= p.rule.min_requests:
                    reasons = p.rule.violations(cw)
                if reasons:
                    ended_by = "rule"
                elif held and cw.handled >= p.rule.min_requests:
                    ended_by = "hold"
                elif now - step_start >= p.max_step_seconds:
                    ended_by = "timeout"
                    reasons = [
                        f"not enough traffic: the canary handled {cw.handled} requests in "
                        f"{now - step_start:.0f} s (max_step_seconds {p.max_step_seconds:g}; "
                        f"needs {max(hold_requests or 0, p.rule.min_requests)})"
                    ]
            if ended_by is not None:
                return StepMetrics(
                    canary_percent=percent,
                    started_at=step_start,
                    ended_at=now,
                    canary=cw,
                    stable=VersionWindow(),  # filled in by stable_window()
                    passed=ended_by == "hold",
                    ended_by=ended_by,  # type: ignore[arg-type]
                    reasons=reasons,
                )

    def rollback(
        self,
        reason: str,
        failed_at: float | None = None,
        failed_step: StepMetrics | None = None,
        before_s: Snapshot | None = None,
    ) -> RolloutResult:
        """Traffic back on stable at once, the canary's requests finished, the canary stopped.
        A failed step's stable window is read afterwards (it then runs until the rollback's
        end), so that reading it does not delay the switch."""
        failed_at = time.time() if failed_at is None else failed_at
        if failed_step is not None:
            self.step_event(failed_step)
        stable, canary = self.stable, self.canary
        table = self.router.table
        if canary.version in table.weights:
            reload = self.router.apply(table.with_weights({stable.version: 100}), wait_drained=True)
            self.event("traffic_restored", at=reload.switched_at, weights={stable.version: 100})
            if reload.drained_at is not None:
                self.event("canary_drained", at=reload.drained_at)
            restored = reload.switched_at
        else:
            restored = time.time()
        if failed_step is not None:
            self.steps.append(self.stable_window(failed_step, before_s or Snapshot()))
        canary.stop(self.p.stop_timeout_s)
        self.event("canary_stopped", replicas=len(canary.replicas))
        if canary.version in self.router.table.weights:
            self.router.apply(self.router.table.without(canary.version), wait_drained=False)
        self.finished = True
        self.event("rolled_back", reason=reason)
        return self.result("rolled_back", stable.version, reason, max(restored - failed_at, 0.0))

    def promote(self) -> RolloutResult:
        stable, canary = self.stable, self.canary
        table = self.router.table.with_weights({canary.version: 100})
        reload = self.router.apply(table.without(stable.version), wait_drained=True)
        self.event("stable_removed", at=reload.switched_at, weights={canary.version: 100})
        stable.stop(self.p.stop_timeout_s)
        self.event("stable_stopped", version=stable.version, replicas=len(stable.replicas))
        self.finished = True
        reason = f"every step passed ({', '.join(f'{s:g}%' for s in self.p.steps)})"
        self.event("promoted", version=canary.version)
        return self.result("promoted", canary.version, reason, None)

    def emergency_rollback(self) -> None:
        """After an exception: stable gets all traffic, the canary stops (best effort)."""
        if self.finished:
            return
        with contextlib.suppress(Exception):
            table = self.router.table
            if table.weights.get(self.canary.version, 0) > 0:
                self.router.apply(table.with_weights({self.stable.version: 100}))
        self.canary.stop(self.p.stop_timeout_s)
        with contextlib.suppress(Exception):
            if self.canary.version in self.router.table.weights:
                self.router.apply(self.router.table.without(self.canary.version))

    def result(
        self, decision: Decision, served: str, reason: str, rollback_s: float | None
    ) -> RolloutResult:
        return RolloutResult(
            decision=decision,
            stable_version=self.stable.version,
            canary_version=self.canary.version,
            served_version=served,
            reason=reason,
            steps=self.steps,
            timeline=self.timeline,
            started_at=self.start,
            finished_at=time.time(),
            rollback_s=rollback_s,
            policy=self.p,
        )


def rollout(
    router: NginxRouter,
    stable: ServedVersion,
    canary: ServedVersion,
    policy: RolloutPolicy | None = None,
    *,
    on_event: Callable[[TimelineEvent], None] | None = None,
) -> RolloutResult:
    """``RolloutController(router, policy, on_event=on_event).run(stable, canary)``."""
    return RolloutController(router, policy, on_event=on_event).run(stable, canary)


def stable_from_table(table: RoutingTable) -> str:
    """The version with the most traffic in ``table`` (the stable one outside a rollout)."""
    return max(table.routes, key=lambda r: r.weight).version

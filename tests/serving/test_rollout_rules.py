"""Rollout arithmetic without servers: /metrics windows, quantiles, the rule, the policy."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mlx_plugins.model_servers.rollout import RolloutPolicy, RolloutRule
from mlx_plugins.model_servers.routing.metrics import (
    MetricNames,
    VersionWindow,
    detect_names,
    parse_metrics,
)

_L = 'endpoint="/predict",http_response_code="{s}",service_name="svc"'


def _exposition(counts: dict[int, int], buckets: dict[int, dict[str, int]]) -> str:
    """BentoML-style text: request counters and a duration histogram by status."""
    lines = ["# TYPE bentoml_service_request_total counter"]
    for s, n in counts.items():
        lines.append(f"bentoml_service_request_total{{{_L.format(s=s)}}} {n}")
    lines.append(
        'bentoml_service_request_total{endpoint="/readyz",http_response_code="200",'
        'service_name="svc"} 99'
    )
    lines.append("# TYPE bentoml_service_request_duration_seconds histogram")
    for s, bs in buckets.items():
        for le, n in bs.items():
            lines.append(
                f'bentoml_service_request_duration_seconds_bucket{{{_L.format(s=s)},le="{le}"}} {n}'
            )
        lines.append(
            f"bentoml_service_request_duration_seconds_count{{{_L.format(s=s)}}} {bs['+Inf']}"
        )
    lines.append("# TYPE bentoml_service_request_in_progress gauge")
    lines.append('bentoml_service_request_in_progress{endpoint="/predict",service_name="svc"} 3')
    return "\n".join(lines) + "\n"


def test_window_counts_statuses_apart_and_interpolates_quantiles() -> None:
    before = parse_metrics(
        _exposition({200: 100, 500: 1}, {200: {"0.1": 90, "1.0": 100, "+Inf": 100}}),
        MetricNames(),
    )
    after_text = _exposition(
        {200: 300, 500: 3, 503: 50, 422: 7},
        {
            200: {"0.1": 90 + 100, "1.0": 100 + 200, "+Inf": 300},
            500: {"0.1": 2, "1.0": 2, "+Inf": 2},
            503: {"0.1": 50, "1.0": 50, "+Inf": 50},
        },
    )
    w = (parse_metrics(after_text) - before).window()
    # 200 more ok, 2 more errors, 50 shed, 7 client errors; the /readyz probes do not count
    assert (w.requests, w.errors, w.shed, w.client_errors) == (259, 2, 50, 7)
    assert w.error_rate == pytest.approx(2 / (259 - 50))
    # non-shed latencies in the window: 102 in (0, 0.1], 100 in (0.1, 1.0] (+ 7 uncounted 422s)
    # p99 rank = 0.99 * 202 = 199.98 -> in (0.1, 1.0]: 0.1 + 0.9 * (199.98 - 102) / 100
    assert w.p99_ms == pytest.approx((0.1 + 0.9 * (199.98 - 102) / 100) * 1000)
    assert w.in_progress == 3


def test_a_restarted_server_counts_from_zero_and_beyond_top_bucket_is_its_bound() -> None:
    before = parse_metrics(_exposition({200: 500}, {200: {"1.0": 500, "+Inf": 500}}))
    after = parse_metrics(_exposition({200: 10, 500: 10}, {200: {"1.0": 0, "+Inf": 10}}))
    w = (after - before).window()
    assert (w.requests, w.errors) == (20, 10)
    assert w.p99_ms == 1000.0  # every latency above 1.0 s: the top finite bound
    assert VersionWindow().p99_ms is None


def test_names_are_detected_from_the_scrape() -> None:
    mlx = (
        'mlx_serving_requests_total{model="m",status="200",version="v0002"} 4\n'
        'mlx_serving_requests_total{model="m",status="500",version="v0002"} 1\n'
    )
    assert detect_names(mlx) == MetricNames.mlx_serving()
    w = parse_metrics(mlx).window()
    assert (w.requests, w.errors) == (5, 1)
    assert detect_names(_exposition({200: 1}, {})) == MetricNames.bentoml_stock()
    # a plugin server before its first request: no request series yet, its info gauge says
    info = 'mlx_serving_model_info{model="m",version="v0002"} 1.0\n'
    assert detect_names(_exposition({200: 0}, {}) + info) == MetricNames.mlx_serving()
    with pytest.raises(ValueError):
        parse_metrics("this is { not prometheus")


def test_rule_fails_early_on_budget_and_only_judges_rates_with_enough_requests() -> None:
    rule = RolloutRule(min_requests=20)
    assert rule.violations(VersionWindow(requests=5, errors=0)) == []
    # 3 errors are more than the step's budget of 1% of 200 requests, even after 5 requests
    assert "error budget" in rule.violations(VersionWindow(requests=5, errors=3), 200)[0]
    assert rule.violations(VersionWindow(requests=10, errors=1, error_rate=0.1), None) == []
    slow = VersionWindow(requests=40, p99_ms=1500.0)
    assert rule.violations(slow) == ["p99 1500 ms >= 1000 ms"]
    ok = VersionWindow(requests=400, errors=3, error_rate=3 / 400, p99_ms=120.0)
    assert rule.violations(ok, 400) == []
    # shed requests are not errors; a shed limit is opt-in
    shed = VersionWindow(requests=100, shed=60, p99_ms=50.0)
    assert rule.violations(shed) == []
    assert RolloutRule(max_shed_rate=0.5).violations(shed) == ["shed rate 0.6000 > 0.5"]


def test_policy_refuses_bad_steps_and_holds() -> None:
    assert RolloutPolicy().steps == (10, 50, 100)
    for steps in ([50, 10, 100], [10, 50], [0, 100], [10, 10, 100]):
        with pytest.raises(ValidationError, match="increasing percentages"):
            RolloutPolicy(steps=steps)
    with pytest.raises(ValidationError, match="give hold_requests or hold_seconds"):
        RolloutPolicy(hold_requests=None, hold_seconds=None)
    with pytest.raises(ValidationError, match="must be below max_step_seconds"):
        RolloutPolicy(hold_seconds=100, max_step_seconds=50)
    # from a settings mapping (mlx.yaml): a misspelt key is an error naming it, not ignored
    with pytest.raises(ValidationError, match=r"rule\.max_p99\n.*Extra inputs are not permitted"):
        RolloutPolicy.model_validate({"hold_seconds": 30, "rule": {"max_p99": 800}})
    policy = RolloutPolicy.model_validate({"steps": [5, 25, 100], "rule": {"max_p99_ms": 800}})
    assert (policy.steps, policy.rule.max_p99_ms, policy.hold_requests) == ((5, 25, 100), 800, 200)

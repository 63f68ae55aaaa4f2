"""Kubernetes renderings of rollout and autoscaling: Gateway API HTTPRoute per step, HPA
(autoscaling/v2) and KEDA ScaledObject, each validated."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml

from mlx_plugins.model_servers.autoscaling import (
    AutoscalingPolicy,
    render_hpa,
    render_keda_scaledobject,
)
from mlx_plugins.model_servers.rollout import RolloutPolicy
from mlx_plugins.model_servers.routing import RoutingTable
from mlx_plugins.model_servers.routing.gateway import (
    ManifestError,
    render_httproute,
    render_rollout_httproutes,
    service_name,
)
from mlx_plugins.model_servers.routing.manifests import SCHEMAS, VENDORED, validate_manifest

ROUTE = {"name": "flight-delay", "gateway": "mlx-gateway", "namespace": "serving"}


def _backends(route: dict) -> dict[str, int]:
    (rule,) = route["spec"]["rules"]
    return {b["name"]: b["weight"] for b in rule["backendRefs"]}


def test_httproute_per_rollout_step_then_promoted() -> None:
    routes = render_rollout_httproutes("v0001", "v0002", RolloutPolicy().steps, **ROUTE)
    assert [_backends(r) for r in routes] == [
        {"flight-delay-v0001": 90, "flight-delay-v0002": 10},
        {"flight-delay-v0001": 50, "flight-delay-v0002": 50},
        {"flight-delay-v0001": 0, "flight-delay-v0002": 100},
        {"flight-delay-v0002": 100},
    ]
    r = routes[0]
    assert (r["apiVersion"], r["kind"]) == ("gateway.networking.k8s.io/v1", "HTTPRoute")
    assert r["spec"]["parentRefs"][0]["name"] == "mlx-gateway"
    assert r["metadata"]["namespace"] == "serving"
    # YAML round trip (what kubectl apply reads) still validates
    for doc in yaml.safe_load_all(yaml.safe_dump_all(routes)):
        validate_manifest(doc)


def test_httproute_decimal_weights_become_integers() -> None:
    table = RoutingTable.split(
        {"v1": 87.5, "v2": 12.5}, {"v1": ["127.0.0.1:1"], "v2": ["127.0.0.1:2"]}
    )
    route = render_httproute(table, **ROUTE)
    assert _backends(route) == {"flight-delay-v1": 8750, "flight-delay-v2": 1250}


def test_kubernetes_validate_has_no_gateway_schema_so_the_crd_schema_is_vendored() -> None:
    route = render_rollout_httproutes("v0001", "v0002", [100], **ROUTE)[0]
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(route, "1.30.0", strict=True)
    for filename in VENDORED.values():
        header = (SCHEMAS / filename).read_text().splitlines()[:4]
        assert any("https://github.com/" in line for line in header), filename


def test_invalid_routes_are_refused_with_the_field() -> None:
    route = render_rollout_httproutes("v0001", "v0002", [10, 100], **ROUTE)[0]
    bad = copy.deepcopy(route)
    bad["spec"]["rules"][0]["backendRefs"][0]["weight"] = -5
    with pytest.raises(ManifestError, match=r"spec\.rules\.0\.backendRefs\.0\.weight: -5 is less"):
        validate_manifest(bad)
    typo = copy.deepcopy(route)
    typo["spec"]["rules"][0]["backendRefs"][0]["wieght"] = 5
    with pytest.raises(ManifestError, match="'wieght' was unexpected"):
        validate_manifest(typo)
    with pytest.raises(ManifestError, match="not a DNS-1123 subdomain"):
        render_httproute(RoutingTable.single("v1", ["127.0.0.1:1"]), name="Bad_Name", gateway="g")
    with pytest.raises(ManifestError, match="DNS-1035"):
        service_name("9lives", "v1")


def test_hpa_renders_the_seed_policy_and_validates() -> None:
    policy = AutoscalingPolicy(min_replicas=2, max_replicas=10, cooldown_s=120)
    hpa = render_hpa(policy, name="flight-delay", deployment="flight-delay-v0003", p95_metric="p95")
    kubernetes_validate.validate(hpa, "1.30.0", strict=True)  # as the API server's schema says
    spec = hpa["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 10)
    cpu, in_flight, p95 = spec["metrics"]
    assert cpu["resource"]["target"]["averageUtilization"] == 80
    assert in_flight["pods"]["target"]["averageValue"] == "100"
    assert p95["pods"]["target"]["averageValue"] == "2"  # 2,000 ms in seconds
    up, down = spec["behavior"]["scaleUp"], spec["behavior"]["scaleDown"]
    assert {"type": "Percent", "value": 100, "periodSeconds": 120} in up["policies"]  # double
    assert {"type": "Percent", "value": 50, "periodSeconds": 120} in down["policies"]  # halve
    assert down["stabilizationWindowSeconds"] == 120
    tampered = copy.deepcopy(hpa)
    tampered["spec"]["minReplicas"] = "two"
    with pytest.raises(ManifestError, match="minReplicas"):
        validate_manifest(tampered)


def test_keda_scaledobject_renders_and_validates() -> None:
    so = render_keda_scaledobject(
        AutoscalingPolicy(cooldown_s=90),
        name="flight-delay",
        deployment="flight-delay-v0003",
        prometheus_url="http://prometheus.monitoring:9090",
        selector='service="flight-delay"',
    )
    assert so["spec"]["cooldownPeriod"] == 90
    kinds = [t["type"] for t in so["spec"]["triggers"]]
    assert kinds == ["prometheus", "prometheus", "cpu"]
    assert (
        'bentoml_service_request_in_progress{service="flight-delay"}'
        in (so["spec"]["triggers"][0]["metadata"]["query"])
    )
    bad = copy.deepcopy(so)
    bad["spec"]["minReplicaCount"] = -1
    with pytest.raises(ManifestError, match="minReplicaCount"):
        validate_manifest(bad)

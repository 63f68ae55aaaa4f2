"""Kubernetes manifests of a served package: a Deployment and a Service that validate against
the Kubernetes 1.30 schemas (kubernetes-validate, strict: unknown fields fail), run the same
``bentoml serve`` command as local servers, and refuse values Kubernetes would refuse."""

from __future__ import annotations

import pytest
import yaml

from mlx_plugins.model_servers.bentoml_server import SERVICE, BentoMLServer, kubernetes_name

kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S_VERSION = "1.30.0"


def test_deployment_and_service_validate(bentoml_server: BentoMLServer, tiny_package) -> None:
    manifests = bentoml_server.render_manifests(
        tiny_package, image="registry.example/mlx-tiny:v0001", replicas=3, namespace="serving"
    )
    assert [m["kind"] for m in manifests] == ["Deployment", "Service"]
    for manifest in manifests:  # through YAML, as they are applied
        kubernetes_validate.validate(
            yaml.safe_load(yaml.safe_dump(manifest)), K8S_VERSION, strict=True
        )
    deployment, service = manifests
    assert deployment["metadata"]["name"] == service["metadata"]["name"] == "tiny-v0001"
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["selector"]["matchLabels"] == service["spec"]["selector"]
    pod = spec["template"]
    assert set(spec["selector"]["matchLabels"].items()) <= set(pod["metadata"]["labels"].items())
    [container] = pod["spec"]["containers"]
    assert container["command"][:3] == ["bentoml", "serve", SERVICE]
    assert "model=tiny:v0001" in container["command"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert pod["metadata"]["labels"]["mlx.version"] == "v0001"


def test_a_broken_manifest_is_caught_by_the_validator(
    bentoml_server: BentoMLServer, tiny_package
) -> None:
    """The validation above can fail: a misspelt field is refused."""
    deployment = bentoml_server.render_manifests(tiny_package, image="img:1")[0]
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"replicas": 0}, "replicas must be at least 1"),
        ({"namespace": "Bad_NS"}, "namespace 'Bad_NS' is not a valid"),
        ({"image": ""}, "is not a container image"),
        ({"port": 70000}, "port 70000 is outside"),
    ],
)
def test_values_kubernetes_would_refuse(
    bentoml_server: BentoMLServer, tiny_package, kwargs, message
) -> None:
    with pytest.raises(ValueError, match=message):
        bentoml_server.render_manifests(tiny_package, **{"image": "img:1", **kwargs})


def test_names_are_dns_labels(tiny_package) -> None:
    odd = tiny_package.model_copy(update={"model": "Flight_Delay.Model" + "x" * 80})
    name = kubernetes_name(odd)
    assert len(name) <= 63 and name.endswith("-v0001")
    assert name == name.lower() and "_" not in name and "." not in name

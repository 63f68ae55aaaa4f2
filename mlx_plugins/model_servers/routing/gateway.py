"""The Kubernetes form of a routing table: Gateway API ``HTTPRoute`` weights, validated.

:func:`render_httproute` turns a :class:`~.table.RoutingTable` into one ``HTTPRoute``
(``gateway.networking.k8s.io/v1``) whose rule sends requests to one Service per served version
with the table's weights; :func:`render_rollout_httproutes` gives the route of every step of a
canary rollout. Each rendered route is checked by :func:`~.manifests.validate_manifest`
against the HTTPRoute CRD's OpenAPI schema vendored in ``schemas/`` (kubernetes-validate knows
only built-in kinds).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from mlx_plugins.model_servers.routing.manifests import ManifestError, validate_manifest
from mlx_plugins.model_servers.routing.table import RoutingTable

__all__ = [
    "GATEWAY_API",
    "ManifestError",
    "render_httproute",
    "render_rollout_httproutes",
    "service_name",
    "validate_manifest",
]

GATEWAY_API = "gateway.networking.k8s.io/v1"
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS1123_SUB = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def service_name(base: str, version: str) -> str:
    """The Service name of one served version: ``<base>-<version>`` lowercased, characters
    outside ``[a-z0-9-]`` replaced by ``-`` (``flight-delay-v0003``).

    Raises
    ------
    ManifestError
        The result is not a DNS-1035 label of at most 63 characters.
    """
    name = re.sub(r"[^a-z0-9-]+", "-", f"{base}-{version}".lower()).strip("-")
    if not _DNS1035.match(name):
        raise ManifestError(
            f"Service name {name!r} (from {base!r} and version {version!r}) is not a DNS-1035 "
            "label: at most 63 lowercase letters, digits and '-', starting with a letter"
        )
    return name


def _int_weights(table: RoutingTable) -> dict[str, int]:
    """Gateway API weights are integers (relative): percent as is, or x100 for decimals."""
    ws = table.weights
    scale = 1 if all(float(w).is_integer() for w in ws.values()) else 100
    return {v: round(w * scale) for v, w in ws.items()}


def render_httproute(
    table: RoutingTable,
    *,
    name: str,
    gateway: str,
    namespace: str = "default",
    gateway_namespace: str | None = None,
    services: Mapping[str, str] | None = None,
    port: int = 3000,
    path_prefix: str = "/",
    hostnames: Sequence[str] = (),
) -> dict[str, Any]:
    """An ``HTTPRoute`` sending ``path_prefix`` on ``gateway`` to the table's versions.

    Parameters
    ----------
    table
        Versions and percent weights (the replica addresses are local and not used: in
        Kubernetes each version is a Service).
    name
        The route's name (DNS-1123 subdomain); also the base of default Service names.
    gateway
        The parent Gateway's name.
    services
        ``{version: Service name}``; default :func:`service_name(name, version)`.
    port
        The Services' port.

    Returns
    -------
    dict
        The manifest (``yaml.safe_dump`` it), checked by :func:`validate_manifest`.

    Raises
    ------
    ManifestError
        A name Kubernetes refuses, or the rendered route fails the HTTPRoute schema.
    """
    if not _DNS1123_SUB.match(name):
        raise ManifestError(f"HTTPRoute name {name!r} is not a DNS-1123 subdomain")
    weights = _int_weights(table)
    svc = {v: (services or {}).get(v) or service_name(name, v) for v in weights}
    parent: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway"}
    parent["name"] = gateway
    if gateway_namespace:
        parent["namespace"] = gateway_namespace
    route: dict[str, Any] = {
        "apiVersion": GATEWAY_API,
        "kind": "HTTPRoute",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "mlx"},
            "annotations": {
                "mlx.dev/weights": ",".join(f"{v}={w:g}" for v, w in table.weights.items())
            },
        },
        "spec": {
            "parentRefs": [parent],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": path_prefix}}],
                    "backendRefs": [
                        {
                            "group": "",
                            "kind": "Service",
                            "name": svc[v],
                            "port": port,
                            "weight": w,
                        }
                        for v, w in weights.items()
                    ],
                }
            ],
        },
    }
    if hostnames:
        route["spec"]["hostnames"] = list(hostnames)
    validate_manifest(route)
    return route


def render_rollout_httproutes(
    stable: str,
    canary: str,
    steps: Sequence[float],
    **route: Any,
) -> list[dict[str, Any]]:
    """The ``HTTPRoute`` of every step of a rollout of ``canary`` beside ``stable`` (canary
    percent per step, e.g. ``RolloutPolicy().steps``), then the promoted route (canary only).
    ``route`` takes :func:`render_httproute`'s keywords (``name``, ``gateway``...)."""
    local = ["127.0.0.1:1"]  # addresses are not rendered
    base = RoutingTable.single(stable, local).with_version(canary, local)
    out = [
        render_httproute(base.with_weights({stable: round(100 - s, 2), canary: s}), **route)
        for s in steps
    ]
    out.append(render_httproute(RoutingTable.single(canary, local), **route))
    return out

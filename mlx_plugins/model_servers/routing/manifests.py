"""Validation of rendered Kubernetes manifests, built-in kinds and the CRDs MLX renders.

Built-in kinds (``autoscaling/v2`` HPA, Deployment, Service...) are checked with
kubernetes-validate, strict. Custom resources are checked with jsonschema against their CRD's
OpenAPI schema, vendored (reduced: no descriptions, no CEL rules, strict about unknown fields)
in ``schemas/`` with its source URL and commit in the file's header:

* ``gateway.networking.k8s.io/v1`` ``HTTPRoute`` (Gateway API v1.6.1);
* ``keda.sh/v1alpha1`` ``ScaledObject`` (KEDA v2.20.2).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMAS = Path(__file__).parent / "schemas"
VENDORED: dict[tuple[str, str], str] = {
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "gateway-httproute-v1.yaml",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject-v1alpha1.yaml",
}
"""(apiVersion, kind) -> schema file in :data:`SCHEMAS`."""
K8S_VERSION = "1.30.0"


class ManifestError(ValueError):
    """A manifest Kubernetes would refuse; the message names the kind, the name, the field path
    and the problem."""


@functools.cache
def _validator(filename: str) -> Any:
    import jsonschema
    import yaml

    schema = yaml.safe_load((SCHEMAS / filename).read_text())
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema)


def validate_manifest(manifest: Mapping[str, Any], k8s_version: str = K8S_VERSION) -> None:
    """Check ``manifest`` as the API server would (schema only: CEL rules are not run).

    Raises
    ------
    ManifestError
        The first problem, with the kind, name and field path.
    RuntimeError
        A built-in kind and kubernetes-validate is not installed (``pip install
        kubernetes-validate``; the ``dev`` extra has it).
    """
    kind = str(manifest.get("kind", "?"))
    name = (manifest.get("metadata") or {}).get("name", "?")
    vendored = VENDORED.get((str(manifest.get("apiVersion")), kind))
    if vendored is not None:
        errors = list(_validator(vendored).iter_errors(dict(manifest)))
        if errors:
            e = min(errors, key=lambda err: len(err.absolute_path))
            where = ".".join(str(p) for p in e.absolute_path) or "(root)"
            raise ManifestError(f"{kind} {name!r}: {where}: {e.message}")
        return
    try:
        import kubernetes_validate
    except ImportError:  # pragma: no cover - the dev extra has it
        raise RuntimeError(
            f"validating {kind} {name!r} needs kubernetes-validate: pip install "
            "kubernetes-validate (in the dev extra)"
        ) from None
    try:
        kubernetes_validate.validate(dict(manifest), k8s_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "(root)"
        raise ManifestError(f"{kind} {name!r}: {where}: {exc.message}") from None

"""Deployment artefacts, checked offline: Helm values, Kubernetes manifests, the Dockerfile.

* ``deploy/helm/values.yaml`` against the Dagster chart's own values schema (vendored in
  deploy/helm/vendor/ with its source; ``helm`` itself is not installable here: Debian 12 has no
  package and no package index ships the binary for this Python). The chart merges these values
  over its defaults, so the schema's ``required`` lists are the defaults' business; every type,
  enum and closed object (``additionalProperties: false``) is checked, Kubernetes fragments
  against the Kubernetes schemas ``kubernetes-validate`` ships.
* every manifest: deploy/k8s/*.yaml and the Job the Kubernetes GPU run launcher renders for a
  GPU run and a CPU run from the production instance file, with ``kubernetes-validate``
  (strict: unknown keys are errors).
* the Dockerfile, parsed by the official BuildKit parser (``dockerfile`` package), and
  .dockerignore, checked like a linter would (multi-stage, non-root, pinned torch from the CPU
  index, CPU/CUDA variants, no secrets in the build context).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from unittest import mock

import dockerfile
import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml
from referencing.jsonschema import DRAFT7, DRAFT202012

from mlx_resources.platform import REPO_ROOT
from tests.deploy.conftest import PROD_YAML

K8S_VERSION = "1.31"
VALUES = REPO_ROOT / "deploy" / "helm" / "values.yaml"
SCHEMA = REPO_ROOT / "deploy" / "helm" / "vendor" / "dagster-values.schema.json"
MANIFESTS = sorted((REPO_ROOT / "deploy" / "k8s").glob("*.yaml"))
K8S_DEFS_URL = "https://kubernetesjsonschema.dev/v1.18.0/_definitions.json"


# --------------------------------------------------------------------------- Helm values


def _without_required(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_required(v) for k, v in node.items() if k != "required"}
    if isinstance(node, list):
        return [_without_required(v) for v in node]
    return node


def _values_validator() -> jsonschema.Draft7Validator:
    import kubernetes_validate as kv

    bundled = Path(kv.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}.0-local-strict"
    defs = json.loads((bundled / "_definitions.json").read_text())["$defs"]
    k8s = referencing.Resource.from_contents(
        {"definitions": defs, "$defs": defs}, default_specification=DRAFT202012
    )

    def retrieve(uri: str) -> referencing.Resource:
        if uri == K8S_DEFS_URL:
            return k8s
        raise referencing.exceptions.NoSuchResource(ref=uri)  # never the network

    schema = _without_required(json.loads(SCHEMA.read_text()))
    registry = referencing.Registry(retrieve=retrieve).with_resource(  # type: ignore[call-arg]
        "urn:dagster-values", DRAFT7.create_resource(schema)
    )
    return jsonschema.Draft7Validator(schema, registry=registry)


def _errors(values: dict) -> list[str]:
    return sorted(
        f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in _values_validator().iter_errors(values)
    )


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(VALUES.read_text())


def test_helm_values_match_the_charts_schema(values):
    assert _errors(values) == []


@pytest.mark.parametrize(
    ("path", "bad", "expected"),
    [
        (("runLauncher", "type"), "GpuRunLauncher", "is not one of"),
        (("dagsterDaemon", "runCoordinator", "typo"), True, "Additional properties"),
        (("dagsterWebserver", "replicaCount"), "two", "is not of type 'integer'"),
        (
            ("dagster-user-deployments", "deployments", 0, "podSecurityContext", "runAsUsr"),
            10001,
            "Additional properties",
        ),
    ],
)
def test_the_schema_check_catches_mistakes(values, path, bad, expected):
    broken = copy.deepcopy(values)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    errors = _errors(broken)
    assert any(expected in e for e in errors), errors


def test_helm_values_and_the_production_file_configure_the_same_instance(values):
    prod = yaml.safe_load(PROD_YAML.read_text())
    launcher = values["runLauncher"]["config"]["customRunLauncher"]
    assert (launcher["module"], launcher["class"]) == (
        prod["run_launcher"]["module"],
        prod["run_launcher"]["class"],
    )
    ours, theirs = dict(launcher["config"]), dict(prod["run_launcher"]["config"])
    assert theirs.pop("job_image") == {"env": "MLX_IMAGE"}
    assert ours.pop("job_image").startswith("registry.example.com/mlx:")
    assert ours == theirs
    coordinator = values["dagsterDaemon"]["runCoordinator"]["config"]["customRunCoordinator"]
    assert coordinator["class"] == prod["run_coordinator"]["class"]
    assert (
        coordinator["config"]["tag_concurrency_limits"]
        == (prod["concurrency"]["runs"]["tag_concurrency_limits"])
    )
    assert (
        values["additionalInstanceConfig"]["concurrency"]["pools"] == prod["concurrency"]["pools"]
    )
    assert (
        values["postgresql"]["postgresqlScheme"]
        == prod["storage"]["postgres"]["postgres_db"]["scheme"]
    )
    # secrets only by reference
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["postgresql"]["postgresqlPassword"] == ""


# --------------------------------------------------------------------------- manifests


def _launcher_from_prod_file(kubeconfig: str, batch_api: mock.MagicMock, **env: str):  # type: ignore[no-untyped-def]
    """The run launcher block of deploy/dagster.prod.yaml through Dagster's config system (so
    ``{env: ...}`` resolves and every key is checked), pointed at a kubeconfig file."""
    from dagster._config import process_config

    from mlx_resources.launchers.k8s_gpu import GpuK8sRunLauncher

    raw = yaml.safe_load(PROD_YAML.read_text())["run_launcher"]["config"]
    raw.update(load_incluster_config=False, kubeconfig_file=kubeconfig)
    with mock.patch.dict("os.environ", env):
        result = process_config(GpuK8sRunLauncher.config_type(), raw)
    assert result.success, [e.message for e in result.errors or []]
    return GpuK8sRunLauncher(**result.value, k8s_client_batch_api=batch_api)


@pytest.fixture
def kubeconfig(tmp_path: Path) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "contexts": [{"name": "c", "context": {"cluster": "k"}}],
                "clusters": [{"name": "k", "cluster": {}}],
            }
        )
    )
    return str(path)


def _rendered_job(kubeconfig: str, job: str) -> dict[str, Any]:
    from dagster import instance_for_test
    from dagster._core.launcher import LaunchRunContext
    from kubernetes.client import ApiClient

    from tests.launchers.helpers import create_run

    batch = mock.MagicMock()
    launcher = _launcher_from_prod_file(kubeconfig, batch, MLX_IMAGE="registry.example.com/mlx:t")
    with instance_for_test() as instance:
        launcher.register_instance(instance)
        run = create_run(instance, job)
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    name, _args, kwargs = batch.method_calls[-1]
    assert name == "create_namespaced_job"
    manifest = ApiClient().sanitize_for_serialization(kwargs["body"])
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    return manifest


def test_the_production_launcher_renders_a_valid_gpu_job(kubeconfig):
    manifest = _rendered_job(kubeconfig, "gpu_job")
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.com/mlx:t"  # job_image from {env: MLX_IMAGE}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # the asset asks for an h100 (tests/launchers/gpu_defs.py): its selector from the prod file
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["serviceAccountName"] == "dagster"
    assert {"secretRef": {"name": "mlx-plugin-secrets"}} in container["envFrom"]


def test_the_production_launcher_renders_a_valid_cpu_job_without_gpus(kubeconfig):
    manifest = _rendered_job(kubeconfig, "cpu_job")
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "nvidia.com/gpu" not in json.dumps(container.get("resources", {}))
    assert "nodeSelector" not in pod or not pod["nodeSelector"]


def test_a_typo_in_the_production_launcher_block_is_refused(kubeconfig):
    from dagster._config import process_config

    from mlx_resources.launchers.k8s_gpu import GpuK8sRunLauncher

    raw = yaml.safe_load(PROD_YAML.read_text())["run_launcher"]["config"]
    raw["gpu_typez"] = raw.pop("gpu_types")
    with mock.patch.dict("os.environ", {"MLX_IMAGE": "x"}):
        result = process_config(GpuK8sRunLauncher.config_type(), raw)
    assert not result.success
    assert any("gpu_typez" in e.message for e in result.errors), [e.message for e in result.errors]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_hand_written_manifests_are_valid_kubernetes(path: Path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"{path} has no manifest"
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_manifests_provide_what_the_values_reference(values):
    kinds: dict[tuple[str, str], dict] = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                kinds[(doc["kind"], doc["metadata"]["name"])] = doc
    launcher = values["runLauncher"]["config"]["customRunLauncher"]["config"]
    for secret in launcher["env_secrets"]:
        assert ("Secret", secret) in kinds
    for config_map in launcher["env_config_maps"]:
        assert ("ConfigMap", config_map) in kinds
    assert ("Secret", values["global"]["postgresqlSecretName"]) in kinds
    pg = kinds[("Secret", values["global"]["postgresqlSecretName"])]
    assert set(pg.get("stringData", {})) | set(pg.get("data", {})) == {"postgresql-password"}


def test_the_composition_config_map_is_a_valid_composition(tmp_path: Path):
    from mlx_plugins.kernel.composition import load_composition

    (doc,) = yaml.safe_load_all((REPO_ROOT / "deploy" / "k8s" / "composition.yaml").read_text())
    path = tmp_path / "mlx.yaml"
    path.write_text(doc["data"]["mlx.yaml"])
    composition = load_composition(path, profile="prod", environ={})
    assert [e.plugin for e in composition.of_kind("ml_platform")] == ["local_torch"]
    # all of it, settings and instances included, as the code server builds it (a trial found
    # `settings.model_name`, gone from Platform, passing load_composition alone)
    from mlx_assets.build import build_definitions, lifecycles_of

    assert [lc.name for lc in lifecycles_of(build_definitions(composition))] == ["flight_delay"]


# --------------------------------------------------------------------------- image


@pytest.fixture(scope="module")
def commands() -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(REPO_ROOT / "Dockerfile")))


def _stages(commands: list[dockerfile.Command]) -> list[list[dockerfile.Command]]:
    stages: list[list[dockerfile.Command]] = []
    for c in commands:
        if c.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(c)
    return stages


def test_dockerfile_is_multi_stage_and_runs_as_a_non_root_user(commands):
    stages = _stages(commands)
    assert len(stages) >= 2
    for stage in stages:
        image = stage[0].value[0]
        assert ":" in image and not image.endswith(":latest"), f"unpinned base image {image}"
    final = stages[-1]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert not any(c.cmd == "RUN" and "build-essential" in c.original for c in final)
    assert any(c.cmd == "COPY" and "--from=build" in c.flags for c in final)
    assert any(c.cmd == "HEALTHCHECK" for c in final)


def test_dockerfile_pins_cpu_torch_from_the_cpu_index_with_a_cuda_variant(commands):
    args = {
        c.value[0].split("=")[0]: c.value[0].split("=", 1)[-1] for c in commands if c.cmd == "ARG"
    }
    assert args["VARIANT"] == "cpu"
    assert args["TORCH_VERSION"] == "2.13.0"
    assert args["TORCH_CPU_INDEX"].endswith("/whl/cpu")
    assert "/whl/cu" in args["TORCH_CUDA_INDEX"]
    torch = [c.original for c in commands if c.cmd == "RUN" and "torch==" in c.original]
    assert torch and "--index-url" in torch[0] and "cuda)" in torch[0] and "cpu)" in torch[0]
    assert "postgres" in args["EXTRAS"]
    for c in commands:
        if c.cmd == "RUN" and "pip install" in c.original:
            assert "--no-cache-dir" in c.original, c.original
        if c.cmd == "RUN" and "apt-get install" in c.original:
            assert "--no-install-recommends" in c.original
            assert "rm -rf /var/lib/apt/lists" in c.original


def test_dockerignore_keeps_state_and_secrets_out_and_lets_the_copies_in(commands):
    lines = [
        ln.strip()
        for ln in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "**", "the build context should start from nothing"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert not {".venv", ".mlx_home", ".git", "tests", ".env"} & allowed
    for c in commands:
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags):
            for source in c.value[:-1]:
                assert source.rstrip("/") in allowed, f"COPY {source}: excluded by .dockerignore"
                assert (REPO_ROOT / source).exists(), f"COPY {source}: no such path"

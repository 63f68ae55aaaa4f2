"""GpuK8sRunLauncher renders real runs into Kubernetes Jobs (BatchV1Api mocked, no cluster).

Every rendered Job is validated offline against the Kubernetes 1.31 schema in strict mode.
"""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import kubernetes_validate
import pytest
from dagster import DagsterInvalidConfigError, instance_for_test
from dagster._core.launcher import LaunchRunContext
from kubernetes.client import ApiClient

from mlx_resources.launchers.gpu_requirements import GpuRequirementError
from mlx_resources.launchers.k8s_gpu import GpuK8sRunLauncher, K8sGpuConfigError
from tests.launchers.helpers import create_run

K8S_VERSION = "1.31"

GPU_TYPES = {
    "h100": {
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        ],
        "memory_gb": 80.0,
    },
    "a100": {
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"},
        "tolerations": [{"key": "dedicated", "value": "a100", "effect": "NoSchedule"}],
        "memory_gb": 40.0,
    },
    "l4": {"node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"}, "memory_gb": 24.0},
}


def make_launcher(kubeconfig_file: str, batch_api: mock.MagicMock, **overrides: Any):
    config: dict[str, Any] = {
        "service_account_name": "dagster",
        "instance_config_map": "dagster-instance",
        "postgres_password_secret": "dagster-postgresql-secret",
        "dagster_home": "/opt/dagster/dagster_home",
        "job_image": "mlx/platform:test",
        "load_incluster_config": False,
        "kubeconfig_file": kubeconfig_file,
        "k8s_client_batch_api": batch_api,
        "resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": "2"}},
        "gpu_types": GPU_TYPES,
        "default_gpu_type": "l4",
        "default_memory_gb": 16.0,
    }
    config.update(overrides)
    return GpuK8sRunLauncher(**config)


@pytest.fixture
def batch_api():
    return mock.MagicMock()


@pytest.fixture
def instance():
    with instance_for_test() as instance:
        yield instance


def launch(launcher: GpuK8sRunLauncher, instance, run) -> dict[str, Any]:
    """Launch ``run`` and return the created Job as a plain manifest, schema-validated."""
    if not launcher.has_instance:
        launcher.register_instance(instance)
    launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    method_name, _args, kwargs = launcher._api_client.batch_api.method_calls[-1]
    assert method_name == "create_namespaced_job"
    manifest = ApiClient().sanitize_for_serialization(kwargs["body"])
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    return manifest


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    return pod_spec(manifest)["containers"][0]


def env(manifest: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container(manifest).get("env", [])}


def test_gpu_run_gets_gpus_node_selector_tolerations_and_memory(
    kubeconfig_file, batch_api, instance
):
    manifest = launch(
        make_launcher(kubeconfig_file, batch_api), instance, create_run(instance, "gpu_job")
    )
    resources = container(manifest)["resources"]
    assert resources["limits"] == {"cpu": "2", "nvidia.com/gpu": "1"}
    assert resources["requests"] == {"cpu": "500m", "nvidia.com/gpu": "1", "memory": "40Gi"}
    spec = pod_spec(manifest)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert env(manifest)["MLX_GPU_COUNT"] == "1"
    assert env(manifest)["MLX_GPU_MEMORY_FRACTION"] == "0.5000"
    assert env(manifest)["MLX_GPU_MEMORY_GB"] == "40"
    # dagster-k8s still renders everything else.
    assert container(manifest)["image"] == "mlx/platform:test"
    assert "DAGSTER_PG_PASSWORD" in env(manifest)


def test_cpu_run_gets_no_gpu_and_no_gpu_node_selector(kubeconfig_file, batch_api, instance):
    manifest = launch(
        make_launcher(kubeconfig_file, batch_api), instance, create_run(instance, "cpu_job")
    )
    resources = container(manifest)["resources"]
    assert resources == {"requests": {"cpu": "500m"}, "limits": {"cpu": "2"}}
    assert "nodeSelector" not in pod_spec(manifest)
    assert "tolerations" not in pod_spec(manifest)
    assert not any(name.startswith("MLX_GPU") for name in env(manifest))


def test_asset_selection_of_cpu_asset_in_mixed_job_gets_no_gpu(
    kubeconfig_file, batch_api, instance
):
    launcher = make_launcher(kubeconfig_file, batch_api)
    run = create_run(instance, "mixed_job", asset_selection={"cpu_features"})
    limits = container(launch(launcher, instance, run))["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits
    run = create_run(instance, "mixed_job")
    limits = container(launch(launcher, instance, run))["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"


def test_default_type_and_default_memory_for_untyped_gpu_run(kubeconfig_file, batch_api, instance):
    manifest = launch(
        make_launcher(kubeconfig_file, batch_api), instance, create_run(instance, "pool_only_job")
    )
    assert pod_spec(manifest)["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert container(manifest)["resources"]["requests"]["memory"] == "16Gi"
    assert "MLX_GPU_MEMORY_FRACTION" not in env(manifest)


def test_memory_picks_smallest_type_that_fits(kubeconfig_file, batch_api, instance):
    # 30 GB does not fit the default l4 (24 GB); a100 (40 GB) is the smallest that does.
    run = create_run(instance, "pool_only_job", tags={"mlx/gpu-memory-gb": "30"})
    manifest = launch(make_launcher(kubeconfig_file, batch_api), instance, run)
    assert pod_spec(manifest)["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}
    assert env(manifest)["MLX_GPU_MEMORY_FRACTION"] == "0.7500"


def test_gpu_memory_request_never_lowers_the_launchers_own(kubeconfig_file, batch_api, instance):
    launcher = make_launcher(
        kubeconfig_file, batch_api, resources={"requests": {"cpu": "1", "memory": "64Gi"}}
    )
    manifest = launch(launcher, instance, create_run(instance, "gpu_job"))  # asks for 40 GB
    assert container(manifest)["resources"]["requests"]["memory"] == "64Gi"


def test_multi_gpu_run(kubeconfig_file, batch_api, instance):
    manifest = launch(
        make_launcher(kubeconfig_file, batch_api), instance, create_run(instance, "big_job")
    )
    assert container(manifest)["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container(manifest)["resources"]["requests"]["nvidia.com/gpu"] == "2"


def test_user_k8s_config_tag_merges_deeply_and_wins(kubeconfig_file, batch_api, instance):
    user_config = {
        "container_config": {"resources": {"limits": {"memory": "64Gi"}}},
        "pod_spec_config": {
            "nodeSelector": {"topology.kubernetes.io/zone": "us-east1-b"},
            "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "ml-high",
        },
        "pod_template_spec_metadata": {"annotations": {"team": "ml"}},
    }
    run = create_run(instance, "gpu_job", tags={"dagster-k8s/config": json.dumps(user_config)})
    manifest = launch(make_launcher(kubeconfig_file, batch_api), instance, run)
    resources = container(manifest)["resources"]
    assert resources["limits"] == {"cpu": "2", "nvidia.com/gpu": "1", "memory": "64Gi"}
    spec = pod_spec(manifest)
    assert spec["nodeSelector"] == {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "topology.kubernetes.io/zone": "us-east1-b",
    }
    assert [t["key"] for t in spec["tolerations"]] == ["nvidia.com/gpu", "spot"]
    assert spec["priorityClassName"] == "ml-high"
    assert manifest["spec"]["template"]["metadata"]["annotations"] == {"team": "ml"}


def test_user_tag_can_override_a_gpu_value(kubeconfig_file, batch_api, instance):
    user_config = {"pod_spec_config": {"node_selector": {"nvidia.com/gpu.product": "custom"}}}
    run = create_run(instance, "gpu_job", tags={"dagster-k8s/config": json.dumps(user_config)})
    manifest = launch(make_launcher(kubeconfig_file, batch_api), instance, run)
    assert pod_spec(manifest)["nodeSelector"] == {"nvidia.com/gpu.product": "custom"}


def test_shallow_user_resources_that_drop_the_gpu_are_refused(kubeconfig_file, batch_api, instance):
    user_config = {
        "container_config": {"resources": {"limits": {"cpu": "4"}}},
        "merge_behavior": "SHALLOW",
    }
    run = create_run(instance, "gpu_job", tags={"dagster-k8s/config": json.dumps(user_config)})
    launcher = make_launcher(kubeconfig_file, batch_api)
    launcher.register_instance(instance)
    with pytest.raises(K8sGpuConfigError, match=r"dropped the nvidia.com/gpu limit.*DEEP"):
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    batch_api.create_namespaced_job.assert_not_called()


def test_typo_in_user_pod_spec_key_is_a_clear_launch_error(kubeconfig_file, batch_api, instance):
    user_config = {"pod_spec_config": {"nodeSelecter": {"pool": "gpu"}}}
    run = create_run(instance, "cpu_job", tags={"dagster-k8s/config": json.dumps(user_config)})
    launcher = make_launcher(kubeconfig_file, batch_api)
    launcher.register_instance(instance)
    with pytest.raises(K8sGpuConfigError) as err:
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    message = str(err.value)
    assert run.run_id in message
    assert "pod_spec_config.nodeSelecter" in message
    assert "did you mean 'nodeSelector'" in message
    batch_api.create_namespaced_job.assert_not_called()


def test_nested_typo_is_reported_with_its_path(kubeconfig_file, batch_api, instance):
    user_config = {"pod_spec_config": {"tolerations": [{"key": "a", "efect": "NoSchedule"}]}}
    run = create_run(instance, "gpu_job", tags={"dagster-k8s/config": json.dumps(user_config)})
    launcher = make_launcher(kubeconfig_file, batch_api)
    launcher.register_instance(instance)
    with pytest.raises(K8sGpuConfigError, match=r"tolerations\[0\]\.efect \(did you mean 'effect'"):
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))


def test_unknown_gpu_type_names_run_step_and_fix(kubeconfig_file, batch_api, instance):
    launcher = make_launcher(kubeconfig_file, batch_api, gpu_types={}, default_gpu_type=None)
    launcher.register_instance(instance)
    run = create_run(instance, "gpu_job")
    with pytest.raises(K8sGpuConfigError) as err:
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    message = str(err.value)
    assert run.run_id in message
    assert "'h100'" in message and "step 'train_model'" in message
    assert "gpu_types.h100" in message
    batch_api.create_namespaced_job.assert_not_called()


def test_memory_larger_than_requested_type_is_refused(kubeconfig_file, batch_api, instance):
    launcher = make_launcher(kubeconfig_file, batch_api)
    launcher.register_instance(instance)
    run = create_run(instance, "gpu_job", tags={"mlx/gpu-memory-gb": "120"})
    with pytest.raises(K8sGpuConfigError, match=r"mlx/gpu-memory-gb=120.*'h100' has 80 GB"):
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))


@pytest.mark.parametrize("job_name", ["zero_gpu_job", "fractional_gpu_job"])
def test_bad_gpu_counts_fail_at_launch(kubeconfig_file, batch_api, instance, job_name):
    launcher = make_launcher(kubeconfig_file, batch_api)
    launcher.register_instance(instance)
    run = create_run(instance, job_name)
    with pytest.raises(GpuRequirementError, match=run.run_id):
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    batch_api.create_namespaced_job.assert_not_called()


def test_negative_run_tag_fails_through_instance_launch_and_fails_the_run(kubeconfig_file):
    """Through DagsterInstance.launch_run the error lands in the run's event log."""
    launcher_config = {
        "service_account_name": "dagster",
        "instance_config_map": "dagster-instance",
        "job_image": "mlx/platform:test",
        "load_incluster_config": False,
        "kubeconfig_file": kubeconfig_file,
        "gpu_types": {"h100": GPU_TYPES["h100"]},
    }
    overrides = {
        "run_launcher": {
            "module": "mlx_resources.launchers.k8s_gpu",
            "class": "GpuK8sRunLauncher",
            "config": launcher_config,
        }
    }
    with instance_for_test(overrides=overrides) as instance:
        assert isinstance(instance.run_launcher, GpuK8sRunLauncher)
        assert set(instance.run_launcher.gpu_settings.gpu_types) == {"h100"}
        run = create_run(instance, "gpu_job", tags={"mlx/gpu": "-2"})
        with pytest.raises(GpuRequirementError):
            instance.launch_run(run.run_id, workspace=None)
        assert instance.get_run_by_id(run.run_id).is_failure
        messages = [entry.message for entry in instance.all_logs(run.run_id) if entry.message]
        assert any("mlx/gpu='-2'" in message and run.run_id in message for message in messages)


def test_bad_launcher_config_fails_when_the_instance_loads_it(kubeconfig_file):
    base = {
        "service_account_name": "dagster",
        "instance_config_map": "dagster-instance",
        "load_incluster_config": False,
        "kubeconfig_file": kubeconfig_file,
    }
    bad_default = {**base, "gpu_types": {"h100": {}}, "default_gpu_type": "a100"}
    bad_key = {**base, "gpu_types": {"h100": {"node_selektor": {"a": "b"}}}}
    bad_toleration = {**base, "gpu_types": {"h100": {"tolerations": [{"efect": "NoSchedule"}]}}}
    for config, error, match in [
        (bad_default, K8sGpuConfigError, "default_gpu_type 'a100' is not one of gpu_types"),
        (bad_key, DagsterInvalidConfigError, "node_selektor"),
        (bad_toleration, K8sGpuConfigError, "efect.*did you mean 'effect'"),
    ]:
        overrides = {
            "run_launcher": {
                "module": "mlx_resources.launchers.k8s_gpu",
                "class": "GpuK8sRunLauncher",
                "config": config,
            }
        }
        with pytest.raises(error, match=match), instance_for_test(overrides=overrides) as inst:
            _ = inst.run_launcher

"""One GPU count per run (issue 9 item 4): however the count is stated (asset op tags, run
tags, the launcher config, the user's dagster-k8s/config or dagster-k8s/resource_requirements
tag, in the run container, its env or another container), the Job gets one count as request,
limit and MLX_GPU_COUNT, or the launch fails naming both sources. Every Job that is created is
validated against the Kubernetes schema (see ``launch``)."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import pytest
from dagster import instance_for_test
from dagster._core.launcher import LaunchRunContext

from mlx_resources.launchers.k8s_gpu import K8sGpuConfigError
from tests.launchers.helpers import create_run
from tests.launchers.test_k8s_gpu import container, env, launch, make_launcher


@pytest.fixture
def batch_api():
    return mock.MagicMock()


@pytest.fixture
def instance():
    with instance_for_test() as instance:
        yield instance


def _tag(config: dict[str, Any]) -> dict[str, str]:
    return {"dagster-k8s/config": json.dumps(config)}


def _refused(launcher, instance, run, batch_api, pattern: str) -> str:
    launcher.register_instance(instance)
    with pytest.raises(K8sGpuConfigError, match=pattern) as info:
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    batch_api.create_namespaced_job.assert_not_called()
    return str(info.value)


def _gpus(manifest: dict[str, Any], resource: str = "nvidia.com/gpu") -> tuple[str, str, str]:
    resources = container(manifest)["resources"]
    return (
        resources["limits"][resource],
        resources["requests"][resource],
        env(manifest)["MLX_GPU_COUNT"],
    )


def test_the_issue_example_limit_raised_by_the_user_tag_is_refused(
    kubeconfig_file, batch_api, instance
):
    tags = _tag({"container_config": {"resources": {"limits": {"nvidia.com/gpu": "2"}}}})
    run = create_run(instance, "gpu_job", tags=tags)
    message = _refused(
        make_launcher(kubeconfig_file, batch_api), instance, run, batch_api, "stated twice"
    )
    assert "step 'train_model'" in message and "says 1" in message
    assert (
        "'dagster-k8s/config' tag: container_config.resources.limits['nvidia.com/gpu']" in message
    )
    assert "'2'" in message and "Fix:" in message and "mlx/gpu=<n>" in message


USER_TAGS = {
    "requests": _tag({"container_config": {"resources": {"requests": {"nvidia.com/gpu": "2"}}}}),
    "both, as numbers": _tag(
        {
            "container_config": {
                "resources": {"limits": {"nvidia.com/gpu": 2}, "requests": {"nvidia.com/gpu": 2}}
            }
        }
    ),
    "env": _tag({"container_config": {"env": [{"name": "MLX_GPU_COUNT", "value": "2"}]}}),
    "shallow merge": _tag(
        {
            "container_config": {"resources": {"limits": {"nvidia.com/gpu": "3", "cpu": "1"}}},
            "merge_behavior": "SHALLOW",
        }
    ),
    "legacy resource_requirements tag": {
        "dagster-k8s/resource_requirements": json.dumps({"limits": {"nvidia.com/gpu": "2"}})
    },
    "fractional": _tag({"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1.5"}}}}),
}


@pytest.mark.parametrize("name", list(USER_TAGS))
def test_every_other_count_in_the_users_k8s_config_is_refused(
    kubeconfig_file, batch_api, instance, name
):
    run = create_run(instance, "gpu_job", tags=USER_TAGS[name])
    message = _refused(
        make_launcher(kubeconfig_file, batch_api), instance, run, batch_api, "stated twice"
    )
    assert "says 1" in message and "tag" in message


@pytest.mark.parametrize("key", ["containers", "initContainers"])
def test_gpus_for_another_container_are_refused(kubeconfig_file, batch_api, instance, key):
    other = {
        "name": "sidecar",
        "image": "busybox",
        "resources": {"limits": {"nvidia.com/gpu": "1"}},
    }
    run = create_run(instance, "gpu_job", tags=_tag({"pod_spec_config": {key: [other]}}))
    message = _refused(
        make_launcher(kubeconfig_file, batch_api),
        instance,
        run,
        batch_api,
        r"pod_spec_config\.(containers|init_containers)\[0\].*container other than the run's",
    )
    assert "nvidia.com/gpu" in message


def test_a_second_gpu_resource_is_refused(kubeconfig_file, batch_api, instance):
    tags = _tag({"container_config": {"resources": {"limits": {"amd.com/gpu": "1"}}}})
    run = create_run(instance, "gpu_job", tags=tags)
    message = _refused(
        make_launcher(kubeconfig_file, batch_api),
        instance,
        run,
        batch_api,
        r"second GPU resource; this run's GPUs are nvidia.com/gpu",
    )
    assert "amd.com/gpu" in message


def test_a_cpu_run_given_gpus_by_the_users_tag_is_refused(kubeconfig_file, batch_api, instance):
    tags = _tag({"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}})
    run = create_run(instance, "cpu_job", tags=tags)
    message = _refused(
        make_launcher(kubeconfig_file, batch_api),
        instance,
        run,
        batch_api,
        r"no step of this run asks for a GPU.*Fix: state the GPU count once, as mlx/gpu",
    )
    assert "nvidia.com/gpu" in message


@pytest.mark.parametrize(
    ("job", "tags", "count"),
    [
        (
            "gpu_job",
            _tag({"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}),
            "1",
        ),
        (
            "gpu_job",
            _tag({"container_config": {"resources": {"requests": {"nvidia.com/gpu": 1}}}}),
            "1",
        ),
        (
            "gpu_job",
            _tag({"container_config": {"env": [{"name": "MLX_GPU_COUNT", "value": "1"}]}}),
            "1",
        ),
        (
            "big_job",
            _tag({"container_config": {"resources": {"limits": {"nvidia.com/gpu": "2"}}}}),
            "2",
        ),
        # the run tag mlx/gpu is the way to change one run's count; a tag that agrees is fine
        (
            "gpu_job",
            {
                "mlx/gpu": "2",
                **_tag({"container_config": {"resources": {"limits": {"nvidia.com/gpu": "2"}}}}),
            },
            "2",
        ),
        ("gpu_job", {"mlx/gpu": "3"}, "3"),
    ],
)
def test_agreeing_statements_give_one_count(kubeconfig_file, batch_api, instance, job, tags, count):
    run = create_run(instance, job, tags=tags)
    manifest = launch(make_launcher(kubeconfig_file, batch_api), instance, run)
    assert _gpus(manifest) == (count, count, count)


def test_the_run_tag_and_the_users_k8s_tag_disagreeing_is_refused(
    kubeconfig_file, batch_api, instance
):
    tags = {
        "mlx/gpu": "2",
        **_tag({"container_config": {"resources": {"limits": {"nvidia.com/gpu": "4"}}}}),
    }
    run = create_run(instance, "gpu_job", tags=tags)
    message = _refused(
        make_launcher(kubeconfig_file, batch_api), instance, run, batch_api, "stated twice"
    )
    assert "the run tag mlx/gpu='2' says 2" in message and "'4'" in message


def test_launcher_defaults_give_way_to_the_gpu_layer_but_its_env_must_agree(
    kubeconfig_file, batch_api, instance
):
    resources = {"limits": {"nvidia.com/gpu": "4"}, "requests": {"nvidia.com/gpu": "4"}}
    launcher = make_launcher(kubeconfig_file, batch_api, resources=resources)
    manifest = launch(launcher, instance, create_run(instance, "gpu_job"))
    assert _gpus(manifest) == ("1", "1", "1")

    api = mock.MagicMock()
    launcher = make_launcher(kubeconfig_file, api, env_vars=["MLX_GPU_COUNT=4"])
    message = _refused(launcher, instance, create_run(instance, "gpu_job"), api, "twice")
    assert (
        "the run launcher's config" in message and "container_config.env MLX_GPU_COUNT" in message
    )


AMD = {
    "mi300": {"resource_name": "amd.com/gpu", "node_selector": {"amd.com/gpu.product": "mi300x"}}
}


def test_amd_gpus_get_one_count_too(kubeconfig_file, batch_api, instance):
    launcher = make_launcher(kubeconfig_file, batch_api, gpu_types=AMD, default_gpu_type="mi300")
    manifest = launch(launcher, instance, create_run(instance, "pool_only_job"))
    assert _gpus(manifest, "amd.com/gpu") == ("1", "1", "1")
    assert "nvidia.com/gpu" not in container(manifest)["resources"]["limits"]

    for extra, pattern in [
        ({"amd.com/gpu": "2"}, "stated twice"),
        ({"nvidia.com/gpu": "1"}, "second GPU resource; this run's GPUs are amd.com/gpu"),
    ]:
        api = mock.MagicMock()
        launcher = make_launcher(kubeconfig_file, api, gpu_types=AMD, default_gpu_type="mi300")
        tags = _tag({"container_config": {"resources": {"limits": extra}}})
        _refused(launcher, instance, create_run(instance, "pool_only_job", tags=tags), api, pattern)


@pytest.mark.parametrize("job", ["cpu_job", "gpu_job"])
def test_other_extended_resources_need_equal_whole_request_and_limit(
    kubeconfig_file, batch_api, instance, job
):
    fpga = {"limits": {"example.com/fpga": "2"}, "requests": {"example.com/fpga": "2"}}
    run = create_run(instance, job, tags=_tag({"container_config": {"resources": fpga}}))
    manifest = launch(make_launcher(kubeconfig_file, batch_api), instance, run)
    assert container(manifest)["resources"]["limits"]["example.com/fpga"] == "2"

    for resources, pattern in [
        (
            {"limits": {"example.com/fpga": "2"}, "requests": {"example.com/fpga": "1"}},
            r"example.com/fpga has limit '2' from the run's 'dagster-k8s/config' tag.*differ",
        ),
        ({"limits": {"example.com/fpga": "500m"}}, "not a whole number"),
    ]:
        api = mock.MagicMock()
        run = create_run(instance, job, tags=_tag({"container_config": {"resources": resources}}))
        _refused(make_launcher(kubeconfig_file, api), instance, run, api, pattern)

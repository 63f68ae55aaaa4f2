"""The lifecycle's ``model_deployment`` asset with real servers and a real router: the first
version is deployed behind nginx, the next is rolled out as a canary and promoted (the router's
URL stays, the old server stops), the same version again changes nothing."""

from __future__ import annotations

import json
from typing import Any

import dagster as dg
import polars as pl
import pytest

from mlx_assets.component.spec import Lifecycle, LifecycleSpec
from mlx_assets.serving.deployment import build_deployment, not_serving, stop_serving
from mlx_resources.platform import Platform
from tests.serving.conftest import post, register


@pytest.mark.parametrize(
    ("rollout", "key", "problem"),
    [
        ({"step": [50, 100]}, "attributes.rollout.step", "Extra inputs"),
        ({"steps": [50, 10]}, "attributes.rollout", "increasing percentages"),
        ({"rule": {"max_p99": 50}}, "attributes.rollout.rule.max_p99", "Extra inputs"),
    ],
)
def test_a_bad_rollout_policy_is_refused_when_the_definitions_are_built(rollout, key, problem):
    from mlx_plugins.kernel.errors import CompositionError

    spec = SPEC.model_copy(update={"rollout": rollout})
    lc = Lifecycle(spec, Platform(), serving=True, source_file="defs/tiny/defs.yaml")
    with pytest.raises(CompositionError) as info:
        build_deployment(lc)
    assert info.value.key == key and problem in info.value.problem
    assert "defs/tiny/defs.yaml" in str(info.value) and "rule {max_error_rate" in info.value.fix


SPEC = LifecycleSpec.model_validate(
    {
        "name": "tiny",
        "data": {"source": "s", "start": "2024-01-01", "tables": [{"name": "t"}]},
        "features": {"numeric": ["x", "noise"], "categorical": ["cat"]},
        "target": {"column": "y", "kind": "binary"},
        # the instance's own rollout policy reaches the controller: two steps, short holds
        "rollout": {"steps": [50, 100], "hold_requests": 40},
    }
)


@pytest.mark.slow
def test_deploy_then_canary_promote_then_unchanged(
    tmp_path, monkeypatch, tiny_registry, tiny_model, tiny_frames, bentoml_server
):
    pytest.importorskip("bentoml")
    from mlx_plugins.model_servers.routing import find_nginx

    find_nginx()  # ./dev test installs nginx
    home = tmp_path / "home"
    monkeypatch.setenv("MLX_HOME", str(home))
    platform = Platform()
    lc = Lifecycle(SPEC, platform, serving=True)
    versions = [register(tiny_registry, tiny_model)]
    test_rows = tiny_frames[1].with_columns(pl.lit("test").alias("split"))
    features = test_rows.select("x", "noise", "cat")

    @dg.asset(key=lc.registered_key)
    def registered_model():
        return versions[-1]

    @dg.asset(key=lc.training_set_key)
    def training_set():
        return test_rows

    objects = dg.FilesystemIOManager(base_dir=str(tmp_path / "objects"))
    resources: dict[str, Any] = {
        "platform": platform,
        "model_server": bentoml_server,
        "model_registry": tiny_registry,
        "io_manager": objects,
        "object_io_manager": objects,
    }
    deployment = build_deployment(lc)

    def materialize() -> Any:
        with dg.instance_for_test() as instance:
            result = dg.materialize(
                [registered_model, training_set, deployment],
                instance=instance,
                resources=resources,
            )
            assert result.success
            (check,) = result.get_asset_check_evaluations()
            return result.output_for_node("tiny__model_deployment"), check

    try:
        first, check = materialize()
        assert first.decision == "deployed" and check.passed
        label = first.served_version
        status, body = post(first.url + "/predict", {"rows": [features.row(0, named=True)]})
        assert status == 200 and body["version"] == label
        assert first.curl.startswith("curl") and first.url in first.curl

        versions.append(register(tiny_registry, tiny_model))
        second, check = materialize()
        assert second.decision == "promoted", second.reason
        assert check.passed
        assert second.url == first.url  # the router stays; clients keep their URL
        assert second.served_version != label
        assert second.rollout["steps_run"] == 2  # the instance's steps: [50, 100]
        status, body = post(second.url + "/predict", {"rows": [features.row(1, named=True)]})
        assert status == 200 and body["version"] == second.served_version
        servers = json.loads((home / "serving" / "tiny" / "servers.json").read_text())
        assert list(servers) == [second.served_version]  # the old version was stopped

        third, _ = materialize()
        assert third.decision == "unchanged"
        assert third.served_version == second.served_version

        # `mlx serving stop` (or a restart): the next run serves it again, at the same URL
        assert not_serving(home, "tiny") is None
        (line,) = stop_serving(home)
        assert line.startswith("tiny: stopped ") and f"the router at {second.url}" in line
        assert "no server of it is running" in (not_serving(home, "tiny") or "")
        fourth, check = materialize()
        assert fourth.decision == "deployed" and check.passed
        assert fourth.url == second.url  # the restarted router took its old port back
        status, body = post(fourth.url + "/predict", {"rows": [features.row(2, named=True)]})
        assert status == 200 and body["version"] == fourth.served_version
    finally:
        stop_serving(home)  # whatever failed, nothing of it keeps running

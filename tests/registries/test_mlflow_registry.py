"""The ``mlflow`` registry, against a real MLflow tracking store (SQLite + file artifact root),
passes the registry contract and logs what the MLflow UI shows."""

from __future__ import annotations

import hashlib

import pytest

pytest.importorskip("mlflow", reason="the mlflow extra is not installed")

from mlx_plugins.model_registries.base import ModelLineage
from mlx_plugins.model_registries.mlflow_registry import MLflowModelRegistry
from mlx_plugins.testing import ModelRegistryContract


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """One tracking store per module (creating its tables takes seconds); each test uses its
    own model names."""
    root = tmp_path_factory.mktemp("mlflow")
    return MLflowModelRegistry().with_home(root)


class TestMLflowRegistry(ModelRegistryContract):
    @pytest.fixture
    def plugin(self, mlflow_store):
        return mlflow_store


def test_run_has_metrics_params_lineage_tags_and_the_artifact(mlflow_store, tmp_path):
    art = tmp_path / "model.pt"
    art.write_bytes(b"weights")
    lineage = ModelLineage(
        training_data_version="tdv1",
        partitions=["2013-01-01", "2013-01-02"],
        code_versions={"model": "abc"},
        run_id="dagster-run",
    )
    with mlflow_store.session():
        v = mlflow_store.register(
            "ui_model",
            art,
            hashlib.sha256(b"weights").hexdigest(),
            {"roc_auc": 0.7},
            {"epochs": 3, "opt": {"lr": 0.01}},
            lineage,
        )
        client = mlflow_store.client
        mv = client.get_model_version("ui_model", str(v.version))
        run = client.get_run(mv.run_id)
    assert run.data.metrics == {"roc_auc": 0.7}
    assert run.data.params == {"epochs": "3", "opt.lr": "0.01"}
    assert run.data.tags["mlx.training_data_version"] == "tdv1"
    assert run.data.tags["mlx.code_version.model"] == "abc"
    assert run.data.tags["mlx.dagster_run_id"] == "dagster-run"
    assert mv.tags["mlx.artifact_sha256"] == v.artifact_sha256
    assert run.info.status == "FINISHED"
    assert mv.source.endswith("/model") and v.artifact_path.startswith(mv.source)


def test_without_a_tracking_uri_says_which_key_to_set():
    with pytest.raises(ValueError, match=r"plugins\.model_registry\.config\.tracking_uri"):
        MLflowModelRegistry().versions("m")


def test_health_line_hides_credentials_in_the_uri():
    from mlx_plugins.model_registries.mlflow_registry import _without_userinfo

    uri = "https://alice:s3cret@mlflow.example.com/"
    assert _without_userinfo(uri) == "https://***@mlflow.example.com/"
    assert _without_userinfo("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"

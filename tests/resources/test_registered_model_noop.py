"""Re-running training on the same data, code and config registers nothing new (issue 8: the
README's training example registered v0002 identical to v0001)."""

from pathlib import Path

import dagster as dg
import polars as pl

from mlx_assets.evaluation.evaluation import Evaluation
from mlx_assets.registry.registered_model import build_registered_model
from mlx_plugins.ml_platforms.base import TrainedModel, TrainingSpec
from mlx_resources.model_registry import ModelRegistry
from mlx_resources.platform import Platform
from tests.conftest import flights_lifecycle

registered_model = build_registered_model(flights_lifecycle())

STATE = {"data": 1, "seed": 0}


@dg.asset(code_version="1")
def training_set() -> dg.Output[pl.DataFrame]:
    df = pl.DataFrame({"x": [STATE["data"]]})
    return dg.Output(
        df,
        data_version=dg.DataVersion(f"ts-{STATE['data']}"),
        metadata={
            "partition_data_versions": dg.MetadataValue.json({"2013-01-01": "a"}),
            "window": dg.MetadataValue.json({"test_end": "2013-10-31"}),
        },
    )


@dg.asset(deps=[training_set], code_version="1")
def model(context: dg.AssetExecutionContext) -> TrainedModel:
    # a retrained artifact differs from run to run (another seed), the inputs do not
    STATE["seed"] += 1
    folder = Path(context.instance.root_directory) / f"model-{STATE['seed']}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "m.bin").write_bytes(str(STATE["seed"]).encode())
    spec = TrainingSpec(numeric_features=("x",), target="y", artifact_dir=str(folder))
    return TrainedModel(
        platform="fake",
        artifact_path=str(folder / "m.bin"),
        artifact_sha256=f"{STATE['seed']:064d}",
        spec=spec,
        params={"epochs": 6},
    )


@dg.asset(
    code_version="1",
    check_specs=[dg.AssetCheckSpec("beats_baseline", asset="model_evaluation", blocking=True)],
)
def model_evaluation():
    """An evaluation whose gate passed (registered_model refuses one that did not)."""
    yield dg.Output(_evaluation())
    yield dg.AssetCheckResult(check_name="beats_baseline", passed=True)


def _evaluation() -> Evaluation:
    return Evaluation(
        rows=10,
        positive_rate=0.2,
        roc_auc=0.7 + STATE["seed"] / 1000,
        log_loss=0.5,
        brier=0.2,
        baseline_log_loss=0.6,
        expected_calibration_error=0.01,
        calibration=[],
        by_carrier={},
    )


def test_rerun_with_same_inputs_registers_nothing(tmp_path: Path) -> None:
    reg = ModelRegistry(root=str(tmp_path / "registry"))
    objects = dg.FilesystemIOManager(base_dir=str(tmp_path / "objects"))
    res = {
        "platform": Platform(),
        "model_registry": reg,
        "io_manager": objects,
        "object_io_manager": objects,
    }
    assets = [training_set, model, model_evaluation, registered_model]
    (tmp_path / "dagster").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        tags = []
        for data in (1, 1, 2):
            STATE["data"] = data
            result = dg.materialize(assets, instance=instance, resources=res)
            assert result.success
            [mat] = result.asset_materializations_for_node("registered_model")
            tags.append((mat.metadata["tag"].value, mat.metadata["created"].value))
    assert tags == [
        ("flight_delay:v0001", True),
        ("flight_delay:v0001", False),  # same data version, code versions, config: no-op
        ("flight_delay:v0002", True),  # new training data
    ]
    assert [v.version for v in reg.versions("flight_delay")] == [1, 2]


@dg.asset(
    name="model_evaluation",
    code_version="1",
    check_specs=[dg.AssetCheckSpec("beats_baseline", asset="model_evaluation", blocking=True)],
)
def failing_evaluation():
    yield dg.Output(_evaluation())
    yield dg.AssetCheckResult(check_name="beats_baseline", passed=False, description="roc_auc low")


def test_a_model_that_failed_its_gate_is_never_registered_by_a_later_run(tmp_path: Path) -> None:
    """Seen: `mlx lifecycle` a second time ran registered_model alone and registered the
    model whose evaluation had failed the gate in the first run."""
    reg = ModelRegistry(root=str(tmp_path / "registry"))
    objects = dg.FilesystemIOManager(base_dir=str(tmp_path / "objects"))
    res = {"model_registry": reg, "io_manager": objects, "object_io_manager": objects}
    (tmp_path / "dagster").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        first = dg.materialize(
            [training_set, model, failing_evaluation, registered_model],
            instance=instance,
            resources=res,
            raise_on_error=False,
        )
        assert not first.success  # the blocking check stopped it
        again = dg.materialize(
            [training_set, model, failing_evaluation, registered_model],
            selection=[registered_model],
            instance=instance,
            resources=res,
            raise_on_error=False,
        )
        assert not again.success
        (failure,) = [e for e in again.all_events if e.is_step_failure]
        message = failure.step_failure_data.user_failure_data.description
        assert "did not pass its quality gate" in message and "roc_auc low" in message
    assert reg.versions("flight_delay") == []

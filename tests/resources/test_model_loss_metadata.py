"""The model's materialization carries its loss against the epoch (a table the UI shows)."""

from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import numpy as np
import polars as pl

from mlx_assets.training.model import build_model
from mlx_plugins.kernel.metadata import PluginMetadata
from mlx_plugins.ml_platforms.base import EpochStats, MLPlatform, TrainedModel, TrainingSpec
from mlx_resources.platform import Platform
from tests.conftest import flights_lifecycle

LOSSES = [(0.9, 0.95), (0.7, 0.8), (0.6, 0.75)]


class FakePlatform(MLPlatform):
    metadata: ClassVar[PluginMetadata] = PluginMetadata(
        name="fake", kind="ml_platform", version="0.0.1", capabilities=("train",)
    )

    def train(
        self,
        train: pl.DataFrame,
        valid: pl.DataFrame,
        spec: TrainingSpec,
        on_epoch: Any = None,
        *,
        context: Any = None,
    ) -> TrainedModel:
        history = []
        for i, (tl, vl) in enumerate(LOSSES, start=1):
            e = EpochStats(
                epoch=i, train_loss=tl, valid_loss=vl, seconds=1.0, samples_per_second=10
            )
            history.append(e)
            if on_epoch:
                on_epoch(e)
        path = Path(spec.artifact_dir) / "m.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"m")
        return TrainedModel(
            platform="fake",
            artifact_path=str(path),
            artifact_sha256="0" * 64,
            spec=spec,
            history=tuple(history),
        )

    def predict_proba(self, model: TrainedModel, frame: pl.DataFrame) -> np.ndarray:
        return np.zeros(frame.height)


@dg.asset
def training_set() -> pl.DataFrame:
    return pl.DataFrame({"split": ["train", "valid"], "x": [1.0, 2.0], "delayed": [0, 1]})


def test_loss_by_epoch_table(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLX_HOME", str(tmp_path))
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [training_set, build_model(flights_lifecycle())],
            instance=instance,
            resources={
                "platform": Platform(),
                "ml_platform": FakePlatform(),
                "object_io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / "objects")),
                "io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / "io")),
            },
        )
        assert result.success
        [mat] = [m for m in result.asset_materializations_for_node("model")]
    table = mat.metadata["loss_by_epoch"]
    assert [c.name for c in table.schema.columns] == [
        "epoch",
        "train_loss",
        "valid_loss",
        "samples_per_second",
    ]
    rows = [r.data for r in table.records]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [(r["train_loss"], r["valid_loss"]) for r in rows] == LOSSES

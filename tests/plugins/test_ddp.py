"""DDP training end to end: torchrun workers under Dagster Pipes inside a real materialize.

Two gloo processes on the CPU stand in for two GPUs: the code path is the one a multi-GPU run
takes (torchrun, Pipes extras, per-epoch custom messages, rank 0's artifact), minus NCCL.
"""

import dagster as dg
import numpy as np
import polars as pl
import pytest

from mlx_assets.evaluation.metrics import roc_auc
from mlx_plugins.ml_platforms.base import EpochStats, TrainedModel, TrainingSpec
from mlx_plugins.ml_platforms.local_torch import LocalTorchPlatform

EPOCHS = 3


def learnable_frame(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    cat = rng.choice(["a", "b", "c"], size=n)
    logit = 2.5 * x + np.where(cat == "a", 1.5, -0.5)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return pl.DataFrame({"x": x, "noise": rng.normal(size=n), "cat": cat, "y": y})


@pytest.mark.slow
def test_ddp_through_torchrun_and_pipes_in_a_materialize(tmp_path):
    train, valid, test = learnable_frame(3001, 1), learnable_frame(800, 2), learnable_frame(2000, 3)
    spec = TrainingSpec(
        numeric_features=("x", "noise"),
        categorical_features=("cat",),
        target="y",
        artifact_dir=str(tmp_path / "model"),
    )
    trained: list[TrainedModel] = []
    epochs_seen: list[EpochStats] = []

    @dg.asset
    def ddp_model(
        context: dg.AssetExecutionContext, ml_platform: LocalTorchPlatform
    ) -> dg.MaterializeResult:
        model = ml_platform.train(train, valid, spec, on_epoch=epochs_seen.append, context=context)
        trained.append(model)
        return dg.MaterializeResult(metadata={"device": model.device})

    platform = LocalTorchPlatform(
        distributed="always",
        nproc_per_node=2,
        device="cpu",
        epochs=EPOCHS,
        hidden=[16],
        batch_size=128,
        num_threads=1,
    )
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([ddp_model], resources={"ml_platform": platform}, instance=instance)
    assert result.success

    (model,) = trained
    assert model.params["world_size"] == 2 and model.params["backend"] == "gloo"
    assert model.params["replica_divergence"] == 0.0, "the ranks' weights drifted apart"
    assert "ddp x2" in model.device
    assert [e.epoch for e in model.history] == list(range(1, EPOCHS + 1))
    # the epoch messages reached the asset's callback while the workers ran
    assert [e.epoch for e in epochs_seen] == list(range(1, EPOCHS + 1))
    assert model.history[-1].train_loss < model.history[0].train_loss
    assert all(np.isfinite(e.valid_loss) for e in model.history)

    # the artifact is in the single-process format: the plugin loads and scores it as usual
    scorer = LocalTorchPlatform(device="cpu")
    with scorer.session():
        p = scorer.predict_proba(model, test)
    assert p.shape == (test.height,) and np.all((p >= 0) & (p <= 1))
    assert roc_auc(test["y"].to_numpy(), p) > 0.75

    messages = [r.user_message for r in instance.all_logs(result.run_id)]
    assert any(f"[ddp] epoch {EPOCHS}/{EPOCHS}" in m for m in messages), messages
    assert any("[ddp] rank 0 saved the model" in m for m in messages)

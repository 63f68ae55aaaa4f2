"""The model, trained by whichever ``ml_platform`` the composition picks."""

import uuid

import dagster as dg
import polars as pl

from mlx_assets.features.flight_features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, TARGET
from mlx_assets.markdown import md_table
from mlx_assets.training.training_set import SPLIT
from mlx_assets.versioning import code_version
from mlx_plugins.ml_platforms.base import EpochStats, MLPlatform, TrainedModel, TrainingSpec
from mlx_resources.platform import Platform

GPU_TAGS = {"mlx/gpu": "1"}


@dg.asset(
    group_name="training",
    kinds={"torch"},
    code_version=code_version(__file__),
    io_manager_key="object_io_manager",
    pool="gpu",
    op_tags=GPU_TAGS,
    retry_policy=dg.RetryPolicy(max_retries=1),
    description="Binary classifier of arrival delay. Loss against the epoch: the 'loss_by_epoch' "
    "table (and 'loss_curve'); the Plots tab draws the per-epoch observations over time.",
)
def model(
    context: dg.AssetExecutionContext,
    platform: Platform,
    ml_platform: MLPlatform,
    training_set: pl.DataFrame,
) -> dg.Output[TrainedModel]:
    spec = TrainingSpec(
        numeric_features=NUMERIC_FEATURES,
        categorical_features=CATEGORICAL_FEATURES,
        target=TARGET,
        artifact_dir=str(
            platform.path("artifacts", "models", f"{context.run.run_id}-{uuid.uuid4().hex[:6]}")
        ),
    )
    train = training_set.filter(pl.col(SPLIT) == "train")
    valid = training_set.filter(pl.col(SPLIT) == "valid")
    context.log.info(f"training on {train.height} rows, validating on {valid.height}")

    def on_epoch(e: EpochStats) -> None:
        context.log.info(
            f"epoch {e.epoch}: train_loss={e.train_loss:.4f} valid_loss={e.valid_loss:.4f} "
            f"({e.samples_per_second:,.0f} samples/s)"
        )
        # One observation per epoch: the asset's Plots tab draws the loss curve as it trains.
        context.log_event(
            dg.AssetObservation(
                asset_key="model",
                metadata={
                    "epoch": dg.MetadataValue.int(e.epoch),
                    "train_loss": dg.MetadataValue.float(e.train_loss),
                    "valid_loss": dg.MetadataValue.float(e.valid_loss),
                    "samples_per_second": dg.MetadataValue.float(e.samples_per_second),
                },
            )
        )

    # Plugins that train out of process (DDP under Dagster Pipes) stream logs through the context.
    trained = ml_platform.train(train, valid, spec, on_epoch=on_epoch, context=context)
    last = trained.history[-1]
    return dg.Output(
        trained,
        data_version=dg.DataVersion(trained.artifact_sha256[:24]),
        metadata={
            "train_loss": dg.MetadataValue.float(last.train_loss),
            "valid_loss": dg.MetadataValue.float(last.valid_loss),
            "loss_curve": dg.MetadataValue.md(
                md_table(
                    ["epoch", "train loss", "valid loss", "samples/s"],
                    (
                        [
                            e.epoch,
                            f"{e.train_loss:.4f}",
                            f"{e.valid_loss:.4f}",
                            f"{e.samples_per_second:,.0f}",
                        ]
                        for e in trained.history
                    ),
                )
            ),
            # The loss per epoch as a table (sortable in the UI, epoch as its first column).
            # Dagster 1.13's Plots tab draws numeric metadata against event time (or partition),
            # never against another metadata value, so the per-epoch observations above plot
            # train_loss / valid_loss / epoch over wall-clock time; this table is the curve
            # against the epoch.
            "loss_by_epoch": dg.MetadataValue.table(
                records=[
                    dg.TableRecord(
                        {
                            "epoch": e.epoch,
                            "train_loss": float(e.train_loss),
                            "valid_loss": float(e.valid_loss),
                            "samples_per_second": float(e.samples_per_second),
                        }
                    )
                    for e in trained.history
                ],
                schema=dg.TableSchema(
                    columns=[
                        dg.TableColumn("epoch", "int"),
                        dg.TableColumn("train_loss", "float"),
                        dg.TableColumn("valid_loss", "float"),
                        dg.TableColumn("samples_per_second", "float"),
                    ]
                ),
            ),
            "samples_per_second": dg.MetadataValue.float(last.samples_per_second),
            "device": trained.device,
            "artifact": dg.MetadataValue.path(trained.artifact_path),
        },
    )

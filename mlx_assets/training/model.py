"""The model, trained by whichever ``ml_platform`` the composition picks."""

import uuid
from typing import TYPE_CHECKING, Any

import dagster as dg

from mlx_assets.component.spec import Lifecycle
from mlx_assets.markdown import md_table
from mlx_assets.training.target import encode_target
from mlx_assets.training.training_set import SPLIT
from mlx_assets.versioning import code_version
from mlx_plugins.ml_platforms.base import EpochStats, MLPlatform, TrainedModel, TrainingSpec
from mlx_resources.io_managers.frames import DataFrame
from mlx_resources.platform import Platform

if TYPE_CHECKING:
    import polars as pl


GPU_TAGS = {"mlx/gpu": "1"}
TASK_NOUNS = {"binary": "Binary classifier", "multiclass": "Classifier", "regression": "Regressor"}


def ml_platform_key(lc: Lifecycle) -> str:
    """Resource key of the instance's ml_platform: ``ml_platform``, or ``<name>__ml_platform``
    when the instance overrides the plugin's config (``ml_platform:`` in its defs.yaml)."""
    return f"{lc.name}__ml_platform" if lc.spec.ml_platform else "ml_platform"


def training_spec(lc: Lifecycle, artifact_dir: str) -> TrainingSpec:
    """What the instance's model learns, for the ml_platform plugin."""
    f, t = lc.spec.features, lc.spec.target
    extra: dict[str, Any] = {}
    if "task" in TrainingSpec.model_fields:
        extra = {"task": t.kind, "classes": tuple(t.classes)}
    elif t.kind != "binary":
        raise dg.Failure(
            f"the ml_platform contract here supports binary targets only, not {t.kind}"
        )
    return TrainingSpec(
        numeric_features=tuple(f.numeric),
        categorical_features=tuple(f.categorical),
        target=t.column,
        artifact_dir=artifact_dir,
        **extra,
    )


def build_model(lc: Lifecycle) -> dg.AssetsDefinition:
    """The instance's model asset: trains on the training set's train rows, validates on valid."""
    platform_key = ml_platform_key(lc)
    t = lc.spec.target

    @dg.asset(
        key=lc.model_key,
        ins={"training_set": dg.AssetIn(key=lc.training_set_key)},
        group_name=lc.group,
        kinds={"torch"},
        code_version=code_version(__file__),
        io_manager_key="object_io_manager",
        pool="gpu",
        op_tags=GPU_TAGS,
        retry_policy=dg.RetryPolicy(max_retries=1),
        required_resource_keys={"platform", platform_key},
        description=f"{TASK_NOUNS[t.kind]} of {t.column!r}. Loss against the epoch: the "
        "'loss_by_epoch' table (and 'loss_curve'); the Plots tab draws the per-epoch "
        "observations over time.",
    )
    def _model(
        context: dg.AssetExecutionContext, training_set: DataFrame
    ) -> dg.Output[TrainedModel]:
        platform: Platform = context.resources.platform
        ml_platform: MLPlatform = getattr(context.resources, platform_key)
        return _train(context, lc, platform, ml_platform, training_set)

    return _model


def _train(
    context: dg.AssetExecutionContext,
    lc: Lifecycle,
    platform: Platform,
    ml_platform: MLPlatform,
    training_set: "pl.DataFrame",
) -> dg.Output[TrainedModel]:
    import polars as pl

    folder = f"{context.run.run_id}-{uuid.uuid4().hex[:6]}"
    parts = ("artifacts", "models") if not lc.prefix else ("artifacts", "models", *lc.prefix)
    spec = training_spec(lc, str(platform.path(*parts, folder)))
    training_set = encode_target(lc, training_set)
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
                asset_key=lc.model_key,
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

"""A new model version in the registry, with the lineage that produced it."""

from typing import Any

import dagster as dg

from mlx_assets.component.spec import Lifecycle
from mlx_assets.versioning import code_version
from mlx_plugins.ml_platforms.base import TrainedModel
from mlx_plugins.model_registries.base import ModelLineage, ModelRegistry, ModelVersion


def lineage_assets(lc: Lifecycle) -> list[dg.AssetKey]:
    """The assets whose code versions a registered version records: raw tables to evaluation."""
    return [
        *lc.raw_keys.values(),
        lc.features_key,
        lc.training_set_key,
        lc.model_key,
        lc.evaluation_key,
    ]


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey) -> dg.EventLogEntry | None:
    return instance.get_latest_materialization_event(key)


def collect_lineage(context: dg.AssetExecutionContext, lc: Lifecycle) -> ModelLineage:
    instance = context.instance
    code_versions: dict[str, str] = {}
    sources: dict[str, Any] = {}
    raw = set(lc.raw_keys.values())
    for key in lineage_assets(lc):
        event = _latest(instance, key)
        mat = event.asset_materialization if event else None
        if mat and mat.tags and "dagster/code_version" in mat.tags:
            code_versions[key.to_user_string()] = mat.tags["dagster/code_version"]
        read = mat.metadata.get("source_read") if mat and key in raw else None
        if read is not None:
            sources[key.to_user_string()] = getattr(read, "value", read)
    ts = _latest(instance, lc.training_set_key)
    ts_mat = ts.asset_materialization if ts else None
    meta = ts_mat.metadata if ts_mat else {}
    versions = meta.get("partition_data_versions")
    window = meta.get("window")
    versions_map: dict[str, str] = dict(versions.value) if versions is not None else {}  # type: ignore[arg-type]
    return ModelLineage(
        training_data_version=(ts_mat.tags or {}).get("dagster/data_version") if ts_mat else None,
        partitions=sorted(versions_map),
        partition_data_versions=versions_map,
        code_versions=code_versions,
        window=dict(window.value) if window is not None else {},  # type: ignore[arg-type]
        run_id=context.run.run_id,
        sources=sources,
    )


def build_registered_model(lc: Lifecycle) -> dg.AssetsDefinition:
    """The version registered (in the composition's ``model_registry``) when the instance's
    evaluation passes its gate; registering the same model, data and config again is a no-op."""

    @dg.asset(
        key=lc.registered_key,
        ins={
            "model": dg.AssetIn(key=lc.model_key),
            "model_evaluation": dg.AssetIn(key=lc.evaluation_key),
        },
        group_name=lc.group,
        kinds={"python"},
        code_version=code_version(__file__),
        io_manager_key="object_io_manager",
        description=f"The {lc.model_name} version registered when evaluation passes the "
        "quality gate.",
    )
    def _registered(
        context: dg.AssetExecutionContext,
        model_registry: ModelRegistry,
        model: TrainedModel,
        model_evaluation: Any,
    ) -> dg.Output[ModelVersion]:
        return _register(context, lc, model_registry, model, model_evaluation)

    return _registered


def refuse_ungated(context: dg.AssetExecutionContext, lc: Lifecycle) -> None:
    """Raise ``dg.Failure`` unless the latest ``model_evaluation`` passed its quality gate.

    The blocking check stops registration in the run that evaluated; a later run that asks for
    ``registered_model`` alone (``mlx lifecycle`` again, a hand-picked selection) must not
    register that model either: the gate's newest evaluation must have passed, for the newest
    evaluation.
    """
    from dagster._core.storage.asset_check_execution_record import (
        AssetCheckExecutionRecordStatus,
    )

    instance = context.instance
    latest = instance.get_latest_materialization_event(lc.evaluation_key)
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [lc.gate_check]
    ).get(lc.gate_check)
    ok = (
        latest is not None
        and record is not None
        and record.status == AssetCheckExecutionRecordStatus.SUCCEEDED
        and record.run_id == latest.run_id
    )
    if ok:
        return
    why = "has no evaluation" if latest is None else "did not pass its quality gate"
    data = getattr(
        getattr(getattr(record, "event", None), "dagster_event", None), "event_specific_data", None
    )
    detail = f" ({data.description})" if getattr(data, "description", None) else ""
    raise dg.Failure(
        description=(
            f"not registering {lc.model_name}: the latest {lc.evaluation_key.to_user_string()} "
            f"{why}{detail}. fix: retrain (change the data, window or ml_platform settings) until "
            f"the {lc.gate_check.name} check passes, or change the instance's gate"
        ),
        allow_retries=False,
    )


def _register(
    context: dg.AssetExecutionContext,
    lc: Lifecycle,
    model_registry: ModelRegistry,
    model: TrainedModel,
    model_evaluation: Any,
) -> dg.Output[ModelVersion]:
    refuse_ungated(context, lc)
    lineage = collect_lineage(context, lc)
    version, created = model_registry.register_once(
        lc.model_name,
        model.artifact_path,
        model.artifact_sha256,
        metrics=model_evaluation.headline(),
        config={
            "platform": model.platform,
            "params": model.params,
            "features": model.spec.model_dump(exclude={"artifact_dir"}),
            "window": lineage.window or lc.window.model_dump(),
        },
        lineage=lineage,
    )
    if created:
        context.log.info(f"registered {version.tag} at {version.artifact_path}")
    else:
        context.log.info(
            f"nothing registered: {version.tag} already has this training-set data version "
            f"({lineage.training_data_version}), code versions and config"
        )
    return dg.Output(
        version,
        data_version=dg.DataVersion(version.tag),
        metadata={
            "version": dg.MetadataValue.int(version.version),
            "tag": version.tag,
            "created": dg.MetadataValue.bool(created),
            "artifact": dg.MetadataValue.path(version.artifact_path),
            "lineage": dg.MetadataValue.json(version.lineage.model_dump()),
            **{k: dg.MetadataValue.float(v) for k, v in version.metrics.items()},
        },
    )

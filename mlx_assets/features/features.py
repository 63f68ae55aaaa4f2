"""The features asset of a lifecycle instance: its raw tables -> the model's feature rows.

With ``features.function`` (``module:function``) the function is called with one polars frame per
table, by table name, and returns the feature frame (joins and derived columns live there; the
flights instance's is ``mlx_assets.features.flight_features:build_features``). Without one, the
first partitioned table is used as it is. Either way the frame is checked against the instance's
declared columns before it is stored.
"""

import importlib
import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dagster as dg

from mlx_assets.component.spec import Lifecycle
from mlx_assets.ingest.check_guard import describe_failed, failed_check_partitions
from mlx_assets.partitions import SINGLE_RUN
from mlx_assets.versioning import code_version
from mlx_resources.io_managers.frames import DataFrame

if TYPE_CHECKING:
    import polars as pl


SOURCE_CHECKS = ("schema_matches_source", "no_null_keys")
"""The blocking checks of the daily inputs: a day whose newest evaluation failed is not used."""


def load_function(lc: Lifecycle) -> "Callable[..., pl.DataFrame] | None":
    """The instance's feature function, imported; None when it declares none.

    Raises:
        dg.Failure: the module or function cannot be imported (names the YAML key and value).
    """
    target = lc.spec.features.function
    if target is None:
        return None
    module_name, _, attr = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise dg.Failure(
            f"features.function {target!r} of lifecycle {lc.name!r} ({lc.source_file}) cannot "
            f"be imported: {exc}. fix: point it at an importable 'package.module:function'",
            allow_retries=False,
        ) from None
    if not callable(fn):
        raise dg.Failure(f"features.function {target!r} is not callable", allow_retries=False)
    return fn  # type: ignore[no-any-return]


def build_frame(
    lc: Lifecycle,
    tables: "dict[str, pl.DataFrame]",
    context: dg.AssetExecutionContext | None = None,
) -> "pl.DataFrame":
    """The feature frame of ``tables`` (table name -> frame): the function's output, or the first
    partitioned table; then checked by :func:`check_frame`.

    With ``features.sandbox`` the function runs in a sandboxed child
    (:func:`mlx_resources.sandbox.run_function`; ``context``: the asset's, for its log lines).

    Raises:
        dg.Failure: the function cannot be imported, returns no polars frame, or (sandboxed)
            hits a limit: the message names the limit, its value and the YAML key to raise.
    """
    import polars as pl

    if lc.spec.features.function is None:
        out = tables[lc.spec.data.daily[0].name]
    elif lc.spec.features.sandbox is not None:  # its module is imported in the child only
        out = _sandboxed(lc, tables, context)
    else:
        fn = load_function(lc)
        assert fn is not None
        out = fn(**tables)
        if not isinstance(out, pl.DataFrame):
            raise dg.Failure(
                f"features.function {lc.spec.features.function!r} returned "
                f"{type(out).__name__}, not a polars DataFrame",
                allow_retries=False,
            )
    return check_frame(lc, out)


def _sandboxed(
    lc: Lifecycle, tables: "dict[str, pl.DataFrame]", context: dg.AssetExecutionContext | None
) -> "pl.DataFrame":
    from mlx_resources.sandbox import SandboxLimitError, run_function

    spec, target = lc.spec.features.sandbox, lc.spec.features.function
    assert spec is not None and target is not None
    where = f"{lc.source_file or 'the defs.yaml'} (lifecycle {lc.name!r})"
    try:
        return run_function(
            target, tables, spec, key="features.sandbox", where=where, context=context
        )
    except SandboxLimitError as exc:  # a bigger day will not fit on a retry either
        raise dg.Failure(str(exc), allow_retries=False) from None


def check_frame(lc: Lifecycle, df: "pl.DataFrame") -> "pl.DataFrame":
    """``df`` restricted to the time column, the features and the target, in that order, and
    to the rows that have a target and a date (numeric features cast to Float64, categorical
    ones to String).

    Raises:
        dg.Failure: a declared column is missing, or a numeric feature is not numeric; the
            message names the columns, the dtypes found and the YAML keys to fix.
    """
    import polars as pl

    spec = lc.spec
    time_col, target = spec.data.time_column, spec.target.column
    wanted = [time_col, *spec.features.columns, target]
    missing = [c for c in wanted if c not in df.columns]
    where = f"lifecycle {lc.name!r} ({lc.source_file or 'its defs.yaml'})"
    if missing:
        raise dg.Failure(
            f"{where}: the feature frame has no column(s) {missing}; it has {df.columns}. fix: "
            "correct features.numeric/categorical, target.column or data.time_column, or make "
            "features.function return them",
            allow_retries=False,
        )
    not_numeric = {
        c: str(df.schema[c])
        for c in spec.features.numeric
        if not (df.schema[c].is_numeric() or df.schema[c] == pl.Boolean)
    }
    if not_numeric:
        raise dg.Failure(
            f"{where}: features.numeric columns are not numeric: {not_numeric}. fix: cast them "
            "in features.function or list them under features.categorical",
            allow_retries=False,
        )
    if df.schema[time_col] != pl.Date:
        raise dg.Failure(
            f"{where}: data.time_column {time_col!r} is {df.schema[time_col]}, not Date",
            allow_retries=False,
        )
    numeric = [pl.col(c).cast(pl.Float64) for c in spec.features.numeric]
    categorical = [pl.col(c).cast(pl.String) for c in spec.features.categorical]
    # rows without a target (a cancelled flight has no arrival delay) are not labelled
    labelled = df.filter(pl.col(target).is_not_null() & pl.col(time_col).is_not_null())
    return labelled.select(time_col, *numeric, *categorical, target)


def refuse_failed_inputs(context: dg.AssetExecutionContext, lc: Lifecycle) -> None:
    """Raise ``dg.Failure`` (not retried) when an input day's newest blocking check failed,
    naming the run, each input partition with its failed checks, and the fix."""
    keys = context.partition_keys
    checks = {lc.raw_keys[t.name].to_user_string(): SOURCE_CHECKS for t in lc.spec.data.daily}
    failed = failed_check_partitions(context.instance, checks, keys, lc.partitions_def)
    if not failed:
        return
    bad_days = sorted({day for partitions in failed.values() for day in partitions})
    span = keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]}"
    assets = ",".join(sorted(failed))
    name = lc.features_key.to_user_string()
    example = (
        "DAGSTER_HOME=$(mlx home) "
        f"dagster asset materialize -m mlx_assets.definitions --select {assets} "
        f"--partition {bad_days[0]}"
    )
    raise dg.Failure(
        description=(
            f"run {context.run.run_id}: {name} for {span} will not use input "
            f"partitions whose latest blocking check failed: {describe_failed(failed)}. "
            f"fix: repair the source data for those days and re-materialize them (e.g. "
            f"{example}), then {name}; or leave those days out of this run."
        ),
        metadata={"failed_inputs": dg.MetadataValue.json(failed)},
        allow_retries=False,
    )


def build_features_asset(lc: Lifecycle) -> dg.AssetsDefinition:
    """The instance's daily features asset (same partitions as its raw tables)."""
    spec = lc.spec
    ins = {f"in_{t.name}": dg.AssetIn(key=lc.raw_keys[t.name]) for t in spec.data.tables}
    target = spec.target
    if spec.features.function is not None:
        # the function's source is part of the asset's code version, so editing it restales
        module_name = spec.features.function.partition(":")[0]
        try:
            module = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            module = None
        if module is None:
            from mlx_plugins.kernel.errors import CompositionError

            raise CompositionError(
                lc.source_file or lc.name,
                "attributes.features.function",
                f"module {module_name!r} of {spec.features.function!r} cannot be found",
                "point it at an importable 'package.module:function' (on PYTHONPATH or "
                "installed), or remove it to use the first table as it is",
            )
        origin = getattr(module, "origin", None)
        version = code_version(origin) if origin else code_version(__file__)
        version = f"{code_version(__file__)}.{version}"
    else:
        version = code_version(__file__)

    @dg.asset(
        key=lc.features_key,
        ins=ins,
        partitions_def=lc.partitions_def,
        backfill_policy=SINGLE_RUN,
        group_name=lc.group,
        kinds={"polars", "arrow"},  # Arrow IPC files (PolarsIOManager default format)
        code_version=version,
        metadata={"partition_expr": spec.data.time_column},
        description=f"Model features of {lc.name}: {len(spec.features.numeric)} numeric, "
        f"{len(spec.features.categorical)} categorical; target {target.column!r} "
        f"({target.kind})"
        + (f", computed by {spec.features.function}" if spec.features.function else "")
        + ".",
    )
    def _features(context: dg.AssetExecutionContext, **inputs: Any) -> dg.Output[DataFrame]:
        import polars as pl

        refuse_failed_inputs(context, lc)
        tables = {name.removeprefix("in_"): frame for name, frame in inputs.items()}
        df = build_frame(lc, tables, context)
        meta: dict[str, Any] = {"rows": dg.MetadataValue.int(df.height)}
        if target.kind == "binary" and df.height:
            rate = float(df.get_column(target.column).cast(pl.Float64).mean() or 0.0)
            meta["positive_rate"] = dg.MetadataValue.float(rate)
            context.log.info(f"{df.height} labelled rows, {rate:.1%} positive")
        else:
            context.log.info(f"{df.height} labelled rows")
        return dg.Output(df, metadata=meta)

    return _features

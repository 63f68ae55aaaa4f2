"""The target column as the ml_platform expects it, per task kind."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from mlx_assets.component.spec import Lifecycle

if TYPE_CHECKING:
    import polars as pl


def encode_target(lc: Lifecycle, frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with the target column encoded for training and scoring.

    binary: Int8 0/1 (bool or 0/1 integers accepted); multiclass: UInt32 class index in the
    order of ``target.classes`` (labels given as strings, or already as indices); regression:
    Float64.

    Raises:
        dg.Failure: a multiclass label not in ``target.classes``, or a binary value other than
            0/1; the message names the values, the lifecycle's YAML key and the fix.
    """
    import polars as pl

    target = lc.spec.target
    col = pl.col(target.column)
    if frame.height == 0:
        return frame
    dtype = frame.schema[target.column]
    if target.kind == "regression":
        return frame.with_columns(col.cast(pl.Float64))
    if target.kind == "binary":
        values = set(frame.get_column(target.column).drop_nulls().cast(pl.Int64).unique().to_list())
        if not values <= {0, 1}:
            raise dg.Failure(
                f"lifecycle {lc.name!r}: binary target {target.column!r} holds {sorted(values)[:5]}"
                ", not only 0/1. fix: derive a 0/1 column in features.function, or use kind "
                "multiclass with target.classes",
                allow_retries=False,
            )
        return frame.with_columns(col.cast(pl.Int8))
    classes = list(target.classes)
    if dtype.is_integer():
        bad = frame.filter((col < 0) | (col >= len(classes)))[target.column].unique().to_list()
    else:
        bad = frame.filter(~col.cast(pl.String).is_in(classes))[target.column].unique().to_list()
    if bad:
        raise dg.Failure(
            f"lifecycle {lc.name!r}: target {target.column!r} holds label(s) "
            f"{sorted(map(str, bad))[:10]} not in target.classes {classes}. fix: add them to "
            "target.classes in its defs.yaml, or map them in features.function",
            allow_retries=False,
        )
    if dtype.is_integer():
        return frame.with_columns(col.cast(pl.UInt32))
    return frame.with_columns(
        col.cast(pl.String).replace_strict(
            classes, list(range(len(classes))), return_dtype=pl.UInt32
        )
    )

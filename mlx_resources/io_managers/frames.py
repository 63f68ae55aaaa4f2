"""``DataFrame`` / ``LazyFrame``: polars frame annotations that don't import polars at load.

Dagster turns an asset function's annotations into its op's input and output types when the asset
is defined (``typing.get_type_hints``), so annotating ``pl.DataFrame`` makes loading the code
location import polars (~0.15x of ``import dagster``). Annotate with these instead::

    from mlx_resources.io_managers.frames import DataFrame, LazyFrame

    @dg.asset
    def training_set(features: LazyFrame) -> DataFrame: ...

Type checkers see ``polars.DataFrame`` / ``polars.LazyFrame``; at run time they are
``dg.DagsterType`` instances named ``DataFrame`` / ``LazyFrame`` whose check is an
``isinstance`` against the polars class, polars imported on the first check (when a value
exists, polars is loaded anyway). ``PolarsIOManager`` gives an input typed ``LazyFrame`` (this
type or ``pl.LazyFrame`` itself) a lazy scan (:func:`is_lazy_frame_type`).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import dagster as dg

__all__ = ["DataFrame", "LazyFrame", "is_lazy_frame_type"]


def _polars_check(class_name: str) -> Any:
    def check(_context: dg.TypeCheckContext, value: object) -> dg.TypeCheck:
        import polars as pl

        expected = getattr(pl, class_name)
        if isinstance(value, expected):
            return dg.TypeCheck(success=True)
        return dg.TypeCheck(
            success=False,
            description=(
                f"expected a polars.{class_name}, got {type(value).__module__}."
                f"{type(value).__qualname__}; fix: return (or load) a polars.{class_name}"
            ),
        )

    return check


if TYPE_CHECKING:
    from polars import DataFrame, LazyFrame
else:
    DataFrame = dg.DagsterType(
        name="DataFrame",
        type_check_fn=_polars_check("DataFrame"),
        description="polars.DataFrame (rows x named, typed columns)",
    )
    LazyFrame = dg.DagsterType(
        name="LazyFrame",
        type_check_fn=_polars_check("LazyFrame"),
        description="polars.LazyFrame (a lazy scan; PolarsIOManager loads this input lazily)",
    )


def is_lazy_frame_type(dagster_type: dg.DagsterType) -> bool:
    """Whether an input of ``dagster_type`` wants a ``pl.LazyFrame``: the ``LazyFrame`` type
    above (by key, so a copy of it counts), or a type inferred from a ``pl.LazyFrame``
    annotation (or a subclass). Never imports polars: a class can only derive from
    ``pl.LazyFrame`` once polars is loaded."""
    if dagster_type.key == "LazyFrame":
        return True
    typing_type = dagster_type.typing_type
    pl = sys.modules.get("polars")
    return (
        pl is not None and isinstance(typing_type, type) and issubclass(typing_type, pl.LazyFrame)
    )

"""``MLLifecycle``: the lifecycle as a Dagster component, one instance per model.

``dg scaffold defs mlx_assets.component.MLLifecycle my_model`` writes
``mlx_assets/defs/my_model/defs.yaml`` with a working instance (a regression of arrival delay on
the composition's ``flights`` data source) to edit into your own; the code location
(``mlx_assets.definitions``) loads every instance there with the composition's plugins.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import StrictBool

from mlx_assets.component.spec import LifecycleSpec

TEMPLATE: dict[str, Any] = {
    "data": {
        "source": "flights",
        "tables": [
            {"name": "flights", "key_columns": ["carrier", "origin"]},
        ],
        "time_column": "date",
        "start": "2013-01-01",
        "end": "2014-01-01",
    },
    "features": {
        "numeric": ["sched_dep_time", "sched_arr_time", "distance"],
        "categorical": ["carrier", "origin", "dest"],
        "slice_by": "origin",
    },
    "target": {"column": "arr_delay", "kind": "regression"},
    "ml_platform": {"epochs": 2},
}
"""What ``dg scaffold defs`` writes (under ``name``): it runs against the default mlx.yaml."""


class MLLifecycleScaffolder(dg.Scaffolder):  # type: ignore[type-arg]
    """Writes ``defs.yaml`` with :data:`TEMPLATE`, named after the target folder."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:  # type: ignore[type-arg]
        name = request.target_path.name.replace("-", "_").lower()
        dg.scaffold_component(request, {"name": name, **TEMPLATE})


@dg.scaffold_with(MLLifecycleScaffolder)
class MLLifecycle(dg.Component, dg.Resolvable, dg.Model):
    """One model's lifecycle (ingest -> features -> training set -> model -> evaluation ->
    registry -> drift, with checks, jobs, the drift sensor and the arrival schedule).

    Attributes are those of :class:`mlx_assets.component.spec.LifecycleSpec` (validated there);
    plugins and resources come from the composition file (mlx.yaml).
    """

    name: str
    key_prefix: list[str] | None = None
    group: str | None = None
    data: dict[str, Any]
    features: dict[str, Any]
    target: dict[str, Any]
    gate: dict[str, Any] | None = None
    window: dict[str, Any] | None = None
    drift: dict[str, Any] | None = None
    arrival_cron: str | None = None
    default_run: StrictBool = True
    ml_platform: dict[str, Any] = {}

    def spec(self) -> LifecycleSpec:
        return LifecycleSpec.model_validate(self.model_dump(exclude_none=True))

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """This instance with the composition's resources (``mlx.yaml``, or
        ``$MLX_COMPOSITION``), for Dagster's own loader (``load_from_defs_folder``)."""
        from mlx_assets.build import build_definitions
        from mlx_plugins.kernel.composition import load_composition

        file = str(context.path / "defs.yaml") if hasattr(context, "path") else ""
        return build_definitions(load_composition(), lifecycles=[(self.spec(), file)])

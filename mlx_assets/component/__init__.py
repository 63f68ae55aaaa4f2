"""The lifecycle as a reusable component: spec (what an instance declares), loader (instances
from ``defs.yaml`` files) and the Dagster ``MLLifecycle`` component (``dg scaffold defs``)."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlx_assets.component.component import MLLifecycle


def __getattr__(name: str) -> Any:
    if name == "MLLifecycle":  # imported on use: the code location does not need it to load
        from mlx_assets.component.component import MLLifecycle

        return MLLifecycle
    raise AttributeError(name)


__all__ = ["MLLifecycle"]

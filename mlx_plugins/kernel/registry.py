"""Where plugins are found: the built-in table and the ``mlx.plugins`` entry-point group.

Nothing here imports a plugin's module. A ``PluginSpec`` is only a kind, a name and an import
path; ``load()`` imports the module when the composition actually uses the plugin.

Third-party packages register plugins in their ``pyproject.toml``::

    [project.entry-points."mlx.plugins"]
    "data_source.my_lake" = "my_pkg.lake:MyLakeSource"

The entry-point name is ``<kind>.<plugin name>``.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from mlx_plugins.kernel.errors import PluginNotFoundError
from mlx_plugins.kernel.kinds import KINDS

if TYPE_CHECKING:
    from mlx_plugins.kernel.base import MLXPlugin

ENTRY_POINT_GROUP = "mlx.plugins"


class PluginSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: str
    name: str
    target: str
    """``module:Class``."""
    origin: str = "builtin"

    def load(self) -> type[MLXPlugin]:
        from mlx_plugins.kernel.base import MLXPlugin

        module_name, _, attr = self.target.partition(":")
        cls = getattr(importlib.import_module(module_name), attr)
        if not (isinstance(cls, type) and issubclass(cls, MLXPlugin)):
            raise TypeError(f"{self.target} ({self.origin}) is not an MLXPlugin subclass")
        base = import_target(KINDS[self.kind].base_class)
        if not issubclass(cls, base):
            raise TypeError(
                f"{self.target} is registered as a {self.kind} but does not subclass "
                f"{KINDS[self.kind].base_class}"
            )
        meta = cls.metadata
        if (meta.kind, meta.name) != (self.kind, self.name):
            raise TypeError(
                f"{self.target} is registered as {self.kind}.{self.name} but its metadata "
                f"says {meta.kind}.{meta.name}"
            )
        return cls


BUILTIN_PLUGINS: tuple[PluginSpec, ...] = (
    PluginSpec(
        kind="data_source",
        name="nycflights13",
        target="mlx_plugins.data_sources.nycflights13:NYCFlights13Source",
    ),
    PluginSpec(
        kind="data_source",
        name="vega_datasets",
        target="mlx_plugins.data_sources.vega_datasets:VegaDatasetsSource",
    ),
    PluginSpec(
        kind="ml_platform",
        name="local_torch",
        target="mlx_plugins.ml_platforms.local_torch:LocalTorchPlatform",
    ),
    PluginSpec(
        kind="ml_platform",
        name="databricks",
        target="mlx_plugins.ml_platforms.databricks:DatabricksPlatform",
    ),
    PluginSpec(
        kind="drift_detector",
        name="polars",
        target="mlx_plugins.drift_detectors.polars_drift:PolarsDriftDetector",
    ),
    PluginSpec(
        kind="data_source",
        name="files",
        target="mlx_plugins.data_sources.files:FilesSource",
    ),
    PluginSpec(
        kind="data_source",
        name="snowflake",
        target="mlx_plugins.data_sources.snowflake:SnowflakeSource",
    ),
    PluginSpec(
        kind="data_source",
        name="s3",
        target="mlx_plugins.data_sources.s3:S3Source",
    ),
    PluginSpec(
        kind="model_registry",
        name="local",
        target="mlx_plugins.model_registries.local:LocalModelRegistry",
    ),
    PluginSpec(
        kind="model_registry",
        name="mlflow",
        target="mlx_plugins.model_registries.mlflow_registry:MLflowModelRegistry",
    ),
    PluginSpec(
        kind="model_server",
        name="bentoml",
        target="mlx_plugins.model_servers.bentoml_server:BentoMLServer",
    ),
    PluginSpec(
        kind="llm_provider",
        name="openai",
        target="mlx_plugins.llm_providers.openai_provider:OpenAIProvider",
    ),
    PluginSpec(
        kind="llm_provider",
        name="anthropic",
        target="mlx_plugins.llm_providers.anthropic_provider:AnthropicProvider",
    ),
)


def import_target(target: str) -> type:
    module_name, _, attr = target.partition(":")
    obj = getattr(importlib.import_module(module_name), attr)
    assert isinstance(obj, type)
    return obj


class PluginRegistry:
    """All plugins known to this interpreter, by kind and name."""

    def __init__(self, specs: tuple[PluginSpec, ...] | list[PluginSpec]) -> None:
        self._specs: dict[tuple[str, str], PluginSpec] = {}
        for spec in specs:
            if spec.kind not in KINDS:
                raise ValueError(
                    f"plugin {spec.name!r} from {spec.origin} declares unknown kind "
                    f"{spec.kind!r}; known kinds: {', '.join(KINDS)}"
                )
            key = (spec.kind, spec.name)
            if key in self._specs and self._specs[key].target != spec.target:
                raise ValueError(
                    f"two plugins are registered as {spec.kind}.{spec.name}: "
                    f"{self._specs[key].target} ({self._specs[key].origin}) and "
                    f"{spec.target} ({spec.origin}); uninstall one of them"
                )
            self._specs[key] = spec

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(sorted(self._specs.values(), key=lambda s: (s.kind, s.name)))

    def names(self, kind: str) -> list[str]:
        return sorted(name for k, name in self._specs if k == kind)

    def kinds_of(self, name: str) -> list[str]:
        return sorted(k for k, n in self._specs if n == name)

    def get(self, kind: str, name: str) -> PluginSpec:
        try:
            return self._specs[(kind, name)]
        except KeyError:
            known = ", ".join(self.names(kind)) or "none installed"
            raise PluginNotFoundError(
                f"no {kind} plugin named {name!r}; known {kind} plugins: {known}"
            ) from None


def discover_entry_points() -> list[PluginSpec]:
    specs = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        kind, _, name = ep.name.partition(".")
        origin = f"entry point {ep.name!r}"
        if ep.dist is not None:
            origin += f" of {ep.dist.name}"
        specs.append(PluginSpec(kind=kind, name=name, target=ep.value, origin=origin))
    return specs


@cache
def default_registry() -> PluginRegistry:
    return PluginRegistry([*BUILTIN_PLUGINS, *discover_entry_points()])

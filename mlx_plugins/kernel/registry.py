"""Where plugins are found: the built-in table and the ``mlx.plugins`` entry-point group.

Nothing here imports a plugin's module. A ``PluginSpec`` is only a kind, a name and an import
path; ``load()`` imports the module when the composition actually uses the plugin.

Third-party packages register plugins in their ``pyproject.toml``::

    [project.entry-points."mlx.plugins"]
    "data_source.my_lake" = "my_pkg.lake:MyLakeSource"

The entry-point name is ``<kind>.<plugin name>``.

The default registry reads the entry points (a scan of every installed distribution's metadata,
~6 ms) only when it needs them: a name that is not built in, or the whole list (``mlx plugins
list``, error messages naming the installed plugins). A composition that names only built-in
plugins loads without the scan (docs/lifecycle_component.md, "Load time").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
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
    """All plugins known to this interpreter, by kind and name.

    ``discover`` (e.g. :func:`discover_entry_points`) is called at most once, the first time a
    lookup misses or the whole list is asked for; its specs join ``specs`` under the same
    checks. Raises ``ValueError`` (at construction, or when ``discover`` runs) for an unknown
    kind or two different plugins registered under one ``<kind>.<name>``."""

    def __init__(
        self,
        specs: Iterable[PluginSpec],
        discover: Callable[[], Iterable[PluginSpec]] | None = None,
    ) -> None:
        self._specs: dict[tuple[str, str], PluginSpec] = {}
        self._add(self._specs, specs)
        self._discover = discover

    @staticmethod
    def _add(into: dict[tuple[str, str], PluginSpec], specs: Iterable[PluginSpec]) -> None:
        for spec in specs:
            if spec.kind not in KINDS:
                raise ValueError(
                    f"plugin {spec.name!r} from {spec.origin} declares unknown kind "
                    f"{spec.kind!r}; known kinds: {', '.join(KINDS)}"
                )
            key = (spec.kind, spec.name)
            if key in into and into[key].target != spec.target:
                raise ValueError(
                    f"two plugins are registered as {spec.kind}.{spec.name}: "
                    f"{into[key].target} ({into[key].origin}) and "
                    f"{spec.target} ({spec.origin}); uninstall one of them"
                )
            into[key] = spec

    def _complete(self) -> None:
        """Add the discovered specs, once (again after a failure, which raises each time)."""
        if self._discover is None:
            return
        specs = dict(self._specs)
        self._add(specs, self._discover())
        self._specs, self._discover = specs, None

    def __iter__(self):  # type: ignore[no-untyped-def]
        self._complete()
        return iter(sorted(self._specs.values(), key=lambda s: (s.kind, s.name)))

    def names(self, kind: str) -> list[str]:
        self._complete()
        return sorted(name for k, name in self._specs if k == kind)

    def kinds_of(self, name: str) -> list[str]:
        self._complete()
        return sorted(k for k, n in self._specs if n == name)

    def get(self, kind: str, name: str) -> PluginSpec:
        found = self._specs.get((kind, name))
        if found is None:
            self._complete()  # not built in: a third-party plugin, if one is installed
            found = self._specs.get((kind, name))
        if found is None:
            known = ", ".join(self.names(kind)) or "none installed"
            raise PluginNotFoundError(
                f"no {kind} plugin named {name!r}; known {kind} plugins: {known}"
            )
        return found


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
    """The built-in plugins, and the ``mlx.plugins`` entry points once a lookup needs them (see
    the module doc). A third-party plugin registered under a built-in's name is refused when
    the entry points are read (``mlx plugins list`` reads them); a composition that names only
    built-in plugins does not read them, and uses the built-in."""
    return PluginRegistry(BUILTIN_PLUGINS, discover=discover_entry_points)

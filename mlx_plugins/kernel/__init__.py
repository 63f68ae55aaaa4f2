"""The plugin kernel: kinds, metadata, registry and the composition file."""

from mlx_plugins.kernel.base import HealthStatus, MLXPlugin
from mlx_plugins.kernel.composition import Composition, PluginEntry, load_composition
from mlx_plugins.kernel.errors import CompositionError
from mlx_plugins.kernel.kinds import KINDS, Cardinality, PluginKind
from mlx_plugins.kernel.metadata import PluginMetadata
from mlx_plugins.kernel.registry import PluginRegistry, PluginSpec, default_registry

__all__ = [
    "KINDS",
    "Cardinality",
    "Composition",
    "CompositionError",
    "HealthStatus",
    "MLXPlugin",
    "PluginEntry",
    "PluginKind",
    "PluginMetadata",
    "PluginRegistry",
    "PluginSpec",
    "default_registry",
    "load_composition",
]

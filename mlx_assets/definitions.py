"""The code location: Definitions built from the composition file (mlx.yaml) and the lifecycle
instances in mlx_assets/defs (one ``defs.yaml`` per model)."""

from mlx_assets.build import build_definitions
from mlx_plugins.kernel.composition import load_composition

defs = build_definitions(load_composition())

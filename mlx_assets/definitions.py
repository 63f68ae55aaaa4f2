"""The code location: Definitions built from the composition file (mlx.yaml) and the lifecycle
instances in mlx_assets/defs (one ``defs.yaml`` per model). With ``MLX_LAST_GOOD_COMPOSITION``
set, a composition that stops loading leaves the last good one serving
(mlx_assets/composition_guard.py).

Loaded with the garbage collector paused (as :func:`mlx_assets.build.gc_paused` does): importing
MLX's modules and the plugins, on a heap already holding Dagster's import, otherwise runs full
collections that cost about a fifth of ``import dagster`` and free almost nothing
(docs/lifecycle_component.md, "Load time")."""

import gc

_collecting = gc.isenabled()
gc.disable()
try:
    from mlx_assets.composition_guard import guarded_definitions

    defs = guarded_definitions()
finally:
    if _collecting:
        gc.enable()

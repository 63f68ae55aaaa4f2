"""The code location: Definitions built from the composition file (mlx.yaml) and the lifecycle
instances in mlx_assets/defs (one ``defs.yaml`` per model). With ``MLX_LAST_GOOD_COMPOSITION``
set, a composition that stops loading leaves the last good one serving
(mlx_assets/composition_guard.py).

Loaded with the garbage collector paused (as :func:`mlx_assets.build.gc_paused` does): importing
MLX's modules and the plugins, on a heap already holding Dagster's import, otherwise runs full
collections that cost about a fifth of ``import dagster`` and free almost nothing
(docs/lifecycle_component.md, "Load time"). Before the collector is turned back on, the loaded
heap is frozen (``gc.freeze()``): the first collection after the load would otherwise walk every
object the load made (~2.7 ms) to find ~30 pieces of cyclic garbage, and every later full
collection of the code server would walk them again. Those few objects are kept for the life of
the process; frozen objects are still freed by reference counting."""

import gc

_collecting = gc.isenabled()
gc.disable()
try:
    from mlx_assets.composition_guard import guarded_definitions

    defs = guarded_definitions()
finally:
    if _collecting:
        gc.freeze()  # the load's objects live as long as the process: no collection walks them
        gc.enable()

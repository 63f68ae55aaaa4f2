"""The code location is built with the garbage collector paused, and leaves it as it found it."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from mlx_assets.build import gc_paused


def test_gc_paused_turns_collection_back_on_even_after_an_error():
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_gc_paused_leaves_a_disabled_collector_disabled():
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_loading_the_code_location_leaves_the_collector_on_with_the_loaded_heap_frozen():
    code = (
        "import gc, mlx_assets.definitions as d\n"
        "print(gc.isenabled(), len(d.defs.resolve_asset_graph().get_all_asset_keys()),"
        " gc.get_freeze_count())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "True"
    assert int(out[1]) > 0
    # the loaded heap was moved out of the collected generations (gc.freeze; 0 without it):
    # Dagster's import and the definitions, far more objects than a collection's threshold
    assert int(out[2]) > 10 * gc.get_threshold()[0], out

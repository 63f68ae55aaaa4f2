"""The compiled drift loops (numba) work where numba has nowhere to write its on-disk cache (a
read-only image with no writable home): compiled in memory, not numba's "no locator available"
error at import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import mlx_plugins.drift_detectors._fused as fused

PROGRAM = """
import importlib.util, sys
import numpy as np
spec = importlib.util.spec_from_file_location("fused_copy", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
values = np.arange(1000, dtype=np.float64) / 7.0
print(repr(module.pairwise_sum(values, len(values))))
print(module.pairwise_sum._cache.__class__.__name__)
"""


def test_no_writable_cache_location_compiles_in_memory(tmp_path: Path):
    source = tmp_path / "fused_copy.py"
    shutil.copy(fused.__file__, source)
    (tmp_path / "__pycache__").write_text("a file where numba wants its cache folder")
    env = {
        **os.environ,
        "NUMBA_CACHE_DIR": "/dev/null/numba",  # can't be created
        "XDG_CACHE_HOME": "/dev/null/cache",
        "HOME": "/dev/null",
    }
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(source)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    total, cache = done.stdout.split()
    values = np.arange(1000, dtype=np.float64) / 7.0
    assert float(total) == float(np.add.reduce(values))  # numpy's pairwise sum, same bits
    assert cache == "NullCache"  # in memory: nothing written anywhere

"""Both paths of ``stats.numeric_stats_of_series`` on one pair, as bits: shared by the compiled
one-pair tests (``test_compiled_pair.py``, ``test_compiled_pair_adversarial.py``)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from mlx_plugins.drift_detectors import stats as st
from mlx_plugins.drift_detectors.options import Binning


def bits_of(values: dict[str, float]) -> list[tuple[str, int]]:
    """``(key, IEEE-754 bits)`` of every value: -0.0 and 0.0 count apart."""
    return [(k, int(np.array([v], dtype=np.float64).view(np.uint64)[0])) for k, v in values.items()]


def numpy_only(mp: pytest.MonkeyPatch) -> None:
    """The numpy path as a process that never loaded numba runs it: ``finite_sorted`` by
    ``np.sort`` (not the radix sort it takes once ``_radix`` is imported) and the split prefix
    sums by numpy (not ``_fused.split_prefix``, taken once ``_fused`` is imported)."""
    mp.setattr(st, "compiled_loaded", lambda: False)
    mp.setattr(st, "_FUSED", "mlx_plugins.drift_detectors._not_loaded")


def path_differences(
    ref: pl.Series,
    cur: pl.Series,
    label: str,
    *,
    binnings: tuple[Binning, ...] = ("quantile", "equal_width"),
    workspace: st.Workspace | None = None,
) -> list[str]:
    """What differs between the numpy path and the compiled path on ``ref`` against ``cur``,
    for each binning: the compared counts, or the keys whose bits differ (both values shown).
    Empty when the two paths give the same bits."""
    out = []
    for binning in binnings:
        with np.errstate(over="ignore", invalid="ignore"):
            with pytest.MonkeyPatch.context() as mp:
                numpy_only(mp)
                want, n1, m1 = st.numeric_stats_of_series(ref, cur, binning=binning)
            got, n2, m2 = st.numeric_stats_of_series(
                ref, cur, binning=binning, compiled=True, workspace=workspace
            )
        if (n1, m1) != (n2, m2):
            out.append(f"{label} [{binning}]: compared {(n2, m2)} values, numpy {(n1, m1)}")
        for (key, a), (_, b) in zip(bits_of(got), bits_of(want), strict=True):
            if a != b:
                out.append(f"{label} [{binning}] {key}: {got[key]!r}, numpy {want[key]!r}")
        if list(got) != list(want):
            out.append(f"{label} [{binning}]: keys {list(got)}, numpy {list(want)}")
    return out

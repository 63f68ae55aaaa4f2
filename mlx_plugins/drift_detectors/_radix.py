"""Compiled (numba) least-significant-digit radix sort of float64 values, dropping non-finite ones.

:func:`finite_sort` is what :func:`~mlx_plugins.drift_detectors.stats.finite_sorted` does
(drop NaN and +/-inf, sort ascending) for a large column: 8 passes of 8 bits over the IEEE-754
bits mapped to unsigned integers that order as the floats do (sign bit set for positives, every
bit flipped for negatives), a pass skipped when every key has the same byte there. The
sorted values are the same floats ``np.sort`` gives; only the relative order of ``-0.0`` and
``0.0``, which compare equal, may differ (here ``-0.0`` always comes first), and nothing
computed from a sorted sample depends on it.

Why not ``np.sort``: on this project's 2-vCPU AMD EPYC development machine numpy 2.4's float64
sort takes ~52 ms for a million normal values (~52 ns a value); this sort takes ~11 ms
(``benchmarks/bench_drift.py``; docs/drift.md, "How it is computed"). Its cost is linear in the
values and does not depend on their distribution. It needs one scratch array as long as the
input (8 bytes a value) and releases the GIL, so columns sort in parallel threads.

Imported lazily, like :mod:`~mlx_plugins.drift_detectors._fused` (numba's import and the load of
the cached machine code cost ~0.5 s in a fresh process).
"""

from __future__ import annotations

import numpy as np

from mlx_plugins.drift_detectors._fused import _compiled

_BITS = 8
_BUCKETS = 1 << _BITS
_PASSES = 64 // _BITS
_MASK = np.uint64(_BUCKETS - 1)
_SIGN = np.uint64(1) << np.uint64(63)
_EXPONENT = np.uint64(0x7FF0000000000000)


@_compiled
def _passes(
    a: np.ndarray, b: np.ndarray, k: int, counts: np.ndarray, offsets: np.ndarray
) -> bool:  # pragma: no cover - compiled
    """Sort the keys ``a[:k]`` (uint64) whose bytes ``counts`` counted (passes x buckets): one
    scattering pass per byte position where the keys differ, between ``a`` and ``b``. Returns
    whether the sorted keys ended in ``b`` (else in ``a``)."""
    in_b = False
    for p in range(_PASSES):
        trivial = False
        for d in range(_BUCKETS):
            if counts[p, d] == k:
                trivial = True
                break
        if trivial:  # every key has the same byte here: the pass would not move anything
            continue
        total = 0
        for d in range(_BUCKETS):
            offsets[d] = total
            total += counts[p, d]
        shift = np.uint64(_BITS * p)
        src, dst = (b, a) if in_b else (a, b)
        for i in range(k):
            key = src[i]
            d = (key >> shift) & _MASK
            dst[offsets[d]] = key
            offsets[d] += 1
        in_b = not in_b
    return in_b


@_compiled
def _keys(
    values: np.ndarray, lo: int, hi: int, keys: np.ndarray, counts: np.ndarray
) -> int:  # pragma: no cover - compiled
    """Map the finite values of ``values[lo:hi]`` to order-preserving keys in ``keys[:k]`` (sign
    bit set for positives, every bit flipped for negatives, without a branch: the sign of a
    value is a coin toss for a branch predictor) and add every byte of every key to ``counts``
    (passes x buckets); return ``k``."""
    src = values.view(np.uint64)
    k = 0
    for i in range(lo, hi):
        bits = src[i]
        if bits & _EXPONENT == _EXPONENT:  # NaN or +/-inf (the bits test: ~8% faster here)
            continue
        key = bits ^ ((np.uint64(0) - (bits >> np.uint64(63))) | _SIGN)
        keys[k] = key
        k += 1
        for p in range(_PASSES):
            counts[p, (key >> np.uint64(_BITS * p)) & _MASK] += 1
    return k


@_compiled
def _floats(keys: np.ndarray, k: int, dest: np.ndarray) -> None:  # pragma: no cover - compiled
    """The floats of the keys ``keys[:k]`` into ``dest[:k]`` (uint64 views; in place when they
    are the same array)."""
    for i in range(k):
        key = keys[i]
        dest[i] = key ^ (((key >> np.uint64(63)) - np.uint64(1)) | _SIGN)


@_compiled
def finite_sort(
    values: np.ndarray, out: np.ndarray, scratch: np.ndarray
) -> int:  # pragma: no cover - compiled
    """Sort the finite values of ``values`` (float64, any order) ascending into ``out[:k]`` and
    return ``k``, their number. ``out`` and ``scratch`` (float64, each at least
    ``len(values)`` long, neither overlapping ``values``) are overwritten.

    One pass maps the finite values to keys (into ``scratch``) and counts every byte of every
    key; each byte position where the keys differ then takes one scattering pass; a last pass
    maps the keys back to floats in ``out``."""
    a = scratch.view(np.uint64)
    counts = np.zeros((_PASSES, _BUCKETS), dtype=np.int64)
    k = _keys(values, 0, len(values), a, counts)
    dest = out.view(np.uint64)
    in_out = _passes(a, dest, k, counts, np.empty(_BUCKETS, dtype=np.int64))
    _floats(dest if in_out else a, k, dest)
    return k


@_compiled
def sorted_padded_rows(
    values: np.ndarray, starts: np.ndarray, rows: np.ndarray, counts: np.ndarray
) -> None:  # pragma: no cover - compiled
    """Row d of ``rows`` (float64, D x width) receives the finite values of
    ``values[starts[d]:starts[d + 1]]`` sorted ascending, then +inf; ``counts[d]`` how many are
    finite. The same values as copying each row's finite values and ``rows.sort(axis=1)``,
    each row by the radix sort of :func:`finite_sort` (~10 us for a row of ~900 values,
    against ~30 us for numpy's sort of the row on the development machine)."""
    width = rows.shape[1]
    a = np.empty(width, dtype=np.uint64)
    b = np.empty(width, dtype=np.uint64)
    byte_counts = np.empty((_PASSES, _BUCKETS), dtype=np.int64)
    offsets = np.empty(_BUCKETS, dtype=np.int64)
    for d in range(len(starts) - 1):
        byte_counts[:] = 0
        k = _keys(values, starts[d], starts[d + 1], a, byte_counts)
        _floats(b if _passes(a, b, k, byte_counts, offsets) else a, k, rows[d].view(np.uint64))
        for i in range(k, width):
            rows[d, i] = np.inf
        counts[d] = k

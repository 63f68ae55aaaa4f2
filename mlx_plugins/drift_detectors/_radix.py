"""Compiled (numba) least-significant-digit radix sort of float64 values, dropping non-finite ones.

:func:`finite_sort` is what :func:`~mlx_plugins.drift_detectors.stats.finite_sorted` does
(drop NaN and +/-inf, sort ascending) for a large column: 8 passes of 8 bits over the IEEE-754
bits mapped to unsigned integers that order as the floats do (sign bit set for positives, every
bit flipped for negatives), a pass skipped when every key has the same byte there; above
:data:`IN_CACHE` values, most significant bits first (:func:`_sort_large`). The sorted values
are the input's finite values, every one with its bits (``-0.0`` stays ``-0.0``, sorted before
``0.0``). ``np.sort`` gives the same values except, where numpy runs its AVX-512 sort, the sign
of some zeros (``np.sort(np.array([1.0, -0.0, 0.0, -1.0] * 5))`` keeps 2 of the 5 ``-0.0``);
nothing computed from a sorted sample depends on it unless every value is a zero.

Why not always ``np.sort``: numpy 2.4's float64 sort takes ~52 ns a value on the project's AMD
EPYC development machine, where this sort takes ~11; on its Intel Xeon (AVX-512) numpy's takes
~6 and this one ~13 (``benchmarks/bench_radix.py``; docs/drift.md, "Sorting on another CPU").
:func:`~mlx_plugins.drift_detectors.stats.radix_sorts_faster` picks one per process. This sort's
cost is linear in the values; it needs one scratch array as long as the input (8 bytes a value;
above :data:`IN_CACHE`, one more of up to 8 MiB reused for the parts) and releases the GIL, so
columns sort in parallel threads.

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
def _scatter_dominant(
    src: np.ndarray, dst: np.ndarray, k: int, shift: np.uint64, offsets: np.ndarray, top: int
) -> None:  # pragma: no cover - compiled
    """One stable scattering pass where the byte ``top`` holds at least half the keys: that
    bucket's next slot is kept in a register instead of ``offsets`` (each key of the same
    bucket as the one before would otherwise wait for the previous key's store to
    ``offsets``: ~1.9 ms a million keys when one bucket holds them all, ~0.7 ms this way)."""
    dominant = np.uint64(top)
    slot = offsets[top]
    for i in range(k):
        key = src[i]
        d = (key >> shift) & _MASK
        if d == dominant:
            dst[slot] = key
            slot += 1
        else:
            dst[offsets[d]] = key
            offsets[d] += 1


@_compiled
def _scatter_two_ends(
    src: np.ndarray, dst: np.ndarray, k: int, shift: np.uint64, lo: np.ndarray, hi: np.ndarray
) -> None:  # pragma: no cover - compiled
    """One stable scattering pass as two independent chains: the first half of ``src`` forward
    into each bucket's first free slot (``lo``), the second half backward into each bucket's
    last free slot (``hi``). Both keep the keys' order, and the two halves fill each bucket
    exactly, from the total counts alone. Two chains let the CPU overlap one key's wait on its
    bucket's slot with the other's: ~1.2 ms a million keys for any spread of bytes, where one
    chain takes 1.3 ms for uniform bytes and up to 3.4 ms for a few skewed buckets."""
    half = k >> 1
    for i in range(half):
        ka = src[i]
        kb = src[k - 1 - i]
        da = (ka >> shift) & _MASK
        db = (kb >> shift) & _MASK
        dst[lo[da]] = ka
        lo[da] += 1
        dst[hi[db]] = kb
        hi[db] -= 1
    if k & 1:  # the middle key: the one slot left is its bucket's
        key = src[half]
        dst[lo[(key >> shift) & _MASK]] = key


@_compiled
def _passes(
    a: np.ndarray, b: np.ndarray, k: int, counts: np.ndarray, offsets: np.ndarray
) -> bool:  # pragma: no cover - compiled
    """Sort the keys ``a[:k]`` (uint64) whose bytes ``counts`` counted (passes x buckets): one
    stable scattering pass per byte position where the keys differ, between ``a`` and ``b``;
    ``offsets`` (int64, 2 x buckets) is overwritten. Returns whether the sorted keys ended in
    ``b`` (else in ``a``).

    A pass where one byte holds at least half the keys runs :func:`_scatter_dominant`, any
    other :func:`_scatter_two_ends` (per pass, on this project's AMD EPYC, a million keys:
    normal values' byte 6 with 68 skewed buckets 3.4 -> 1.2 ms, their byte 7 with one outlier
    1.9 -> 0.7 ms, uniform bytes 1.3 -> 1.2 ms)."""
    in_b = False
    lo = offsets[0]
    hi = offsets[1]
    for p in range(_PASSES):
        top = 0
        for d in range(_BUCKETS):
            if counts[p, d] > counts[p, top]:
                top = d
        if counts[p, top] == k:  # every key has the same byte here: nothing would move
            continue
        total = 0
        for d in range(_BUCKETS):
            lo[d] = total
            total += counts[p, d]
            hi[d] = total - 1
        shift = np.uint64(_BITS * p)
        src, dst = (b, a) if in_b else (a, b)
        if 2 * counts[p, top] >= k:
            _scatter_dominant(src, dst, k, shift, lo, top)
        else:
            _scatter_two_ends(src, dst, k, shift, lo, hi)
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


IN_CACHE = 1 << 20
"""Up to this many keys, :func:`finite_sort` sorts by LSD passes over the whole array (its two
arrays, 16 MiB, stay in the caches); above it, most-significant bytes first partition the keys
into parts of at most this many, each then sorted by LSD passes while in cache. On the
project's 2-vCPU Intel Xeon development VM, a scattering pass takes ~1.2 ns a key up to 2M
keys and 2.9-3.4 ns a key from 3M (``benchmarks/bench_drift.py``; docs/drift.md)."""


@_compiled
def _scatter(
    src: np.ndarray, dst: np.ndarray, lo: int, hi: int, shift: np.uint64, offsets: np.ndarray
) -> None:  # pragma: no cover - compiled
    """Scatter the keys ``src[lo:hi]`` into ``dst`` by their byte at ``shift``, each to
    ``offsets[byte]`` (absolute indices, advanced): the one-chain pass, which out of cache
    beats :func:`_scatter_two_ends` (whose two chains write twice as many places at once)."""
    for i in range(lo, hi):
        key = src[i]
        d = (key >> shift) & _MASK
        dst[offsets[d]] = key
        offsets[d] += 1


@_compiled
def _sort_part(
    a: np.ndarray,
    b: np.ndarray,
    out: np.ndarray,
    top: int,
    live: np.ndarray,
    counts: np.ndarray,
    offsets: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Sort the keys ``a`` (uint64), which agree on every byte above ``top`` and on every byte
    ``p`` where ``live[p]`` is false, by LSD passes over the other bytes between ``a`` and
    ``b[:len(a)]``; their floats into ``out`` (a uint64 view as long as ``a``; may be ``a``).
    ``b`` is best one buffer reused for every part: it stays in cache, where a fresh range of
    a large array would be fetched from memory before each write."""
    k = len(a)
    counts[:] = 0
    for p in range(_PASSES):
        if p > top or not live[p]:
            counts[p, 0] = k  # the same byte in every key: the pass is skipped
    for i in range(k):
        key = a[i]
        for p in range(top + 1):
            if live[p]:
                counts[p, (key >> np.uint64(_BITS * p)) & _MASK] += 1
    b = b[:k]
    _floats(b if _passes(a, b, k, counts, offsets) else a, k, out)


_TOP_BITS = 16
_TOP_SHIFT = np.uint64(64 - _TOP_BITS)
_TOP_STREAMS = 256
"""The most buckets of the keys' top 16 bits that the first pass of :func:`_sort_large` writes
at once; with more in use, it partitions by the top byte alone (256 buckets), as a pass over
more places at once is slower."""
_TWO_ENDS_STREAMS = 128
"""Up to this many buckets in use, the first pass of :func:`_sort_large` runs as two chains
(:func:`_scatter_floats_two_ends`): twice the places written at once, which pays for a few
skewed buckets and not for many."""


@_compiled
def _top_counts(
    values: np.ndarray, top: np.ndarray
) -> tuple[int, np.uint64, np.uint64]:  # pragma: no cover - compiled
    """Count the finite values of ``values`` by their keys' top 16 bits into ``top`` (65,536
    counts, added to); return ``(k, and, or)``: how many are finite, and the bitwise and / or
    of their keys (a byte is the same in every key where the two agree)."""
    src = values.view(np.uint64)
    k = 0
    every = ~np.uint64(0)
    some = np.uint64(0)
    for i in range(len(src)):
        bits = src[i]
        if bits & _EXPONENT == _EXPONENT:  # NaN or +/-inf
            continue
        key = bits ^ ((np.uint64(0) - (bits >> np.uint64(63))) | _SIGN)
        every &= key
        some |= key
        top[key >> _TOP_SHIFT] += 1
        k += 1
    return k, every, some


@_compiled
def _scatter_floats(
    values: np.ndarray, dst: np.ndarray, shift: np.uint64, offsets: np.ndarray, dominant: int
) -> None:  # pragma: no cover - compiled
    """Map the finite values of ``values`` to keys and scatter them into ``dst`` by
    ``key >> shift``, each to ``offsets[digit]`` (advanced); the bucket ``dominant`` (-1: none)
    keeps its slot in a register, as in :func:`_scatter_dominant`."""
    src = values.view(np.uint64)
    main = np.uint64(max(dominant, 0))
    slot = offsets[max(dominant, 0)]
    for i in range(len(src)):
        bits = src[i]
        if bits & _EXPONENT == _EXPONENT:
            continue
        key = bits ^ ((np.uint64(0) - (bits >> np.uint64(63))) | _SIGN)
        d = key >> shift
        if dominant >= 0 and d == main:
            dst[slot] = key
            slot += 1
        else:
            dst[offsets[d]] = key
            offsets[d] += 1


@_compiled
def _scatter_floats_two_ends(
    values: np.ndarray, dst: np.ndarray, shift: np.uint64, lo: np.ndarray, hi: np.ndarray
) -> None:  # pragma: no cover - compiled
    """:func:`_scatter_floats` as the two chains of :func:`_scatter_two_ends`: the first half of
    ``values`` forward from each bucket's first slot (``lo``), the second backward from its
    last (``hi``); the two fill each bucket exactly, as non-finite values are skipped by
    both. It pays for few buckets in use, not for many (5M keys, out of cache, on the
    development VM: normal values' 85 skewed buckets 22-23 -> 10-12 ms, 16 even ones 22 ->
    8-10 ms; 112-219 buckets 18-23 ms either way)."""
    src = values.view(np.uint64)
    n = len(src)
    half = n >> 1
    for i in range(half):
        ba = src[i]
        bb = src[n - 1 - i]
        if ba & _EXPONENT != _EXPONENT:
            ka = ba ^ ((np.uint64(0) - (ba >> np.uint64(63))) | _SIGN)
            da = ka >> shift
            dst[lo[da]] = ka
            lo[da] += 1
        if bb & _EXPONENT != _EXPONENT:
            kb = bb ^ ((np.uint64(0) - (bb >> np.uint64(63))) | _SIGN)
            db = kb >> shift
            dst[hi[db]] = kb
            hi[db] -= 1
    if n & 1:
        bits = src[half]
        if bits & _EXPONENT != _EXPONENT:
            key = bits ^ ((np.uint64(0) - (bits >> np.uint64(63))) | _SIGN)
            dst[lo[key >> shift]] = key


@_compiled
def _sort_large(
    values: np.ndarray, out: np.ndarray, scratch: np.ndarray, part_size: int
) -> int:  # pragma: no cover - compiled
    """:func:`finite_sort` for many values: ``out`` and ``scratch`` are uint64 views; returns
    ``k``. Parts larger than ``part_size`` (what :func:`finite_sort` passes: :data:`IN_CACHE`)
    are partitioned by their most significant bits where they differ, smaller ones (or ones
    left with one byte) sorted by :func:`_sort_part`, in cache.

    A first read counts the keys' top 16 bits (and finds the bytes where all keys agree); a
    second maps the floats to keys and partitions them by those 16 bits (or by the top byte,
    when more than :data:`_TOP_STREAMS` of the 65,536 buckets are in use), so the keys are
    never written in the input's order. Each larger part is then partitioned by its next byte
    where its keys differ (a stack of parts, each ``(lo, hi, byte, in_scratch)``), the
    dominant bucket's slot in a register where one byte holds half the part."""
    top = np.zeros(1 << _TOP_BITS, dtype=np.int64)
    k, every, some = _top_counts(values, top)
    live = np.empty(_PASSES, dtype=np.bool_)  # the byte positions where some keys differ
    for p in range(_PASSES):
        live[p] = ((every ^ some) >> np.uint64(_BITS * p)) & _MASK != 0
    used = 0
    for d in range(1 << _TOP_BITS):
        if top[d]:
            used += 1
    stack = []
    if used <= _TOP_STREAMS:
        shift = _TOP_SHIFT
        counts = top
        next_byte = _PASSES - 3
    else:  # the top byte's counts: sums of 256 of the 16-bit counts
        shift = np.uint64(64 - _BITS)
        counts = np.zeros(_BUCKETS, dtype=np.int64)
        for d in range(1 << _TOP_BITS):
            counts[d >> _BITS] += top[d]
        next_byte = _PASSES - 2
    starts = np.empty(len(counts), dtype=np.int64)
    ends = np.empty(len(counts), dtype=np.int64)
    total = 0
    dominant = 0
    for d in range(len(counts)):
        starts[d] = total
        total += counts[d]
        ends[d] = total - 1
        if counts[d] > counts[dominant]:
            dominant = d
    if 2 * counts[dominant] >= k:
        _scatter_floats(values, scratch, shift, starts, dominant)
    elif used <= _TWO_ENDS_STREAMS:
        _scatter_floats_two_ends(values, scratch, shift, starts, ends)
    else:
        _scatter_floats(values, scratch, shift, starts, -1)
    start = 0
    for d in range(len(counts)):
        if counts[d]:
            stack.append((start, start + counts[d], next_byte, True))
            start += counts[d]
    offsets = np.empty((2, _BUCKETS), dtype=np.int64)
    part_counts = np.empty((_PASSES, _BUCKETS), dtype=np.int64)
    histogram = np.empty(_BUCKETS, dtype=np.int64)
    buffer = np.empty(0, dtype=np.uint64)  # sized to the largest part sorted in place
    while stack:
        lo, hi, p, in_scratch = stack.pop()
        src, dst = (scratch, out) if in_scratch else (out, scratch)
        while p > 0 and not live[p]:  # the same byte in every key: nothing to partition
            p -= 1
        if hi - lo <= part_size or p == 0:
            if len(buffer) < hi - lo:
                buffer = np.empty(hi - lo, dtype=np.uint64)
            _sort_part(src[lo:hi], buffer, out[lo:hi], p, live, part_counts, offsets)
            continue
        shift = np.uint64(_BITS * p)
        histogram[:] = 0
        for i in range(lo, hi):
            histogram[(src[i] >> shift) & _MASK] += 1
        main = histogram.argmax()
        if histogram[main] == hi - lo:  # one byte value in this part: the next byte
            stack.append((lo, hi, p - 1, in_scratch))
            continue
        part_starts = offsets[0]
        total = lo
        for d in range(_BUCKETS):
            part_starts[d] = total
            total += histogram[d]
        if 2 * histogram[main] >= hi - lo:
            _scatter_dominant(src[lo:hi], dst, hi - lo, shift, part_starts, main)
        else:
            _scatter(src, dst, lo, hi, shift, part_starts)
        start = lo
        for d in range(_BUCKETS):
            if histogram[d]:
                stack.append((start, start + histogram[d], p - 1, not in_scratch))
                start += histogram[d]
    return k


@_compiled
def finite_sort(
    values: np.ndarray, out: np.ndarray, scratch: np.ndarray
) -> int:  # pragma: no cover - compiled
    """Sort the finite values of ``values`` (float64, any order) ascending into ``out[:k]`` and
    return ``k``, their number. ``out`` and ``scratch`` (float64, each at least
    ``len(values)`` long, neither overlapping ``values``) are overwritten.

    One pass maps the finite values to keys (into ``scratch``) and counts every byte of every
    key. Up to :data:`IN_CACHE` keys, each byte position where the keys differ then takes one
    scattering pass, and a last pass maps the keys back to floats in ``out``; above it,
    :func:`_sort_large`."""
    a = scratch.view(np.uint64)
    dest = out.view(np.uint64)
    if len(values) > IN_CACHE:
        return _sort_large(values, dest, a, IN_CACHE)
    counts = np.zeros((_PASSES, _BUCKETS), dtype=np.int64)
    k = _keys(values, 0, len(values), a, counts)
    in_out = _passes(a, dest, k, counts, np.empty((2, _BUCKETS), dtype=np.int64))
    _floats(dest if in_out else a, k, dest)
    return k


@_compiled
def padded_rows(
    values: np.ndarray, starts: np.ndarray, rows: np.ndarray, counts: np.ndarray
) -> None:  # pragma: no cover - compiled
    """Row d of ``rows`` (float64, D x width) receives the finite values of
    ``values[starts[d]:starts[d + 1]]`` in their order, then +inf; ``counts[d]`` how many are
    finite: what ``rows.sort(axis=1)`` turns into :func:`sorted_padded_rows`' rows."""
    width = rows.shape[1]
    src = values.view(np.uint64)
    for d in range(len(starts) - 1):
        k = 0
        for i in range(starts[d], starts[d + 1]):
            if src[i] & _EXPONENT != _EXPONENT:  # not NaN or +/-inf
                rows[d, k] = values[i]
                k += 1
        for i in range(k, width):
            rows[d, i] = np.inf
        counts[d] = k


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
    offsets = np.empty((2, _BUCKETS), dtype=np.int64)
    for d in range(len(starts) - 1):
        byte_counts[:] = 0
        k = _keys(values, starts[d], starts[d + 1], a, byte_counts)
        _floats(b if _passes(a, b, k, byte_counts, offsets) else a, k, rows[d].view(np.uint64))
        for i in range(k, width):
            rows[d, i] = np.inf
        counts[d] = k

"""Compiled (numba) loops for :mod:`~mlx_plugins.drift_detectors.batch`: the per-value work of
:func:`~mlx_plugins.drift_detectors.stats.ecdf_distances_blocks` and the current's mean, std
and bin counts, for every current of a column in one pass per value instead of ~40 numpy
passes.

Each loop replays the numpy arithmetic of the one-current functions operation by operation
(no fast-math, so no reassociation or fused multiply-adds), and :func:`pairwise_sum` replays
numpy's pairwise summation (``np.add.reduce`` of a contiguous float64 array), so the results
are the same bits (``tests/drift/test_many.py`` compares the batched reports with the
one-current ones). Imported lazily (numba's import costs ~0.3 s); the compiled code is cached
on disk (``cache=True``), so only the first process after an install compiles (~2-3 s).
The loops release the GIL, so columns run in parallel threads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_PW_BLOCKSIZE = 128  # numpy's PW_BLOCKSIZE

_F = TypeVar("_F", bound=Callable[..., Any])


def _compiled(fn: _F) -> _F:
    """``fn`` compiled (nopython, GIL released, numpy's error model), cached on disk where numba
    finds a writable place (``NUMBA_CACHE_DIR``, the module's ``__pycache__`` or the user's cache
    folder); where none is writable (a read-only image with no writable home) it is compiled in
    memory once per process instead of failing with numba's "no locator available"."""
    try:
        return njit(cache=True, nogil=True, error_model="numpy")(fn)  # type: ignore[return-value]
    except RuntimeError as exc:
        if "no locator available" not in str(exc):
            raise
        return njit(nogil=True, error_model="numpy")(fn)  # type: ignore[return-value]


@_compiled
def _block(a: np.ndarray, lo: int, n: int) -> float:  # pragma: no cover - compiled
    """numpy's ``pairwise_sum`` of at most ``_PW_BLOCKSIZE`` values: 8 accumulators."""
    if n < 8:
        res = -0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    end = n - n % 8
    while i < end:
        p = lo + i
        r0 += a[p]
        r1 += a[p + 1]
        r2 += a[p + 2]
        r3 += a[p + 3]
        r4 += a[p + 4]
        r5 += a[p + 5]
        r6 += a[p + 6]
        r7 += a[p + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@_compiled
def _pairwise(a: np.ndarray, lo: int, n: int) -> float:  # pragma: no cover - compiled
    """numpy's recursive ``pairwise_sum`` (halves cut at a multiple of 8, blocks of at most
    128 values), as a loop over an explicit stack: numba's cache cannot load recursive
    functions (the loaded code crashes)."""
    if n <= _PW_BLOCKSIZE:
        return _block(a, lo, n)
    frames = np.empty((64, 3), dtype=np.int64)  # (lo, n, children done); depth <= 58
    values = np.empty(64)
    top, depth = 0, 0
    frames[0, 0], frames[0, 1], frames[0, 2] = lo, n, 0
    while top >= 0:
        f_lo, f_n, done = frames[top, 0], frames[top, 1], frames[top, 2]
        if f_n <= _PW_BLOCKSIZE:
            values[depth] = _block(a, f_lo, f_n)
            depth += 1
            top -= 1
            continue
        n2 = f_n // 2
        n2 -= n2 % 8
        if done == 0:
            frames[top, 2] = 1
            top += 1
            frames[top, 0], frames[top, 1], frames[top, 2] = f_lo, n2, 0
        elif done == 1:
            frames[top, 2] = 2
            top += 1
            frames[top, 0], frames[top, 1], frames[top, 2] = f_lo + n2, f_n - n2, 0
        else:
            depth -= 1
            values[depth - 1] = values[depth - 1] + values[depth]
            top -= 1
    return values[0]


@_compiled
def pairwise_sum(a: np.ndarray, n: int) -> float:  # pragma: no cover - compiled
    """``np.add.reduce(a[:n])`` of a contiguous float64 array, bit for bit."""
    return 0.0 + _pairwise(a, 0, n)


@_compiled
def _count_le(xs: np.ndarray, lo: int, hi: int, v: float) -> int:  # pragma: no cover
    """``lo + #{xs[lo:hi] <= v}`` for sorted ``xs``: a branch-free binary search."""
    size = hi - lo
    if size <= 0:
        return lo
    base = lo
    while size > 1:
        half = size >> 1
        base = base + half if xs[base + half] <= v else base
        size -= half
    return base + (1 if xs[base] <= v else 0)


@_compiled
def _upper_bound(xs: np.ndarray, lo: int, v: float) -> int:  # pragma: no cover - compiled
    """``np.searchsorted(xs, v, "right")`` for sorted ``xs`` with ``xs[:lo] <= v``: galloping
    from ``lo`` (the previous, smaller value's answer), so consecutive sorted values search
    the few cache lines between them instead of the whole array."""
    n = len(xs)
    if lo >= n or xs[lo] > v:
        return lo
    known, step = lo, 1  # xs[known] <= v
    while known + step < n and xs[known + step] <= v:
        known += step
        step <<= 1
    return _count_le(xs, known + 1, min(known + step, n), v)


@_compiled
def _lower_bound(xs: np.ndarray, lo: int, hi: int, v: float) -> int:  # pragma: no cover
    """``lo + #{xs[lo:hi] < v}`` for sorted ``xs`` (``np.searchsorted(xs, v, "left")`` when
    ``xs[:lo] < v <= xs[hi:]``), branch-free."""
    size = hi - lo
    if size <= 0:
        return lo
    base = lo
    while size > 1:
        half = size >> 1
        base = base + half if xs[base + half] < v else base
        size -= half
    return base + (1 if xs[base] < v else 0)


def _prefetch_intrinsic(typingctx: Any, array: Any, index: Any) -> Any:  # pragma: no cover
    """``_prefetch(a, i)`` in compiled code: asks the processor to bring the cache line holding
    element ``i`` of the C-contiguous array ``a`` (counted in its flat order) into the caches
    (LLVM's ``llvm.prefetch``: a read, kept in every level). A hint only: it changes no value,
    and an address outside the array does not fault; callers keep ``i`` within it anyway."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        # LLVM >= 15 (opaque pointers) names the intrinsic by "p0", older ones by "p0i8"
        name = "llvm.prefetch.p0" if str(address.type) == "ptr" else "llvm.prefetch.p0i8"
        fnty = ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)
        builder.call(fn, [address, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()

    return types.void(array, index), codegen


_prefetch = cast(Callable[[np.ndarray, int], None], intrinsic(_prefetch_intrinsic))

_AHEAD = 4
"""How many values ahead :func:`numeric_rows` prefetches the reference rows it will read."""


@_compiled
def numeric_rows(
    rows: np.ndarray,
    ms: np.ndarray,
    xs: np.ndarray,
    table: np.ndarray,
    qh: float,
    qg: float,
    exponent: int,
    edges: np.ndarray,
    sums: np.ndarray,
    ints: np.ndarray,
    counts: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """For each row d of ``rows`` (float64, sorted, its first ``ms[d] > 0`` values finite)
    against the sorted reference ``xs`` (n > 0 values; ``table``, quanta ``qh``, ``qg`` and
    ``exponent`` its :class:`~mlx_plugins.drift_detectors.stats.SplitPrefix`) writes
    ``sums[d] = (mean, population std, sum of the Wasserstein block terms)``,
    ``ints[d] = (KS max gap, values not in the reference)`` and ``counts[d]`` (the bin counts
    at the interior ``edges``, right-closed).

    Per value the loop reads ``table`` at the ends of the value's quantile block and where the
    value falls in ``xs``: cache misses, as a reference column's arrays (~7.5 MB at 190k values)
    outgrow the core's caches. The block of the value ``_AHEAD`` later is known in advance (the
    blocks advance by ``n / m`` rows), and its place in ``xs`` is guessed as that many blocks
    on, so both are prefetched. The block ends come from a running quotient (no integer
    division per value), and the divisions by the quanta are multiplications by their exact
    reciprocals."""
    n = len(xs)
    nf = float(n)
    x_lo, x_hi = xs[0], xs[n - 1]
    n_edges = len(edges)
    flat = table.reshape(-1)
    # the quanta are powers of two within 2**+-1000, so 1/q is exact and x * (1/q) rounds
    # the same real number as x / q: the same bits, without a division's latency
    inv_qh, inv_qg = 1.0 / qh, 1.0 / qg
    buf = np.empty(rows.shape[1])
    for d in range(rows.shape[0]):
        m = ms[d]
        y = rows[d]
        mf = float(m)
        # -- mean and population std (np.mean, np.std's two passes) --------------------------
        mean = (0.0 + _pairwise(y, 0, m)) / mf
        for j in range(m):
            dev = y[j] - mean
            buf[j] = dev * dev
        std = math.sqrt((0.0 + _pairwise(buf, 0, m)) / mf)
        # -- KS gap, distinct values, Wasserstein block terms, bins: one pass ---------------
        max_gap = 0
        new_values = 0
        rx = 0
        edge = 0
        step_q, step_r = n // m, n % m
        ahead = _AHEAD * step_q
        q, r = 0, 0  # j * n == q * m + r, 0 <= r < m
        for j in range(m):
            v = y[j]
            first = j == 0 or v != y[j - 1]
            last = j == m - 1 or v != y[j + 1]
            # rx = #xs <= v (ys ascend, so rx never decreases)
            below = rx  # #xs <= the previous value < v (0 for the first): #xs < v >= it
            rx = _upper_bound(xs, rx, v)
            if last:
                gap = abs(m * rx - n * (j + 1))
                if gap > max_gap:
                    max_gap = gap
            if first:
                lx = rx
                if rx > 0 and xs[rx - 1] == v:
                    lx = _lower_bound(xs, below, rx, v)
                gap = abs(m * lx - n * j)
                if gap > max_gap:
                    max_gap = gap
                if lx == rx:
                    new_values += 1
            # the quantile blocks (ecdf_distances_blocks, the same operations in order)
            lo = j * n
            i_first = q  # lo // m
            q += step_q
            r += step_r
            if r >= m:
                q += 1
                r -= m
            i_last = q if r else q - 1  # (lo + n + m - 1) // m - 1
            _prefetch(flat, 4 * min(i_last + ahead + 2, n))
            _prefetch(xs, min(rx + ahead, n - 1))
            if i_first == i_last:
                w_first = nf
                w_last = 0.0
            else:
                w_first = float((i_first + 1) * m - lo)
                w_last = float(lo + n - i_last * m)
            a = i_first + 1
            b = max(i_last, a)
            k = min(max(rx, a), b)
            total = w_first * abs(table[i_first, 3] - v)
            total = total + w_last * abs(table[i_last, 3] - v)
            inside = min(max(v, x_lo), x_hi)
            outside = v - inside
            scaled = math.ldexp(inside, -exponent) if exponent else inside
            yh = np.rint(scaled * inv_qh) * qh  # scaled / qh
            rest = scaled - yh
            yg = np.rint(rest * inv_qg) * qg  # rest / qg
            yl = rest - yg
            left = float(k - a)
            right = float(b - k)
            hk, gk, lk = table[k, 0], table[k, 1], table[k, 2]
            below_y = (left * yh - (hk - table[a, 0])) + (left * yg - (gk - table[a, 1]))
            below_y = below_y + (left * yl - (lk - table[a, 2]))
            above_y = ((table[b, 0] - hk) - right * yh) + ((table[b, 1] - gk) - right * yg)
            above_y = above_y + ((table[b, 2] - lk) - right * yl)
            runs = below_y + above_y
            if exponent:
                runs = math.ldexp(runs, exponent)
            runs = runs + (left * outside - right * outside)
            buf[j] = total + mf * runs
            # bins: #edges < v
            while edge < n_edges and edges[edge] < v:
                edge += 1
            counts[d, edge] += 1
        sums[d, 0] = mean
        sums[d, 1] = std
        sums[d, 2] = 0.0 + _pairwise(buf, 0, m)
        ints[d, 0] = max_gap
        ints[d, 1] = new_values


@_compiled
def split_prefix(
    xs: np.ndarray, scaled: np.ndarray, qh: float, qg: float, table: np.ndarray
) -> int:  # pragma: no cover - compiled
    """:meth:`~mlx_plugins.drift_detectors.stats.SplitPrefix.of_sorted`'s passes in one: the
    prefix sums (``np.cumsum``'s sequential adds, after a leading 0.0) of the parts of
    ``scaled`` (``xs`` times a power of two) into columns 0, 1, 2 (h, g, low) of ``table``
    (float64, ``(len(xs) + 1, 4)``), ``xs`` into column 3 (NaN in the last row); returns the
    number of distinct values of the sorted ``xs``."""
    n = len(xs)
    table[0, 0], table[0, 1], table[0, 2] = 0.0, 0.0, 0.0
    table[n, 3] = np.nan
    distinct = 1 if n else 0
    for i in range(n):
        v = scaled[i]
        hv = np.rint(v / qh) * qh
        rest = v - hv
        gv = np.rint(rest / qg) * qg
        rest = rest - gv
        table[i, 3] = xs[i]
        if i == 0:
            table[1, 0], table[1, 1], table[1, 2] = hv, gv, rest
        else:
            table[i + 1, 0] = table[i, 0] + hv
            table[i + 1, 1] = table[i, 1] + gv
            table[i + 1, 2] = table[i, 2] + rest
            if xs[i] != xs[i - 1]:
                distinct += 1
    return distinct


_CHUNK = 1 << 16  # stats._CHUNK: the chunk the numpy code sums at a time


@_compiled
def mean_std(
    values: np.ndarray, lo: int, n: int, buf: np.ndarray
) -> tuple[float, float]:  # pragma: no cover - compiled
    """:func:`~mlx_plugins.drift_detectors.stats.mean_std` of ``values[lo:lo + n]`` (n > 0),
    bit for bit: ``np.mean``, then the squared deviations summed a chunk of ``_CHUNK`` at a
    time, each chunk as ``np.sum``. ``buf`` (float64, at least ``min(n, _CHUNK)``) is
    overwritten."""
    mean = (0.0 + _pairwise(values, lo, n)) / float(n)
    total = 0.0
    for start in range(0, n, _CHUNK):
        size = min(_CHUNK, n - start)
        base = lo + start
        for j in range(size):
            dev = values[base + j] - mean
            buf[j] = dev * dev
        total += 0.0 + _pairwise(buf, 0, size)
    return mean, math.sqrt(total / float(n))


_LANES = 4  # merge chains advanced together by :func:`ecdf_merged`
MERGE_BUFFER = _LANES * _CHUNK
"""The scratch :func:`ecdf_merged` needs (float64 values; fewer when the samples hold fewer)."""


@_compiled
def _merge_split(z: np.ndarray, n: int, m: int, d: int) -> int:  # pragma: no cover - compiled
    """How many x (``z[:n]``) are among the first ``d`` values of the stable merge of the sorted
    ``z[:n]`` and ``z[n:n + m]`` (x first among equal values): the merge path's split, by binary
    search."""
    lo = max(0, d - m)
    hi = min(d, n)
    # the largest i with: x[i-1] <= y[d-i] (or no such y)
    while lo < hi:
        mid = (lo + hi + 1) >> 1
        if d - mid >= m or z[mid - 1] <= z[n + d - mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@_compiled
def _merge_start(
    z: np.ndarray, n: int, m: int, k: int
) -> tuple[int, int, int, float]:  # pragma: no cover - compiled
    """The merge's state just after its k-th value (0-based): ``(next x index, next y index in
    z, scaled ECDF gap, the k-th value)``."""
    d = k + 1
    i = _merge_split(z, n, m, d)
    jy = d - i
    gap = m * i - n * jy
    if i == 0:
        value = z[n + jy - 1]
    elif jy == 0:
        value = z[i - 1]
    else:  # the later of the two in the merge: the y when they are equal
        value = z[i - 1] if z[i - 1] > z[n + jy - 1] else z[n + jy - 1]
    return i, n + jy, gap, value


@_compiled
def _merge_step(
    z: np.ndarray, n: int, total: int, i: int, j: int, gap: int, prev: float
) -> tuple[int, int, int, float, int, float]:  # pragma: no cover - compiled
    """One value of the merge after the state ``(i, j, gap, prev)``: the new state and
    ``(|gap| before it, step)``; either sample may be exhausted."""
    if i < n and (j >= total or z[i] <= z[j]):
        return i + 1, j, gap + total - n, z[i], abs(gap), z[i] - prev
    return i, j + 1, gap - n, z[j], abs(gap), z[j] - prev


@njit(nogil=True, error_model="numpy", inline="always")
def _merge_step_inside(
    z: np.ndarray, n: int, total: int, i: int, j: int, gap: int, prev: float
) -> tuple[int, int, int, float, int, float]:  # pragma: no cover - compiled
    """:func:`_merge_step` where both samples have values left, without a branch: interleaved
    samples make the choice a coin toss that a branch predictor loses half the time, so the
    comparison's 0 or 1 picks the index arithmetically. Inlined into its caller (no cache of
    its own: it is compiled as part of :func:`ecdf_merged`)."""
    took_x = int(z[i] <= z[j])
    nxt = z[j + (i - j) * took_x]
    return i + took_x, j + 1 - took_x, gap + total * took_x - n, nxt, abs(gap), nxt - prev


@_compiled
def ecdf_merged(
    z: np.ndarray, n: int, m: int, buf: np.ndarray
) -> tuple[int, int, float]:  # pragma: no cover - compiled
    """:func:`~mlx_plugins.drift_detectors.stats._ecdf_of_merged` of the sorted samples
    ``z[:n]`` (x) and ``z[n:n + m]`` (y), both non-empty, in one merging pass and the same bits:
    ``(max KS gap, tied neighbours, sum |gap| * step)``. Ties between the samples put x first
    (a stable sort of the concatenation); the products are summed a chunk of ``_CHUNK`` at a
    time with numpy's pairwise summation, as the numpy code sums them, and the chunk sums are
    added in order. ``buf`` (float64, at least ``min(n + m - 1, MERGE_BUFFER)``) is overwritten.

    A merge is a chain of dependent steps (which value comes next depends on the last choice).
    Here ``_LANES`` consecutive chunks are merged together, each from its own start found by
    binary search (the merge path), so the processor overlaps independent chains; where no
    chain of the group can run out of either sample, each step chooses without a branch
    (:func:`_merge_step_inside`). ~3.5 ns a value on the development machine, against ~8 for
    one branching chain."""
    total = n + m
    products = total - 1
    chunks = (products + _CHUNK - 1) // _CHUNK
    max_gap = 0
    ties = 0
    dot = 0.0
    c = 0
    while c + _LANES <= chunks and (c + _LANES) * _CHUNK <= products:
        i0, j0, g0, p0 = _merge_start(z, n, m, c * _CHUNK)
        i1, j1, g1, p1 = _merge_start(z, n, m, (c + 1) * _CHUNK)
        i2, j2, g2, p2 = _merge_start(z, n, m, (c + 2) * _CHUNK)
        i3, j3, g3, p3 = _merge_start(z, n, m, (c + 3) * _CHUNK)
        i_end, j_end, _, _ = _merge_start(z, n, m, (c + 4) * _CHUNK)
        if i_end >= n or j_end >= total:  # a chain may run out of a sample: one at a time
            break
        for t in range(_CHUNK):
            i0, j0, g0, p0, a0, s0 = _merge_step_inside(z, n, total, i0, j0, g0, p0)
            i1, j1, g1, p1, a1, s1 = _merge_step_inside(z, n, total, i1, j1, g1, p1)
            i2, j2, g2, p2, a2, s2 = _merge_step_inside(z, n, total, i2, j2, g2, p2)
            i3, j3, g3, p3, a3, s3 = _merge_step_inside(z, n, total, i3, j3, g3, p3)
            buf[t] = float(a0) * s0
            buf[_CHUNK + t] = float(a1) * s1
            buf[2 * _CHUNK + t] = float(a2) * s2
            buf[3 * _CHUNK + t] = float(a3) * s3
            r0, r1 = np.int64(s0 > 0), np.int64(s1 > 0)
            r2, r3 = np.int64(s2 > 0), np.int64(s3 > 0)
            max_gap = max(max_gap, a0 * r0, a1 * r1, a2 * r2, a3 * r3)
            ties += 4 - r0 - r1 - r2 - r3
        for lane in range(_LANES):
            dot += 0.0 + _pairwise(buf, lane * _CHUNK, _CHUNK)
        c += _LANES
    if c < chunks:  # the rest in one chain
        i0, j0, g0, p0 = _merge_start(z, n, m, c * _CHUNK)
        while c < chunks:
            size = min(_CHUNK, products - c * _CHUNK)
            for t in range(size):
                i0, j0, g0, p0, a0, s0 = _merge_step(z, n, total, i0, j0, g0, p0)
                buf[t] = float(a0) * s0
                if s0 > 0:
                    max_gap = max(max_gap, a0)
                else:
                    ties += 1
            dot += 0.0 + _pairwise(buf, 0, size)
            c += 1
    return max_gap, ties, dot

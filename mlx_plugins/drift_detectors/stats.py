"""Vectorised two-sample drift statistics.

Pure functions over numpy arrays (``finite_sorted``, ``category_counts`` and
``numeric_stats_of_series`` take polars series).
Nothing here loops over rows in Python: a numeric column is sorted once per side, and the
Kolmogorov-Smirnov statistic, the Wasserstein distance and the bin counts for PSI and
Jensen-Shannon all come from those two sorted arrays (one linear merge, plus binary searches of
the few bin edges). Results match scipy:

==========================  ================================================================
ours                        scipy
==========================  ================================================================
``ks_2samp_sorted``         ``scipy.stats.ks_2samp(x, y)`` (two-sided, ``method="auto"``)
``ecdf_distances`` (W)      ``scipy.stats.wasserstein_distance(x, y)``
``jensenshannon``           ``scipy.spatial.distance.jensenshannon(p, q)`` (natural log)
``chi2_homogeneity``        ``scipy.stats.chi2_contingency([ref, cur], correction=False)``
``chi2_goodness_of_fit``    ``scipy.stats.chisquare(cur, f_exp)`` (Evidently's test)
==========================  ================================================================

A reference compared with many currents is summarised once (:class:`NumericReference`,
:class:`CategoricalReference`); :func:`numeric_stats_prepared` and :func:`align_category_counts`
then give, bit for bit, what :func:`numeric_stats_of_series` and :func:`category_counts` give on
the raw reference, merging the current into the sorted reference by binary search
(:func:`ecdf_distances_by_search`).

scipy itself is imported lazily, and only for distribution tail functions (``kstwo.sf`` for
the asymptotic KS p-value, ``special.chdtrc`` for chi-square p-values).
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from mlx_plugins.drift_detectors.dtypes import comparable_float64

# The option types live in their own module, so stats and the detector don't import each other.
from mlx_plugins.drift_detectors.options import Binning, KSMethod

KS_TAIL = 1e-16
"""Below this bound on the asymptotic KS p-value, the limiting distribution is reported instead
of scipy's finite-n sum (see :func:`ks_pvalue`)."""

KS_EXACT_MAX_N = 10_000
"""``method="auto"`` computes the exact KS p-value when both samples have at most this many
values (scipy's ``MAX_AUTO_N``), the asymptotic one otherwise."""

_TRIM = 1e-30
"""Lattice-path probabilities below this are dropped from the exact KS recursion. The dropped
mass is below 1e-30 per cell, so the p-value moves by far less than 1e-12."""


# -- inputs ---------------------------------------------------------------------------------------
def finite_sorted(series: pl.Series, *, multithreaded: bool = False) -> np.ndarray:
    """The finite values of ``series`` as a sorted float64 array.

    Nulls, NaN and +/-inf are dropped (they count as missing): nulls before the sort, the rest
    by two binary searches after it (-inf sorts first, +inf and NaN last), so a clean column
    costs exactly one sort. Temporal columns are compared as nanoseconds (instants since the
    epoch in UTC, durations, times of day; see :func:`~mlx_plugins.drift_detectors.dtypes.
    comparable_float64`), whatever their unit or time zone. The sort is numpy's (vectorised:
    several times faster than polars' float sort here) on the calling thread, unless
    ``multithreaded`` (then polars' parallel sort): parallelism pays off across columns (see
    the detector's ``max_workers``), while a parallel sort of one column mostly burns CPU on a
    small machine. Where the compiled loops are loaded (:func:`compiled_loaded`) and the
    compiled radix sort is the faster of the two on this machine (:func:`radix_sorts_faster`),
    a column of at least :data:`COMPILED_COLUMN_MIN_VALUES` values is sorted by it instead (the
    same values).
    """
    s = comparable_float64(series)
    if s.null_count():
        s = s.drop_nulls()
    if (
        not multithreaded
        and len(s) >= COMPILED_COLUMN_MIN_VALUES
        and compiled_loaded()
        and radix_sorts_faster()
    ):
        from mlx_plugins.drift_detectors import _radix

        raw = np.ascontiguousarray(s.to_numpy(), dtype=np.float64)
        out = np.empty(len(raw))
        return out[: _radix.finite_sort(raw, out, np.empty(len(raw)))]
    values = s.sort(multithreaded=True).to_numpy() if multithreaded else np.sort(s.to_numpy())
    lo = int(np.searchsorted(values, -np.inf, side="right"))
    hi = int(np.searchsorted(values, np.inf, side="left"))
    return values[lo:hi]


_CATEGORY = "category"  # fixed names: a column may itself be called "reference" or "current"


_CODES_PER_VALUE = 4
"""A Categorical's codes are counted with ``np.bincount`` when its largest code is below this
many times its length (plus 65,536): a global category pool holding far more strings than the
column would make the count array larger than hashing the values."""


def _counted_codes(series: pl.Series) -> tuple[pl.Series, np.ndarray] | None:
    """Non-null values of a Categorical or Enum ``series`` counted by their physical codes:
    ``(categories as strings, int64 counts)``, in code order, only those present; ``None`` for
    any other dtype or a code range too sparse for an array of counts.

    The same counts as polars' ``value_counts`` (a hash table over the values), from
    ``np.bincount`` over the codes: ~3x faster on a million rows of a dozen categories (18.2
    against 5.5 ms). Needs polars' ``Series.cat.to`` (polars 2) to map codes back to their
    categories; with an older polars, ``None``."""
    if not isinstance(series.dtype, pl.Categorical | pl.Enum) or not _maps_codes():
        return None
    codes = series.to_physical().drop_nulls()
    if codes.is_empty():
        return pl.Series(_CATEGORY, [], dtype=pl.String), np.zeros(0, np.int64)
    top = codes.max()
    if not isinstance(top, int) or top >= _CODES_PER_VALUE * len(codes) + 65_536:
        return None
    counts = np.bincount(codes.to_numpy(), minlength=top + 1)
    present = np.flatnonzero(counts)
    # Series.cat.to takes the physical type: UInt8/16/32 by the dtype's number of categories
    names = pl.Series(_CATEGORY, present, dtype=codes.dtype).cat.to(series.dtype).cast(pl.String)
    return names, counts[present]


@functools.cache
def _maps_codes() -> bool:
    """Whether this polars maps physical codes back to categories (``Series.cat.to``, added in
    polars 2; the project allows polars >= 1.30)."""
    return callable(getattr(pl.Series([], dtype=pl.UInt32).cat, "to", None))


def _value_counts(series: pl.Series, name: str) -> tuple[pl.Series, pl.Series]:
    """``(category, count)`` columns of the non-null values of ``series`` (any dtype), the
    categories rendered as strings (String) and the counts named ``name`` (UInt32, as polars'
    ``value_counts`` gives them), in no particular order."""
    coded = _counted_codes(series)
    if coded is not None:
        names, counts = coded
        return names, pl.Series(name, counts, dtype=pl.UInt32)
    counted = series.alias(_CATEGORY).drop_nulls().value_counts(name=name)
    return counted.get_column(_CATEGORY).cast(pl.String), counted.get_column(name)


def category_value_counts(series: pl.Series, name: str = "reference") -> pl.DataFrame:
    """Non-null values of ``series`` rendered as strings (column ``category``, String) and their
    counts (column ``name``, UInt32), in no particular order: one side of
    :func:`category_counts`. Categorical and Enum columns are counted by their codes
    (:func:`_counted_codes`), others by polars' ``value_counts``."""
    return pl.DataFrame(_value_counts(series, name))


_SMALL_CATEGORIES = 4096
"""Up to this many categories on the two sides together, counts are aligned in Python (a
dict merge, microseconds); above it by a polars join (whose fixed cost is a few
milliseconds). Both give the same sorted categories and counts."""


def _count_dict(counts: pl.DataFrame, name: str) -> dict[str, int]:
    names, counted = counts.get_column(_CATEGORY).to_list(), counts.get_column(name).to_list()
    return dict(zip(names, counted, strict=True))


def align_category_counts(
    reference_counts: pl.DataFrame | dict[str, int], current: pl.Series
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """:func:`category_counts` with the reference side already counted by
    :func:`category_value_counts` (``name="reference"``), as that frame or as a
    ``{category: count}`` dict."""
    names, counted = _value_counts(current, "current")
    cur_names, cur_counts = names.to_list(), counted.to_list()
    if isinstance(reference_counts, dict) or (
        reference_counts.height + len(cur_names) <= _SMALL_CATEGORIES
    ):
        ref = (
            reference_counts
            if isinstance(reference_counts, dict)
            else _count_dict(reference_counts, "reference")
        )
        cur = dict(zip(cur_names, cur_counts, strict=True))
        # Python orders str by code point, as polars orders UTF-8 by bytes: the same order
        categories = sorted(ref.keys() | cur.keys())
        return (
            categories,
            np.fromiter((ref.get(c, 0) for c in categories), np.int64, len(categories)),
            np.fromiter((cur.get(c, 0) for c in categories), np.int64, len(categories)),
        )
    cur_frame = pl.DataFrame(
        {_CATEGORY: cur_names, "current": cur_counts},
        schema={_CATEGORY: pl.String, "current": pl.UInt32},
    )
    both = (
        reference_counts.join(cur_frame, on=_CATEGORY, how="full", coalesce=True)
        .fill_null(0)
        .sort(_CATEGORY)
    )
    return (
        both.get_column(_CATEGORY).to_list(),
        both.get_column("reference").to_numpy().astype(np.int64),
        both.get_column("current").to_numpy().astype(np.int64),
    )


def category_counts(
    reference: pl.Series, current: pl.Series
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Categories seen on either side (nulls dropped) with their reference and current counts.

    Categories are rendered as strings and sorted, so the result is deterministic. A category
    seen on one side only gets a count of 0 on the other.
    """
    return align_category_counts(category_value_counts(reference), current)


# -- Kolmogorov-Smirnov and Wasserstein from two sorted samples -----------------------------------
@dataclass(frozen=True, slots=True)
class ECDFDistances:
    ks_max_gap: int
    """``max |m * #x<=t - n * #y<=t|`` over all t: the KS statistic times ``n * m``, exact."""
    ks_statistic: float
    wasserstein: float
    n_unique: int
    """Distinct values over both samples."""


class Workspace:
    """Scratch buffers reused across columns: a float64 array and a bool array as long as the
    largest pair of columns seen so far.

    Fresh multi-megabyte numpy arrays cost page faults on first touch (often more than the
    arithmetic itself); a detector comparing many columns keeps one workspace per thread, so
    each column works in memory that is already mapped. Not thread-safe.
    """

    def __init__(self) -> None:
        self._size = 0
        self._values = np.empty(0)
        self._flags = np.empty(0, dtype=bool)
        self._ints = np.empty(0, dtype=np.int64)
        self._scratch = np.empty(0)

    def buffers(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(values, flags)``, each of length ``size``."""
        if size > self._size:
            self._values, self._flags = np.empty(0), np.empty(0, dtype=bool)  # free first
            self._values, self._flags = np.empty(size), np.empty(size, dtype=bool)
            self._size = size
        return self._values[:size], self._flags[:size]

    def scratch(self, size: int) -> np.ndarray:
        """A float64 array of length ``size`` kept apart from the others (the compiled path's
        chunk buffer, see :func:`~mlx_plugins.drift_detectors._fused.ecdf_merged`: at most 2
        MiB), so its pages are faulted in once per thread, not once per column."""
        if size > len(self._scratch):
            self._scratch = np.empty(size)
        return self._scratch[:size]

    def ints(self, size: int) -> np.ndarray:
        """An int64 array of length ``size``, kept apart from :meth:`buffers`: the merge against
        a prepared reference uses it, and the compiled sort as its scratch (viewed as float64,
        as long as the larger side): 8 more bytes per value of the larger side."""
        if size > len(self._ints):
            self._ints = np.empty(0, dtype=np.int64)
            self._ints = np.empty(size, dtype=np.int64)
        return self._ints[:size]


_CHUNK = 1 << 16


def mean_std(values: np.ndarray) -> tuple[float, float]:
    """``(mean, population std)`` as ``np.mean`` / ``np.std`` (Evidently normalises W by the
    latter), the squared deviations summed in cache-sized chunks instead of one temporary array
    as long as the data. ``(0.0, 0.0)`` for an empty array."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    mean = float(np.mean(values))
    scratch = np.empty(min(n, _CHUNK))
    total = 0.0
    for start in range(0, n, _CHUNK):
        chunk = values[start : start + _CHUNK]
        buf = scratch[: len(chunk)]
        np.subtract(chunk, mean, out=buf)
        np.multiply(buf, buf, out=buf)
        total += float(buf.sum())
    return mean, float(np.sqrt(total / n))


def ecdf_distances(
    xs: np.ndarray, ys: np.ndarray, workspace: Workspace | None = None
) -> ECDFDistances:
    """KS statistic and 1-Wasserstein distance of two sorted, non-empty, finite samples."""
    n, m = len(xs), len(ys)
    if n == 0 or m == 0:
        raise ValueError("ecdf_distances needs two non-empty samples")
    workspace = workspace or Workspace()
    z = workspace.buffers(n + m)[0]
    z[:n], z[n:] = xs, ys
    return _ecdf_distances_in_place(n, m, workspace)


def _ecdf_distances_in_place(n: int, m: int, workspace: Workspace) -> ECDFDistances:
    """:func:`ecdf_distances` of the samples sorted in ``workspace.buffers(n + m)[0]`` (first
    n: x, then m: y), which it overwrites.

    One stable argsort of the concatenation merges the two sorted runs in linear time (timsort
    finds the runs). Along the merged values z_k the scaled ECDF gap
    ``m * #x<=z_k - n * #y<=z_k`` is the running sum of ``+m`` for each x and ``-n`` for each
    y: int64, exact while n * m < 2**63 (about 3 billion values a side). The KS
    statistic is its largest absolute value at the last element of each group of tied values,
    and the Wasserstein distance is ``sum_k |gap_k| * (z_{k+1} - z_k)``, both divided by
    ``n * m``. About ten passes over the n + m values. The only new array is the argsort's;
    once each index is read, its slot holds the merged value, and later the gap.
    """
    _check_ecdf_size(n, m)
    total = n + m
    z, from_x = workspace.buffers(total)
    order = np.argsort(z, kind="stable")
    np.less(order, n, out=from_x)
    merged = order.view(np.float64)
    # in place over the indices: element k is read before slot k is written, and never again
    np.take(z, order, out=merged, mode="clip")
    return _ecdf_of_merged(n, m, order, from_x, z)


def ecdf_distances_by_search(
    xs: np.ndarray, ys: np.ndarray, workspace: Workspace | None = None
) -> ECDFDistances:
    """:func:`ecdf_distances`, bit for bit, merging by binary search instead of a sort: cheap
    when ``ys`` is much shorter than ``xs`` (a prepared reference against a small current).

    A stable argsort of ``[xs, ys]`` puts each y after every x <= y and after the ys before
    it, so y_j lands at ``searchsorted(xs, y_j, "right") + j`` and the xs fill the other slots
    in order: the same merged values and flags, then the same arithmetic as
    :func:`ecdf_distances`. Costs a fill of the flags and one masked copy of ``xs``, about a
    tenth of the argsort.
    """
    n, m = len(xs), len(ys)
    if n == 0 or m == 0:
        raise ValueError("ecdf_distances needs two non-empty samples")
    _check_ecdf_size(n, m)
    workspace = workspace or Workspace()
    total = n + m
    z, from_x = workspace.buffers(total)
    buf = workspace.ints(total)
    merged = buf.view(np.float64)
    pos = np.searchsorted(xs, ys, side="right")
    pos += np.arange(m, dtype=pos.dtype)
    from_x.fill(True)
    from_x[pos] = False
    merged[pos] = ys
    merged[from_x] = xs
    return _ecdf_of_merged(n, m, buf, from_x, z)


BLOCK_RATIO = 8
"""A sample with at most 1/8 as many values as the reference is compared by
:func:`ecdf_distances_blocks` (binary searches into the reference and prefix sums over it, no
pass over the reference), a larger one by merging the two (:func:`ecdf_distances`). Which one
depends only on the two sizes, so a prepared reference and a raw one give the same bits."""


_COMPILED_PREFIX_MIN = 1 << 14
""":meth:`SplitPrefix.of_sorted` of at least this many values runs compiled (numba, one pass
instead of eight: ~10x less time) when the compiled loops are already loaded in the process
(by a batched compare, see ``batch.COMPILED_MIN_VALUES``: their first use costs ~1 s, more
than this saves); otherwise in numpy. The same bits either way."""
_FUSED = "mlx_plugins.drift_detectors._fused"


def _aligned_rows(rows: int) -> np.ndarray:
    """An uninitialised C-contiguous ``(rows, 4)`` float64 array starting on a 64-byte boundary,
    so that each 32-byte row lies within one cache line."""
    raw = np.empty(4 * rows + 7)
    start = (-raw.ctypes.data % 64) // 8
    return raw[start : start + 4 * rows].reshape(rows, 4)


@dataclass(frozen=True, slots=True, eq=False)
class SplitPrefix:
    """Prefix sums of a sorted sample ``xs`` that give any ``sum(xs[a:b])`` to full precision.

    Each (scaled) value is split into three float64 parts ``x = h + g + l``: ``h`` a multiple
    of the quantum ``qh``, ``g`` of ``qg``, chosen so that every partial sum of the ``h`` (and of
    the ``g``) is an exact float64; only the ``l`` parts, below ``qg / 2`` (about 1e-30 of the
    largest value), are summed with rounding. The values are first multiplied by
    ``2**-exponent`` (``exponent`` 0 unless they are beyond 2**+-900).

    Built once per reference column, a few passes over the values, into one float64 array
    ``table`` of shape ``(len(xs) + 1, 4)``: row i holds the prefix sums of the first i values'
    parts (``h[i]``, ``g[i]``, ``low[i]``) and ``xs[i]`` (NaN in the last row); 32 bytes per
    value. Each row lies within one cache line, so the compiled loop, which reads all four at
    nearby indices (:func:`~mlx_plugins.drift_detectors._fused.numeric_rows`), loads one line
    where four separate arrays would need four.
    """

    table: np.ndarray
    qh: float
    qg: float
    exponent: int
    n_unique: int

    @property
    def h(self) -> np.ndarray:
        """Prefix sums of the ``h`` parts (``len(xs) + 1`` float64, a strided view)."""
        return self.table[:, 0]

    @property
    def g(self) -> np.ndarray:
        """Prefix sums of the ``g`` parts (``len(xs) + 1`` float64, a strided view)."""
        return self.table[:, 1]

    @property
    def low(self) -> np.ndarray:
        """Prefix sums of the ``l`` parts (``len(xs) + 1`` float64, a strided view)."""
        return self.table[:, 2]

    @classmethod
    def of_sorted(cls, xs: np.ndarray) -> SplitPrefix:
        n = len(xs)
        top = max(abs(float(xs[0])), abs(float(xs[-1]))) if n else 0.0
        exponent = math.frexp(top)[1] if (top > 2.0**900 or 0 < top < 2.0**-900) else 0
        scaled = np.ldexp(xs, -exponent) if exponent else xs
        top = math.ldexp(top, -exponent)
        # |sum of h| <= n * (top + qh/2) < 2**53 qh, and the same for g with qg: exact sums
        qh = 2.0 ** (math.ceil(math.log2((n + 1) * top)) - 50) if top > 0 else 1.0
        qg = 2.0 ** (math.ceil(math.log2((n + 1) * qh)) - 50)
        table = _aligned_rows(n + 1)
        if n >= _COMPILED_PREFIX_MIN and _FUSED in sys.modules:
            # the passes below in one compiled loop, the same arithmetic in the same order
            from mlx_plugins.drift_detectors import _fused

            xs64 = np.ascontiguousarray(xs, dtype=np.float64)
            scaled64 = np.ascontiguousarray(scaled, dtype=np.float64)
            n_unique = _fused.split_prefix(xs64, scaled64, qh, qg, table)
            return cls(table, qh, qg, exponent, n_unique)
        h = np.rint(scaled / qh)
        h *= qh
        rest = np.subtract(scaled, h)  # exact: |rest| <= qh/2 and qh >= ulp(x)
        g = np.rint(rest / qg)
        g *= qg
        rest -= g  # exact likewise; |rest| <= qg/2
        table[0, :3] = 0.0
        for column, part in enumerate((h, g, rest)):
            np.cumsum(part, out=table[1:, column])
        table[:n, 3] = xs
        table[n, 3] = np.nan
        return cls(table, qh, qg, exponent, _n_unique(xs))

    def split(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(h, g, l)`` of values within the range of the sample, split as the sample is."""
        scaled = np.ldexp(values, -self.exponent) if self.exponent else values
        h = np.rint(scaled / self.qh)
        h *= self.qh
        rest = np.subtract(scaled, h)
        g = np.rint(rest / self.qg)
        g *= self.qg
        rest -= g
        return h, g, rest


def ecdf_distances_blocks(
    xs: np.ndarray, ys: np.ndarray, prefix: SplitPrefix | None = None
) -> ECDFDistances:
    """:func:`ecdf_distances` of a sorted reference ``xs`` (n values) and a sorted sample ``ys``
    (m values) in O(m log n) once ``prefix`` (:meth:`SplitPrefix.of_sorted` of ``xs``) exists:
    nothing here passes over the reference.

    The KS gap and the distinct count are the same integers as the merge's: with ``rx``/``lx``
    the numbers of reference values <= / < each y (binary searches), the ECDF gap
    ``m * #x<=t - n * #y<=t`` is monotone between consecutive distinct y's, so its extremes are
    ``m * rx - n * #y<=y`` at each distinct y and ``m * lx - n * #y<y`` just below it.

    The Wasserstein distance is the area between the quantile functions,
    ``W = 1/(n m) sum_j sum_i w_ij |x_i - y_j|`` where ``w_ij`` is the overlap of
    ``(i m, (i+1) m]`` and ``(j n, (j+1) n]`` (integers): per y, two partly covered x's and a
    run of whole ones, whose ``sum |x_i - y|`` comes from the split prefix sums with no
    cancellation error (see :class:`SplitPrefix`). Every term is non-negative and carries a
    relative error of a few ulps, so W agrees with the merge and with
    ``scipy.stats.wasserstein_distance`` to about 1e-15 (relative), though not bit for bit.
    """
    n, m = len(xs), len(ys)
    if n == 0 or m == 0:
        raise ValueError("ecdf_distances needs two non-empty samples")
    _check_ecdf_size(n, m)
    if prefix is None:
        prefix = SplitPrefix.of_sorted(xs)
    rx = np.searchsorted(xs, ys, side="right")
    # -- KS gap and distinct values ------------------------------------------------------------
    last = np.empty(m, dtype=bool)  # last of a run of equal y's
    np.not_equal(ys[1:], ys[:-1], out=last[:-1])
    last[-1] = True
    first = np.empty(m, dtype=bool)
    first[0] = True
    first[1:] = last[:-1]
    j = np.arange(m, dtype=np.int64)
    # lx differs from rx only where a reference value equals y: search only those
    below = xs[np.maximum(rx - 1, 0)]
    equal = first & (rx > 0) & (below == ys)
    lx = rx.copy()
    if equal.any():
        lx[equal] = np.searchsorted(xs, ys[equal], side="left")
    gap_at = np.abs(m * rx - n * (j + 1))
    gap_below = np.abs(m * lx - n * j)
    max_gap = int(
        max(np.max(gap_at, where=last, initial=0), np.max(gap_below, where=first, initial=0))
    )
    n_unique = prefix.n_unique + int(np.count_nonzero(first & (lx == rx)))
    # -- Wasserstein over the quantile blocks ----------------------------------------------------
    lo = j * n
    i_first = lo // m
    i_last = (lo + n + m - 1) // m - 1
    single = i_first == i_last
    w_first = np.where(single, n, (i_first + 1) * m - lo).astype(np.float64)
    w_last = np.where(single, 0, lo + n - i_last * m).astype(np.float64)
    a = i_first + 1
    b = np.maximum(i_last, a)  # whole x's: [a, b)
    k = np.clip(rx, a, b)
    total = w_first * np.abs(xs[i_first] - ys)
    total += w_last * np.abs(xs[i_last] - ys)
    inside = np.clip(ys, xs[0], xs[-1])
    outside = ys - inside  # > 0 above the reference's range (then k = b), < 0 below (k = a)
    yh, yg, yl = prefix.split(inside)
    left = (k - a).astype(np.float64)
    right = (b - k).astype(np.float64)
    hk, gk, lk = prefix.h[k], prefix.g[k], prefix.low[k]
    # sum_{a<=i<k} (y - x_i) and sum_{k<=i<b} (x_i - y): exact h and g parts, then l
    below_y = (left * yh - (hk - prefix.h[a])) + (left * yg - (gk - prefix.g[a]))
    below_y += left * yl - (lk - prefix.low[a])
    above_y = ((prefix.h[b] - hk) - right * yh) + ((prefix.g[b] - gk) - right * yg)
    above_y += (prefix.low[b] - lk) - right * yl
    runs = below_y + above_y
    if prefix.exponent:
        runs = np.ldexp(runs, prefix.exponent)
    runs += left * outside - right * outside
    total += float(m) * runs
    nm = float(n) * float(m)
    return ECDFDistances(
        ks_max_gap=max_gap,
        ks_statistic=max_gap / nm,
        wasserstein=float(total.sum()) / nm,
        n_unique=n_unique,
    )


def _check_ecdf_size(n: int, m: int) -> None:
    if n * m >= 2**63:
        raise ValueError(f"samples of {n} and {m} values are too large for int64 ECDF gaps")


def _ecdf_of_merged(
    n: int, m: int, buf: np.ndarray, from_x: np.ndarray, scratch: np.ndarray
) -> ECDFDistances:
    """KS and Wasserstein from the merged samples: ``buf`` (int64, n + m) holds the merged
    values as float64 bits, ``from_x`` flags the x's; both are overwritten, and ``scratch``
    (float64, at least n + m - 1) receives the steps between consecutive values."""
    total = n + m
    merged = buf.view(np.float64)
    steps = np.subtract(merged[1:], merged[:-1], out=scratch[: total - 1])  # z_{k+1} - z_k
    gap = buf  # the merged values are spent: the slots now hold the integer gaps
    np.multiply(from_x, total, out=gap)
    np.subtract(gap, n, out=gap)  # +m for an x, -n for a y
    np.cumsum(gap, out=gap)  # integer adds: several times faster than a float cumsum
    np.abs(gap, out=gap)
    gap = gap[:-1]
    # the steps are >= 0 (or -0.0 between 0.0 and -0.0): a tie is a step that is not > 0;
    # counting the flags is several times faster than counting the nonzero floats
    last_of_ties = np.greater(steps, 0, out=from_x[:-1])
    ties = int(len(steps) - np.count_nonzero(last_of_ties))
    # only the last of tied values is a point where both ECDFs are evaluated
    max_gap = int(np.max(gap, where=last_of_ties, initial=0) if ties else gap.max())
    # sum |gap| * steps, converting the gaps to float a cache-sized chunk at a time (and
    # without BLAS, whose threads only add overhead on chunks this small)
    dot = 0.0
    chunk_buf = np.empty(min(len(gap), _CHUNK))
    for start in range(0, len(gap), _CHUNK):
        chunk = chunk_buf[: len(gap[start : start + _CHUNK])]
        np.copyto(chunk, gap[start : start + _CHUNK])
        np.multiply(chunk, steps[start : start + _CHUNK], out=chunk)
        dot += float(chunk.sum())
    nm = float(n) * float(m)
    return ECDFDistances(
        ks_max_gap=max_gap,
        ks_statistic=max_gap / nm,
        wasserstein=dot / nm,
        n_unique=total - ties,
    )


def ks_pvalue(
    max_gap: int, n: int, m: int, method: KSMethod = "auto", *, tail: float = KS_TAIL
) -> float:
    """Two-sided two-sample KS p-value, as ``scipy.stats.ks_2samp`` computes it.

    ``max_gap`` is the statistic times ``n * m`` (an integer). ``"exact"`` is scipy's exact
    computation, bit for bit (:func:`_scipy_exact_pvalue`: its alternating sum for equal sizes,
    its compiled lattice recursion for the complement otherwise), with scipy's own fallback to
    ``kstwo.sf`` where that sum rounds outside [0, 1], and scipy's switch to ``"asymp"`` where
    ``lcm(n, m)`` exceeds int32; ``"asymp"`` uses the Kolmogorov-Smirnov distribution
    ``kstwo`` at the effective sample size ``round(n*m/(n+m))``; ``"auto"`` is exact when
    ``max(n, m) <= 10000``. With one value a side the effective size rounds to 0, where scipy's
    asymptotic p-value is NaN; this uses the exact one (1.0) instead.

    The asymptotic value is scipy's own ``kstwo.sf`` arithmetic for ``D = max_gap / (n * m)``
    (its scalar kernel called directly, without the distribution object's per-call overhead).
    scipy's ``ks_2samp`` takes D as a difference of two rounded ECDF values instead, which may
    differ from this D in the last bit, and the p-value's slope magnifies that: the two agree
    to ~1e-13 relative and below 1e-14 absolute, not always bit for bit (x = [1.0],
    y = [0, 2, 3], ``"asymp"``: 0.6666666666666667 here, 0.6666666666666665 in scipy; a
    190,000-row reference against a 900-row day shifted by 0.13 std: 1.1035821463113639e-05
    here, 1.1035821463113368e-05 in scipy, 2.5e-14 relative). Far in the tail, where Massart's bound
    ``2 exp(-2 en D**2)`` (which scipy's value never exceeds) is below ``tail`` (default 1e-16),
    the p-value is the limiting Kolmogorov distribution ``scipy.special.kolmogorov(sqrt(en) D)``,
    also below the bound, so at most ``tail`` from scipy's. There scipy sums about ``en`` terms
    (0.5 s at en = 500,000) for a p-value that cannot change any decision at a threshold above
    ``tail``.
    """
    if n <= 0 or m <= 0:
        raise ValueError("ks_pvalue needs two non-empty samples")
    return _ks_pvalue_cached(int(max_gap), int(n), int(m), method, float(tail))


def clear_caches() -> None:
    """Forget the cached KS p-values (benchmarks use it, so that a repeated run pays what the
    first one did)."""
    _ks_pvalue_cached.cache_clear()


@functools.lru_cache(maxsize=4096)
def _ks_pvalue_cached(max_gap: int, n: int, m: int, method: KSMethod, tail: float) -> float:
    big, small = max(n, m), min(n, m)
    en = float(big) * float(small) / (float(big) + float(small))
    if method == "auto":
        method = "exact" if big <= KS_EXACT_MAX_N else "asymp"
    g = math.gcd(n, m)
    if method == "exact" and n // g >= _INT32_MAX / (m // g):
        method = "asymp"  # scipy: lcm(n, m) too large for its exact path
    if method == "exact" or np.round(en) < 1:  # n = m = 1: kstwo(0) is undefined (scipy: NaN)
        prob = _scipy_exact_pvalue(n, m, g, max_gap)
        if 0.0 <= prob <= 1.0:
            return prob
        # where the exact sum rounds outside [0, 1] (a p-value of 1 summed to 1 + 2**-52, e.g.
        # n = m = 7 and D = 1/7), scipy calls the exact calculation "unsuccessful" and reports
        # kstwo.sf at the effective size instead: so does this
        return _kstwo_sf((max_gap // g) / ((n // g) * m), float(np.round(en)))
    d = max_gap / (float(n) * float(m))
    size = float(np.round(en))
    if size > 140 and 2.0 * math.exp(-2.0 * size * d * d) < tail:
        from scipy.special import kolmogorov

        return float(np.clip(kolmogorov(math.sqrt(size) * d), 0.0, 1.0))
    return _kstwo_sf(d, size)


_INT32_MAX = 2**31 - 1


def _scipy_exact_pvalue(n: int, m: int, g: int, max_gap: int) -> float:
    """The exact two-sided p-value as ``scipy.stats.ks_2samp`` computes it, possibly just
    outside [0, 1] as scipy's own sums round (the caller falls back as scipy does): for equal
    sizes :func:`_prob_outside_square`, otherwise scipy's compiled lattice recursion for the
    complement (``_compute_outer_prob_inside_method``, Viehmann's numerically stable form,
    accurate down to the smallest p-values), imported from a private module; where a scipy
    lacks it, :func:`_ks_exact_pvalue` (the inside probability, so small p-values lose digits
    to cancellation)."""
    if max_gap <= 0:
        return 1.0
    if n == m:
        return _prob_outside_square(n, max_gap // n)
    try:
        from scipy.stats._stats_pythran import _compute_outer_prob_inside_method
    except ImportError:  # pragma: no cover - a scipy that moved it
        return _ks_exact_pvalue(n, m, max_gap)
    return float(_compute_outer_prob_inside_method(n, m, g, max_gap // g))


def _prob_outside_square(n: int, h: int) -> float:
    """P(D >= h/n) for two samples of n values each: scipy's ``_compute_prob_outside_square``
    (``2 * A0 * (1 - A1 * (1 - A2 * (...)))`` by Horner, each A a product of h ratios), the same
    arithmetic in the same order, so the same bits; O(n) float operations. It may round just
    outside [0, 1], which :func:`_ks_pvalue_cached` checks as scipy does."""
    total = 0.0
    k = n // h
    while k >= 0:
        p1 = 1.0
        for j in range(h):
            p1 = (n - k * h - j) * p1 / (n + k * h + j + 1)
        total = p1 * (1.0 - total)
        k -= 1
    return 2 * total


def _kstwo_sf(d: float, size: float) -> float:
    """``scipy.stats.kstwo.sf(d, size)``, bit for bit: scipy's scalar kernel ``_kolmogn``
    where it can be imported (a private name), the public distribution otherwise."""
    try:
        from scipy.stats._ksstats import _kolmogn
    except ImportError:  # pragma: no cover - a scipy that moved its kernel
        from scipy.stats import kstwo

        return float(np.clip(kstwo.sf(d, size), 0.0, 1.0))
    if d <= 0.5 / size:  # kstwo's support starts at 1/(2n): sf is 1 below it
        return 1.0
    if d >= 1.0:
        return 0.0
    return float(np.clip(_kolmogn(int(size), d, cdf=False), 0.0, 1.0))


def _ks_exact_pvalue(n: int, m: int, max_gap: int) -> float:
    """P(KS gap >= max_gap) for continuous data: one minus the probability that a uniformly
    random monotone lattice path from (0, 0) to (n, m) keeps ``|m*x - n*y| < max_gap``.

    q holds, for the points (x, d - x) of anti-diagonal d, the probability that the random path
    reaches that point without having left the band. Moving from diagonal d-1 to d, the path
    takes an x step with probability (n - x) / (n + m - d + 1). The loop is over the n + m
    diagonals (at most 20,000 under ``method="auto"``), each step one vector operation on the
    band, which is trimmed where the probability underflows.
    """
    if max_gap <= 0:
        return 1.0
    total = n + m
    lo, hi = 0, 0
    q = np.ones(1)
    for d in range(1, total + 1):
        a = max(lo, d - m, (n * d - max_gap) // total + 1)
        b = min(hi + 1, n, d, -(-(n * d + max_gap) // total) - 1)
        if a > b:
            return 1.0
        padded = np.zeros(len(q) + 2)
        padded[1:-1] = q
        x = np.arange(a, b + 1, dtype=np.float64)
        left = padded[a - lo : b - lo + 1]  # from (x-1, y)
        stay = padded[a - lo + 1 : b - lo + 2]  # from (x, y-1)
        q = (left * (n + 1 - x) + stay * (m - d + 1 + x)) / (total - d + 1)
        lo, hi = a, b
        if q[0] < _TRIM or q[-1] < _TRIM:
            keep = np.flatnonzero(q >= _TRIM)
            if keep.size == 0:
                return 1.0
            lo, hi = lo + int(keep[0]), lo + int(keep[-1])
            q = q[keep[0] : keep[-1] + 1]
    inside = float(q[n - lo]) if lo <= n <= hi else 0.0
    return float(min(max(1.0 - inside, 0.0), 1.0))


def ks_2samp_sorted(
    xs: np.ndarray, ys: np.ndarray, method: KSMethod = "auto"
) -> tuple[float, float]:
    """``(statistic, p_value)`` of the two-sided two-sample KS test on sorted samples."""
    dist = ecdf_distances(xs, ys)
    return dist.ks_statistic, ks_pvalue(dist.ks_max_gap, len(xs), len(ys), method)


# -- bins fixed on the reference ------------------------------------------------------------------
def reference_edges(xs: np.ndarray, bins: int, binning: Binning = "quantile") -> np.ndarray:
    """Interior bin edges fixed on the sorted reference ``xs``.

    ``"quantile"``: edge k (k = 1..bins-1) is the ceil(k*n/bins)-th smallest reference value, so
    each of the right-closed bins ``(-inf, e1], (e1, e2], ..., (e_last, inf)`` holds about n/bins
    reference values; tied edges are merged (a column with few distinct values gets fewer bins).
    ``"equal_width"``: ``bins`` equal slices of ``[min, max]`` of the reference. The outer bins
    are open, so current values outside the reference range land in the first or last bin.
    """
    n = len(xs)
    if n == 0 or bins < 2:
        return np.empty(0)
    if binning == "quantile":
        k = np.arange(1, bins, dtype=np.int64)
        idx = (k * n + bins - 1) // bins - 1
        return np.unique(xs[idx])
    lo, hi = float(xs[0]), float(xs[-1])
    if hi == lo:
        return np.array([lo])
    return np.unique(lo + (hi - lo) * np.arange(1, bins) / bins)


def bin_counts(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of a sorted sample in the right-closed bins cut at ``edges`` (len(edges)+1 bins):
    a binary search per edge, no pass over the data."""
    cum = np.searchsorted(sorted_values, edges, side="right")
    return np.diff(np.concatenate(([0], cum, [len(sorted_values)]))).astype(np.int64)


# -- distances between two histograms -------------------------------------------------------------
def psi(ref_counts: np.ndarray, cur_counts: np.ndarray, epsilon: float = 1e-4) -> float:
    """Population Stability Index ``sum((q - p) * ln(q / p))`` of the bin shares p (reference)
    and q (current). Shares are floored at ``epsilon`` so an empty bin gives a large finite
    term instead of infinity. 0.0 when either side is empty."""
    ref_total, cur_total = ref_counts.sum(), cur_counts.sum()
    if ref_total == 0 or cur_total == 0:
        return 0.0
    p = np.maximum(ref_counts / ref_total, epsilon)
    q = np.maximum(cur_counts / cur_total, epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def jensenshannon(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """Jensen-Shannon distance (square root of the divergence, natural log, so at most
    sqrt(ln 2) ~ 0.833) between the normalised histograms; as
    ``scipy.spatial.distance.jensenshannon``. 0.0 when either side is empty."""
    ref_total, cur_total = ref_counts.sum(), cur_counts.sum()
    if ref_total == 0 or cur_total == 0:
        return 0.0
    p = ref_counts / ref_total
    q = cur_counts / cur_total
    mid = (p + q) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(p > 0, p * np.log(p / mid), 0.0)
        right = np.where(q > 0, q * np.log(q / mid), 0.0)
    js = (left.sum() + right.sum()) / 2.0
    return float(np.sqrt(max(js, 0.0)))


# -- chi-square tests on category counts ----------------------------------------------------------
def _chi2_sf(stat: float, dof: int) -> float:
    from scipy.special import chdtrc

    return float(np.clip(chdtrc(dof, stat), 0.0, 1.0))


def chi2_homogeneity(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float, float, int]:
    """Chi-square test of homogeneity on the 2 x K table [reference counts, current counts]:
    ``(statistic, p_value, dof)`` as ``scipy.stats.chi2_contingency(..., correction=False)``.

    Both samples are random; a category seen on one side only is an ordinary column of the
    table (its expected counts are positive because its column total is). Categories with zero
    counts on both sides are dropped. One category, or an empty side: ``(0.0, 1.0, 0)``.
    For two categories this is the pooled two-proportion Z-test (statistic = z**2).
    """
    keep = (ref_counts + cur_counts) > 0
    a = ref_counts[keep].astype(np.float64)
    b = cur_counts[keep].astype(np.float64)
    ra, rb = a.sum(), b.sum()
    dof = len(a) - 1
    if ra == 0 or rb == 0 or dof <= 0:
        return 0.0, 1.0, 0
    total = ra + rb
    col = a + b
    ea = ra * col / total
    eb = rb * col / total
    stat = float(np.sum((a - ea) ** 2 / ea) + np.sum((b - eb) ** 2 / eb))
    return stat, _chi2_sf(stat, dof), dof


def gof_expected(ref_counts: np.ndarray, cur_total: int, epsilon: float = 1e-4) -> np.ndarray:
    """Expected current counts under Evidently's goodness-of-fit test: the reference shares
    times the current size. Shares are floored at ``epsilon`` and renormalised so a category
    unseen in the reference has a small positive expectation instead of zero (scipy's
    ``chisquare`` would return inf/NaN there)."""
    shares: np.ndarray = np.maximum(ref_counts / ref_counts.sum(), epsilon)
    expected: np.ndarray = shares / shares.sum() * cur_total
    return expected


def chi2_goodness_of_fit(
    ref_counts: np.ndarray, cur_counts: np.ndarray, epsilon: float = 1e-4
) -> tuple[float, float, int]:
    """Evidently's ``chisquare`` drift test: ``scipy.stats.chisquare(cur, f_exp)`` with the
    reference shares treated as the exact population (ignores the reference's own sampling
    noise, so it flags drift more often than :func:`chi2_homogeneity`). Empty side or one
    category: ``(0.0, 1.0, 0)``."""
    keep = (ref_counts + cur_counts) > 0
    a, b = ref_counts[keep], cur_counts[keep].astype(np.float64)
    dof = len(a) - 1
    if a.sum() == 0 or b.sum() == 0 or dof <= 0:
        return 0.0, 1.0, 0
    expected = gof_expected(a, int(b.sum()), epsilon)
    stat = float(np.sum((b - expected) ** 2 / expected))
    return stat, _chi2_sf(stat, dof), dof


# -- whole-column summaries -----------------------------------------------------------------------
def numeric_stats(
    xs: np.ndarray,
    ys: np.ndarray,
    *,
    bins: int = 10,
    binning: Binning = "quantile",
    psi_epsilon: float = 1e-4,
    wasserstein_min_std: float = 1e-3,
    ks_method: KSMethod = "auto",
    workspace: Workspace | None = None,
) -> dict[str, float]:
    """Every numeric statistic for two sorted finite samples (either may be empty).

    Keys: ``ks_statistic``, ``ks_p_value``, ``wasserstein``, ``wasserstein_norm`` (W divided by
    ``max(std(reference), wasserstein_min_std)``, population std as Evidently), ``psi``,
    ``jensenshannon``, ``bins``, ``n_unique``, ``reference_mean``, ``reference_std``,
    ``current_mean``, ``current_std``. With an empty side every distance is 0.0, the p-value 1.0
    and the empty side's mean/std 0.0.
    """
    workspace = workspace or Workspace()
    n, m = len(xs), len(ys)
    z = workspace.buffers(n + m)[0]
    z[:n], z[n:] = xs, ys
    return _numeric_stats_in_place(
        n, m, bins, binning, psi_epsilon, wasserstein_min_std, ks_method, workspace
    )


def numeric_stats_of_series(
    reference: pl.Series,
    current: pl.Series,
    *,
    bins: int = 10,
    binning: Binning = "quantile",
    psi_epsilon: float = 1e-4,
    wasserstein_min_std: float = 1e-3,
    ks_method: KSMethod = "auto",
    workspace: Workspace | None = None,
    multithreaded_sort: bool = False,
    compiled: bool = False,
) -> tuple[dict[str, float], int, int]:
    """:func:`numeric_stats` of two polars series (missing values dropped, see
    :func:`finite_sorted`), and the number of values compared on each side.

    Each sorted side is copied into the workspace and released at once, so at most one
    column's sorted copy exists outside the workspace at any time. ``compiled`` sorts, merges
    and sums in numba instead of numpy (see :data:`COMPILED_PAIR_MIN_VALUES`): the same bits,
    ~4x less time on a large column, and no sorted copy outside the workspace at all (each
    side's unsorted float64 values exist until the call returns: zero-copy views of a float64
    column without nulls, a new array otherwise).
    """
    workspace = workspace or Workspace()
    if compiled:
        n, m = _sort_compiled(reference, current, workspace)
    else:
        xs = finite_sorted(reference, multithreaded=multithreaded_sort)
        ys = finite_sorted(current, multithreaded=multithreaded_sort)
        n, m = len(xs), len(ys)
        z = workspace.buffers(n + m)[0]
        z[:n] = xs
        del xs
        z[n:] = ys
        del ys
    values = _numeric_stats_in_place(
        n, m, bins, binning, psi_epsilon, wasserstein_min_std, ks_method, workspace, compiled
    )
    return values, n, m


COMPILED_PAIR_MIN_VALUES = 1 << 23
"""A one-pair compare (:meth:`PolarsDriftDetector.compare`) sorts and merges its numeric columns
compiled (numba: :mod:`~mlx_plugins.drift_detectors._radix` and
:func:`~mlx_plugins.drift_detectors._fused.ecdf_merged`) when its numeric columns hold at least
this many values on the two sides together (~8.4 million: 200,000 rows x 21 columns a side), or
when the compiled code is already loaded in the process (:func:`load_compiled`); otherwise in
numpy. The same bits either way. A process's first use costs ~0.5 s (numba's import and the
load of the cached machine code; ~5 s once after an install, where there is no cache yet),
about what the compiled path saves on 10 million values: numpy's sort takes ~50 ns a value on
the development machine, the compiled sort ~11 ns and the merge ~3.5 ns."""

COMPILED_COLUMN_MIN_VALUES = 1 << 14
"""Within a compiled compare, a column of fewer values (the two sides together) stays in numpy,
whose fixed costs are lower; :func:`finite_sorted` (one side: a prepared reference) sorts
compiled from this many values of that side, where the compiled code is loaded."""


def compiled_loaded() -> bool:
    """Whether numba and the compiled drift sort are loaded in this process: then the costly
    part of a first compiled compare (numba's import, ~0.2-0.3 s) is paid. A kernel not used
    yet in the process still loads its machine code from numba's cache on first use (~0.05-0.2
    s each); :func:`load_compiled` loads them all."""
    return _RADIX in sys.modules


_CALIBRATION_VALUES = 1 << 18


@functools.cache
def radix_sorts_faster() -> bool:
    """Whether the compiled radix sort (``_radix.finite_sort``) sorts float64 values faster than
    ``np.sort`` on this machine: timed once per process (the first call; :func:`load_compiled`
    makes it) on 262,144 normal values, best of 3 each, ~10 ms in all. Imports numba.

    The answer depends on the CPU: numpy's float64 sort is a vectorised quicksort where the CPU
    has AVX-512 (~6 ns a value on the project's Intel Xeon development VM, where the radix sort
    takes ~13) and a scalar one where it has not (~52 ns a value on its AMD EPYC one, where the
    radix sort takes ~11). Both give the same values, and ``np.sort`` is what the numpy path
    uses: which one runs changes no result (``tests/drift/test_compiled_pair.py``)."""
    import time

    from mlx_plugins.drift_detectors import _radix

    values = np.random.default_rng(0).normal(size=_CALIBRATION_VALUES)
    out, scratch = np.empty(len(values)), np.empty(len(values))
    _radix.finite_sort(values, out, scratch)  # loaded (or compiled) before it is timed

    def best(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    def numpy_sort() -> None:
        np.copyto(out, values)  # as _numpy_sort_into: the copy is part of the work
        out.sort()

    return best(lambda: _radix.finite_sort(values, out, scratch)) < best(numpy_sort)


def load_compiled() -> None:
    """Import numba and load the compiled one-pair loops now (from numba's on-disk cache, or
    compiling them where there is none), so that no later compare pays for it: what a long-lived
    process or a benchmark's warm-up calls. After it, :func:`compiled_loaded` is true and every
    compare of columns of at least :data:`COMPILED_COLUMN_MIN_VALUES` values runs compiled."""
    from mlx_plugins.drift_detectors import _fused, _radix

    values = np.array([2.0, -1.0, 0.5, 3.0])
    z = np.empty(len(values))
    _radix.finite_sort(values, z, np.empty(len(values)))
    # polars hands out read-only arrays, for which numba keeps a machine-code version of its own
    values.flags.writeable = False
    _radix.finite_sort(values, z, np.empty(len(values)))
    _fused.mean_std(z, 0, 2, np.empty(len(values)))
    _fused.ecdf_merged(z, 2, 2, np.empty(len(values)))
    radix_sorts_faster()


_RADIX = "mlx_plugins.drift_detectors._radix"


def _unsorted_values(series: pl.Series) -> np.ndarray:
    """The non-null values of ``series`` as a contiguous float64 array, as :func:`finite_sorted`
    reads them (temporal columns as nanoseconds), unsorted; NaN and +/-inf kept."""
    s = comparable_float64(series)
    if s.null_count():
        s = s.drop_nulls()
    return np.ascontiguousarray(s.to_numpy(), dtype=np.float64)


def _numpy_sort_into(values: np.ndarray, out: np.ndarray) -> int:
    """The finite values of ``values`` (float64) sorted by ``np.sort``'s algorithm into
    ``out[:k]`` (at least ``len(values)`` long, overwritten); returns ``k``. The values
    :func:`finite_sorted` gives, bit for bit, with no array allocated."""
    part = out[: len(values)]
    np.copyto(part, values)
    part.sort()
    lo = int(np.searchsorted(part, -np.inf, side="right"))
    hi = int(np.searchsorted(part, np.inf, side="left"))  # +inf, then NaN, sort last
    if lo:
        part[: hi - lo] = part[lo:hi]  # numpy copies overlapping ranges through a buffer
    return hi - lo


def _sort_compiled(
    reference: pl.Series, current: pl.Series, workspace: Workspace
) -> tuple[int, int]:
    """:func:`finite_sorted` of both sides, straight into ``workspace.buffers(n + m)[0]``
    (reference first), by the compiled radix sort or, where it is the faster one here
    (:func:`radix_sorts_faster`), numpy's; returns ``(n, m)``."""
    from mlx_plugins.drift_detectors import _radix

    xs = _unsorted_values(reference)
    ys = _unsorted_values(current)
    z = workspace.buffers(len(xs) + len(ys))[0]
    if not radix_sorts_faster():
        n = _numpy_sort_into(xs, z)
        del xs
        return n, _numpy_sort_into(ys, z[n:])
    scratch = workspace.ints(max(len(xs), len(ys))).view(np.float64)
    n = int(_radix.finite_sort(xs, z, scratch))
    del xs
    m = int(_radix.finite_sort(ys, z[n:], scratch))
    return n, m


def _numeric_stats_in_place(
    n: int,
    m: int,
    bins: int,
    binning: Binning,
    psi_epsilon: float,
    wasserstein_min_std: float,
    ks_method: KSMethod,
    workspace: Workspace,
    compiled: bool = False,
) -> dict[str, float]:
    z = workspace.buffers(n + m)[0]
    xs, ys = z[:n], z[n:]
    if compiled:
        from mlx_plugins.drift_detectors import _fused

        scratch = workspace.scratch(min(max(n + m, 1), _fused.MERGE_BUFFER))
        ref_mean, ref_std = _fused.mean_std(z, 0, n, scratch) if n else (0.0, 0.0)
        cur_mean, cur_std = _fused.mean_std(z, n, m, scratch) if m else (0.0, 0.0)
    else:
        ref_mean, ref_std = mean_std(xs)
        cur_mean, cur_std = mean_std(ys)
    if n == 0 or m == 0:
        return _numeric_values(ref_mean, ref_std, cur_mean, cur_std, n_unique=_n_unique(z))
    edges = reference_edges(xs, bins, binning)
    ref_counts, cur_counts = bin_counts(xs, edges), bin_counts(ys, edges)
    if m * BLOCK_RATIO <= n:
        dist = ecdf_distances_blocks(xs, ys)
    elif compiled:
        _check_ecdf_size(n, m)
        max_gap, ties, dot = _fused.ecdf_merged(z, n, m, scratch)
        nm = float(n) * float(m)
        dist = ECDFDistances(
            ks_max_gap=int(max_gap),
            ks_statistic=int(max_gap) / nm,
            wasserstein=float(dot) / nm,
            n_unique=n + m - int(ties),
        )
    else:
        dist = _ecdf_distances_in_place(n, m, workspace)  # last: overwrites z
    return _numeric_values(
        ref_mean,
        ref_std,
        cur_mean,
        cur_std,
        n_unique=dist.n_unique,
        dist=dist,
        n=n,
        m=m,
        edges=edges,
        ref_counts=ref_counts,
        cur_counts=cur_counts,
        psi_epsilon=psi_epsilon,
        wasserstein_min_std=wasserstein_min_std,
        ks_method=ks_method,
    )


def _n_unique(sorted_values: np.ndarray) -> int:
    """Distinct values of a sorted array (0 when empty)."""
    return int(np.count_nonzero(np.diff(sorted_values)) + 1) if len(sorted_values) else 0


def _numeric_values(
    ref_mean: float,
    ref_std: float,
    cur_mean: float,
    cur_std: float,
    *,
    n_unique: int,
    dist: ECDFDistances | None = None,
    n: int = 0,
    m: int = 0,
    edges: np.ndarray | None = None,
    ref_counts: np.ndarray | None = None,
    cur_counts: np.ndarray | None = None,
    psi_epsilon: float = 1e-4,
    wasserstein_min_std: float = 1e-3,
    ks_method: KSMethod = "auto",
) -> dict[str, float]:
    """The dict :func:`numeric_stats` returns; without ``dist`` (an empty side) every distance
    is 0.0 and the p-value 1.0. Shared by the one-shot and the prepared-reference paths, so
    both produce the same keys, in the same order, from the same arithmetic."""
    out: dict[str, float] = {
        "reference_mean": ref_mean,
        "reference_std": ref_std,
        "current_mean": cur_mean,
        "current_std": cur_std,
    }
    if dist is None:
        out.update(
            ks_statistic=0.0,
            ks_p_value=1.0,
            wasserstein=0.0,
            wasserstein_norm=0.0,
            psi=0.0,
            jensenshannon=0.0,
            bins=0.0,
            n_unique=float(n_unique),
        )
        return out
    assert edges is not None and ref_counts is not None and cur_counts is not None
    out.update(
        ks_statistic=dist.ks_statistic,
        ks_p_value=ks_pvalue(dist.ks_max_gap, n, m, ks_method),
        wasserstein=dist.wasserstein,
        wasserstein_norm=dist.wasserstein / max(ref_std, wasserstein_min_std),
        psi=psi(ref_counts, cur_counts, psi_epsilon),
        jensenshannon=jensenshannon(ref_counts, cur_counts),
        bins=float(len(edges) + 1),
        n_unique=float(dist.n_unique),
    )
    return out


# -- a reference prepared once, compared with many currents ---------------------------------------
@dataclass(frozen=True, eq=False)
class NumericReference:
    """What a numeric column's statistics need from the reference side, computed once: its
    finite values sorted, their mean and population std, and the bins fixed on them (interior
    ``edges`` and the reference's ``counts`` per bin). ``rows`` counts every reference row,
    ``values`` only the non-missing ones."""

    values: np.ndarray
    mean: float
    std: float
    edges: np.ndarray
    counts: np.ndarray
    bins: int
    binning: Binning
    rows: int

    @property
    def null_share(self) -> float:
        return (self.rows - len(self.values)) / self.rows if self.rows else 0.0

    @functools.cached_property
    def prefix(self) -> SplitPrefix:
        """The values' split prefix sums, built on first use (by a current at most
        1/:data:`BLOCK_RATIO` the size of the reference): 32 more bytes per value. Two threads
        may both build it; they build the same."""
        return SplitPrefix.of_sorted(self.values)

    @classmethod
    def of_series(
        cls,
        series: pl.Series,
        *,
        bins: int = 10,
        binning: Binning = "quantile",
        multithreaded_sort: bool = False,
    ) -> NumericReference:
        values = finite_sorted(series, multithreaded=multithreaded_sort)
        values.flags.writeable = False
        mean, std = mean_std(values)
        edges = reference_edges(values, bins, binning) if len(values) else np.empty(0)
        counts = bin_counts(values, edges)
        for array in (edges, counts):
            array.flags.writeable = False
        return cls(values, mean, std, edges, counts, bins, binning, len(series))


@dataclass(frozen=True, eq=False)
class CategoricalReference:
    """A categorical column's reference side, counted once: ``counts`` is
    :func:`category_value_counts` (column ``category`` as strings, column ``reference``);
    ``values`` the non-null reference rows, ``rows`` all of them."""

    counts: pl.DataFrame
    values: int
    rows: int

    @property
    def null_share(self) -> float:
        return (self.rows - self.values) / self.rows if self.rows else 0.0

    @functools.cached_property
    def mapping(self) -> dict[str, int]:
        """``{category: count}`` of :attr:`counts`, built on first use."""
        return _count_dict(self.counts, "reference")

    def align(self, current: pl.Series) -> tuple[list[str], np.ndarray, np.ndarray]:
        """:func:`align_category_counts` of these counts and ``current``."""
        if self.counts.height <= _SMALL_CATEGORIES:
            return align_category_counts(self.mapping, current)
        return align_category_counts(self.counts, current)

    @classmethod
    def of_series(cls, series: pl.Series) -> CategoricalReference:
        counts = category_value_counts(series)
        return cls(counts, int(counts.get_column("reference").sum()), len(series))


def numeric_stats_prepared(
    reference: NumericReference,
    current: pl.Series,
    *,
    psi_epsilon: float = 1e-4,
    wasserstein_min_std: float = 1e-3,
    ks_method: KSMethod = "auto",
    workspace: Workspace | None = None,
) -> tuple[dict[str, float], int, int]:
    """:func:`numeric_stats_of_series` with the reference side prepared: the same values, bit
    for bit, but only the current side is sorted and summarised, the bins are the prepared
    ones, and the two sides are merged by binary search (:func:`ecdf_distances_by_search`)."""
    xs = reference.values
    ys = finite_sorted(current)
    n, m = len(xs), len(ys)
    cur_mean, cur_std = mean_std(ys)
    if n == 0 or m == 0:
        n_unique = _n_unique(ys if n == 0 else xs)
        values = _numeric_values(
            reference.mean, reference.std, cur_mean, cur_std, n_unique=n_unique
        )
        return values, n, m
    cur_counts = bin_counts(ys, reference.edges)
    if m * BLOCK_RATIO <= n:  # the same choice as numeric_stats_of_series: the same bits
        dist = ecdf_distances_blocks(xs, ys, reference.prefix)
    else:
        dist = ecdf_distances_by_search(xs, ys, workspace)
    values = _numeric_values(
        reference.mean,
        reference.std,
        cur_mean,
        cur_std,
        n_unique=dist.n_unique,
        dist=dist,
        n=n,
        m=m,
        edges=reference.edges,
        ref_counts=reference.counts,
        cur_counts=cur_counts,
        psi_epsilon=psi_epsilon,
        wasserstein_min_std=wasserstein_min_std,
        ks_method=ks_method,
    )
    return values, n, m


def categorical_stats(
    ref_counts: np.ndarray, cur_counts: np.ndarray, *, psi_epsilon: float = 1e-4
) -> dict[str, float]:
    """Every categorical statistic for aligned category counts (either side may be empty).

    Keys: ``chi2``/``chi2_p_value``/``chi2_dof`` (homogeneity), ``chi2_gof``/``chi2_gof_p_value``
    (Evidently's goodness of fit), ``psi``, ``jensenshannon``, ``categories``,
    ``new_categories`` (seen only in current), ``new_category_share`` (share of current rows in
    them), ``missing_categories`` (seen only in reference).
    """
    chi2, chi2_p, dof = chi2_homogeneity(ref_counts, cur_counts)
    gof, gof_p, _ = chi2_goodness_of_fit(ref_counts, cur_counts, psi_epsilon)
    new = (ref_counts == 0) & (cur_counts > 0)
    cur_total = cur_counts.sum()
    return {
        "chi2": chi2,
        "chi2_p_value": chi2_p,
        "chi2_dof": float(dof),
        "chi2_gof": gof,
        "chi2_gof_p_value": gof_p,
        "psi": psi(ref_counts, cur_counts, psi_epsilon),
        "jensenshannon": jensenshannon(ref_counts, cur_counts),
        "categories": float(np.count_nonzero((ref_counts + cur_counts) > 0)),
        "new_categories": float(np.count_nonzero(new)),
        "new_category_share": float(cur_counts[new].sum() / cur_total) if cur_total else 0.0,
        "missing_categories": float(np.count_nonzero((ref_counts > 0) & (cur_counts == 0))),
    }

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

scipy itself is imported lazily, and only for distribution tail functions (``kstwo.sf`` for
the asymptotic KS p-value, ``special.chdtrc`` for chi-square p-values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

KSMethod = Literal["auto", "exact", "asymp"]
Binning = Literal["quantile", "equal_width"]

KS_EXACT_MAX_N = 10_000
"""``method="auto"`` computes the exact KS p-value when both samples have at most this many
values (scipy's ``MAX_AUTO_N``), the asymptotic one otherwise."""

_TRIM = 1e-30
"""Lattice-path probabilities below this are dropped from the exact KS recursion. The dropped
mass is below 1e-30 per cell, so the p-value moves by far less than 1e-12."""


# -- inputs ---------------------------------------------------------------------------------------
def finite_sorted(series: pl.Series, *, multithreaded: bool = False) -> np.ndarray:
    """The finite values of ``series`` as a sorted float64 array (read-only; often a view of
    the polars sort's buffer).

    Nulls, NaN and +/-inf are dropped (they count as missing): nulls before the sort, the rest
    by two binary searches after it (polars sorts -inf first and +inf, NaN last), so a clean
    column costs exactly one sort. Temporal columns are compared on their physical integer.
    The sort stays on the calling thread unless ``multithreaded``: parallelism pays off across
    columns (see the detector's ``max_workers``), while a parallel sort of one column mostly
    burns CPU on a small machine.
    """
    if series.dtype.is_temporal():
        series = series.to_physical()
    s = series.cast(pl.Float64)
    if s.null_count():
        s = s.drop_nulls()
    values = s.sort(multithreaded=multithreaded).to_numpy()
    lo = int(np.searchsorted(values, -np.inf, side="right"))
    hi = int(np.searchsorted(values, np.inf, side="left"))
    return values[lo:hi]


def category_counts(
    reference: pl.Series, current: pl.Series
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Categories seen on either side (nulls dropped) with their reference and current counts.

    Categories are rendered as strings and sorted, so the result is deterministic. A category
    seen on one side only gets a count of 0 on the other.
    """
    key = "category"  # fixed names: a column may itself be called "reference" or "current"
    ref = reference.alias(key).drop_nulls().value_counts(name="reference")
    cur = current.alias(key).drop_nulls().value_counts(name="current")
    ref = ref.with_columns(pl.col(key).cast(pl.String))
    cur = cur.with_columns(pl.col(key).cast(pl.String))
    both = ref.join(cur, on=key, how="full", coalesce=True, nulls_equal=True).fill_null(0).sort(key)
    return (
        both.get_column(key).to_list(),
        both.get_column("reference").to_numpy().astype(np.int64),
        both.get_column("current").to_numpy().astype(np.int64),
    )


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

    def buffers(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(values, flags)``, each of length ``size``."""
        if size > self._size:
            self._values, self._flags = np.empty(0), np.empty(0, dtype=bool)  # free first
            self._values, self._flags = np.empty(size), np.empty(size, dtype=bool)
            self._size = size
        return self._values[:size], self._flags[:size]


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
    if n * m >= 2**63:
        raise ValueError(f"samples of {n} and {m} values are too large for int64 ECDF gaps")
    total = n + m
    z, from_x = workspace.buffers(total)
    order = np.argsort(z, kind="stable")
    np.less(order, n, out=from_x)
    merged = order.view(np.float64)
    # in place over the indices: element k is read before slot k is written, and never again
    np.take(z, order, out=merged, mode="clip")
    steps = np.subtract(merged[1:], merged[:-1], out=z[:-1])  # z_{k+1} - z_k, >= 0
    gap = order  # the merged values are spent: the slots now hold the integer gaps
    np.multiply(from_x, total, out=gap)
    np.subtract(gap, n, out=gap)  # +m for an x, -n for a y
    np.cumsum(gap, out=gap)  # integer adds: several times faster than a float cumsum
    np.abs(gap, out=gap)
    gap = gap[:-1]
    ties = int(len(steps) - np.count_nonzero(steps))
    if ties:  # only the last of tied values is a point where both ECDFs are evaluated
        np.greater(steps, 0, out=from_x[:-1])
        max_gap = int(np.max(gap, where=from_x[:-1], initial=0))
    else:
        max_gap = int(gap.max())
    # sum |gap| * steps, converting the gaps to float a cache-sized chunk at a time (and
    # without BLAS, whose threads only add overhead on chunks this small)
    dot = 0.0
    scratch = np.empty(min(len(gap), _CHUNK))
    for start in range(0, len(gap), _CHUNK):
        chunk = scratch[: len(gap[start : start + _CHUNK])]
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


def ks_pvalue(max_gap: int, n: int, m: int, method: KSMethod = "auto") -> float:
    """Two-sided two-sample KS p-value, as ``scipy.stats.ks_2samp`` computes it.

    ``max_gap`` is the statistic times ``n * m`` (an integer). ``"exact"`` counts lattice paths
    (the Hodges / Drion-Gnedenko-Korolyuk "inside" method, here as a probability recursion over
    the path's anti-diagonals, vectorised along each diagonal); ``"asymp"`` uses the
    Kolmogorov-Smirnov distribution ``kstwo`` at the effective sample size
    ``round(n*m/(n+m))``; ``"auto"`` is exact when ``max(n, m) <= 10000``. With one value a
    side the effective size rounds to 0, where scipy's asymptotic p-value is NaN; this uses the
    exact one (1.0) instead.
    """
    if n <= 0 or m <= 0:
        raise ValueError("ks_pvalue needs two non-empty samples")
    big, small = max(n, m), min(n, m)
    en = float(big) * float(small) / (float(big) + float(small))
    if method == "auto":
        method = "exact" if big <= KS_EXACT_MAX_N else "asymp"
    if method == "exact" or np.round(en) < 1:  # n = m = 1: kstwo(0) is undefined (scipy: NaN)
        return _ks_exact_pvalue(n, m, max_gap)
    from scipy.stats import kstwo

    d = max_gap / (float(n) * float(m))
    return float(np.clip(kstwo.sf(d, np.round(en)), 0.0, 1.0))


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
) -> tuple[dict[str, float], int, int]:
    """:func:`numeric_stats` of two polars series (missing values dropped, see
    :func:`finite_sorted`), and the number of values compared on each side.

    Each sorted side is copied into the workspace and released at once, so at most one
    column's sorted copy exists outside the workspace at any time.
    """
    workspace = workspace or Workspace()
    xs = finite_sorted(reference, multithreaded=multithreaded_sort)
    ys = finite_sorted(current, multithreaded=multithreaded_sort)
    n, m = len(xs), len(ys)
    z = workspace.buffers(n + m)[0]
    z[:n] = xs
    del xs
    z[n:] = ys
    del ys
    values = _numeric_stats_in_place(
        n, m, bins, binning, psi_epsilon, wasserstein_min_std, ks_method, workspace
    )
    return values, n, m


def _numeric_stats_in_place(
    n: int,
    m: int,
    bins: int,
    binning: Binning,
    psi_epsilon: float,
    wasserstein_min_std: float,
    ks_method: KSMethod,
    workspace: Workspace,
) -> dict[str, float]:
    z = workspace.buffers(n + m)[0]
    xs, ys = z[:n], z[n:]
    ref_mean, ref_std = mean_std(xs)
    cur_mean, cur_std = mean_std(ys)
    out: dict[str, float] = {
        "reference_mean": ref_mean,
        "reference_std": ref_std,
        "current_mean": cur_mean,
        "current_std": cur_std,
    }
    if n == 0 or m == 0:
        out.update(
            ks_statistic=0.0,
            ks_p_value=1.0,
            wasserstein=0.0,
            wasserstein_norm=0.0,
            psi=0.0,
            jensenshannon=0.0,
            bins=0.0,
            n_unique=float(np.count_nonzero(np.diff(z)) + 1 if n + m else 0),
        )
        return out
    edges = reference_edges(xs, bins, binning)
    ref_counts, cur_counts = bin_counts(xs, edges), bin_counts(ys, edges)
    dist = _ecdf_distances_in_place(n, m, workspace)  # last: overwrites z
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

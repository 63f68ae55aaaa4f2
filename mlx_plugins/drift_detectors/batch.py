"""One prepared reference column against many currents at once (a daily backfill), vectorised
across the currents.

:func:`numeric_stats_many` and :func:`categorical_stats_many` return, for each current, the
dict that :func:`~mlx_plugins.drift_detectors.stats.numeric_stats_prepared` /
:func:`~mlx_plugins.drift_detectors.stats.categorical_stats` return for it alone, bit for bit
(``tests/drift/test_many.py``), and independent of which other currents share the batch.

How: the currents of a column are concatenated once; each current's finite values are sorted
into a row of a matrix padded with +inf (the compiled radix sort of
:mod:`~mlx_plugins.drift_detectors._radix`, a row at a time; currents grouped shortest first so
the padding stays small); then one
compiled loop (:func:`~mlx_plugins.drift_detectors._fused.numeric_rows`, numba) passes once
over every current's values: the binary searches into the sorted reference (galloping from the
previous value's position), the KS gaps, the distinct count, the quantile-block Wasserstein
terms over the reference's split prefix sums, the bin counts, the mean and the std, in
:func:`~mlx_plugins.drift_detectors.stats.ecdf_distances_blocks`' arithmetic, operation by
operation. Sums per current run over exactly that current's values, in numpy's pairwise order
(:func:`~mlx_plugins.drift_detectors._fused.pairwise_sum`), or, for categories, over that
current's own categories, so they round as the one-current code rounds. KS p-values are
collected (:class:`PValues`) and computed for all columns in one
:func:`~mlx_plugins.drift_detectors.pvalues.ks_pvalues` call. Currents that are large
against the reference (more than 1/:data:`~mlx_plugins.drift_detectors.stats.BLOCK_RATIO` of
it) go through the one-current function.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np
import polars as pl

from mlx_plugins.drift_detectors import stats as st
from mlx_plugins.drift_detectors.dtypes import comparable_float64
from mlx_plugins.drift_detectors.options import KSMethod
from mlx_plugins.drift_detectors.pvalues import chi2_sf, ks_pvalues


class PValues:
    """KS p-values requested by :func:`numeric_stats_many` calls (all the columns of a batch)
    and computed in one :func:`~mlx_plugins.drift_detectors.pvalues.ks_pvalues` call by
    :meth:`resolve`, which writes each into its stats dict (key ``ks_p_value``): scipy's
    slower branches (Durbin's matrix, the Smirnov sum) then run once over every column, the
    Smirnov sums in ``workers`` threads."""

    def __init__(self, method: KSMethod = "auto", workers: int = 1) -> None:
        self.method: KSMethod = method
        self.workers = workers
        self._gaps: list[np.ndarray] = []
        self._n: list[np.ndarray] = []
        self._m: list[np.ndarray] = []
        self._targets: list[dict[str, float]] = []
        self._lock = threading.Lock()

    def add(
        self, gaps: np.ndarray, n: int, ms: np.ndarray, targets: list[dict[str, float]]
    ) -> None:
        """Ask for the p-values of ``len(ms)`` tests (gaps, one reference size, current
        sizes), to be written into ``targets`` (one stats dict each). Thread-safe."""
        gaps, sizes = np.asarray(gaps, dtype=np.int64), np.asarray(ms, dtype=np.int64)
        with self._lock:
            self._gaps.append(gaps)
            self._n.append(np.full(len(sizes), n, dtype=np.int64))
            self._m.append(sizes)
            self._targets.extend(targets)

    def resolve(self) -> None:
        if not self._targets:
            return
        values = ks_pvalues(
            np.concatenate(self._gaps),
            np.concatenate(self._n),
            np.concatenate(self._m),
            self.method,
            workers=self.workers,
        )
        for target, value in zip(self._targets, values.tolist(), strict=True):
            target["ks_p_value"] = value
        self._gaps, self._n, self._m, self._targets = [], [], [], []


def _float_values(currents: Sequence[pl.Series]) -> np.ndarray:
    """The currents concatenated, as float64 on the comparable scale; nulls as NaN."""
    dtypes = {s.dtype for s in currents}
    if len(dtypes) == 1:
        joined = pl.concat(list(currents), rechunk=True)
        return comparable_float64(joined).to_numpy(allow_copy=True).astype(np.float64, copy=False)
    parts = [comparable_float64(s).to_numpy(allow_copy=True) for s in currents]
    return np.concatenate(parts).astype(np.float64, copy=False)


def sorted_rows(currents: Sequence[pl.Series]) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, counts)``: row i of ``rows`` (float64, ``len(currents) x max length``) holds
    current i's finite values sorted, then +inf; ``counts[i]`` how many are finite. Sorted by
    the compiled radix sort or numpy's, whichever is faster here
    (:func:`~mlx_plugins.drift_detectors.stats.radix_sorts_faster`): the same values."""
    from mlx_plugins.drift_detectors import _radix

    lengths = np.fromiter((len(s) for s in currents), np.int64, len(currents))
    width = int(lengths.max()) if len(lengths) else 0
    values = _float_values(currents) if width else np.empty(0)
    starts = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    rows = np.empty((len(lengths), max(width, 1)))
    counts = np.empty(len(lengths), dtype=np.int64)
    values = np.ascontiguousarray(values, dtype=np.float64)
    if st.radix_sorts_faster():
        _radix.sorted_padded_rows(values, starts, rows, counts)
    else:  # numpy's vectorised sort of each row (the +inf padding sorts last, where it was)
        _radix.padded_rows(values, starts, rows, counts)
        rows.sort(axis=1)
    return rows, counts


def _row_sums(values: np.ndarray) -> np.ndarray:
    """Pairwise sums along the rows (as ``np.sum`` of each row)."""
    out: np.ndarray = np.add.reduce(values, axis=1)
    return out


def _masked_sums(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``[np.sum(values[i][keep[i]]) for i in rows]``: each row summed over its kept entries
    only, as the one-current functions sum them."""
    return np.fromiter(
        (np.add.reduce(row[mask]) for row, mask in zip(values, keep, strict=True)),
        np.float64,
        len(values),
    )


def numeric_stats_many(
    reference: st.NumericReference,
    currents: Sequence[pl.Series],
    *,
    psi_epsilon: float = 1e-4,
    wasserstein_min_std: float = 1e-3,
    ks_method: KSMethod = "auto",
    workspace: st.Workspace | None = None,
    pvalues: PValues | None = None,
) -> list[tuple[dict[str, float], int, int]]:
    """``[numeric_stats_prepared(reference, s, ...) for s in currents]``, vectorised across
    the currents (see the module docstring for what is identical and what agrees to ulps).
    With ``pvalues``, the batched currents' ``ks_p_value`` is NaN until ``pvalues.resolve()``
    (so that many columns share one evaluation); without, it is computed here.

    ``currents``: polars series of one numeric family (the detector checks dtypes first).
    Returns one ``(stats, reference values, current values)`` per current, in order.
    """
    out: list[tuple[dict[str, float], int, int] | None] = [None] * len(currents)
    if not currents:
        return []
    xs = reference.values
    n = len(xs)
    lengths = np.fromiter((len(c) for c in currents), np.int64, len(currents))
    # a current longer than 1/BLOCK_RATIO of the reference (or any, against an empty one) is
    # merged by numeric_stats_prepared; it would make the same choice from its finite count
    small = (lengths * st.BLOCK_RATIO <= n) if n else np.zeros(len(currents), dtype=bool)
    if lengths[small].sum() < COMPILED_MIN_VALUES:
        small[:] = False  # too few values to pay for loading the compiled loop: one by one
    for i in np.flatnonzero(~small):
        out[i] = st.numeric_stats_prepared(
            reference,
            currents[i],
            psi_epsilon=psi_epsilon,
            wasserstein_min_std=wasserstein_min_std,
            ks_method=ks_method,
            workspace=workspace,
        )
    sink = PValues(ks_method) if pvalues is None else pvalues
    # shortest first, in groups whose padded matrix of sorted rows stays below _SORT_VALUES
    order = np.flatnonzero(small)
    order = order[np.argsort(lengths[order], kind="stable")]
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop + 1 - start) * lengths[order[stop]] <= _SORT_VALUES:
            stop += 1
        group = order[start:stop]
        _numeric_group(
            reference,
            [currents[i] for i in group],
            group,
            out,
            psi_epsilon,
            wasserstein_min_std,
            sink,
        )
        start = stop
    if pvalues is None:
        sink.resolve()
    return [o for o in out if o is not None]


COMPILED_MIN_VALUES = 1 << 16
"""A column's batched currents go through the compiled loop (numba) when they hold at least
this many values (73 days of the ``feature_drift`` asset); fewer go one by one through
:func:`~mlx_plugins.drift_detectors.stats.numeric_stats_prepared` (the same bits): a process's
first use of the compiled loop costs ~0.3 s to import numba and ~0.5 s to load the cached
machine code, about what the one-by-one path spends on 70 days."""

_SORT_VALUES = 1 << 22
"""Padded values per row-sorted group of currents (32 MiB of float64)."""


def _numeric_group(
    reference: st.NumericReference,
    currents: list[pl.Series],
    where: np.ndarray,
    out: list[tuple[dict[str, float], int, int] | None],
    psi_epsilon: float,
    wasserstein_min_std: float,
    sink: PValues,
) -> None:
    """The small currents ``currents`` (positions ``where`` in ``out``): empty ones as
    ``numeric_stats_prepared`` reports them, the others by :func:`_numeric_batch`."""
    xs = reference.values
    n = len(xs)
    rows, counts = sorted_rows(currents)
    empty = counts == 0
    if empty.any():
        # numeric_stats_prepared of an empty current, without its pass over the reference
        n_unique = st._n_unique(xs)
        for i in np.flatnonzero(empty):
            values = st._numeric_values(reference.mean, reference.std, 0.0, 0.0, n_unique=n_unique)
            out[where[i]] = (values, n, 0)
    idx = np.flatnonzero(~empty)
    # a chunk of currents at a time (the compiled loop needs no temporaries per value; the
    # chunks only bound the per-current arrays and dicts built around it)
    cum = np.cumsum(counts[idx])
    start = 0
    while start < len(idx):
        stop = int(np.searchsorted(cum, (cum[start - 1] if start else 0) + _CHUNK_VALUES))
        stop = min(max(stop, start + 1), len(idx))
        part = idx[start:stop]
        _numeric_batch(
            reference,
            rows if len(part) == len(rows) else rows[part, : int(counts[part].max())],
            counts[part],
            where[part],
            out,
            psi_epsilon,
            wasserstein_min_std,
            sink,
        )
        start = stop


_CHUNK_VALUES = 1 << 20
"""Current values per call of the compiled loop."""


def _numeric_batch(
    reference: st.NumericReference,
    rows: np.ndarray,
    ms: np.ndarray,
    where: np.ndarray,
    out: list[tuple[dict[str, float], int, int] | None],
    psi_epsilon: float,
    wasserstein_min_std: float,
    pvalues: PValues,
) -> None:
    from mlx_plugins.drift_detectors import _fused

    xs = reference.values
    n = len(xs)
    prefix = reference.prefix
    days = len(rows)
    edges = reference.edges
    bins = len(edges) + 1
    sums = np.empty((days, 3))
    ints = np.empty((days, 2), dtype=np.int64)
    cur_counts = np.zeros((days, bins), dtype=np.int64)
    _fused.numeric_rows(
        np.ascontiguousarray(rows),
        ms,
        xs,
        prefix.table,
        prefix.qh,
        prefix.qg,
        prefix.exponent,
        edges,
        sums,
        ints,
        cur_counts,
    )
    cur_mean, cur_std = sums[:, 0], sums[:, 1]
    max_gap = ints[:, 0]
    n_unique = prefix.n_unique + ints[:, 1]
    nm = float(n) * ms.astype(np.float64)
    wasserstein = sums[:, 2] / nm
    ks_statistic = max_gap / nm
    psi_values = psi_rows(reference.counts, cur_counts, psi_epsilon)
    js_values = jensenshannon_rows(reference.counts, cur_counts)
    norm = max(reference.std, wasserstein_min_std)
    columns = zip(
        cur_mean.tolist(),
        cur_std.tolist(),
        ks_statistic.tolist(),
        wasserstein.tolist(),
        psi_values.tolist(),
        js_values.tolist(),
        n_unique.tolist(),
        ms.tolist(),
        strict=True,
    )
    targets = []
    for pos, (mean, std, ks, w, psi, js, uniq, size) in zip(where, columns, strict=True):
        values = {
            "reference_mean": reference.mean,
            "reference_std": reference.std,
            "current_mean": mean,
            "current_std": std,
            "ks_statistic": ks,
            "ks_p_value": math.nan,
            "wasserstein": w,
            "wasserstein_norm": w / norm,
            "psi": psi,
            "jensenshannon": js,
            "bins": float(bins),
            "n_unique": float(uniq),
        }
        out[pos] = (values, n, size)
        targets.append(values)
    pvalues.add(max_gap, n, ms, targets)


def _sums(values: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    return _row_sums(values) if keep is None else _masked_sums(values, keep)


def psi_rows(
    ref_counts: np.ndarray,
    cur_counts: np.ndarray,
    epsilon: float,
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`~mlx_plugins.drift_detectors.stats.psi` of ``ref_counts`` (K,) against each row
    of ``cur_counts`` (D, K), summed over each row's ``keep`` entries (default: all); 0.0 where
    either side is empty."""
    ref_total, cur_total = ref_counts.sum(), cur_counts.sum(axis=1)
    if ref_total == 0:
        return np.zeros(len(cur_counts))
    p = np.maximum(ref_counts / ref_total, epsilon)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.maximum(cur_counts / cur_total[:, None], epsilon)
        out = _sums((q - p) * np.log(q / p), keep)
    return np.where(cur_total > 0, out, 0.0)


def jensenshannon_rows(
    ref_counts: np.ndarray, cur_counts: np.ndarray, keep: np.ndarray | None = None
) -> np.ndarray:
    """:func:`~mlx_plugins.drift_detectors.stats.jensenshannon` of ``ref_counts`` (K,)
    against each row of ``cur_counts`` (D, K), summed over each row's ``keep`` entries
    (default: all); 0.0 where either side is empty."""
    ref_total = np.asarray(ref_counts.sum(axis=-1))
    cur_total = cur_counts.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = ref_counts / (ref_total[..., None] if ref_total.ndim else ref_total)
        q = cur_counts / cur_total[:, None]
        mid = (p + q) / 2.0
        left = np.where(p > 0, p * np.log(p / mid), 0.0)
        right = np.where(q > 0, q * np.log(q / mid), 0.0)
    js = (_sums(np.broadcast_to(left, right.shape), keep) + _sums(right, keep)) / 2.0
    out = np.sqrt(np.maximum(js, 0.0))
    return np.where((cur_total > 0) & (ref_total > 0), out, 0.0)


# -- categorical ----------------------------------------------------------------------------------
def category_matrix(
    reference: st.CategoricalReference, currents: Sequence[pl.Series]
) -> tuple[np.ndarray, np.ndarray]:
    """``(ref_counts (K,), cur_counts (D, K))`` over the categories seen in the reference or
    any current (sorted as strings, as :func:`~mlx_plugins.drift_detectors.stats.
    category_counts` sorts them); nulls dropped."""
    lengths = [len(s) for s in currents]
    joined = (
        pl.concat([s.cast(pl.String) for s in currents], rechunk=True)
        if len({s.dtype for s in currents}) > 1 or currents[0].dtype != pl.String
        else pl.concat(list(currents), rechunk=True)
    )
    frame = pl.DataFrame(
        {"day": np.repeat(np.arange(len(currents), dtype=np.int32), lengths), "c": joined}
    ).drop_nulls("c")
    counted = frame.group_by("day", "c").len()
    mapping = reference.mapping
    names = sorted(mapping.keys() | set(counted.get_column("c").to_list()))
    index = {c: i for i, c in enumerate(names)}
    ref_counts = np.fromiter((mapping.get(c, 0) for c in names), np.int64, len(names))
    cur = np.zeros((len(currents), len(names)), dtype=np.int64)
    cols = np.fromiter(
        (index[c] for c in counted.get_column("c").to_list()), np.int64, counted.height
    )
    cur[counted.get_column("day").to_numpy(), cols] = counted.get_column("len").to_numpy()
    return ref_counts, cur


def categorical_stats_many(
    ref_counts: np.ndarray, cur_counts: np.ndarray, *, psi_epsilon: float = 1e-4
) -> list[dict[str, float]]:
    """``[stats.categorical_stats(ref_counts, row, psi_epsilon=...) for row in cur_counts]``
    for one reference (K,) and D currents (D, K) over the same categories, vectorised; each
    row's sums run over its own categories (those seen in the reference or that current), in
    their order, as ``categorical_stats`` sums them: the same bits."""
    ref = ref_counts.astype(np.float64)
    cur = cur_counts.astype(np.float64)
    keep = (ref_counts[None, :] + cur_counts) > 0
    dof = keep.sum(axis=1) - 1
    ra = float(ref.sum())
    rb = cur.sum(axis=1)
    ok = (ra > 0) & (rb > 0) & (dof > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        # homogeneity (chi2_homogeneity)
        total = ra + rb
        col = ref[None, :] + cur
        ea = ra * col / total[:, None]
        eb = rb[:, None] * col / total[:, None]
        terms_a = np.where(keep, (ref[None, :] - ea) ** 2 / ea, 0.0)
        terms_b = np.where(keep, (cur - eb) ** 2 / eb, 0.0)
        chi2 = _masked_sums(terms_a, keep) + _masked_sums(terms_b, keep)
        # goodness of fit (chi2_goodness_of_fit / gof_expected), over the kept categories
        kept_ref = np.where(keep, ref[None, :], 0.0)
        kept_total = _masked_sums(kept_ref, keep)
        shares = np.where(keep, np.maximum(kept_ref / kept_total[:, None], psi_epsilon), 0.0)
        expected = shares / _masked_sums(shares, keep)[:, None] * rb[:, None]
        gof = _masked_sums(np.where(keep, (cur - expected) ** 2 / expected, 0.0), keep)
    chi2 = np.where(ok, chi2, 0.0)
    gof = np.where(ok, gof, 0.0)
    dof_ok = np.where(ok, dof, 0)
    chi2_p = np.where(ok, chi2_sf(chi2, np.maximum(dof_ok, 1)), 1.0)
    gof_p = np.where(ok, chi2_sf(gof, np.maximum(dof_ok, 1)), 1.0)
    psi_values = psi_rows(ref_counts, cur_counts, psi_epsilon, keep)
    js_values = jensenshannon_rows(ref_counts, cur_counts, keep)
    new = (ref_counts[None, :] == 0) & (cur_counts > 0)
    new_rows = np.where(new, cur_counts, 0).sum(axis=1)
    cur_total = cur_counts.sum(axis=1)
    new_share = np.where(cur_total > 0, new_rows / np.maximum(cur_total, 1), 0.0)
    categories = keep.sum(axis=1)
    new_categories = new.sum(axis=1)
    missing = ((ref_counts[None, :] > 0) & (cur_counts == 0)).sum(axis=1)
    rows = zip(
        chi2.tolist(),
        chi2_p.tolist(),
        dof_ok.tolist(),
        gof.tolist(),
        gof_p.tolist(),
        psi_values.tolist(),
        js_values.tolist(),
        categories.tolist(),
        new_categories.tolist(),
        new_share.tolist(),
        missing.tolist(),
        strict=True,
    )
    return [
        {
            "chi2": c,
            "chi2_p_value": cp,
            "chi2_dof": float(d),
            "chi2_gof": g,
            "chi2_gof_p_value": gp,
            "psi": ps,
            "jensenshannon": js,
            "categories": float(cat),
            "new_categories": float(nc),
            "new_category_share": ns,
            "missing_categories": float(mi),
        }
        for c, cp, d, g, gp, ps, js, cat, nc, ns, mi in rows
    ]

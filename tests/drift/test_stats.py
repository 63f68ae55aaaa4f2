"""The vectorised statistics agree with scipy on random data of many shapes.

Statistics must match within 1e-9 (relative for large values, absolute near zero) and p-values
within 1e-6 absolute.
"""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon as scipy_js

from mlx_plugins.drift_detectors import stats as st

STAT_TOL = {"rtol": 1e-9, "atol": 1e-9}
P_TOL = 1e-6
FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@hs.composite
def samples(draw: hs.DrawFn, max_size: int = 60) -> np.ndarray:
    """Continuous values, heavily tied small integers, or a mix; any size from 1."""
    size = draw(hs.integers(1, max_size))
    style = draw(hs.sampled_from(["normal", "ties", "mixed", "wide"]))
    seed = draw(hs.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    loc = draw(hs.floats(-3, 3))
    if style == "normal":
        return rng.normal(loc, draw(hs.floats(0.1, 5)), size)
    if style == "ties":
        return rng.integers(-3, 4, size).astype(np.float64) + round(loc)
    if style == "wide":
        return rng.standard_cauchy(size) * 1e3
    values = rng.normal(loc, 1, size)
    values[rng.random(size) < 0.5] = 0.0
    return values


def _scipy_ks(x: np.ndarray, y: np.ndarray, method: str = "auto"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's exact -> asymp fallback
        return sps.ks_2samp(x, y, method=method)


@FAST
@given(samples(), samples())
def test_ks_statistic_and_pvalue_match_scipy(x: np.ndarray, y: np.ndarray) -> None:
    statistic, p_value = st.ks_2samp_sorted(np.sort(x), np.sort(y))
    expected = _scipy_ks(x, y)
    np.testing.assert_allclose(statistic, expected.statistic, **STAT_TOL)
    assert abs(p_value - expected.pvalue) <= P_TOL


@FAST
@given(samples(), samples())
def test_ks_asymptotic_pvalue_matches_scipy(x: np.ndarray, y: np.ndarray) -> None:
    statistic, p_value = st.ks_2samp_sorted(np.sort(x), np.sort(y), method="asymp")
    with np.errstate(divide="ignore"):
        expected = _scipy_ks(x, y, method="asymp")
    np.testing.assert_allclose(statistic, expected.statistic, **STAT_TOL)
    if len(x) == len(y) == 1:  # scipy: NaN (effective size rounds to 0); ours: exact
        assert p_value == 1.0
    else:
        assert abs(p_value - expected.pvalue) <= P_TOL


@settings(max_examples=8, deadline=None)
@given(hs.integers(0, 2**32 - 1), hs.sampled_from([(2000, 2000), (3000, 1700), (10001, 300)]))
def test_ks_larger_samples_exact_and_asymptotic_regimes(seed: int, sizes: tuple[int, int]) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=sizes[0])
    y = rng.normal(rng.uniform(0, 0.15), size=sizes[1])
    statistic, p_value = st.ks_2samp_sorted(np.sort(x), np.sort(y))
    expected = _scipy_ks(x, y)
    np.testing.assert_allclose(statistic, expected.statistic, **STAT_TOL)
    assert abs(p_value - expected.pvalue) <= P_TOL


def test_ks_exact_pvalue_of_complete_separation() -> None:
    # all of x below all of y: D = 1, P(D >= 1) = 2 / C(n+m, n)
    x, y = np.arange(5.0), np.arange(5.0, 12.0)
    statistic, p_value = st.ks_2samp_sorted(x, y)
    assert statistic == 1.0
    assert p_value == pytest.approx(2 / 792, abs=1e-15)  # C(12, 5) = 792


@FAST
@given(samples(), samples())
def test_wasserstein_matches_scipy(x: np.ndarray, y: np.ndarray) -> None:
    dist = st.ecdf_distances(np.sort(x), np.sort(y), st.Workspace())
    np.testing.assert_allclose(dist.wasserstein, sps.wasserstein_distance(x, y), **STAT_TOL)
    assert dist.n_unique == len(np.unique(np.concatenate([x, y])))


def test_workspace_reuse_across_sizes_gives_same_results() -> None:
    rng = np.random.default_rng(3)
    ws = st.Workspace()
    for n, m in [(500, 300), (20, 900), (1000, 1000), (7, 3)]:
        xs, ys = np.sort(rng.normal(size=n)), np.sort(rng.normal(0.3, size=m))
        assert st.ecdf_distances(xs, ys, ws) == st.ecdf_distances(xs, ys)


@hs.composite
def count_pairs(draw: hs.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Aligned reference/current counts over 1..8 categories, each side with a positive total,
    zeros allowed (categories missing on one side)."""
    k = draw(hs.integers(1, 8))
    ref = np.array(draw(hs.lists(hs.integers(0, 500), min_size=k, max_size=k)), dtype=np.int64)
    cur = np.array(draw(hs.lists(hs.integers(0, 500), min_size=k, max_size=k)), dtype=np.int64)
    if ref.sum() == 0:
        ref[0] = 1
    if cur.sum() == 0:
        cur[-1] = 1
    return ref, cur


@FAST
@given(count_pairs())
def test_chi2_homogeneity_matches_chi2_contingency(pair: tuple[np.ndarray, np.ndarray]) -> None:
    ref, cur = pair
    stat, p_value, dof = st.chi2_homogeneity(ref, cur)
    keep = (ref + cur) > 0
    table = np.vstack([ref[keep], cur[keep]])
    if table.shape[1] == 1:
        assert (stat, p_value, dof) == (0.0, 1.0, 0)
        return
    expected = sps.chi2_contingency(table, correction=False)
    np.testing.assert_allclose(stat, expected.statistic, **STAT_TOL)
    assert abs(p_value - expected.pvalue) <= P_TOL
    assert dof == expected.dof


def test_chi2_homogeneity_on_two_categories_is_the_two_proportion_z_test() -> None:
    ref, cur = np.array([420, 580]), np.array([470, 530])
    stat, p_value, _ = st.chi2_homogeneity(ref, cur)
    p1, p2 = ref[0] / ref.sum(), cur[0] / cur.sum()
    pooled = (ref[0] + cur[0]) / (ref.sum() + cur.sum())
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1 / ref.sum() + 1 / cur.sum()))
    assert stat == pytest.approx(z**2, rel=1e-12)
    assert p_value == pytest.approx(2 * sps.norm.sf(abs(z)), abs=1e-12)


@FAST
@given(count_pairs())
def test_goodness_of_fit_matches_scipy_chisquare(pair: tuple[np.ndarray, np.ndarray]) -> None:
    ref, cur = pair
    stat, p_value, dof = st.chi2_goodness_of_fit(ref, cur, 1e-4)
    keep = (ref + cur) > 0
    if keep.sum() == 1:
        assert (stat, p_value, dof) == (0.0, 1.0, 0)
        return
    expected_counts = st.gof_expected(ref[keep], int(cur.sum()), 1e-4)
    expected = sps.chisquare(cur[keep], expected_counts)
    np.testing.assert_allclose(stat, expected.statistic, **STAT_TOL)
    assert abs(p_value - expected.pvalue) <= P_TOL


def test_goodness_of_fit_flags_reference_noise_that_homogeneity_does_not() -> None:
    # A small reference makes its shares noisy; GOF treats them as exact and over-flags.
    ref, cur = np.array([12, 8]), np.array([4600, 5400])
    _, p_homogeneity, _ = st.chi2_homogeneity(ref, cur)
    _, p_gof, _ = st.chi2_goodness_of_fit(ref, cur)
    assert p_homogeneity > 0.05
    assert p_gof < 0.05


@FAST
@given(count_pairs())
def test_jensenshannon_matches_scipy(pair: tuple[np.ndarray, np.ndarray]) -> None:
    ref, cur = pair
    np.testing.assert_allclose(st.jensenshannon(ref, cur), scipy_js(ref, cur), **STAT_TOL)


@FAST
@given(count_pairs(), hs.sampled_from([1e-4, 1e-3]))
def test_psi_is_the_floored_formula(pair: tuple[np.ndarray, np.ndarray], eps: float) -> None:
    ref, cur = pair
    p = np.maximum(ref / ref.sum(), eps)
    q = np.maximum(cur / cur.sum(), eps)
    expected = sum((qi - pi) * np.log(qi / pi) for pi, qi in zip(p, q, strict=True))
    np.testing.assert_allclose(st.psi(ref, cur, eps), expected, **STAT_TOL)
    assert st.psi(ref, cur, eps) >= 0.0


def test_distances_of_identical_histograms_are_zero_and_empty_sides_defined() -> None:
    counts = np.array([3, 0, 7])
    assert st.psi(counts, counts) == 0.0
    assert st.jensenshannon(counts, counts) == 0.0
    empty = np.zeros(3, dtype=np.int64)
    assert st.psi(empty, counts) == 0.0
    assert st.jensenshannon(counts, empty) == 0.0
    assert st.chi2_homogeneity(empty, counts) == (0.0, 1.0, 0)
    assert st.chi2_goodness_of_fit(counts, empty) == (0.0, 1.0, 0)


@FAST
@given(
    samples(max_size=300),
    samples(),
    hs.integers(2, 20),
    hs.sampled_from(["quantile", "equal_width"]),
)
def test_bins_fixed_on_reference_count_like_a_histogram(
    x: np.ndarray, y: np.ndarray, bins: int, binning: str
) -> None:
    xs, ys = np.sort(x), np.sort(y)
    edges = st.reference_edges(xs, bins, binning)  # type: ignore[arg-type]
    assert np.all(np.diff(edges) > 0)
    assert len(edges) <= bins - 1
    ref_counts, cur_counts = st.bin_counts(xs, edges), st.bin_counts(ys, edges)
    assert ref_counts.sum() == len(xs) and cur_counts.sum() == len(ys)
    # right-closed bins (-inf, e1], (e1, e2], ..., (e_last, inf), counted the slow way
    idx = np.searchsorted(edges, y, side="left")
    np.testing.assert_array_equal(cur_counts, np.bincount(idx, minlength=len(edges) + 1))
    if binning == "quantile" and len(np.unique(x)) == len(x) and len(x) >= bins:
        # distinct reference values: every quantile bin holds about n / bins of them
        assert ref_counts.max() - ref_counts.min() <= 1 + len(x) // bins


def test_numeric_stats_on_empty_and_constant_samples_are_defined() -> None:
    empty, const = np.empty(0), np.full(50, 3.0)
    out = st.numeric_stats(empty, const)
    assert out["ks_p_value"] == 1.0 and out["wasserstein_norm"] == 0.0 and out["psi"] == 0.0
    same = st.numeric_stats(const, const)
    assert same["ks_statistic"] == 0.0 and same["ks_p_value"] == 1.0
    assert same["wasserstein"] == 0.0 and same["psi"] == 0.0 and same["jensenshannon"] == 0.0
    moved = st.numeric_stats(const, const + 0.5)
    assert moved["ks_statistic"] == 1.0
    assert moved["wasserstein_norm"] == pytest.approx(0.5 / 1e-3)  # std floor of 0.001
    assert all(np.isfinite(v) for v in [*out.values(), *same.values(), *moved.values()])


def test_finite_sorted_drops_null_nan_inf_and_sorts() -> None:
    s = pl.Series([3.0, None, float("nan"), -1.0, float("inf"), 2.0, float("-inf")])
    np.testing.assert_array_equal(st.finite_sorted(s), [-1.0, 2.0, 3.0])
    ints = pl.Series([5, None, 1], dtype=pl.Int32)
    np.testing.assert_array_equal(st.finite_sorted(ints), [1.0, 5.0])


def test_category_counts_align_both_sides() -> None:
    ref = pl.Series(["a", "b", "a", None, "c"])
    cur = pl.Series(["b", "d", "d", None, None], dtype=pl.Categorical)
    cats, r, c = st.category_counts(ref.alias("current"), cur.alias("reference"))
    assert cats == ["a", "b", "c", "d"]
    assert r.tolist() == [2, 1, 1, 0]
    assert c.tolist() == [0, 1, 0, 2]


@FAST
@given(samples(max_size=200))
def test_chunked_mean_std_is_numpys(x: np.ndarray) -> None:
    mean, std = st.mean_std(x)
    np.testing.assert_allclose([mean, std], [np.mean(x), np.std(x)], rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(samples(), samples())
def test_series_entry_point_equals_array_entry_point(x: np.ndarray, y: np.ndarray) -> None:
    ws = st.Workspace()
    from_arrays = st.numeric_stats(np.sort(x), np.sort(y), workspace=ws)
    from_series, n, m = st.numeric_stats_of_series(pl.Series(x), pl.Series(y), workspace=ws)
    assert (n, m) == (len(x), len(y))
    assert from_series == from_arrays


def test_equal_sizes_where_scipy_falls_back_to_the_asymptotic_p_value() -> None:
    """scipy's exact formula for n = m = 7, D = 1/7 rounds to 1 + 2**-52; scipy then calls the
    exact calculation unsuccessful and reports kstwo.sf: so must we (1.0 was 3.9e-5 off)."""
    x = np.array([2.0, 1.0, 0.0, -2.0, -1.0, -3.0, -3.0])
    y = np.array([2.0, -2.0, -3.0, -1.0, -1.0, 2.0, 0.0])
    statistic, p_value = st.ks_2samp_sorted(np.sort(x), np.sort(y))
    expected = _scipy_ks(x, y)
    assert statistic == expected.statistic
    assert p_value == expected.pvalue < 1.0


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 8, 13, 31, 64, 100, 257, 1000])
def test_equal_sizes_give_scipys_exact_bits_or_its_fallback_for_every_gap(n: int) -> None:
    from scipy.stats import kstwo
    from scipy.stats._stats_py import _attempt_exact_2kssamp  # the oracle: scipy's own code

    for h in sorted({1, 2, 3, n // 3, n // 2, n - 1, n} - {0}):
        success, d, prob = _attempt_exact_2kssamp(n, n, n, h / n, "two-sided")
        if not success:
            prob = kstwo.sf(d, np.round(n / 2))
        expected = float(np.clip(prob, 0.0, 1.0))
        st.clear_caches()
        assert st.ks_pvalue(h * n, n, n, "exact") == expected, (n, h)


@pytest.mark.parametrize(
    ("n", "m", "shift"),
    [(200, 2500, 3.0), (30, 2500, 3.0), (8000, 999, 0.3), (1000, 150, 1.0), (3000, 2500, 0.25)],
)
def test_unequal_sizes_small_exact_p_values_are_scipys_bits(n: int, m: int, shift: float) -> None:
    """Small exact p-values of unequal sizes (down to 1e-171 here) are scipy's to the bit, not
    ``1 - P(inside)``, whose cancellation left 0.0 or a few correct digits."""
    rng = np.random.default_rng(n + m)
    x, y = rng.normal(size=n), rng.normal(shift, size=m)
    st.clear_caches()
    statistic, p_value = st.ks_2samp_sorted(np.sort(x), np.sort(y))
    expected = _scipy_ks(x, y)
    assert statistic == expected.statistic
    assert p_value == expected.pvalue

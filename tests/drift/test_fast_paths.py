"""The fast paths agree with the slow exact ones and with scipy.

* KS p-value: scipy's ``kstwo.sf`` arithmetic bit for bit, except in the far tail (bound below
  1e-16), where it stays within 1e-16; on whole random columns, including statistics near the
  5% threshold, within 1e-12 of ``scipy.stats.ks_2samp``.
* Small sample against a large reference (``ecdf_distances_blocks``): the same KS gap and
  distinct count as the merge, the same Wasserstein distance to 1e-13 (relative), also where
  the values sit far from zero (cancellation) or beyond the reference's range.
* The sort of a column's finite values, and both ways of aligning category counts.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from scipy import stats as sps
from scipy.special import kolmogi

from mlx_plugins.drift_detectors import stats as st
from mlx_plugins.drift_detectors.polars_drift import PolarsDriftDetector

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _kstwo_sf(max_gap: int, n: int, m: int) -> float:
    en = float(n) * float(m) / (float(n) + float(m))
    d = max_gap / (float(n) * float(m))
    return float(np.clip(sps.kstwo.sf(d, np.round(en)), 0.0, 1.0))


def test_asymptotic_pvalue_is_kstwo_bit_for_bit_near_and_far_from_the_threshold() -> None:
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(300):
        n = int(rng.integers(10_001, 30_000))
        m = int(rng.choice([n, int(rng.integers(150, n))]))
        en = float(np.round(n * m / (n + m)))
        # statistics around the 5% critical value, in the body and in the near tail
        p_target = float(rng.choice([0.9, 0.5, 0.1, 0.06, 0.05, 0.04, 0.01, 1e-4, 1e-8]))
        d = float(kolmogi(p_target)) / math.sqrt(en) * float(rng.uniform(0.98, 1.02))
        gap = max(1, round(d * n * m))
        ours = st.ks_pvalue(gap, n, m)
        assert ours == _kstwo_sf(gap, n, m), (n, m, gap)
        checked += 1
    assert checked == 300


@pytest.mark.parametrize("n, m", [(12_000, 12_000), (20_000, 3_000), (10_500, 900)])
def test_far_tail_pvalue_is_within_1e_16_of_kstwo(n: int, m: int) -> None:
    en = float(np.round(n * m / (n + m)))
    for z in (3.0, 4.3, 4.4, 5.0, 6.0, 8.0, 20.0):  # sqrt(en) * D: Massart's bound 2 exp(-2 z^2)
        gap = round(z / math.sqrt(en) * n * m)
        ours, scipy_p = st.ks_pvalue(gap, n, m), _kstwo_sf(gap, n, m)
        assert abs(ours - scipy_p) <= 1e-16
        bound = 2 * math.exp(-2 * en * (gap / (n * m)) ** 2)
        assert ours <= bound * (1 + 1e-12)
        if bound >= st.KS_TAIL:  # z <= 4.33: scipy's value itself
            assert ours == scipy_p
    # a threshold below the default tail keeps the exact value
    gap = round(6.0 / math.sqrt(en) * n * m)
    assert st.ks_pvalue(gap, n, m, tail=0.0) == _kstwo_sf(gap, n, m)


def test_columns_near_the_threshold_match_scipy_ks_2samp() -> None:
    """Whole columns through the detector's statistics, statistics spread around p = 0.05."""
    rng = np.random.default_rng(11)
    worst = 0.0
    for i in range(40):
        n = int(rng.integers(10_001, 16_000))
        m = int(rng.choice([n, int(rng.integers(2_000, n))]))
        crit = float(kolmogi(0.05)) / math.sqrt(n * m / (n + m))
        shift = crit * float(rng.uniform(0.5, 1.5)) * 2.5  # normal: D ~ 0.4 * shift
        x = rng.normal(0, 1, n)
        y = rng.normal(shift, 1, m) if i % 3 else rng.integers(-40, 40, m) / 10.0
        values = st.numeric_stats(np.sort(x), np.sort(y))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = sps.ks_2samp(x, y)
        assert values["ks_statistic"] == pytest.approx(expected.statistic, rel=1e-12, abs=0)
        worst = max(worst, abs(values["ks_p_value"] - expected.pvalue))
    assert worst <= 1e-12


@hs.composite
def samples(draw: hs.DrawFn, min_size: int, max_size: int) -> np.ndarray:
    size = draw(hs.integers(min_size, max_size))
    style = draw(hs.sampled_from(["normal", "ties", "offset", "wide", "zeros"]))
    rng = np.random.default_rng(draw(hs.integers(0, 2**32 - 1)))
    shift = draw(hs.floats(-2, 2))
    if style == "normal":
        return rng.normal(shift, 1.0, size)
    if style == "ties":
        return rng.integers(-3, 4, size).astype(np.float64) + round(shift)
    if style == "offset":  # far from zero: naive prefix sums would cancel catastrophically
        return 1e6 + rng.normal(shift * 1e-3, 1e-3, size)
    if style == "wide":
        return rng.standard_cauchy(size) * 10.0 ** draw(hs.integers(-200, 200))
    values = rng.normal(shift, 1.0, size)
    values[rng.random(size) < 0.5] = 0.0
    return values


@FAST
@given(samples(8, 3000), samples(1, 300))
def test_blocks_match_the_merge_and_scipy(x: np.ndarray, y: np.ndarray) -> None:
    xs, ys = np.sort(x), np.sort(y)
    merged = st.ecdf_distances(xs, ys)
    blocks = st.ecdf_distances_blocks(xs, ys)
    assert blocks.ks_max_gap == merged.ks_max_gap
    assert blocks.ks_statistic == merged.ks_statistic
    assert blocks.n_unique == merged.n_unique
    scale = max(abs(xs[0]), abs(xs[-1]), abs(ys[0]), abs(ys[-1]))
    np.testing.assert_allclose(blocks.wasserstein, merged.wasserstein, rtol=1e-13, atol=1e-300)
    expected = sps.wasserstein_distance(x, y)
    np.testing.assert_allclose(blocks.wasserstein, expected, rtol=1e-12, atol=scale * 1e-15)


def test_blocks_with_a_current_beyond_the_reference_range_and_tiny_values() -> None:
    rng = np.random.default_rng(5)
    for xs, ys in [
        (np.sort(rng.normal(0, 1, 4000)), np.sort(rng.normal(50, 1, 200))),
        (np.sort(rng.normal(0, 1, 4000)), np.sort(rng.normal(-50, 1, 200))),
        (np.sort(rng.normal(0, 1e-305, 4000)), np.sort(rng.normal(0, 2e-305, 300))),
        (np.sort(rng.normal(0, 1e300, 4000)), np.sort(rng.normal(0, 1e300, 300))),
        (np.zeros(100), np.zeros(5)),
        (np.array([-0.0] * 50 + [0.0] * 50), np.array([0.0, -0.0])),
    ]:
        merged, blocks = st.ecdf_distances(xs, ys), st.ecdf_distances_blocks(xs, ys)
        assert (blocks.ks_max_gap, blocks.n_unique) == (merged.ks_max_gap, merged.n_unique)
        np.testing.assert_allclose(blocks.wasserstein, merged.wasserstein, rtol=1e-13, atol=0)


def test_prepared_and_raw_agree_bit_for_bit_in_the_block_regime() -> None:
    rng = np.random.default_rng(9)
    n = 6000
    reference = pl.DataFrame(
        {
            "x": rng.normal(0, 1, n),
            "k": rng.integers(0, 20, n).astype(np.float64),
            "far": 1e9 + rng.normal(0, 1e-2, n),
        }
    )
    detector = PolarsDriftDetector()
    prepared = detector.prepare_reference(reference)
    for m in (1, 7, 300, n // st.BLOCK_RATIO, n // st.BLOCK_RATIO + 1):
        current = pl.DataFrame(
            {
                "x": np.append(rng.normal(0.3, 1, m - 1), np.inf),
                "k": rng.integers(-2, 25, m).astype(np.float64),
                "far": 1e9 + rng.normal(0, 1e-2, m),
            }
        )
        raw = detector.compare(reference, current)
        fast = detector.compare_prepared(prepared, current)
        assert fast == raw
        assert fast.model_dump_json() == raw.model_dump_json()


def test_finite_sorted_drops_nan_inf_and_nulls_and_sorts() -> None:
    rng = np.random.default_rng(3)
    specials = np.array([0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 5e-324, -5e-324, 1.0])
    for _ in range(100):
        body = rng.normal(size=int(rng.integers(0, 60))) * 10.0 ** int(rng.integers(-300, 300))
        x = np.concatenate([body, rng.choice(specials, int(rng.integers(0, 8)))])
        expected = np.sort(x[np.isfinite(x)]).tolist()
        assert st.finite_sorted(pl.Series(x)).tolist() == expected
        assert st.finite_sorted(pl.Series(x), multithreaded=True).tolist() == expected
        with_nulls = pl.Series([*x.tolist(), None])
        assert st.finite_sorted(with_nulls).tolist() == expected


def test_category_alignment_by_dict_and_by_join_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = pl.Series("current", ["b", "a", None, "é", "z", "a", "B"])  # a column named current
    cur = pl.Series("reference", ["a", "c", "c", None, "é", "Z"])
    small = st.category_counts(ref, cur)
    monkeypatch.setattr(st, "_SMALL_CATEGORIES", 0)
    joined = st.category_counts(ref, cur)
    assert small[0] == joined[0] == ["B", "Z", "a", "b", "c", "z", "é"]
    assert small[1].tolist() == joined[1].tolist() == [1, 0, 2, 1, 0, 1, 1]
    assert small[2].tolist() == joined[2].tolist() == [0, 1, 1, 0, 2, 0, 1]
    prepared = st.CategoricalReference.of_series(ref.cast(pl.Categorical))
    aligned = prepared.align(cur.cast(pl.Categorical))
    assert aligned[0] == small[0] and aligned[1].tolist() == small[1].tolist()


def _as_dict(counted: pl.DataFrame, name: str = "reference") -> dict[str, int]:
    return dict(zip(counted["category"].to_list(), counted[name].to_list(), strict=True))


def _hashed_counts(series: pl.Series) -> dict[str, int]:
    """polars' own ``value_counts`` of the non-null values, as strings: the reference."""
    counted = series.drop_nulls().cast(pl.String).alias("category").value_counts(name="n")
    return _as_dict(counted, "n")


@pytest.mark.parametrize(
    "series",
    [
        pl.Series("c", ["b", "a", None, "é", "b", "日本"]).cast(pl.Categorical),
        pl.Series("c", ["b", "a", None, "b"]).cast(pl.Enum(["z", "b", "a", "unused"])),
        pl.Series("c", ["x", "y", "x", "z"] * 50).cast(pl.Categorical)[37:91],  # a slice
        pl.Series("c", [None, None], dtype=pl.Categorical),
        pl.Series("c", [], dtype=pl.Categorical),
        pl.Series("c", ["b", None, "a", "b"]),  # String: hashed, no codes
    ],
    ids=["categorical", "enum", "slice", "all-null", "empty", "string"],
)
def test_category_counts_by_codes_equal_polars_value_counts(series: pl.Series) -> None:
    """A Categorical or Enum column is counted with np.bincount over its codes (~3x faster than
    hashing at 1M rows); the categories, counts and dtypes are what value_counts gives."""
    counted = st.category_value_counts(series, name="reference")
    assert counted.schema == pl.Schema({"category": pl.String, "reference": pl.UInt32})
    assert _as_dict(counted) == _hashed_counts(series)
    coded = st._counted_codes(series)
    assert (coded is None) == (series.dtype == pl.String)


def test_sparse_codes_of_a_large_category_pool_fall_back_to_hashing() -> None:
    """Categorical's pool is shared by the process: three values whose codes reach 300,000
    are hashed rather than counted in a 300,000-slot array, with the same counts."""
    pool = pl.Series("pool", [f"p{i}" for i in range(300_000)]).cast(pl.Categorical)
    few = pl.Series("c", [pool[-1], "p5", pool[-1], None]).cast(pl.Categorical)
    assert st._counted_codes(few) is None
    counted = st.category_value_counts(few)
    assert _as_dict(counted) == {"p299999": 2, "p5": 1}


def test_a_polars_without_cat_to_counts_categoricals_by_hashing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """polars before 2 has no Series.cat.to to map codes back (the project allows >= 1.30):
    the counts then come from value_counts, the same ones."""
    series = pl.Series("c", ["b", "a", None, "b"]).cast(pl.Categorical)
    by_codes = _as_dict(st.category_value_counts(series))
    monkeypatch.setattr(st, "_maps_codes", lambda: False)
    assert st._counted_codes(series) is None
    assert _as_dict(st.category_value_counts(series)) == by_codes == {"a": 1, "b": 2}

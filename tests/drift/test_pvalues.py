"""The array p-values (``pvalues.ks_pvalues``, ``pvalues.chi2_sf``) are the scalar ones bit for
bit, in every branch of scipy's ``kstwo.sf`` kernel, and agree with scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from scipy.special import kolmogi

from mlx_plugins.drift_detectors import pvalues as pv
from mlx_plugins.drift_detectors import stats as st


def _cases(seed: int, count: int, n_range: tuple[int, int], m_range: tuple[int, int]) -> tuple:
    rng = np.random.default_rng(seed)
    n = rng.integers(*n_range, count)
    m = rng.integers(*m_range, count)
    en = np.round(n * m / (n + m))
    p_target = rng.choice([0.999, 0.99, 0.9, 0.5, 0.1, 0.05, 0.01, 1e-4, 1e-8, 1e-14, 1e-20], count)
    d = kolmogi(p_target) / np.sqrt(en) * rng.uniform(0.7, 1.3, count)
    gap = np.clip(np.round(d * n * m), 1, n * m).astype(np.int64)
    return gap, n, m


@pytest.mark.parametrize(
    "seed, n_range, m_range",
    [
        (1, (10_001, 200_000), (150, 1200)),  # Pelz-Good, Durbin, Smirnov, far tail
        (2, (10_001, 60_000), (2, 160)),  # n <= 140: Durbin, Pomeranz, Smirnov
        (3, (10_001, 30_000), (10_001, 30_000)),  # both large
        (4, (5, 3000), (5, 3000)),  # exact lattice paths (scalar)
    ],
)
def test_ks_pvalues_equal_the_scalar_function_bit_for_bit(
    seed: int, n_range: tuple[int, int], m_range: tuple[int, int]
) -> None:
    gap, n, m = _cases(seed, 400, n_range, m_range)
    got = pv.ks_pvalues(gap, n, m)
    st.clear_caches()
    want = [st.ks_pvalue(int(g), int(a), int(b)) for g, a, b in zip(gap, n, m, strict=True)]
    assert got.tolist() == want


def test_ks_pvalues_are_kstwo_sf_and_ks_2samp() -> None:
    gap, n, m = _cases(6, 300, (10_001, 100_000), (150, 3000))
    got = pv.ks_pvalues(gap, n, m)
    en = np.round(n * m / (n + m))
    d = gap / (n.astype(float) * m.astype(float))
    body = 2.0 * np.exp(-2.0 * en * d * d) >= st.KS_TAIL  # outside the far tail: bit for bit
    scipy_p = np.clip(sps.kstwo.sf(d, en), 0.0, 1.0)
    assert body.sum() > 200
    assert got[body].tolist() == scipy_p[body].tolist()
    assert np.all(np.abs(got - scipy_p) <= 1e-16)
    # whole samples
    rng = np.random.default_rng(8)
    xs = np.sort(rng.normal(0, 1, 12_000))
    for shift, size in ((0.0, 900), (0.08, 900), (0.3, 60), (0.0, 20)):
        ys = np.sort(rng.normal(shift, 1, size))
        stat, want = sps.ks_2samp(xs, ys)
        dist = st.ecdf_distances(xs, ys)
        (ours,) = pv.ks_pvalues(np.array([dist.ks_max_gap]), len(xs), np.array([size]))
        assert abs(dist.ks_statistic - stat) <= 1e-15 and abs(ours - want) <= 1e-14


def test_methods_and_bad_sizes() -> None:
    gap, n, m = _cases(9, 50, (100, 3000), (100, 3000))
    for method in ("exact", "asymp"):
        got = pv.ks_pvalues(gap, n, m, method)
        st.clear_caches()
        want = [
            st.ks_pvalue(int(g), int(a), int(b), method) for g, a, b in zip(gap, n, m, strict=True)
        ]
        assert got.tolist() == want
    with pytest.raises(ValueError, match="non-empty"):
        pv.ks_pvalues(np.array([1]), 0, np.array([3]))
    assert pv.ks_pvalues(np.array([], dtype=np.int64), 5, np.array([], dtype=np.int64)).size == 0


def test_chi2_sf_is_scipy() -> None:
    stat = np.array([0.0, 0.5, 3.0, 40.0, 400.0])
    dof = np.array([1, 2, 3, 10, 50])
    want = [float(np.clip(sps.chi2.sf(s, k), 0, 1)) for s, k in zip(stat, dof, strict=True)]
    got = pv.chi2_sf(stat, dof)
    assert all(
        math.isclose(a, b, rel_tol=1e-14, abs_tol=1e-300) for a, b in zip(got, want, strict=True)
    )


def test_smirnov_sums_are_scipys_bit_for_bit_in_threads_and_deduplicated() -> None:
    from scipy.special import smirnov

    rng = np.random.default_rng(3)
    n = rng.integers(1, 2000, 400)
    d = np.sqrt(rng.uniform(2.2, 40.0, 400) / n).clip(0.0, 1.0)
    n[::7], d[::7] = n[0], d[0]  # repeated pairs are evaluated once
    want = smirnov(n, d)
    for workers in (1, 2, 3):
        got = pv._smirnov(n, d, workers)
        assert np.array_equal(got.view(np.int64), want.view(np.int64))
    assert pv._smirnov_c() is not None  # this scipy exports the C function (GIL released)

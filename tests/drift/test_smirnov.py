"""The compiled Smirnov sums (``_smirnov.smirnov_many``) are scipy's ``smirnov(n, x)`` bit for
bit on every branch of scipy's ``_smirnov``, and the KS p-values use them only where they
reproduce the installed scipy."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import scipy.special
from scipy.special import smirnov

from mlx_plugins.drift_detectors import _smirnov
from mlx_plugins.drift_detectors import pvalues as pv


def _compiled(n: np.ndarray, x: np.ndarray) -> np.ndarray:
    out = np.empty(len(n))
    _smirnov.smirnov_many(np.asarray(n, dtype=np.int64), np.asarray(x, dtype=np.float64), out)
    return out


def _assert_same_bits(got: np.ndarray, want: np.ndarray, n: np.ndarray, x: np.ndarray) -> None:
    same = (got.view(np.int64) == want.view(np.int64)) | (np.isnan(got) & np.isnan(want))
    bad = np.flatnonzero(~same)
    assert not len(bad), [(int(n[i]), float(x[i]), got[i], want[i]) for i in bad[:5]]


@pytest.mark.parametrize(
    "seed, n_range, count",
    [(1, (1, 40), 4000), (2, (40, 1200), 1500), (3, (1200, 6000), 60)],
)
def test_random_pairs_are_scipys_bits(seed: int, n_range: tuple[int, int], count: int) -> None:
    rng = np.random.default_rng(seed)
    n = rng.integers(*n_range, count).astype(np.int64)
    design = rng.integers(0, 5, count)
    x = np.select(
        [design == 0, design == 1, design == 2, design == 3],
        [
            rng.random(count),  # anywhere
            rng.random(count) / np.sqrt(n),  # small: the upper sum, x <= 1/n
            rng.integers(0, n + 1) / n,  # on the lattice (alpha == 0)
            np.sqrt(rng.uniform(2.2, 40.0, count) / n),  # the KS p-value's Smirnov branch
        ],
        1 - rng.random(count) / n,  # x >= 1 - 1/n
    ).clip(0.0, 1.0)
    _assert_same_bits(_compiled(n, x), smirnov(n, x), n, x)


def test_the_daily_years_kind_of_pairs_are_scipys_bits() -> None:
    """Sizes ~900 (a day against ~190k training rows), p-values 1e-2 .. 1e-31."""
    rng = np.random.default_rng(7)
    n = rng.integers(850, 1000, 300).astype(np.int64)
    x = np.sqrt(rng.uniform(2.2, 70.0, 300) / n)
    _assert_same_bits(_compiled(n, x), smirnov(n, x), n, x)


def test_edges_and_bad_values_are_scipys() -> None:
    n = np.array([1, 1, 5, 5, 5, 5, 5, 10, 10, 100, 3000, 50, 50, 50], dtype=np.int64)
    x = np.array([0.3, 1.0, 0.0, 1.0, -0.1, 1.5, math.nan, 0.1, 0.95, 0.999, 0.9, 0.02, 0.5, 0.98])
    got, want = _compiled(n, x), smirnov(n, x)
    _assert_same_bits(got, want, n, x)
    assert np.isnan(got[4:7]).all()  # outside [0, 1] and NaN: NaN, as scipy
    assert got[2] == 1.0 and got[3] == 0.0


def _splits_the_power(n: int, x: float) -> bool:
    """Whether scipy's ``pow2Scaled_D`` splits the first lower-sum term's power
    ``(1 - x - 1/n) ** (n - 1)`` into powers (its recursion)."""
    y = math.frexp(1 - x - 1 / n)[0]
    m = n - 1
    if not m * (y - 1) / y < -960 * math.log(2):
        return False
    lg2y = math.log(y) / math.log(2)
    if m * lg2y > -960:
        return False
    v = -960 / lg2y + 1
    return m > int(abs(math.ldexp(v, -52) + v) / 2)  # scipy's nextPowerOf2(v) / 2


def test_powers_split_into_parts_are_scipys_bits() -> None:
    pairs = [(4000, 0.3), (2500, 0.45), (10_000, 0.1), (30_000, 0.05), (6000, 0.6)]
    assert all(_splits_the_power(n, x) for n, x in pairs)  # the branch is exercised
    n = np.array([p[0] for p in pairs], dtype=np.int64)
    x = np.array([p[1] for p in pairs])
    _assert_same_bits(_compiled(n, x), smirnov(n, x), n, x)


def test_the_check_pairs_cover_the_split_powers() -> None:
    assert any(_splits_the_power(n, x) for n, x in pv._SMIRNOV_CHECKS if n > 1)


@pytest.mark.parametrize("path", ["compiled", "scipy C", "scipy ufunc"])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_every_path_gives_scipys_bits_in_threads_and_deduplicated(
    path: str, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(3)
    n = rng.integers(1, 2000, 200)
    d = np.sqrt(rng.uniform(2.2, 40.0, 200) / n).clip(0.0, 1.0)
    n[::7], d[::7] = n[0], d[0]  # repeated pairs are evaluated once
    used: list[str] = []

    def compiled(ns: np.ndarray, xs: np.ndarray, out: np.ndarray) -> None:
        used.append("compiled")
        _smirnov.smirnov_many(ns, xs, out)

    kernel = pv._smirnov_c()
    assert kernel is not None  # this scipy exports its C function

    def c_function(k: int, x: float, skip: int) -> float:
        used.append("scipy C")
        return kernel(k, x, skip)

    chosen = compiled if path == "compiled" else None
    monkeypatch.setattr(pv, "_compiled_smirnov", lambda ns: chosen)
    monkeypatch.setattr(pv, "_smirnov_c", lambda: None if path == "scipy ufunc" else c_function)
    got = pv._smirnov(n, d, workers)
    _assert_same_bits(got, smirnov(n, d), n, d)
    assert set(used) == ({path} if path != "scipy ufunc" else set())  # that path, and only it


def test_the_replay_is_chosen_where_numba_is_loaded_or_the_sums_are_many() -> None:
    import mlx_plugins.drift_detectors._fused  # noqa: F401  (numba loaded, as on the daily path)

    few = np.array([900, 950], dtype=np.int64)
    assert pv._compiled_smirnov(few) is _smirnov.smirnov_many
    assert pv._compiled_smirnov(np.array([900, _smirnov.MAX_N + 1])) is None  # scipy's closed form
    assert pv._compiled_smirnov(np.array([], dtype=np.int64)) is None
    assert pv._SMIRNOV_MAX_N == _smirnov.MAX_N


def test_without_numba_loaded_the_replay_waits_for_many_sums(monkeypatch: pytest.MonkeyPatch):
    """Loading numba (~0.4 s) pays only for many terms; where it is loaded, any number."""
    import sys

    monkeypatch.delitem(sys.modules, "mlx_plugins.drift_detectors._fused")
    few = np.array([900, 950], dtype=np.int64)
    assert pv._compiled_smirnov(few) is None
    many = np.full(pv._COMPILED_MIN_TERMS // 1000, 1000, dtype=np.int64)
    assert pv._compiled_smirnov(many) is _smirnov.smirnov_many


def test_above_max_n_the_replay_is_nan_not_another_value():
    n = np.array([_smirnov.MAX_N, _smirnov.MAX_N + 1], dtype=np.int64)
    got = _compiled(n, np.array([0.002, 0.002]))
    assert np.isfinite(got[0]) and np.isnan(got[1])


def test_without_a_cache_for_its_machine_code_the_replay_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class NullCache:  # numba's cache where nothing is writable
        pass

    monkeypatch.setattr(_smirnov.smirnov_many, "_cache", NullCache())
    pv._replay_if_exact.cache_clear()
    try:
        assert pv._replay_if_exact() is None
    finally:
        monkeypatch.undo()
        pv._replay_if_exact.cache_clear()
    assert pv._replay_if_exact() is _smirnov.smirnov_many


def test_a_scipy_whose_values_differ_is_used_instead(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = scipy.special.smirnov
    monkeypatch.setattr(scipy.special, "smirnov", lambda n, x: np.nextafter(real(n, x), 2.0))
    pv._replay_if_exact.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            assert pv._replay_if_exact() is None
        assert "differ from this scipy" in caplog.text
        n = np.array([900, 901, 902, 903, 904, 905, 906, 907, 908], dtype=np.int64)
        d = np.full(9, 0.08)
        monkeypatch.setattr(scipy.special, "smirnov", real)
        _assert_same_bits(pv._smirnov(n, d, 1), real(n, d), n, d)  # scipy's C function
    finally:
        pv._replay_if_exact.cache_clear()
    assert pv._replay_if_exact() is _smirnov.smirnov_many

"""Adversarial, randomized checks that the compiled one-pair path (numba radix sort, compiled
mean/std, four-lane merge) gives the numpy path's bits.

``test_compiled_pair.py`` covers one fixed input of each shape; this file draws many inputs
(fixed seeds) aimed at the places a compiled replay could drift from numpy: sizes straddling
the 65,536-value chunk and the four-lane group, lopsided sizes on either side of
``stats.BLOCK_RATIO``, ties across lane boundaries, signed zeros, subnormals, values near
+-DBL_MAX (overflowing sums and steps), NaN of either sign, +-inf on one side only, a side with
no finite value, and non-float polars dtypes. Floats are compared as IEEE-754 bits, so a
``-0.0`` where numpy gives ``0.0`` fails.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from mlx_plugins.drift_detectors import _fused, _radix, batch
from mlx_plugins.drift_detectors import stats as st
from tests.drift._paths import bits_of, numpy_only, path_differences

CHUNK = _fused.MERGE_BUFFER // 4  # 65,536: the numpy code's summing chunk, one merge lane
GROUP = _fused.MERGE_BUFFER  # values (products) of one four-lane group
DBL_MAX = np.finfo(np.float64).max
NEG_NAN = np.array([0xFFF8000000000000], dtype=np.uint64).view(np.float64)[0]
NAN_PAYLOAD = np.array([0x7FF0000000000001], dtype=np.uint64).view(np.float64)[0]  # signalling
NEG_NAN_PAYLOAD = np.array([0xFFF4000000000123], dtype=np.uint64).view(np.float64)[0]
GUARD = 64  # sentinel floats after every output buffer: a write past its end shows there
SENTINEL = np.array([0x7FF4DEADBEEF0001], dtype=np.uint64).view(np.float64)[0]


def _bit(v: float) -> int:
    return int(np.array([v], dtype=np.float64).view(np.uint64)[0])


def _same_bits_multiset(a: np.ndarray, b: np.ndarray) -> bool:
    """The same floats, counting -0.0 and 0.0 (and every NaN payload) apart, in any order."""
    return np.array_equal(
        np.sort(np.ascontiguousarray(a).view(np.uint64)),
        np.sort(np.ascontiguousarray(b).view(np.uint64)),
    )


# -- value generators -----------------------------------------------------------------------------
def _draw(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    if kind == "normal":
        return rng.normal(size=size)
    if kind == "ties":  # a handful of values: long tie runs across every chunk/lane boundary
        return rng.integers(-3, 4, size).astype(np.float64)
    if kind == "constant":
        return np.full(size, 2.5)
    if kind == "signed zeros":
        return np.where(rng.random(size) < 0.5, -0.0, 0.0)
    if kind == "zeros and ones":
        return rng.choice(np.array([-0.0, 0.0, 1.0, -1.0]), size)
    if kind == "subnormal ties":
        return rng.integers(-40, 41, size) * 5e-324
    if kind == "subnormal":
        return rng.normal(size=size) * 1e-310
    if kind == "near max":  # sums overflow to +-inf, steps between them to inf, 0 * inf = NaN
        return rng.choice(
            np.array([DBL_MAX, -DBL_MAX, np.nextafter(DBL_MAX, 0), 0.5 * DBL_MAX, 1.0]), size
        )
    if kind == "huge normal":
        return rng.normal(size=size) * 1e307
    if kind == "magnitudes":
        return rng.normal(size=size) * 10.0 ** rng.integers(-320, 308, size)
    if kind == "bits":  # any uint64 as a float: NaN payloads of both signs, inf, subnormals
        return rng.integers(0, 2**64, size, dtype=np.uint64).view(np.float64)
    if kind == "few bytes":  # keys differing in one or two bytes: most radix passes skipped
        base = np.uint64(0x3FF0000000000000)
        low = rng.integers(0, 256, size, dtype=np.uint64) << np.uint64(8 * int(rng.integers(0, 6)))
        return (base | low).view(np.float64) * rng.choice(np.array([-1.0, 1.0]), size)
    raise AssertionError(kind)


KINDS = [
    "normal",
    "ties",
    "constant",
    "signed zeros",
    "zeros and ones",
    "subnormal ties",
    "subnormal",
    "near max",
    "huge normal",
    "magnitudes",
    "bits",
    "few bytes",
]


def _sprinkle(rng: np.random.Generator, values: np.ndarray, share: float) -> np.ndarray:
    """``values`` with a share of them replaced by NaN of both signs (and payloads) and +-inf."""
    out = values.copy()
    if len(out) == 0 or share <= 0:
        return out
    hit = rng.random(len(out)) < share
    out[hit] = rng.choice(
        np.array([np.nan, NEG_NAN, NAN_PAYLOAD, NEG_NAN_PAYLOAD, np.inf, -np.inf]),
        int(hit.sum()),
    )
    return out


# -- the radix sort -------------------------------------------------------------------------------
def _check_finite_sort(values: np.ndarray) -> None:
    before = values.copy()
    out_full = np.full(len(values) + GUARD, SENTINEL)
    scratch_full = np.full(len(values) + GUARD, SENTINEL)
    k = _radix.finite_sort(values, out_full[: len(values)], scratch_full[: len(values)])
    finite = values[np.isfinite(values)]
    expected = np.sort(finite)
    assert k == len(finite)
    got = out_full[:k]
    assert np.array_equal(got, expected)
    assert _same_bits_multiset(got, finite)  # no zero lost its sign, no value changed bits
    # documented: -0.0 before 0.0
    zeros = got[got == 0]
    assert not np.any(np.diff(np.signbit(zeros).astype(np.int8)) > 0)
    assert np.array_equal(before.view(np.uint64), values.view(np.uint64))  # input untouched
    assert np.array_equal(out_full[len(values) :].view(np.uint64), _sentinels(GUARD))
    assert np.array_equal(scratch_full[len(values) :].view(np.uint64), _sentinels(GUARD))


def _sentinels(size: int) -> np.ndarray:
    return np.full(size, SENTINEL).view(np.uint64)


@pytest.mark.parametrize("seed", range(6))
def test_radix_sort_of_random_adversarial_columns(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    for kind in KINDS:
        for size in (0, 1, 2, 7, int(rng.integers(3, 300)), int(rng.integers(300, 5000))):
            values = _sprinkle(rng, _draw(rng, kind, size), float(rng.choice([0.0, 0.05, 0.9])))
            _check_finite_sort(values)


@pytest.mark.parametrize(
    "values",
    [
        np.array([NEG_NAN, NEG_NAN_PAYLOAD, -np.inf, np.inf, np.nan]),
        np.array([-0.0] * 9 + [0.0] * 9),
        np.array([0.0, -0.0] * 20),
        np.array([5e-324, -5e-324, -0.0, 0.0, 2.2250738585072014e-308, -2.225073858507201e-308]),
        np.array([DBL_MAX, -DBL_MAX, np.inf, -np.inf, 0.0, -0.0]),
        np.full(CHUNK + 3, -0.0),
    ],
    ids=["only non-finite", "zeros", "alternating zeros", "subnormal edge", "extremes", "big -0"],
)
def test_radix_sort_of_edge_columns(values: np.ndarray) -> None:
    _check_finite_sort(values)


def test_finite_sorted_radix_and_numpy_give_the_same_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    st.load_compiled()
    monkeypatch.setattr(st, "radix_sorts_faster", lambda: True)  # whichever is faster here
    rng = np.random.default_rng(7)
    for kind in KINDS:
        size = st.COMPILED_COLUMN_MIN_VALUES + int(rng.integers(0, 3000))
        raw = _sprinkle(rng, _draw(rng, kind, size), 0.02)
        series = pl.Series(raw)
        monkeypatch.setattr(st, "compiled_loaded", lambda: True)
        radix = st.finite_sorted(series)
        monkeypatch.setattr(st, "compiled_loaded", lambda: False)
        numpy = st.finite_sorted(series)
        assert radix.dtype == numpy.dtype == np.float64
        assert np.array_equal(radix, numpy), kind
        finite = st.comparable_float64(series).to_numpy()
        assert _same_bits_multiset(radix, finite[np.isfinite(finite)]), kind


# -- sorted_padded_rows ---------------------------------------------------------------------------
def _numpy_padded_rows(
    values: np.ndarray, starts: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    rows = np.full((len(starts) - 1, width), np.inf)
    counts = np.empty(len(starts) - 1, dtype=np.int64)
    for d in range(len(starts) - 1):
        seg = values[starts[d] : starts[d + 1]]
        finite = seg[np.isfinite(seg)]
        rows[d, : len(finite)] = finite
        counts[d] = len(finite)
    rows.sort(axis=1)
    return rows, counts


@pytest.mark.parametrize("seed", range(8))
def test_sorted_padded_rows_is_the_numpy_row_sort(seed: int) -> None:
    rng = np.random.default_rng(2000 + seed)
    segments = int(rng.integers(1, 40))
    lengths = rng.integers(0, 400, segments)
    lengths[rng.random(segments) < 0.2] = 0  # empty segments
    parts = []
    for length in lengths:
        kind = str(rng.choice(KINDS))
        seg = _draw(rng, kind, int(length))
        r = rng.random()
        if r < 0.15:  # a segment with no finite value at all
            seg = rng.choice(np.array([np.nan, NEG_NAN, np.inf, -np.inf]), int(length))
        elif r < 0.5:
            seg = _sprinkle(rng, seg, 0.1)
        parts.append(seg)
    values = np.concatenate(parts) if parts else np.empty(0)
    starts = np.zeros(segments + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    width = max(int(lengths.max()), 1) + int(rng.integers(0, 3))  # as batch does, or wider
    expected_rows, expected_counts = _numpy_padded_rows(values, starts, width)
    rows = np.full((segments, width), SENTINEL)
    counts = np.full(segments, -1, dtype=np.int64)
    before = values.copy()
    _radix.sorted_padded_rows(values, starts, rows, counts)
    assert np.array_equal(counts, expected_counts)
    assert np.array_equal(rows, expected_rows)
    for d in range(segments):
        # against the input, not numpy's row: numpy's SIMD sort may flip the sign of zeros
        # (a row of 84 -0.0 among 181 zeros came back with 146), the radix sort never does
        seg = values[starts[d] : starts[d + 1]]
        assert _same_bits_multiset(rows[d, : counts[d]], seg[np.isfinite(seg)]), d
    assert np.array_equal(before.view(np.uint64), values.view(np.uint64))


def test_sorted_padded_rows_all_empty_or_non_finite() -> None:
    values = np.array([np.nan, NEG_NAN, np.inf, -np.inf, NEG_NAN_PAYLOAD])
    starts = np.array([0, 0, 5, 5, 5], dtype=np.int64)
    rows = np.full((4, 5), SENTINEL)
    counts = np.full(4, -1, dtype=np.int64)
    _radix.sorted_padded_rows(values, starts, rows, counts)
    expected_rows, expected_counts = _numpy_padded_rows(values, starts, 5)
    assert np.array_equal(counts, expected_counts)
    assert np.array_equal(rows.view(np.uint64), expected_rows.view(np.uint64))


def test_batch_sorted_rows_of_mixed_dtypes_is_the_numpy_row_sort(either_sort: str) -> None:
    rng = np.random.default_rng(3)
    currents = [
        pl.Series([1.5, None, float("nan"), -0.0, 0.0, float("-inf"), 3.0]),
        pl.Series(np.array([NEG_NAN, 2.0, -1.0], dtype=np.float64)),
        pl.Series([], dtype=pl.Float64),
        pl.Series([None, None], dtype=pl.Float64),
        pl.Series(rng.normal(size=500)),
        pl.Series(np.where(rng.random(300) < 0.5, -0.0, 0.0)),
    ]
    rows, counts = batch.sorted_rows(currents)
    for d, s in enumerate(currents):
        expected = np.sort(st.finite_sorted(s))
        assert counts[d] == len(expected)
        assert np.array_equal(rows[d, : counts[d]], expected)
        assert np.all(rows[d, counts[d] :] == np.inf)


# -- mean_std and the merge, called directly --------------------------------------------------
@pytest.mark.parametrize(
    "size",
    [1, 7, 8, 127, 128, 129, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 5, GROUP - 1, GROUP + 1],
)
def test_mean_std_is_numpys_at_chunk_boundaries(size: int) -> None:
    rng = np.random.default_rng(size)
    for kind in ("normal", "near max", "huge normal", "subnormal", "signed zeros", "magnitudes"):
        values = _draw(rng, kind, size)
        lo = int(rng.integers(0, 5))
        padded = np.concatenate([rng.normal(size=lo), values, rng.normal(size=3)])
        buf_full = np.full(min(size, CHUNK) + GUARD, SENTINEL)
        with np.errstate(over="ignore", invalid="ignore"):
            want = st.mean_std(values)
        got = _fused.mean_std(padded, lo, size, buf_full[: min(size, CHUNK)])
        assert (_bit(got[0]), _bit(got[1])) == (_bit(want[0]), _bit(want[1])), kind
        assert np.array_equal(buf_full[min(size, CHUNK) :].view(np.uint64), _sentinels(GUARD))


def test_mean_std_of_all_negative_zeros() -> None:
    values = np.full(CHUNK + 9, -0.0)
    got = _fused.mean_std(values, 0, len(values), np.empty(CHUNK))
    want = st.mean_std(values)
    assert (_bit(got[0]), _bit(got[1])) == (_bit(want[0]), _bit(want[1]))


def _check_merge(x: np.ndarray, y: np.ndarray) -> None:
    n, m = len(x), len(y)
    z = np.concatenate([x, y])
    size = min(n + m - 1, _fused.MERGE_BUFFER)
    buf_full = np.full(size + GUARD, SENTINEL)
    with np.errstate(over="ignore", invalid="ignore"):
        want = st.ecdf_distances(x, y)
    max_gap, ties, dot = _fused.ecdf_merged(z, n, m, buf_full[:size])
    assert int(max_gap) == want.ks_max_gap, (n, m)
    assert n + m - int(ties) == want.n_unique, (n, m)
    assert _bit(float(dot) / (float(n) * float(m))) == _bit(want.wasserstein), (n, m)
    assert np.array_equal(buf_full[size:].view(np.uint64), _sentinels(GUARD))


# (n, m) around the lanes: n + m - 1 products; a group of 4 lanes of CHUNK runs only while the
# merge's state after the group's last value leaves both samples values (else one chain)
MERGE_SIZES = [
    (GROUP // 2, GROUP // 2 + 1),  # products = GROUP, the last value ends a sample: one chain
    (GROUP // 2 + 2, GROUP // 2 + 2),  # a group may or may not fit: decided by the last values
    (GROUP // 2 + CHUNK, GROUP // 2 + CHUNK + 1),  # one group and a chain of 2 chunks
    (GROUP + 1, GROUP + 2),  # two groups and a 2-value tail (if the last values allow)
    (GROUP + CHUNK, GROUP // 7),  # n >> m, just above the block ratio: merge, lanes
    (40, GROUP + CHUNK),  # m >> n: lanes where x is almost never the next value
    (GROUP // 8 + 1, GROUP + 2 * CHUNK),  # y the big side
    (1, GROUP + CHUNK),  # a single x
]


def _lane_groups(x: np.ndarray, y: np.ndarray) -> int:
    """How many four-lane groups :func:`_fused.ecdf_merged` runs on ``x``, ``y`` (its loop
    condition, replayed with its own ``_merge_start``)."""
    n, m = len(x), len(y)
    z = np.concatenate([x, y])
    products = n + m - 1
    chunks = -(-products // CHUNK)
    c = groups = 0
    while c + 4 <= chunks and (c + 4) * CHUNK <= products:
        i_end, j_end, _, _ = _fused._merge_start(z, n, m, (c + 4) * CHUNK)
        if i_end >= n or j_end >= n + m:
            break
        groups += 1
        c += 4
    return groups


@pytest.mark.parametrize("n,m", MERGE_SIZES)
@pytest.mark.parametrize("kind", ["ties", "normal", "zeros and ones", "near max"])
def test_merge_is_numpys_around_the_lane_groups(n: int, m: int, kind: str) -> None:
    rng = np.random.default_rng(n * 31 + m + len(kind))
    x = np.sort(_draw(rng, kind, n))
    y = np.sort(_draw(rng, kind, m))
    _check_merge(x, y)


def test_merge_is_numpys_on_random_sizes_that_run_the_lanes() -> None:
    rng = np.random.default_rng(5)
    ran = 0
    for _ in range(10):
        total = int(rng.integers(GROUP + 2, 2 * GROUP + 2 * CHUNK))
        n = int(rng.integers(1, total))
        m = total - n
        kind = str(rng.choice(["ties", "normal", "zeros and ones", "subnormal ties", "near max"]))
        x = np.sort(_draw(rng, kind, n))
        y = np.sort(_draw(rng, kind, m) + (0.5 if kind == "ties" and rng.random() < 0.5 else 0))
        ran += _lane_groups(x, y) > 0
        _check_merge(x, y)
    assert ran >= 5  # the draws do reach the four-lane loop


def test_the_lane_cases_run_the_lanes() -> None:
    """Guard: most of the sizes above do reach the four-lane loop (and the first one cannot)."""
    rng = np.random.default_rng(0)
    ran = [
        _lane_groups(np.sort(rng.normal(size=n)), np.sort(rng.normal(size=m)))
        for n, m in MERGE_SIZES
    ]
    assert ran[0] == 0
    assert sum(g > 0 for g in ran) >= 5
    assert max(ran) >= 2


def test_merge_of_identical_and_all_tied_samples() -> None:
    half = GROUP // 2 + 3
    same = np.sort(np.repeat(np.arange(half // 4, dtype=np.float64), 4)[:half])
    _check_merge(same, same.copy())  # every x tied with a y, at every lane start
    _check_merge(np.full(half, 1.0), np.full(half + 1, 1.0))  # one value: every step a tie
    _check_merge(np.full(half, -0.0), np.full(half + 1, 0.0))  # tied zeros of both signs


def test_merge_with_ties_exactly_at_the_lane_starts() -> None:
    """x and y interleaved so that the values at merged positions c * CHUNK (where each lane
    starts by binary search) are ties between an x and a y."""
    rng = np.random.default_rng(11)
    n = m = GROUP // 2 + CHUNK + 1
    grid = np.arange(n, dtype=np.float64)
    x = grid.copy()
    y = grid.copy()
    # every even merged position is an x, every odd one a y of the same value; shift some
    y[rng.random(m) < 0.3] += 0.5
    _check_merge(np.sort(x), np.sort(y))


# -- the whole pair, through numeric_stats_of_series ----------------------------------------------
def _pair(
    rng: np.random.Generator, n: int, m: int, kind_x: str, kind_y: str
) -> tuple[np.ndarray, np.ndarray]:
    x = _draw(rng, kind_x, n)
    y = _draw(rng, kind_y, m)
    r = rng.random()
    if r < 0.2:
        x = _sprinkle(rng, x, 0.03)  # non-finite on one side only
    elif r < 0.3:
        y = _sprinkle(rng, y, 0.03)
    elif r < 0.35:
        y = np.where(rng.random(m) < 0.5, np.inf, -np.inf)  # +-inf only, nothing finite
    elif r < 0.4:
        x = rng.choice(np.array([np.nan, NEG_NAN]), n)  # the reference empties
    return x, y


@pytest.mark.parametrize("seed", range(4))
def test_random_small_pairs_give_the_numpy_paths_bits(either_sort: str, seed: int) -> None:
    rng = np.random.default_rng(3000 + seed)
    workspace = st.Workspace()  # reused: stale values from the previous pair in its buffers
    differences: list[str] = []
    for case in range(30):
        n = int(rng.choice([1, 2, 3, 9, int(rng.integers(1, 600))]))
        ratio = float(rng.choice([0.1, 0.124, 0.125, 0.126, 1.0, 7.9, 8.0, 8.1, 30.0]))
        m = max(1, round(n * ratio))
        kind_x, kind_y = str(rng.choice(KINDS)), str(rng.choice(KINDS))
        x, y = _pair(rng, n, m, kind_x, kind_y)
        if rng.random() < 0.5:
            x, y = y, x
        label = f"{seed}/{case} {kind_x}/{kind_y} {n}x{m}"
        differences += path_differences(pl.Series(x), pl.Series(y), label, workspace=workspace)
    assert differences == []


# sizes where the merge's lanes and the chunked sums meet their boundaries; n >> m and m >> n
# on both sides of the 1/8 block ratio (m * 8 <= n: blocks; else the merge)
LARGE_PAIRS = [
    (GROUP // 2, GROUP // 2 + 1, "ties", "ties"),
    (GROUP // 2 + CHUNK, GROUP // 2 + CHUNK + 1, "ties", "ties"),  # lanes, ties at their starts
    (GROUP + 3, GROUP // 2, "normal", "ties"),  # lanes, then a chain
    (GROUP // 2 + CHUNK, GROUP // 2 + CHUNK, "zeros and ones", "signed zeros"),
    (GROUP - 1, 2, "normal", "normal"),  # m >> the other way: blocks
    (3, GROUP, "normal", "ties"),  # a tiny reference against a large current: merge
    (8 * 33_000, 33_000, "ties", "ties"),  # m * 8 == n: blocks
    (8 * 33_000, 33_000, "signed zeros", "zeros and ones"),  # blocks over tied signed zeros
    (8 * 33_000 + 5, 33_000, "zeros and ones", "signed zeros"),
    (8 * 33_000 - 1, 33_000, "ties", "ties"),  # just merge
    (GROUP + CHUNK + 1, CHUNK, "near max", "near max"),
    (CHUNK + 1, CHUNK - 1, "subnormal ties", "subnormal"),
    (GROUP // 2, GROUP // 2 + 7, "magnitudes", "bits"),
    (GROUP // 2 + 2, GROUP // 2, "huge normal", "few bytes"),
]


@pytest.mark.parametrize("n,m,kind_x,kind_y", LARGE_PAIRS)
def test_large_pairs_give_the_numpy_paths_bits(
    either_sort: str, n: int, m: int, kind_x: str, kind_y: str
) -> None:
    rng = np.random.default_rng(n ^ m)
    x, y = _pair(rng, n, m, kind_x, kind_y)
    assert path_differences(pl.Series(x), pl.Series(y), f"{kind_x}/{kind_y} {n}x{m}") == []


def _dtype_pairs() -> dict[str, tuple[pl.Series, pl.Series]]:
    rng = np.random.default_rng(99)
    size = 3000
    f32 = rng.normal(size=size).astype(np.float32)
    f32[::50] = np.float32("nan")
    f32[7::101] = np.float32("inf")
    i64 = np.iinfo(np.int64)
    start = dt.datetime(1969, 12, 31, 23, 0, 0)
    micros = rng.integers(-(10**12), 10**12, size)
    return {
        "float32": (pl.Series(f32), pl.Series((rng.normal(size=size) * 2).astype(np.float32))),
        "int8": (
            pl.Series(rng.integers(-128, 128, size).astype(np.int8)),
            pl.Series(rng.integers(-128, 128, size // 2).astype(np.int8)),
        ),
        "int64 extremes": (
            pl.Series(rng.choice(np.array([i64.min, i64.max, 0, -1, 2**53 + 1]), size)),
            pl.Series(rng.integers(i64.min, i64.max, size)),
        ),
        "uint64": (
            pl.Series(rng.integers(0, 2**64, size, dtype=np.uint64)),
            pl.Series(rng.integers(0, 2**63, size // 9, dtype=np.uint64)),
        ),
        "boolean": (pl.Series(rng.random(size) < 0.3), pl.Series(rng.random(size) < 0.6)),
        "datetime ms vs ns, utc": (
            pl.Series([start + dt.timedelta(microseconds=int(u)) for u in micros]).cast(
                pl.Datetime("ms", "UTC")
            ),
            pl.Series([start + dt.timedelta(microseconds=int(u)) for u in micros[::-3]]).cast(
                pl.Datetime("ns", "UTC")
            ),
        ),
        "date": (
            pl.Series(rng.integers(-40_000, 40_000, size)).cast(pl.Date),
            pl.Series(rng.integers(-20_000, 60_000, size)).cast(pl.Date),
        ),
        "duration": (
            pl.Series(rng.integers(-(10**15), 10**15, size)).cast(pl.Duration("us")),
            pl.Series(rng.integers(-(10**15), 10**15, size)).cast(pl.Duration("us")),
        ),
        "time": (
            pl.Series(rng.integers(0, 86_400 * 10**9, size)).cast(pl.Time),
            pl.Series(np.zeros(size, dtype=np.int64)).cast(pl.Time),
        ),
        "all null vs float": (
            pl.Series([None] * 10, dtype=pl.Float64),
            pl.Series(rng.normal(size=size)),
        ),
        "decimal": (
            pl.Series([f"{v:.3f}" for v in rng.normal(size=size)]).cast(pl.Decimal(12, 3)),
            pl.Series([f"{v:.3f}" for v in rng.normal(size=size // 2)]).cast(pl.Decimal(12, 3)),
        ),
        "chunked and sliced": (
            pl.concat(
                [pl.Series(rng.normal(size=size)), pl.Series([-0.0, float("nan"), 0.0] * 9)],
                rechunk=False,
            ),
            pl.Series(rng.normal(size=size + 100)).slice(37, size),
        ),
        "both empty": (pl.Series([], dtype=pl.Float64), pl.Series([None, None], dtype=pl.Float64)),
        "one finite value each": (
            pl.Series([float("nan"), -0.0, float("inf")]),
            pl.Series([0.0, None, float("-inf")]),
        ),
        "nulls and nan": (
            pl.Series([None, float("nan"), 1.0, -0.0, None, 0.0] * 400),
            pl.Series([float("-inf"), 2.0, None, 0.0] * 300),
        ),
    }


DTYPE_PAIRS = _dtype_pairs()


@pytest.mark.parametrize("name", list(DTYPE_PAIRS))
def test_polars_dtypes_give_the_numpy_paths_bits(either_sort: str, name: str) -> None:
    ref, cur = DTYPE_PAIRS[name]
    assert path_differences(ref, cur, name) + path_differences(cur, ref, name + " swapped") == []


@pytest.mark.parametrize("kind", ["normal", "ties", "zeros and ones", "signed zeros", "bits"])
def test_prepared_reference_sorted_by_radix_gives_numpys_bits(either_sort: str, kind: str) -> None:
    """``finite_sorted`` takes the radix sort once the compiled loops are loaded: a prepared
    reference (and the current it sorts) gives the same bits as with numpy's sort, for a
    current compared by blocks (m * 8 <= n) and one merged by binary search."""
    st.load_compiled()
    rng = np.random.default_rng(len(kind))
    n = st.COMPILED_COLUMN_MIN_VALUES + 1001
    ref = pl.Series(_sprinkle(rng, _draw(rng, kind, n), 0.01))
    for m in (n // 8, n // 8 + 1, n):
        cur = pl.Series(_sprinkle(rng, _draw(rng, kind, m), 0.01))
        with np.errstate(over="ignore", invalid="ignore"):
            with pytest.MonkeyPatch.context() as mp:
                numpy_only(mp)
                by_numpy = st.NumericReference.of_series(ref)
                want, n1, m1 = st.numeric_stats_prepared(by_numpy, cur)
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(st, "compiled_loaded", lambda: True)
                if m < st.COMPILED_COLUMN_MIN_VALUES:
                    mp.setattr(st, "COMPILED_COLUMN_MIN_VALUES", 1)
                by_radix = st.NumericReference.of_series(ref)
                got, n2, m2 = st.numeric_stats_prepared(by_radix, cur)
        assert (n1, m1) == (n2, m2)
        assert bits_of(got) == bits_of(want), (kind, m)
        assert (_bit(by_radix.mean), _bit(by_radix.std)) == (
            _bit(by_numpy.mean),
            _bit(by_numpy.std),
        )
        assert np.array_equal(by_radix.values, by_numpy.values)
        assert np.array_equal(by_radix.counts, by_numpy.counts)

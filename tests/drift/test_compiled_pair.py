"""The compiled one-pair path (numba radix sort, four-lane merge, compiled mean/std) gives the
numpy path's bits on every shape of input, and agrees with scipy.

The compiled path is what a large ``compare`` takes (issue 15); the numpy path is what a small
one takes. Both must give the same report, so which one ran never shows in a result.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps

from mlx_plugins.drift_detectors import _fused, _radix
from mlx_plugins.drift_detectors import stats as st
from mlx_plugins.drift_detectors.options import Binning
from mlx_plugins.drift_detectors.polars_drift import PolarsDriftDetector
from tests.drift._paths import path_differences

RNG = np.random.default_rng(20261130)
LANES_MIN = _fused.MERGE_BUFFER + 2  # values the four-lane merge needs to run at all


def _sorted_finite(values: np.ndarray) -> np.ndarray:
    return np.sort(values[np.isfinite(values)])


def _with_specials(values: np.ndarray) -> np.ndarray:
    out = values.copy()
    out[::97] = np.nan
    out[5::1013] = np.inf
    out[7::1013] = -np.inf
    # a NaN with its sign bit set: what x86 produces for 0 * inf, and sorts below -inf as bits
    out[11::509] = np.array([0xFFF8000000000000], dtype=np.uint64).view(np.float64)[0]
    return out


SORT_CASES = {
    "normal": RNG.normal(size=50_000),
    "mixed signs and magnitudes": RNG.normal(size=50_000) * 10.0 ** RNG.integers(-300, 300, 50_000),
    "integers of both signs": np.round(RNG.normal(size=50_000) * 5),
    "signed zeros": np.where(RNG.random(50_000) < 0.5, 0.0, -0.0),
    "subnormals": RNG.normal(size=50_000) * 5e-324 * 1000,
    "constant": np.full(40_000, 3.25),
    "non-finite mixed in": _with_specials(RNG.lognormal(size=60_000)),
    "only non-finite": np.array([np.nan, np.inf, -np.inf, np.nan]),
    "one value": np.array([1.5]),
    "empty": np.empty(0),
}


@pytest.mark.parametrize("name", list(SORT_CASES))
def test_radix_sort_gives_numpys_sorted_finite_values(name: str) -> None:
    values = SORT_CASES[name]
    out = np.full(len(values), 7.0)
    scratch = np.empty(len(values))
    k = _radix.finite_sort(values, out, scratch)
    expected = _sorted_finite(values)
    assert k == len(expected)
    assert np.array_equal(out[:k], expected)  # -0.0 == 0.0: their order may differ
    # the input is left as it was
    assert np.array_equal(SORT_CASES[name], values, equal_nan=True)


LARGE_CASES = {
    **SORT_CASES,
    "normal with one far outlier (a dominant top byte)": np.append(
        RNG.normal(10, 2, 30_000), -1e300
    ),
    "integer-valued (low bytes all equal)": RNG.integers(0, 1000, 30_000).astype(np.float64),
    "every top 16 bits in use (the top byte first)": RNG.integers(
        0, 2**64, 40_000, dtype=np.uint64
    ).view(np.float64),
    "about 190 top-16-bit buckets in use (one chain)": 2.0 ** RNG.uniform(0, 12, 30_001),
    "two clusters far apart": np.concatenate(
        [RNG.normal(size=20_000), 1e200 + RNG.normal(size=9_000) * 1e185]
    ),
}


@pytest.mark.parametrize("part_size", [1, 64, 5_000])
@pytest.mark.parametrize("name", list(LARGE_CASES))
def test_the_large_array_path_sorts_as_numpy_at_any_part_size(name: str, part_size: int) -> None:
    """``_radix._sort_large`` (the top 16 bits or byte first, then the next bytes, then LSD
    passes on parts of at most ``part_size``) gives numpy's sorted finite values: small part
    sizes force many levels of partitions and dominant buckets on small inputs."""
    values = LARGE_CASES[name]
    out = np.full(len(values), 7.0)
    scratch = np.full(len(values), 7.0)
    k = _radix._sort_large(values, out.view(np.uint64), scratch.view(np.uint64), part_size)
    expected = _sorted_finite(values)
    assert k == len(expected)
    assert np.array_equal(out[:k], expected)


def test_finite_sort_above_in_cache_takes_the_large_path_and_matches_numpy() -> None:
    values = _with_specials(RNG.normal(10, 2, _radix.IN_CACHE + 30_000))
    out, scratch = np.empty(len(values)), np.empty(len(values))
    k = _radix.finite_sort(values, out, scratch)
    expected = _sorted_finite(values)
    assert k == len(expected) > _radix.IN_CACHE
    assert np.array_equal(out[:k], expected)


def _byte_counts(keys: np.ndarray) -> np.ndarray:
    """What ``_radix._keys`` counts: every byte of every key (passes x buckets)."""
    return np.stack(
        [np.bincount((keys >> np.uint64(8 * p)) & np.uint64(255), minlength=256) for p in range(8)]
    ).astype(np.int64)


def _one_pass_expected(keys: np.ndarray, p: int) -> np.ndarray:
    """A stable pass on byte ``p``: the keys ordered by that byte, ties kept in input order."""
    digit = (keys >> np.uint64(8 * p)) & np.uint64(255)
    return keys[np.argsort(digit, kind="stable")]


def _pass_inputs() -> list[tuple[str, np.ndarray]]:
    """Keys whose bytes are uniform, skewed, dominated by one bucket (exactly half, just under,
    all but one), of odd and even lengths down to 0: every branch of ``_radix._passes``."""
    cases: list[tuple[str, np.ndarray]] = []
    for k in (0, 1, 2, 3, 4, 255, 256, 257, 1_000, 1_001):
        cases.append((f"uniform k={k}", RNG.integers(0, 2**63, k, dtype=np.uint64)))
        skewed = np.minimum(RNG.geometric(0.2, k), 255).astype(np.uint64) * np.uint64(0x0101)
        cases.append((f"skewed k={k}", skewed))
        half = np.where(np.arange(k) % 2 == 0, 7, RNG.integers(0, 256, k)).astype(np.uint64)
        cases.append((f"one bucket holds half or more, k={k}", RNG.permutation(half)))
        under = np.where(np.arange(k) < (k - 1) // 2, 7, 8 + RNG.integers(0, 200, k))
        cases.append(
            (f"one bucket just under half, k={k}", RNG.permutation(under.astype(np.uint64)))
        )
        if k:
            outlier = np.full(k, 5, dtype=np.uint64)
            outlier[RNG.integers(0, k)] = 200
            cases.append((f"all but one in one bucket, k={k}", outlier))
    return cases


@pytest.mark.parametrize(
    ("name", "keys"), _pass_inputs(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_each_scatter_kernel_is_one_stable_pass(name: str, keys: np.ndarray) -> None:
    k = len(keys)
    counts = _byte_counts(keys)
    for p in (0, 1):
        expected = _one_pass_expected(keys, p)
        starts = np.concatenate([[0], np.cumsum(counts[p])[:-1]]).astype(np.int64)
        ends = (np.cumsum(counts[p]) - 1).astype(np.int64)
        two_ends = np.zeros(k, dtype=np.uint64)
        _radix._scatter_two_ends(keys, two_ends, k, np.uint64(8 * p), starts.copy(), ends.copy())
        assert np.array_equal(two_ends, expected)
        dominant = np.zeros(k, dtype=np.uint64)
        top = int(np.argmax(counts[p]))
        _radix._scatter_dominant(keys, dominant, k, np.uint64(8 * p), starts.copy(), top)
        assert np.array_equal(dominant, expected)
    # and the passes together, whichever kernel each pass takes, sort the keys
    a, b = keys.copy(), np.zeros(k, dtype=np.uint64)
    in_b = _radix._passes(a, b, k, counts, np.empty((2, 256), dtype=np.int64))
    assert np.array_equal(b if in_b else a, np.sort(keys))


def _series(values: np.ndarray, nulls: float = 0.0) -> pl.Series:
    s = pl.Series(values)
    if nulls:
        s = s.set(pl.Series(RNG.random(len(values)) < nulls), None)
    return s


def _pair_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    big = 300_000  # the merge's four lanes run (more than 4 x 65,536 values)
    return {
        "similar, shifted": (RNG.normal(size=big), RNG.normal(0.1, 1.2, size=big)),
        "unequal sizes": (RNG.normal(size=big), RNG.normal(size=big // 3)),
        "every x below every y": (RNG.random(big), 2.0 + RNG.random(big)),
        "every y below every x": (2.0 + RNG.random(big), RNG.random(big)),
        "few distinct values (ties across and within)": (
            np.round(RNG.normal(size=big) * 3),
            np.round(RNG.normal(size=big) * 3 + 0.5),
        ),
        "signed zeros and ones": (
            np.where(RNG.random(big) < 0.5, 0.0, -0.0),
            np.where(RNG.random(big) < 0.5, -0.0, 1.0),
        ),
        "identical samples": (np.arange(big, dtype=np.float64),) * 2,
        "huge and tiny magnitudes": (RNG.normal(size=big) * 1e150, RNG.normal(size=big) * 1e-300),
        "non-finite and nulls": (_with_specials(RNG.lognormal(size=big)), RNG.lognormal(size=big)),
        "small (one chain)": (RNG.normal(size=20_000), RNG.normal(size=30_000)),
        "small current (blocks)": (RNG.normal(size=big), RNG.normal(size=big // 10)),
        "one value each": (np.array([1.0]), np.array([2.0])),
    }


PAIRS = _pair_cases()


@pytest.mark.parametrize("binning", ["quantile", "equal_width"])
@pytest.mark.parametrize("name", list(PAIRS))
def test_compiled_pair_gives_the_numpy_paths_bits(
    either_sort: str, name: str, binning: Binning
) -> None:
    x, y = PAIRS[name]
    ref = _series(x, nulls=0.01 if "nulls" in name else 0.0)
    assert path_differences(ref, _series(y), name, binnings=(binning,)) == []


@pytest.mark.parametrize(
    "name", ["similar, shifted", "few distinct values (ties across and within)"]
)
def test_compiled_pair_agrees_with_scipy(either_sort: str, name: str) -> None:
    x, y = PAIRS[name]
    values, _, _ = st.numeric_stats_of_series(pl.Series(x), pl.Series(y), compiled=True)
    ks = sps.ks_2samp(x, y)
    assert values["ks_statistic"] == pytest.approx(ks.statistic, rel=1e-14, abs=1e-15)
    assert values["ks_p_value"] == pytest.approx(ks.pvalue, rel=1e-12, abs=1e-300)
    assert values["wasserstein"] == pytest.approx(sps.wasserstein_distance(x, y), rel=1e-13)
    assert values["reference_mean"] == pytest.approx(float(np.mean(x)), rel=1e-14)
    assert values["current_std"] == pytest.approx(float(np.std(y)), rel=1e-13)


def test_merge_is_the_numpy_merge_at_every_lane_boundary() -> None:
    """Sizes around the lanes' chunk boundaries: the first and last chunk of a lane group, a
    group that ends exactly at the last value, and a tail shorter than one chunk."""
    chunk = _fused.MERGE_BUFFER // 4
    for total in (4 * chunk + 1, 4 * chunk + 2, 5 * chunk + 7, 8 * chunk + 1, 9 * chunk - 3):
        n = total // 2 + 3
        m = total - n
        x = np.sort(np.round(RNG.normal(size=n) * 50))
        y = np.sort(np.round(RNG.normal(size=m) * 50 + 1))
        ws = st.Workspace()
        z = ws.buffers(n + m)[0]
        z[:n], z[n:] = x, y
        max_gap, ties, dot = _fused.ecdf_merged(z, n, m, np.empty(_fused.MERGE_BUFFER))
        expected = st.ecdf_distances(x, y)
        assert (max_gap, n + m - ties) == (expected.ks_max_gap, expected.n_unique)
        assert dot / (float(n) * float(m)) == expected.wasserstein
        assert math.isfinite(dot)


def test_a_large_compare_runs_compiled_and_reports_what_numpy_reports(
    either_sort: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = 40_000
    ref = pl.DataFrame(
        {
            "a": RNG.normal(size=rows),
            "b": np.round(RNG.normal(size=rows) * 4),
            "c": pl.Series(RNG.choice(["x", "y", "z"], rows)).cast(pl.Categorical),
        }
    )
    cur = pl.DataFrame(
        {
            "a": RNG.normal(0.05, 1.0, size=rows),
            "b": np.round(RNG.normal(size=rows) * 4 + 1),
            "c": pl.Series(RNG.choice(["x", "y", "z"], rows)).cast(pl.Categorical),
        }
    )
    detector = PolarsDriftDetector()
    calls: list[bool] = []
    real = st.numeric_stats_of_series

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(bool(kwargs.get("compiled")))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(st, "numeric_stats_of_series", spy)
    monkeypatch.setattr(st, "COMPILED_PAIR_MIN_VALUES", 10**12)
    monkeypatch.setattr(st, "compiled_loaded", lambda: False)
    with_numpy = detector.compare(ref, cur)
    assert calls == [False, False]
    calls.clear()
    monkeypatch.setattr(st, "COMPILED_PAIR_MIN_VALUES", 1)
    compiled = detector.compare(ref, cur)
    assert calls == [True, True]
    assert compiled.model_dump() == with_numpy.model_dump()


_WARM_THEN_COMPARE = """
import numpy as np, polars as pl
from mlx_plugins.drift_detectors import _fused, _radix, stats as st
st.load_compiled()
assert st.compiled_loaded()
kernels = (_radix.finite_sort, _fused.mean_std, _fused.ecdf_merged)
before = [len(kernel.signatures) for kernel in kernels]
rng = np.random.default_rng(1)
ref = pl.Series(rng.normal(size=30_000))
cur = pl.Series(np.round(rng.normal(size=30_000), 3))
assert not np.asarray(ref.to_numpy()).flags.writeable  # what the sort receives
st.numeric_stats_of_series(ref, cur, compiled=True)
print([len(kernel.signatures) for kernel in kernels] == before)
"""


def test_load_compiled_leaves_nothing_to_compile_for_a_compare_of_polars_columns() -> None:
    """polars hands out read-only arrays, which numba compiles (or loads) a version of their own
    for: the warm-up must cover them, or the first compare after it pays for one (~0.5 s when
    it compiles). In a fresh interpreter, so that no earlier test has loaded them."""
    done = subprocess.run(
        [sys.executable, "-c", _WARM_THEN_COMPARE],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_sorted_padded_rows_are_each_segments_finite_values_sorted_then_inf() -> None:
    lengths = [0, 1, 900, 3, 1200, 5, 0, 64]
    parts = [RNG.normal(size=k) * 10.0 ** RNG.integers(-5, 5, k) for k in lengths]
    parts[2] = _with_specials(parts[2])
    parts[5][:] = np.nan  # a segment with no finite value
    parts[7] = np.round(parts[7])  # ties
    values = np.concatenate(parts)
    starts = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    rows = np.full((len(lengths), max(lengths)), -1.0)
    counts = np.full(len(lengths), -1, dtype=np.int64)
    _radix.sorted_padded_rows(values, starts, rows, counts)
    for d, part in enumerate(parts):
        finite = _sorted_finite(part)
        assert counts[d] == len(finite)
        assert np.array_equal(rows[d, : len(finite)], finite)
        assert np.all(rows[d, len(finite) :] == np.inf)


def test_where_numpy_sorts_faster_the_compiled_path_sorts_by_numpy_with_the_same_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a CPU where ``np.sort`` is the faster sort (AVX-512), the compiled path sorts by it,
    in place in the workspace, NaN/inf cut from both ends; the radix sort is not called."""

    def no_radix(*args: object) -> int:
        raise AssertionError("the radix sort ran although numpy's was chosen")

    monkeypatch.setattr(st, "radix_sorts_faster", lambda: False)
    monkeypatch.setattr(_radix, "finite_sort", no_radix)
    x = _with_specials(RNG.normal(size=40_000))
    x[:3] = -np.inf  # non-finite values at the front too: the finite ones move down
    y = _with_specials(RNG.normal(0.2, 1.0, size=30_000))
    assert path_differences(_series(x), _series(y), "numpy sort") == []
    workspace = st.Workspace()
    n, m = st._sort_compiled(_series(x), _series(y), workspace)
    z = workspace.buffers(n + m)[0]
    assert np.array_equal(z[:n], _sorted_finite(x))
    assert np.array_equal(z[n : n + m], _sorted_finite(y))


def test_which_sort_is_faster_is_timed_once_per_process() -> None:
    st.radix_sorts_faster.cache_clear()
    first = st.radix_sorts_faster()
    assert isinstance(first, bool)
    assert st.radix_sorts_faster() is first
    info = st.radix_sorts_faster.cache_info()
    assert (info.misses, info.hits) == (1, 1)

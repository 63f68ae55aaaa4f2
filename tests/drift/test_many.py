"""``compare_prepared_many`` gives the reports ``compare_prepared`` gives one current at a time,
bit for bit (every statistic and p-value), whatever the batch around a current."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest

from mlx_plugins.drift_detectors import stats as st
from mlx_plugins.drift_detectors.base import DriftReport, ReferenceFrame
from mlx_plugins.drift_detectors.polars_drift import PolarsDriftDetector
from tests.drift.test_prepared import _noisy


@pytest.fixture(autouse=True)
def _compiled_loop_for_any_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """These batches are small: send them through the compiled loop all the same."""
    from mlx_plugins.drift_detectors import batch

    monkeypatch.setattr(batch, "COMPILED_MIN_VALUES", 0)


def assert_many_matches(
    detector: PolarsDriftDetector,
    reference: pl.DataFrame,
    currents: list[pl.DataFrame],
    numeric: list[str] | None = None,
    categorical: list[str] | None = None,
) -> list[DriftReport]:
    prepared = detector.prepare_reference(reference, numeric=numeric, categorical=categorical)
    many = detector.compare_prepared_many(prepared, currents)
    st.clear_caches()
    one_by_one = [detector.compare_prepared(prepared, current) for current in currents]
    assert len(many) == len(one_by_one)
    for got, want in zip(many, one_by_one, strict=True):
        assert got == want
        assert got.model_dump_json() == want.model_dump_json()  # floats bit for bit
        assert got == DriftReport.model_validate(got.model_dump())  # as validation builds it
    return many


def test_nulls_nan_inf_ties_both_kinds_and_large_currents(either_sort: str) -> None:
    ref = _noisy(20_000, seed=1)  # asymptotic KS p-values
    sizes = (900, 50, 1, 3000, 900, 0, 120)  # 3000 > 20,000 / 8: the merge path
    currents = [_noisy(n, seed=10 + i, shift=0.05 * i) for i, n in enumerate(sizes)]
    reports = assert_many_matches(PolarsDriftDetector(), ref, currents)
    assert {c.column for c in reports[0].columns} == {"x", "t", "k", "cat"}
    # named columns; a smaller reference (exact KS p-values)
    assert_many_matches(PolarsDriftDetector(), ref, currents, numeric=["x", "t"], categorical=["k"])
    assert_many_matches(PolarsDriftDetector(), ref.head(5000), currents, numeric=["x"])


def test_many_days_with_statistics_in_every_p_value_branch(either_sort: str) -> None:
    rng = np.random.default_rng(5)
    ref = pl.DataFrame({"x": rng.normal(0, 1, 30_000), "d": rng.integers(0, 7, 30_000)})
    days = []
    for i in range(120):
        n = int(rng.choice([3, 20, 100, 400, 900, 2000]))
        shift = float(rng.choice([0.0, 0.0, 0.02, 0.1, 0.3, 2.0]))
        days.append(
            pl.DataFrame({"x": rng.normal(shift, 1, n), "d": rng.integers(0, 7 + i % 3, n)})
        )
    reports = assert_many_matches(PolarsDriftDetector(), ref, days)
    p = [r.column("x").stats["ks_p_value"] for r in reports]
    assert min(p) < 1e-16 and max(p) > 0.5  # far tail and body both exercised


def test_constant_empty_and_all_null_currents() -> None:
    ref = pl.DataFrame({"x": [5.0] * 300 + [6.0] * 10, "k": ["a"] * 310})
    currents = [
        pl.DataFrame({"x": [5.0] * 20, "k": ["a"] * 20}),
        pl.DataFrame({"x": [5.2] * 20, "k": ["b"] * 20}),
        ref.clear(),
        pl.DataFrame({"x": [None, None], "k": [None, "a"]}, schema=ref.schema),
    ]
    assert_many_matches(PolarsDriftDetector(), ref, currents)
    varied = pl.DataFrame({"x": np.linspace(0, 1, 5000), "k": ["a", "b"] * 2500})
    assert_many_matches(PolarsDriftDetector(), varied, currents)
    assert_many_matches(PolarsDriftDetector(), ref.clear(), currents)


def test_currents_of_different_schemas_are_grouped() -> None:
    ref = pl.DataFrame({"x": [None] * 20, "k": ["a", "b"] * 10, "n": list(range(20))})
    currents = [
        pl.DataFrame({"x": [1.0, 2.0, 3.0], "k": ["a", "b", "c"], "n": [1, 2, 3]}),
        pl.DataFrame({"x": ["u", "v", "u"], "k": ["a", "a", "a"], "n": [1.5, 2.0, 9.0]}),
        pl.DataFrame({"x": [4.0], "k": pl.Series(["b"], dtype=pl.Categorical), "n": [4]}),
    ]
    reports = assert_many_matches(PolarsDriftDetector(), ref, currents)
    assert [r.column("x").kind for r in reports] == ["numeric", "categorical", "numeric"]


@pytest.mark.parametrize(
    "config",
    [
        {"small_sample_max_rows": 10},
        {"categorical_test": "evidently_chisquare_gof"},
        {"numeric_binning": "equal_width", "numeric_bins": 4},
        {"ks_method": "exact"},
        {"ks_method": "asymp", "column_tests": {"x": "psi"}},
    ],
)
def test_configurations(config: dict[str, Any]) -> None:
    ref = _noisy(4000, seed=7)
    currents = [_noisy(n, seed=70 + n, shift=0.2) for n in (30, 400, 10)]
    assert_many_matches(PolarsDriftDetector(**config), ref, currents)


def test_unseen_and_missing_categories() -> None:
    ref = pl.DataFrame({"k": ["a", "b"] * 100})
    currents = [
        pl.DataFrame({"k": ["c", "d", "e"] * 50}),
        pl.DataFrame({"k": ["a"] * 45 + ["b"] * 45 + ["z"] * 10}),
        pl.DataFrame({"k": ["a"]}),
    ]
    reports = assert_many_matches(PolarsDriftDetector(), ref, currents)
    assert reports[0].column("k").note.startswith("all current values are in 3 categories")


def test_no_currents_and_errors_like_compare_prepared() -> None:
    detector = PolarsDriftDetector()
    ref = _noisy(300, seed=9)
    prepared = detector.prepare_reference(ref)
    assert detector.compare_prepared_many(prepared, []) == []
    other = ReferenceFrame(
        reference_rows=1, numeric=None, categorical=None, detector="x", frame=ref
    )
    with pytest.raises(TypeError, match="prepare_reference"):
        detector.compare_prepared_many(other, [ref])
    with pytest.raises(ValueError, match="numeric_bins"):
        PolarsDriftDetector(numeric_bins=5).compare_prepared_many(prepared, [ref])
    bad = ref.with_columns(pl.col("x").cast(pl.String))
    with pytest.raises(TypeError, match="'x'"):
        detector.compare_prepared_many(
            detector.prepare_reference(ref, numeric=["x"], categorical=[]), [ref, bad]
        )


def test_how_the_days_are_grouped_does_not_change_a_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlx_plugins.drift_detectors import batch

    rng = np.random.default_rng(11)
    ref = pl.DataFrame({"x": rng.normal(0, 1, 8000)})
    sizes = [0, 1, 7, 40, 300, 999, 1000, 2, 64, 500]  # 1000 = 8000 / 8: still batched
    days = [pl.DataFrame({"x": rng.normal(0.1, 1, n)}) for n in sizes]
    detector = PolarsDriftDetector()
    prepared = detector.prepare_reference(ref)
    default = detector.compare_prepared_many(prepared, days)
    monkeypatch.setattr(batch, "_SORT_VALUES", 600)  # many small row-sort groups
    monkeypatch.setattr(batch, "_CHUNK_VALUES", 50)  # many value chunks
    regrouped = detector.compare_prepared_many(prepared, days)
    assert [r.model_dump_json() for r in regrouped] == [r.model_dump_json() for r in default]
    assert_many_matches(detector, ref, days)


def test_small_batches_go_one_by_one_with_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlx_plugins.drift_detectors import batch

    rng = np.random.default_rng(12)
    ref = pl.DataFrame({"x": rng.normal(0, 1, 20_000), "k": rng.integers(0, 5, 20_000)})
    days = [
        pl.DataFrame({"x": rng.normal(0.05 * i, 1, n), "k": rng.integers(0, 6, n)})
        for i, n in enumerate((0, 3, 900, 1200, 50))
    ]
    detector = PolarsDriftDetector()
    prepared = detector.prepare_reference(ref)
    compiled = detector.compare_prepared_many(prepared, days)
    monkeypatch.setattr(batch, "COMPILED_MIN_VALUES", 10**9)
    st.clear_caches()
    one_by_one = detector.compare_prepared_many(prepared, days)
    assert [r.model_dump_json() for r in one_by_one] == [r.model_dump_json() for r in compiled]


def test_compiled_split_prefix_sums_are_numpys_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlx_plugins.drift_detectors._fused  # noqa: F401  (loaded: of_sorted may use it)

    rng = np.random.default_rng(13)
    samples = [
        rng.normal(0, 1, 5000),
        np.round(rng.normal(0, 3, 5000)),  # ties
        np.concatenate([[-0.0, 0.0, -0.0], rng.normal(0, 1, 40)]),  # signed zeros
        rng.normal(0, 1, 300) * 1e300,  # scaled down by a power of two first
        rng.normal(0, 1, 300) * 1e-300,
        np.array([7.0]),
        np.empty(0),
    ]
    for xs in map(np.sort, samples):
        monkeypatch.setattr(st, "_COMPILED_PREFIX_MIN", 0)
        compiled = st.SplitPrefix.of_sorted(xs)
        monkeypatch.setattr(st, "_COMPILED_PREFIX_MIN", 10**12)
        plain = st.SplitPrefix.of_sorted(xs)
        # the whole table: h, g, low and the values (column 3, NaN in the last row)
        assert np.array_equal(compiled.table.view(np.int64), plain.table.view(np.int64))
        assert np.array_equal(compiled.table[: len(xs), 3], xs)
        assert (compiled.qh, compiled.qg, compiled.exponent) == (plain.qh, plain.qg, plain.exponent)
        assert compiled.n_unique == plain.n_unique

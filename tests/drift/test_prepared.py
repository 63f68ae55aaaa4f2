"""A prepared reference (``prepare_reference`` + ``compare_prepared``) gives exactly what
``compare`` gives: the same DriftReport, every float bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from mlx_plugins.drift_detectors import stats as st
from mlx_plugins.drift_detectors.base import (
    DriftDetector,
    DriftReport,
    PreparedReference,
    ReferenceFrame,
)
from mlx_plugins.drift_detectors.polars_drift import (
    Binning,
    PolarsDriftDetector,
    PolarsPreparedReference,
)
from mlx_plugins.kernel.metadata import PluginMetadata


def _bits(report: DriftReport) -> str:
    """The report as JSON: floats as their shortest round-tripping repr, so equal strings mean
    equal bits (0.0 and -0.0 included)."""
    return report.model_dump_json()


def assert_same_as_compare(
    detector: PolarsDriftDetector,
    reference: pl.DataFrame,
    currents: list[pl.DataFrame],
    numeric: list[str] | None = None,
    categorical: list[str] | None = None,
) -> list[DriftReport]:
    prepared = detector.prepare_reference(reference, numeric=numeric, categorical=categorical)
    reports = []
    for current in currents:
        expected = detector.compare(reference, current, numeric=numeric, categorical=categorical)
        got = detector.compare_prepared(prepared, current)
        assert got == expected
        assert _bits(got) == _bits(expected)
        reports.append(got)
    return reports


def _noisy(n: int, seed: int, shift: float = 0.0, null_rate: float = 0.1) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1.0, n)
    x[rng.random(n) < null_rate / 2] = np.nan
    x[rng.random(n) < null_rate / 10] = np.inf
    ints = rng.integers(0, 20, n).astype(np.float64)  # many ties
    k = rng.choice(["a", "b", "c", "d"], size=n, p=[0.4, 0.3, 0.2, 0.1])
    frame = pl.DataFrame({"x": x, "t": ints, "k": k, "cat": pl.Series(k).cast(pl.Categorical)})
    nulls = pl.Series(rng.random(n) < null_rate)
    return frame.with_columns(
        pl.when(~nulls).then(pl.col("x")).alias("x"),
        pl.when(~nulls).then(pl.col("k")).alias("k"),
    )


# -- shapes ---------------------------------------------------------------------------------------
def test_nulls_nan_inf_ties_and_both_kinds() -> None:
    ref = _noisy(3000, seed=1)
    currents = [_noisy(n, seed=10 + n, shift=s) for n, s in ((900, 0.0), (50, 0.5), (1, 2.0))]
    reports = assert_same_as_compare(PolarsDriftDetector(), ref, currents)
    assert {c.column for c in reports[0].columns} == {"x", "t", "k", "cat"}
    assert reports[0].column("x").reference_null_share > 0


def test_named_columns_and_many_days_reusing_one_prepared_reference() -> None:
    ref = _noisy(20_000, seed=2)  # > 10,000: asymptotic KS p-values
    days = [_noisy(n, seed=100 + i, shift=0.1 * i) for i, n in enumerate([900, 5000, 10, 900])]
    assert_same_as_compare(PolarsDriftDetector(), ref, days, numeric=["x", "t"], categorical=["k"])
    # a smaller reference: exact KS p-values
    assert_same_as_compare(PolarsDriftDetector(), ref.head(2000), days, numeric=["x"])


def test_constant_columns() -> None:
    ref = pl.DataFrame({"x": [5.0] * 300, "k": ["a"] * 300})
    currents = [
        pl.DataFrame({"x": [5.0] * 200, "k": ["a"] * 200}),
        pl.DataFrame({"x": [5.2] * 200, "k": ["b"] * 200}),
        pl.DataFrame({"x": [4.0, 5.0, 6.0], "k": ["a", "a", "b"]}),
    ]
    reports = assert_same_as_compare(PolarsDriftDetector(), ref, currents)
    assert "constant" in reports[1].column("x").note
    # constant current against a varied reference
    varied = pl.DataFrame({"x": np.linspace(0, 1, 500), "k": ["a", "b"] * 250})
    assert_same_as_compare(PolarsDriftDetector(), varied, currents)


def test_empty_and_all_null_currents_and_empty_reference() -> None:
    ref = _noisy(500, seed=3)
    empty = ref.clear()
    all_null = pl.DataFrame({"x": [None] * 10, "t": [None] * 10, "k": [None] * 10})  # Null dtype
    reports = assert_same_as_compare(PolarsDriftDetector(), ref, [empty, all_null, ref])
    assert reports[0].current_rows == 0 and reports[0].columns[0].note.startswith("no values")
    assert_same_as_compare(
        PolarsDriftDetector(), ref, [empty, all_null], numeric=["x", "t"], categorical=["k"]
    )
    assert_same_as_compare(PolarsDriftDetector(), empty, [empty, ref, all_null])
    assert_same_as_compare(PolarsDriftDetector(), pl.DataFrame(), [pl.DataFrame(), ref])


def test_null_dtype_reference_takes_the_current_kind() -> None:
    ref = pl.DataFrame({"x": [None] * 20, "k": ["a", "b"] * 10})
    currents = [
        pl.DataFrame({"x": [1.0, 2.0, 3.0], "k": ["a", "b", "c"]}),  # x numeric
        pl.DataFrame({"x": ["u", "v", "u"], "k": ["a", "a", "a"]}),  # x categorical
    ]
    reports = assert_same_as_compare(PolarsDriftDetector(), ref, currents)
    assert [r.column("x").kind for r in reports] == ["numeric", "categorical"]


def test_unseen_and_missing_categories() -> None:
    ref = pl.DataFrame({"k": ["a", "b"] * 100, "c": pl.Series(["p", "q"] * 100)})
    currents = [
        pl.DataFrame({"k": ["c", "d", "e"] * 50, "c": ["p"] * 150}),  # all new / one missing
        pl.DataFrame({"k": ["a"] * 45 + ["b"] * 45 + ["z"] * 10, "c": ["r"] * 100}),
        pl.DataFrame({"k": pl.Series(["a", "b"], dtype=pl.Categorical), "c": ["q", None]}),
    ]
    for rule in (1000, 10):  # chi-square, then Jensen-Shannon decides
        detector = PolarsDriftDetector(small_sample_max_rows=rule)
        reports = assert_same_as_compare(detector, ref, currents)
        assert reports[0].column("k").note.startswith("all current values are in 3 categories")
    gof = PolarsDriftDetector(categorical_test="evidently_chisquare_gof")
    assert_same_as_compare(gof, ref, currents)


def test_dtypes_dates_enums_booleans_and_mixed_sides() -> None:
    enum = pl.Enum(["lo", "mid", "hi"])
    ref = pl.DataFrame(
        {
            "i": pl.Series(list(range(100)), dtype=pl.Int16),
            "d": [date(2024, 1, 1 + i % 28) for i in range(100)],
            "e": pl.Series(["lo", "mid", "hi", "mid"] * 25, dtype=enum),
            "b": [True, False, False, True] * 25,
            "s": ["u", "v"] * 50,
            "only_ref": [1] * 100,
        }
    )
    cur = pl.DataFrame(
        {
            "i": pl.Series([5, 6, 7, 200], dtype=pl.Int64),
            "d": [date(2024, 2, i) for i in range(1, 5)],
            "e": pl.Series(["hi"] * 4, dtype=enum),
            "b": [True] * 4,
            "s": pl.Series(["u", "w", "w", "u"], dtype=pl.Categorical),  # String vs Categorical
            "only_cur": [1, 2, 3, 4],
        }
    )
    reports = assert_same_as_compare(PolarsDriftDetector(), ref, [cur])
    assert set(reports[0].skipped_columns) == {"d", "only_ref", "only_cur"}
    assert_same_as_compare(
        PolarsDriftDetector(), ref, [cur], numeric=["i", "d"], categorical=["e", "b", "s"]
    )
    assert_same_as_compare(PolarsDriftDetector(), ref, [cur], categorical=["i"])
    assert_same_as_compare(PolarsDriftDetector(), ref, [cur], numeric=["i"], categorical=[])


def test_signed_zeros_and_ties_across_sides() -> None:
    ref = pl.DataFrame({"x": [0.0, -0.0, 1.0, -1.0, 0.0, 2.0] * 30})
    cur = pl.DataFrame({"x": [-0.0, 0.0, 0.0, 1.0, -1.0, 3.0]})
    assert_same_as_compare(PolarsDriftDetector(), ref, [cur, ref])


@pytest.mark.parametrize(
    "config",
    [
        {"numeric_binning": "equal_width", "numeric_bins": 7},
        {"numeric_bins": 2, "ks_method": "exact", "psi_epsilon": 1e-3},
        {"ks_method": "asymp", "wasserstein_min_std": 0.5, "column_tests": {"x": "psi"}},
        {"numeric_small_test": "jensenshannon", "categorical_small_test": "psi"},
    ],
)
def test_configurations(config: dict[str, Any]) -> None:
    ref = _noisy(1500, seed=4)
    currents = [_noisy(n, seed=40 + n, shift=0.3) for n in (300, 2000)]
    assert_same_as_compare(PolarsDriftDetector(**config), ref, currents)


def test_threads_lazy_frames_and_large_sides() -> None:
    rng = np.random.default_rng(5)
    ref = pl.DataFrame({f"x{i}": rng.normal(size=60_000) for i in range(3)}).with_columns(
        k=pl.Series(rng.choice(["a", "b"], size=60_000))
    )
    small = ref.head(900).with_columns(pl.col("x0") * 1.5)
    large = ref.sample(55_000, seed=1).with_columns(pl.col("x1") + 0.1)  # threaded path
    for workers in (1, 3):
        detector = PolarsDriftDetector(max_workers=workers)
        assert_same_as_compare(detector, ref, [small, large, small])
    prepared = PolarsDriftDetector().prepare_reference(ref.lazy())
    got = PolarsDriftDetector(max_workers=1).compare_prepared(prepared, small.lazy())
    assert got == PolarsDriftDetector().compare(ref, small)


# -- property: any data, any column lists ---------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=hs.integers(0, 2**32 - 1),
    n_ref=hs.integers(0, 400),
    n_curs=hs.lists(hs.integers(0, 150), min_size=1, max_size=3),
    null_rate=hs.floats(0.0, 0.7),
    ties=hs.booleans(),
    lists=hs.sampled_from(["inferred", "named", "numeric only", "categorical only"]),
    binning=hs.sampled_from(["quantile", "equal_width"]),
    bins=hs.integers(2, 12),
)
def test_prepared_reference_matches_compare_bit_for_bit(
    seed: int,
    n_ref: int,
    n_curs: list[int],
    null_rate: float,
    ties: bool,
    lists: str,
    binning: Binning,
    bins: int,
) -> None:
    rng = np.random.default_rng(seed)

    def side(n: int, shift: float, scale: float) -> pl.DataFrame:
        x = rng.standard_t(3, n) * scale + shift  # heavy tails
        if ties:
            x = np.round(x)
        x_list: list[float | None] = list(x)
        c_list: list[int | None] = list(rng.integers(-3, 3, n))
        k_list: list[str | None] = list(rng.choice(["a", "b", "c", "d", "e"], size=n))
        for i in np.flatnonzero(rng.random(n) < null_rate):
            x_list[i] = (None, float("nan"), float("-inf"))[i % 3]
            c_list[i] = None
            k_list[i] = None
        return pl.DataFrame(
            {"x": x_list, "c": c_list, "k": k_list},
            schema={"x": pl.Float64, "c": pl.Int32, "k": pl.String},
        )

    ref = side(n_ref, 0.0, 1.0)
    currents = [side(n, rng.uniform(-1, 1), rng.uniform(0.5, 2)) for n in n_curs]
    numeric, categorical = {
        "inferred": (None, None),
        "named": (["x", "c"], ["k"]),
        "numeric only": (["x"], None),
        "categorical only": (None, ["k", "c"]),
    }[lists]
    detector = PolarsDriftDetector(numeric_binning=binning, numeric_bins=bins)
    assert_same_as_compare(detector, ref, currents, numeric, categorical)


@settings(max_examples=80, deadline=None)
@given(
    xs=hs.lists(hs.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=300),
    ys=hs.lists(hs.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=300),
    round_to=hs.sampled_from([None, 0, 2]),
)
def test_merge_by_binary_search_is_the_argsort_merge(
    xs: list[float], ys: list[float], round_to: int | None
) -> None:
    x, y = np.sort(np.array(xs)), np.sort(np.array(ys))
    if round_to is not None:
        x, y = np.round(x, round_to), np.round(y, round_to)
    expected = st.ecdf_distances(x, y)
    workspace = st.Workspace()
    for _ in range(2):  # a reused workspace gives the same
        assert st.ecdf_distances_by_search(x, y, workspace) == expected


# -- what is prepared, and misuse -----------------------------------------------------------------
def test_prepared_object_holds_the_reference_summaries() -> None:
    ref = pl.DataFrame({"x": [3.0, None, 1.0, float("nan"), 2.0], "k": ["a", None, "a", "b", "b"]})
    prepared = PolarsDriftDetector(numeric_bins=2).prepare_reference(ref)
    assert isinstance(prepared, PolarsPreparedReference)
    assert prepared.reference_rows == 5 and prepared.numeric is None
    assert prepared.detector == "drift_detector.polars@0.1.0"
    x = prepared.numeric_columns["x"]
    assert x.values.tolist() == [1.0, 2.0, 3.0] and not x.values.flags.writeable
    assert (x.mean, x.rows, x.null_share) == (2.0, 5, 0.4)
    assert x.std == pytest.approx(np.std([1.0, 2.0, 3.0]))
    assert x.edges.tolist() == [2.0] and x.counts.tolist() == [2, 1]
    k = prepared.categorical_columns["k"]
    assert dict(k.counts.iter_rows()) == {"a": 2, "b": 2}
    assert (k.values, k.rows, k.null_share) == (4, 5, 0.2)
    assert set(prepared.frame.columns) == {"x", "k"} and prepared.frame.height == 0


def test_misuse_raises() -> None:
    ref = pl.DataFrame({"v": [1.0, 2.0], "s": ["a", "b"]})
    det = PolarsDriftDetector()
    with pytest.raises(ValueError, match="both numeric and categorical"):
        det.prepare_reference(ref, numeric=["v"], categorical=["v"])
    with pytest.raises(ValueError, match="not in the reference frame"):
        det.prepare_reference(ref, numeric=["w"])
    with pytest.raises(TypeError, match="dtype String in the reference"):
        det.prepare_reference(ref, numeric=["s"], categorical=[])
    prepared = det.prepare_reference(ref, numeric=["v"], categorical=["s"])
    with pytest.raises(ValueError, match="not in the current frame"):
        det.compare_prepared(prepared, ref.drop("v"))
    with pytest.raises(TypeError, match="dtype String in the current"):
        det.compare_prepared(prepared, ref.with_columns(pl.col("s").alias("v")))
    with pytest.raises(ValueError, match="numeric_bins=10"):
        PolarsDriftDetector(numeric_bins=5).compare_prepared(prepared, ref)
    # other settings may differ: only the binning is prepared
    loose = PolarsDriftDetector(psi_threshold=0.5, ks_p_value=0.01)
    assert loose.compare_prepared(prepared, ref) == loose.compare(ref, ref, ["v"], ["s"])
    other = ReferenceFrame(2, None, None, "drift_detector.other@1", ref)
    with pytest.raises(TypeError, match="ReferenceFrame"):
        det.compare_prepared(other, ref)


class _PlainDetector(DriftDetector):
    """A detector that implements only ``compare``: the defaults keep the frame."""

    metadata = PluginMetadata(
        name="plain", kind="drift_detector", version="1.0.0", capabilities=("numeric",)
    )
    note: str = ""  # a field-less resource makes Dagster read pydantic's deprecated __fields__

    def compare(
        self,
        reference: pl.DataFrame,
        current: pl.DataFrame,
        numeric: list[str] | None = None,
        categorical: list[str] | None = None,
    ) -> DriftReport:
        return PolarsDriftDetector().compare(reference, current, numeric, categorical)


def test_default_prepare_reference_of_any_detector_compares_the_frame() -> None:
    ref, cur = _noisy(300, seed=6), _noisy(100, seed=7, shift=1.0)
    plain = _PlainDetector()
    prepared = plain.prepare_reference(ref.lazy(), numeric=["x"], categorical=["k"])
    assert isinstance(prepared, PreparedReference) and isinstance(prepared, ReferenceFrame)
    assert prepared.detector == "drift_detector.plain@1.0.0" and prepared.numeric == ("x",)
    assert plain.compare_prepared(prepared, cur) == plain.compare(ref, cur, ["x"], ["k"])
    with pytest.raises(TypeError, match="PolarsPreparedReference"):
        plain.compare_prepared(PolarsDriftDetector().prepare_reference(ref), cur)


# -- import cost ----------------------------------------------------------------------------------
def test_importing_and_configuring_the_plugin_imports_no_numpy_or_scipy() -> None:
    code = (
        "import sys, json\n"
        "from mlx_plugins.drift_detectors.polars_drift import PolarsDriftDetector\n"
        "PolarsDriftDetector(numeric_binning='equal_width', ks_method='exact').check_health()\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('numpy', 'scipy') or m == 'mlx_plugins.drift_detectors.stats')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []

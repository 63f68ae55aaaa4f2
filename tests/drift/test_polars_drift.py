"""The ``polars`` drift detector plugin: rules, config, edge cases, agreement with scipy."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import date

import dagster as dg
import numpy as np
import polars as pl
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon as scipy_js

from mlx_plugins.drift_detectors.base import DriftReport
from mlx_plugins.drift_detectors.polars_drift import PolarsDriftDetector, infer_column_kind
from mlx_plugins.drift_detectors.report import dagster_metadata
from mlx_plugins.kernel.registry import default_registry


def _frame(
    n: int, shift: float = 0.0, cats: tuple[float, ...] = (0.5, 0.3, 0.2), *, seed: int
) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "x": rng.normal(shift, 1.0, n),
            "k": rng.choice(["a", "b", "c"], size=n, p=list(cats)),
        }
    )


def _finite(report: DriftReport) -> bool:
    values = [report.drift_share]
    for c in report.columns:
        values += [c.statistic, c.threshold, c.reference_null_share, c.current_null_share]
        values += [v for v in c.stats.values() if v is not None]
        if c.p_value is not None:
            values.append(c.p_value)
    return all(math.isfinite(v) for v in values)


# -- plugin wiring ---------------------------------------------------------------------------------
def test_registered_as_drift_detector_polars() -> None:
    cls = default_registry().get("drift_detector", "polars").load()
    assert cls is PolarsDriftDetector
    meta = PolarsDriftDetector.metadata
    assert (meta.kind, meta.name, meta.version) == ("drift_detector", "polars", "0.1.0")
    assert {"chi2_homogeneity", "evidently_chisquare_gof", "html_report"} <= set(meta.capabilities)
    assert PolarsDriftDetector().check_health().healthy


def test_importing_the_plugin_does_not_import_scipy() -> None:
    code = (
        "import sys, json; import mlx_plugins.drift_detectors.polars_drift\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_config_is_typed_and_validated() -> None:
    with pytest.raises(pydantic.ValidationError):
        PolarsDriftDetector(ks_p_value=1.5)
    with pytest.raises(pydantic.ValidationError):
        PolarsDriftDetector(categorical_test="chisquare")
    with pytest.raises(pydantic.ValidationError):
        PolarsDriftDetector(numeric_large_test="chi2")
    with pytest.raises(pydantic.ValidationError):
        PolarsDriftDetector(drift_share=2)
    with pytest.raises(pydantic.ValidationError, match="unknown tests"):
        PolarsDriftDetector(column_tests={"x": "t_test"})


def test_usable_as_a_dagster_resource() -> None:
    ref, cur = _frame(300, seed=1), _frame(300, shift=1.0, seed=2)

    @dg.asset
    def drift(drift_detector: PolarsDriftDetector) -> dg.MaterializeResult:
        report = drift_detector.compare(ref, cur)
        return dg.MaterializeResult(metadata=dagster_metadata(report))

    result = dg.materialize(
        [drift],
        resources={"drift_detector": PolarsDriftDetector(categorical_test="chi2_homogeneity")},
    )
    assert result.success
    [mat] = result.asset_materializations_for_node("drift")
    assert mat.metadata["drifted_columns"].value == ["x"]
    assert "| x | numeric | ks |" in str(mat.metadata["drift_report"].value)


# -- agreement with scipy through the whole plugin -------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hs.integers(0, 2**32 - 1),
    hs.integers(0, 120),
    hs.integers(0, 120),
    hs.floats(0.0, 0.6),
    hs.booleans(),
)
def test_plugin_statistics_match_scipy_on_non_missing_values(
    seed: int, n_ref: int, n_cur: int, null_rate: float, ties: bool
) -> None:
    rng = np.random.default_rng(seed)

    def side(n: int, shift: float) -> pl.DataFrame:
        x = rng.normal(shift, 1, n)
        if ties:
            x = np.round(x)
        x_list: list[float | None] = list(x)
        k_list: list[str | None] = list(rng.choice(["a", "b", "c", "d"], size=n))
        for i in np.flatnonzero(rng.random(n) < null_rate):
            x_list[i] = None if i % 2 else float("nan")
            k_list[i] = None
        return pl.DataFrame({"x": x_list, "k": k_list}, schema={"x": pl.Float64, "k": pl.String})

    ref, cur = side(n_ref, 0.0), side(n_cur, rng.uniform(0, 1))
    report = PolarsDriftDetector().compare(ref, cur)
    assert _finite(report)
    x, k = report.column("x"), report.column("k")

    xr = ref["x"].drop_nulls().drop_nans().to_numpy()
    xc = cur["x"].drop_nulls().drop_nans().to_numpy()
    assert (x.reference_rows, x.current_rows) == (len(xr), len(xc))
    assert x.reference_null_share == pytest.approx((n_ref - len(xr)) / n_ref if n_ref else 0.0)
    if len(xr) and len(xc):
        ks = sps.ks_2samp(xr, xc)
        assert x.stats["ks_statistic"] == pytest.approx(ks.statistic, rel=1e-9, abs=1e-9)
        assert abs(x.stats["ks_p_value"] - ks.pvalue) <= 1e-6
        w = sps.wasserstein_distance(xr, xc)
        assert x.stats["wasserstein"] == pytest.approx(w, rel=1e-9, abs=1e-9)
        assert x.stats["wasserstein_norm"] == pytest.approx(
            w / max(np.std(xr), 1e-3), rel=1e-9, abs=1e-9
        )
    else:
        assert not x.drifted and x.note.startswith("no values in")

    kr, kc = ref["k"].drop_nulls(), cur["k"].drop_nulls()
    cats = sorted(set(kr.to_list()) | set(kc.to_list()))
    a = np.array([(kr == c).sum() for c in cats])
    b = np.array([(kc == c).sum() for c in cats])
    if len(cats) > 1 and a.sum() and b.sum():
        chi = sps.chi2_contingency(np.vstack([a, b]), correction=False)
        assert k.stats["chi2"] == pytest.approx(chi.statistic, rel=1e-9, abs=1e-9)
        assert abs(k.stats["chi2_p_value"] - chi.pvalue) <= 1e-6
        assert k.stats["jensenshannon"] == pytest.approx(scipy_js(a, b), rel=1e-9, abs=1e-9)


# -- the decision rules ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rows", "numeric_test", "categorical_test"),
    [(1000, "ks", "chi2"), (1001, "wasserstein", "jensenshannon")],
)
def test_deciding_test_depends_on_reference_size(
    rows: int, numeric_test: str, categorical_test: str
) -> None:
    report = PolarsDriftDetector().compare(_frame(rows, seed=3), _frame(50, seed=4))
    assert report.column("x").test == numeric_test
    assert report.column("k").test == categorical_test


def test_p_value_tests_drift_below_and_distances_at_or_above_threshold() -> None:
    det = PolarsDriftDetector()
    for shift in (0.0, 0.15, 1.0):
        for rows in (400, 4000):
            for c in det.compare(_frame(rows, seed=5), _frame(rows, shift=shift, seed=6)).columns:
                if c.test in ("ks", "chi2"):
                    assert c.p_value is not None
                    assert c.drifted == (c.p_value < c.threshold)
                else:
                    assert c.p_value is None
                    assert c.drifted == (c.statistic >= c.threshold)
    big = det.compare(_frame(5000, seed=7), _frame(5000, shift=0.5, seed=8)).column("x")
    assert big.test == "wasserstein" and big.drifted
    w, std = big.stats["wasserstein"], big.stats["reference_std"]
    assert w is not None and std is not None
    assert big.statistic == pytest.approx(w / std)


def test_same_distribution_is_calm_and_a_shift_is_flagged() -> None:
    det = PolarsDriftDetector()
    calm = det.compare(_frame(3000, seed=9), _frame(3000, seed=10))
    assert calm.drifted_columns == [] and not calm.dataset_drift
    moved = det.compare(_frame(3000, seed=9), _frame(3000, 0.5, (0.2, 0.3, 0.5), seed=11))
    assert moved.drifted_columns == ["x", "k"] and moved.dataset_drift


def test_dataset_drift_when_share_reaches_threshold() -> None:
    rng = np.random.default_rng(12)
    ref = pl.DataFrame({f"c{i}": rng.normal(size=500) for i in range(4)})
    cur = ref.with_columns(pl.col("c0") + 3, pl.col("c1") + 3)
    half = PolarsDriftDetector(drift_share=0.5).compare(ref, cur)
    assert half.drift_share == 0.5 and half.dataset_drift
    assert not PolarsDriftDetector(drift_share=0.6).compare(ref, cur).dataset_drift


def test_thresholds_and_tests_are_configurable() -> None:
    ref, cur = _frame(3000, seed=13), _frame(3000, shift=0.06, seed=14)
    assert not PolarsDriftDetector().compare(ref, cur).column("x").drifted
    strict = PolarsDriftDetector(wasserstein_threshold=0.01).compare(ref, cur).column("x")
    assert strict.drifted and strict.threshold == 0.01
    ks = PolarsDriftDetector(numeric_large_test="ks").compare(ref, cur).column("x")
    assert ks.test == "ks" and ks.p_value == ks.stats["ks_p_value"]
    psi = PolarsDriftDetector(column_tests={"x": "psi", "k": "psi"}).compare(ref, cur)
    assert [c.test for c in psi.columns] == ["psi", "psi"]
    with pytest.raises(ValueError, match="not a categorical test"):
        PolarsDriftDetector(column_tests={"k": "ks"}).compare(ref, cur)


def test_evidently_goodness_of_fit_is_an_explicit_option_and_flags_more() -> None:
    # 20 reference rows: their 60/40 split is noisy; homogeneity knows, GOF does not
    ref = pl.DataFrame({"k": ["a"] * 12 + ["b"] * 8})
    cur = pl.DataFrame({"k": ["a"] * 4600 + ["b"] * 5400})
    default = PolarsDriftDetector().compare(ref, cur).column("k")
    compat = (
        PolarsDriftDetector(categorical_test="evidently_chisquare_gof")
        .compare(ref, cur)
        .column("k")
    )
    assert (default.test, default.drifted) == ("chi2", False)
    assert (compat.test, compat.drifted) == ("chi2_gof", True)
    expected = sps.chisquare([4600, 5400], np.array([0.6, 0.4]) * 10_000)
    assert compat.statistic == pytest.approx(expected.statistic, rel=1e-9)


# -- missing values and degenerate inputs ----------------------------------------------------------
def test_nulls_nan_and_inf_are_dropped_and_reported() -> None:
    ref = pl.DataFrame({"x": [1.0, 2.0, None, 4.0, float("nan")], "k": ["a", None, "b", "a", "b"]})
    cur = pl.DataFrame({"x": [float("inf"), 2.0, 3.0, 4.0, None], "k": [None, None, "a", "b", "b"]})
    report = PolarsDriftDetector().compare(ref, cur)
    x, k = report.column("x"), report.column("k")
    assert (x.reference_rows, x.current_rows) == (3, 3)
    assert (x.reference_null_share, x.current_null_share) == (0.4, 0.4)
    assert (k.reference_null_share, k.current_null_share) == (0.2, 0.4)
    assert x.stats["ks_statistic"] == pytest.approx(sps.ks_2samp([1, 2, 4], [2, 3, 4]).statistic)
    assert _finite(report)


def test_all_null_or_empty_current_gives_defined_not_drifted_columns() -> None:
    ref = _frame(200, seed=15)
    empty = ref.clear()
    all_null = pl.DataFrame({"x": [None] * 10, "k": [None] * 10})  # dtype Null on both
    for cur in (empty, all_null):
        report = PolarsDriftDetector().compare(ref, cur)
        assert [c.column for c in report.columns] == ["x", "k"]
        assert _finite(report)
        assert not report.dataset_drift and report.drifted_columns == []
        for c in report.columns:
            assert c.note.startswith("no values in current")
            assert c.statistic == 0.0 and c.current_rows == 0
            assert c.p_value in (None, 1.0)
    flagged = PolarsDriftDetector(empty_column_drifted=True).compare(ref, empty)
    assert flagged.drifted_columns == ["x", "k"] and flagged.dataset_drift
    both_empty = PolarsDriftDetector().compare(empty, empty)
    assert both_empty.reference_rows == 0 and _finite(both_empty)
    assert both_empty.columns[0].note == "no values in reference and current: nothing to compare"


def test_no_columns_at_all_is_no_drift() -> None:
    report = PolarsDriftDetector(drift_share=0.0).compare(pl.DataFrame(), pl.DataFrame())
    assert report.columns == () and report.drift_share == 0.0 and not report.dataset_drift


def test_constant_columns() -> None:
    ref = pl.DataFrame({"x": [5.0] * 300})
    same = PolarsDriftDetector().compare(ref, pl.DataFrame({"x": [5.0] * 200})).column("x")
    assert not same.drifted
    assert (same.stats["ks_statistic"], same.stats["wasserstein"], same.stats["psi"]) == (0, 0, 0)
    moved = PolarsDriftDetector().compare(ref, pl.DataFrame({"x": [5.2] * 200})).column("x")
    assert moved.drifted and moved.stats["ks_statistic"] == 1.0
    assert moved.stats["wasserstein_norm"] == pytest.approx(0.2 / 1e-3)
    assert "constant" in moved.note
    assert _finite(PolarsDriftDetector().compare(ref, pl.DataFrame({"x": [5.2] * 200})))


def test_all_new_categories() -> None:
    ref = pl.DataFrame({"k": ["a", "b"] * 100})
    cur = pl.DataFrame({"k": ["c", "d", "e"] * 50})
    for rows_rule in (1000, 10):  # chi-square, then Jensen-Shannon
        c = PolarsDriftDetector(small_sample_max_rows=rows_rule).compare(ref, cur).column("k")
        assert c.drifted
        assert c.stats["new_categories"] == 3 and c.stats["new_category_share"] == 1.0
        assert c.stats["missing_categories"] == 2
        assert c.stats["jensenshannon"] == pytest.approx(math.sqrt(math.log(2)))
        assert c.note.startswith("all current values are in 3 categories unseen")
        assert math.isfinite(c.stats["chi2_gof"]) and math.isfinite(c.stats["psi"])


def test_some_new_categories_are_counted_in_the_homogeneity_test() -> None:
    ref = pl.DataFrame({"k": ["a"] * 50 + ["b"] * 50})
    cur = pl.DataFrame({"k": ["a"] * 45 + ["b"] * 45 + ["z"] * 10})
    c = PolarsDriftDetector().compare(ref, cur).column("k")
    expected = sps.chi2_contingency([[50, 50, 0], [45, 45, 10]], correction=False)
    assert c.statistic == pytest.approx(expected.statistic) and c.stats["chi2_dof"] == 2
    assert c.stats["new_category_share"] == pytest.approx(0.1)
    assert "10.0% of current is in 1 category unseen" in c.note


# -- which columns are compared --------------------------------------------------------------------
def test_columns_inferred_from_dtypes() -> None:
    ref = pl.DataFrame(
        {
            "f": [1.5, 2.5],
            "i": pl.Series([1, 2], dtype=pl.Int16),
            "s": ["a", "b"],
            "cat": pl.Series(["a", "b"], dtype=pl.Categorical),
            "flag": [True, False],
            "d": [date(2024, 1, 1), date(2024, 1, 2)],
            "only_ref": [1, 2],
        }
    )
    cur = ref.drop("only_ref").with_columns(pl.lit(1).alias("only_cur"))
    report = PolarsDriftDetector().compare(ref, cur)
    kinds = {c.column: c.kind for c in report.columns}
    assert kinds == {
        "f": "numeric",
        "i": "numeric",
        "s": "categorical",
        "cat": "categorical",
        "flag": "categorical",
    }
    assert set(report.skipped_columns) == {"d", "only_ref", "only_cur"}
    assert infer_column_kind(pl.Duration()) is None


def test_named_columns_override_inference() -> None:
    ref = pl.DataFrame(
        {
            "code": [1, 2, 3, 1] * 10,
            "v": np.random.default_rng(16).normal(size=40),
            "s": ["a", "b"] * 20,
        }
    )
    # a named list is exact; only the list left as None is inferred
    report = PolarsDriftDetector().compare(ref, ref, categorical=["code"])
    assert {c.column: c.kind for c in report.columns} == {"code": "categorical", "v": "numeric"}
    assert report.skipped_columns == ("s",)
    only = PolarsDriftDetector().compare(ref, ref, numeric=["v"], categorical=[])
    assert [c.column for c in only.columns] == ["v"]
    dated = pl.DataFrame({"d": [date(2024, 1, i) for i in range(1, 11)]})
    later = pl.DataFrame({"d": [date(2024, 2, i) for i in range(1, 11)]})
    d = PolarsDriftDetector().compare(dated, later, numeric=["d"], categorical=[]).column("d")
    assert d.kind == "numeric" and d.stats["ks_statistic"] == 1.0


def test_bad_column_requests_raise() -> None:
    ref = pl.DataFrame({"v": [1.0, 2.0], "s": ["a", "b"]})
    det = PolarsDriftDetector()
    with pytest.raises(ValueError, match="both numeric and categorical"):
        det.compare(ref, ref, numeric=["v"], categorical=["v"])
    with pytest.raises(ValueError, match="not in the current frame"):
        det.compare(ref, ref.drop("v"), numeric=["v"])
    with pytest.raises(TypeError, match="dtype String"):
        det.compare(ref, ref, numeric=["s"], categorical=[])


def test_lazy_frames_and_threads_give_the_same_report() -> None:
    rng = np.random.default_rng(17)
    ref = pl.DataFrame({f"x{i}": rng.normal(size=60_000) for i in range(3)}).with_columns(
        k=pl.Series(rng.choice(["a", "b"], size=60_000))
    )
    cur = ref.with_columns(pl.col("x0") * 1.5)
    serial = PolarsDriftDetector(max_workers=1).compare(ref, cur)
    threaded = PolarsDriftDetector(max_workers=3).compare(ref.lazy(), cur.lazy())
    assert serial == threaded
    assert serial.drifted_columns == ["x0"]

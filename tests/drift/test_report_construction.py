"""The reports the detector builds (each column's fields from ``_result``, validated with their
report by ``_report``): every field and stats value of the Python type the model declares,
whatever numpy scalars the statistics gave, the decision and notes as documented, and the same
reports from ``compare``, ``compare_prepared`` and ``compare_prepared_many``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl
import pytest
from pydantic import BaseModel

from mlx_plugins.drift_detectors.base import ColumnDrift, DriftReport
from mlx_plugins.drift_detectors.polars_drift import PolarsDriftDetector
from tests.drift.test_prepared import _noisy


def _typed(value: Any) -> Any:
    """``value`` with every leaf replaced by ``(type, value)`` (NaN by a marker): equal only
    when the types are equal too (``1 == 1.0 == np.float64(1)`` but not here)."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return (type(value), [_typed(v) for v in value])
    if isinstance(value, float) and math.isnan(value):
        return (type(value), "nan")
    return (type(value), value)


def _assert_as_validated(fast: BaseModel, validated: BaseModel) -> None:
    assert type(fast) is type(validated)
    assert _typed(fast.model_dump()) == _typed(validated.model_dump())
    # the whole instance state: __dict__ (attribute types too), fields set, extra, private
    assert _typed(fast.__getstate__()) == _typed(validated.__getstate__())
    assert list(fast.__dict__) == list(validated.__dict__)  # field order (repr)
    assert fast.__pydantic_fields_set__ == validated.__pydantic_fields_set__
    assert fast.model_dump_json() == validated.model_dump_json()


def _revalidated(report: DriftReport) -> DriftReport:
    """The report validated afresh from its own dump (validation converts any numpy scalar)."""
    return DriftReport(**report.model_dump())


def _column(detector: PolarsDriftDetector, *args: Any) -> ColumnDrift:
    """The :class:`ColumnDrift` that ``detector._result(*args)``'s fields become in a report."""
    return detector._report([detector._result(*args)], 1, 1, []).columns[0]


def test_result_converts_numpy_inputs_as_validation_does() -> None:
    detector = PolarsDriftDetector()
    raw: dict[str, Any] = {
        "reference_mean": np.float64(0.5),
        "reference_std": np.float32(0.1),
        "current_mean": 1,  # an int: validation makes it 1.0
        "current_std": np.float64(np.nan),
        "ks_statistic": np.float64(0.25),
        "ks_p_value": np.float64(0.01),
        "wasserstein": np.float64(0.3),
        "wasserstein_norm": np.float64(0.3),
        "psi": np.float64(np.inf),
        "jensenshannon": np.float64(0.2),
        "bins": np.int64(10),
        "n_unique": True,
    }
    n_ref, n_cur, ref_total, cur_total = np.int64(500), np.int64(40), np.int64(600), np.int64(50)
    for column_tests in ({}, {"x": "ks"}, {"x": "psi"}):
        detector = PolarsDriftDetector(column_tests=column_tests)
        decision = detector._decision("x", "numeric", int(n_ref))
        fast = _column(
            detector, "x", "numeric", decision, raw, n_ref, n_cur, ref_total, cur_total, ["a note"]
        )
        p_value = None if decision.p_value is None else raw[decision.p_value]
        statistic = raw[decision.statistic]
        # what the detector built before, by validation
        validated = ColumnDrift(
            column="x",
            kind="numeric",
            test=decision.test,
            statistic=statistic,
            p_value=p_value,
            threshold=decision.threshold,
            drifted=bool(
                p_value < decision.threshold
                if p_value is not None
                else statistic >= decision.threshold
            ),
            stats=dict(raw),
            note="a note",
            reference_rows=n_ref,
            current_rows=n_cur,
            reference_null_share=(ref_total - n_ref) / ref_total,
            current_null_share=(cur_total - n_cur) / cur_total,
        )
        _assert_as_validated(fast, validated)
        assert type(fast.stats["bins"]) is float and type(fast.reference_rows) is int
        assert fast.stats is not raw  # a copy, not the statistics' own dict


def test_none_in_stats_and_empty_sides() -> None:
    detector = PolarsDriftDetector()
    values: dict[str, Any] = {"ks_statistic": np.float64(0.0), "ks_p_value": None, "other": 2}
    decision = detector._decision("x", "numeric", 10)
    fast = _column(detector, "x", "numeric", decision, values, 10, 0, 10, 0, [])
    validated = ColumnDrift(
        column="x",
        kind="numeric",
        test="ks",
        statistic=np.float64(0.0),
        p_value=None,
        threshold=detector.ks_p_value,
        drifted=False,
        stats=dict(values),
        note="no values in current: nothing to compare",
        reference_rows=10,
        current_rows=0,
        reference_null_share=0.0,
        current_null_share=0.0,
    )
    _assert_as_validated(fast, validated)


def test_a_missing_statistic_is_refused_naming_the_column() -> None:
    detector = PolarsDriftDetector()
    decision = detector._decision("x", "numeric", 10)
    with pytest.raises(TypeError, match="column 'x': ks_statistic is None"):
        detector._result("x", "numeric", decision, {"ks_statistic": None}, 10, 10, 10, 10, [])


def _frames() -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    ref = _noisy(3000, seed=1).with_columns(const=pl.lit(1.5), empty=pl.lit(None, pl.Float64))
    days = [
        _noisy(n, seed=10 + i, shift=0.4 * i).with_columns(
            const=pl.lit(1.5), empty=pl.lit(2.0, pl.Float64)
        )
        for i, n in enumerate((900, 50, 1, 0))
    ]
    # a category unseen in the reference
    days[1] = days[1].with_columns(k=pl.when(pl.col("k") == "a").then(pl.lit("z")).otherwise("k"))
    return ref, days


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"small_sample_max_rows": 0, "drift_share": 0},
        {"categorical_test": "evidently_chisquare_gof"},
    ],
)
def test_every_path_builds_reports_as_validated(settings: dict[str, Any]) -> None:
    detector = PolarsDriftDetector(**settings)
    ref, days = _frames()
    prepared = detector.prepare_reference(ref)
    reports = [
        *(detector.compare(ref, day) for day in days),
        *(detector.compare_prepared(prepared, day) for day in days),
        *detector.compare_prepared_many(prepared, days),
    ]
    notes = " ".join(c.note for r in reports for c in r.columns)
    assert "nothing to compare" in notes and "unseen in the reference" in notes
    assert "constant" in notes
    for report in reports:
        _assert_as_validated(report, _revalidated(report))
        for column, validated in zip(report.columns, _revalidated(report).columns, strict=True):
            _assert_as_validated(column, validated)
    for report in reports:  # the three paths agree
        assert report.model_dump_json() in {r.model_dump_json() for r in reports}
    n = len(days)
    for i in range(n):
        assert reports[i] == reports[n + i] == reports[2 * n + i]


def test_report_of_numpy_counts_is_as_validated() -> None:
    detector = PolarsDriftDetector(drift_share=1)
    ref, days = _frames()
    column = detector.compare(ref, days[0]).columns[0]
    fast = detector._report([column.model_dump()], np.int64(3000), np.int64(900), ["a"])
    validated = DriftReport(
        columns=(column,),
        reference_rows=np.int64(3000),
        current_rows=np.int64(900),
        drift_share=float(column.drifted),
        share_threshold=1,
        dataset_drift=column.drifted,
        skipped_columns=("a",),
        detector=detector.detector_id(),
    )
    _assert_as_validated(fast, validated)
    empty = detector._report([], 0, 0, [])
    assert empty.dataset_drift is False and empty.drift_share == 0.0

"""The ``polars`` drift detector: per-column two-sample tests, vectorised with polars and numpy.

Per numeric column: Kolmogorov-Smirnov (statistic and p-value), Wasserstein distance
normalised by the reference's standard deviation, PSI and Jensen-Shannon distance over bins
fixed on the reference. Per categorical column: chi-square test of homogeneity (or, as a
compatibility option, Evidently's goodness-of-fit test), PSI and Jensen-Shannon distance over
category shares. Every statistic is computed and reported; one of them, picked per column by
type and size, decides whether the column drifted. The dataset drifted when the share of
drifted columns reaches ``drift_share``. See docs/drift.md for the defaults and how they
differ from Evidently's.

One reference compared with many currents (a daily backfill): ``prepare_reference`` sorts,
bins and counts the reference once, and ``compare_prepared`` gives the same reports as
``compare`` from then on, doing only the current side's work and a merge.

This module imports pydantic only: polars, numpy and scipy (through ``stats``) are imported
when something is compared, so that loading the code location stays cheap.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

from pydantic import Field, field_validator

from mlx_plugins.drift_detectors.base import (
    DriftDetector,
    DriftReport,
    PreparedReference,
)
from mlx_plugins.drift_detectors.dtypes import (
    check_categorical_pair,
    check_numeric_dtype,
    check_numeric_pair,
)
from mlx_plugins.drift_detectors.options import Binning, KSMethod
from mlx_plugins.kernel.metadata import PluginMetadata

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from mlx_plugins.drift_detectors import stats as st

NumericTest = Literal["ks", "wasserstein", "psi", "jensenshannon"]
CategoricalTest = Literal["chi2", "psi", "jensenshannon"]
Kind = Literal["numeric", "categorical"]

_T = TypeVar("_T")
_I = TypeVar("_I")
_THREADED_MIN_ROWS = 50_000
"""Columns are compared in threads only when a side has at least this many rows."""

_P_VALUE_TESTS = {"ks", "chi2", "chi2_gof"}

_Fields = dict[str, Any]
"""A :class:`~mlx_plugins.drift_detectors.base.ColumnDrift`'s fields, validated into one with
the :class:`~mlx_plugins.drift_detectors.base.DriftReport` that holds it (one validation per
report costs less than one per column)."""


def infer_column_kind(dtype: pl.DataType) -> Kind | None:
    """``"numeric"`` for integer, float and decimal dtypes; ``"categorical"`` for string,
    categorical, enum and boolean; ``None`` (not compared unless named) for anything else."""
    import polars as pl

    if dtype == pl.Boolean or isinstance(dtype, pl.String | pl.Categorical | pl.Enum):
        return "categorical"
    if dtype.is_numeric():
        return "numeric"
    return None


class PolarsDriftDetector(DriftDetector):
    """Data drift between a reference window and a current partition, column by column."""

    metadata = PluginMetadata(
        name="polars",
        kind="drift_detector",
        version="0.1.0",
        capabilities=(
            "numeric",
            "categorical",
            "ks",
            "wasserstein",
            "psi",
            "jensenshannon",
            "chi2_homogeneity",
            "evidently_chisquare_gof",
            "markdown_report",
            "html_report",
        ),
        description="Vectorised KS/Wasserstein/PSI/Jensen-Shannon/chi-square drift on polars.",
    )

    # -- which statistic decides, per column -----------------------------------------------------
    small_sample_max_rows: int = Field(
        default=1000,
        ge=0,
        description="A column whose reference has at most this many non-missing values uses the "
        "small-sample test (a p-value test), otherwise the large-sample one (a distance).",
    )
    numeric_small_test: NumericTest = "ks"
    numeric_large_test: NumericTest = "wasserstein"
    categorical_small_test: CategoricalTest = "chi2"
    categorical_large_test: CategoricalTest = "jensenshannon"
    categorical_test: Literal["chi2_homogeneity", "evidently_chisquare_gof"] = Field(
        default="chi2_homogeneity",
        description="What the 'chi2' test is: a two-sample test of homogeneity (default), or "
        "Evidently's goodness-of-fit test that treats the reference shares as exact.",
    )
    column_tests: dict[str, str] = Field(
        default={},
        description="Per-column override of the deciding test, e.g. {'fare': 'psi'}.",
    )

    # -- thresholds ------------------------------------------------------------------------------
    ks_p_value: float = Field(default=0.05, gt=0, lt=1, description="Drift when p < this.")
    chi2_p_value: float = Field(default=0.05, gt=0, lt=1, description="Drift when p < this.")
    wasserstein_threshold: float = Field(
        default=0.1, gt=0, description="Drift when W / std(reference) >= this."
    )
    psi_threshold: float = Field(default=0.1, gt=0, description="Drift when PSI >= this.")
    jensenshannon_threshold: float = Field(
        default=0.1, gt=0, description="Drift when the Jensen-Shannon distance >= this."
    )
    drift_share: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="The dataset drifted when drifted columns / compared columns >= this.",
    )

    # -- how the statistics are computed ---------------------------------------------------------
    numeric_bins: int = Field(default=10, ge=2, le=10_000)
    numeric_binning: Binning = "quantile"
    psi_epsilon: float = Field(
        default=1e-4, gt=0, lt=1, description="Floor of a bin's share in PSI (empty bins)."
    )
    wasserstein_min_std: float = Field(
        default=1e-3, gt=0, description="Floor of the reference std that normalises W."
    )
    ks_method: KSMethod = "auto"
    max_workers: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Columns compared at once, in threads (polars and numpy release the GIL). "
        "Each busy thread holds about 25 bytes of scratch per compared value (both sides).",
    )
    empty_column_drifted: bool = Field(
        default=False,
        description="Whether a column with no non-missing values on one side counts as drifted.",
    )

    @field_validator("column_tests")
    @classmethod
    def _known_tests(cls, value: dict[str, str]) -> dict[str, str]:
        known = dict.fromkeys([*get_args(NumericTest), *get_args(CategoricalTest)])
        bad = {column: test for column, test in value.items() if test not in known}
        if bad:
            raise ValueError(f"unknown tests {bad}; use one of {', '.join(known)}")
        return value

    def _probe(self) -> str:
        import polars as pl

        return f"polars {pl.__version__}"

    # -- API -------------------------------------------------------------------------------------
    def compare(
        self,
        reference: pl.DataFrame,
        current: pl.DataFrame,
        numeric: list[str] | None = None,
        categorical: list[str] | None = None,
    ) -> DriftReport:
        """Compare ``current`` with ``reference``.

        ``numeric``/``categorical`` name the columns to compare; a ``None`` list is inferred
        from the dtypes of the columns present in both frames (see :func:`infer_column_kind`),
        leaving out columns named in the other list; a list that is given is taken as it is.
        Columns of either frame that are not compared (dtype neither numeric nor categorical,
        present on one side only, or left out of a given list) are listed in
        ``DriftReport.skipped_columns``.
        """
        from mlx_plugins.drift_detectors import stats as st

        reference = _collect(reference)
        current = _collect(current)
        plan, skipped = self.plan_columns(reference, current, numeric, categorical)
        local = threading.local()
        numeric_values = (reference.height + current.height) * sum(
            kind == "numeric" for _, kind in plan
        )
        compiled = numeric_values >= st.COMPILED_PAIR_MIN_VALUES or st.compiled_loaded()
        column_values = reference.height + current.height

        def one(item: tuple[str, Kind]) -> _Fields:
            name, kind = item
            ref, cur = reference.get_column(name), current.get_column(name)
            if kind == "categorical":
                return self._categorical(name, ref, cur)
            if not hasattr(local, "workspace"):
                local.workspace = st.Workspace()
            use_compiled = compiled and column_values >= st.COMPILED_COLUMN_MIN_VALUES
            return self._numeric(name, ref, cur, local.workspace, use_compiled)

        results = self._map(one, plan, max(reference.height, current.height))
        return self._report(results, reference.height, current.height, skipped)

    def prepare_reference(
        self,
        reference: pl.DataFrame | pl.LazyFrame,
        numeric: list[str] | None = None,
        categorical: list[str] | None = None,
    ) -> PolarsPreparedReference:
        """Sort, summarise, bin and count the reference once, for many :meth:`compare_prepared`
        calls that return exactly what ``compare(reference, current, numeric, categorical)``
        would (the same :class:`DriftReport`, every statistic bit for bit).

        Prepared per numeric column: the sorted finite values, their mean and std, the bin
        edges and the reference's bin counts; per categorical column: the category counts; and
        the row counts (hence null shares). With a list left as ``None`` every reference column
        that could be inferred into it is prepared, since which are compared depends on each
        current's dtypes. Costs about one ``compare``; keeps 8 bytes per finite numeric
        reference value. Errors about the reference (a named column missing from it, or named
        numeric with a string dtype) are raised here; errors about a current by
        ``compare_prepared``. The result depends on ``numeric_bins`` and ``numeric_binning``;
        any detector with the same two settings can use it (thresholds and tests may differ).
        """
        import polars as pl

        from mlx_plugins.drift_detectors import stats as st

        reference = _collect(reference)
        _check_names(numeric, categorical, [("reference", reference)])
        wanted: list[tuple[str, Kind]] = []
        for name, dtype in reference.schema.items():
            if numeric is not None and name in numeric:
                wanted.append((name, "numeric"))
            elif categorical is not None and name in categorical:
                wanted.append((name, "categorical"))
            elif numeric is None or categorical is None:
                # what compare may infer it as; a column of dtype Null takes the current's kind
                kinds: list[Kind | None] = (
                    ["numeric", "categorical"] if dtype == pl.Null else [infer_column_kind(dtype)]
                )
                if "numeric" in kinds and numeric is None:
                    wanted.append((name, "numeric"))
                if "categorical" in kinds and categorical is None:
                    wanted.append((name, "categorical"))

        def one(item: tuple[str, Kind]) -> st.NumericReference | st.CategoricalReference:
            name, kind = item
            series = reference.get_column(name)
            if kind == "categorical":
                return st.CategoricalReference.of_series(series)
            _check_numeric_dtype(name, "reference", series)
            return st.NumericReference.of_series(
                series, bins=self.numeric_bins, binning=self.numeric_binning
            )

        prepared = self._map(one, wanted, reference.height)
        numeric_columns: dict[str, st.NumericReference] = {}
        categorical_columns: dict[str, st.CategoricalReference] = {}
        for (name, _), column in zip(wanted, prepared, strict=True):
            if isinstance(column, st.NumericReference):
                numeric_columns[name] = column
            else:
                categorical_columns[name] = column
        return PolarsPreparedReference(
            reference_rows=reference.height,
            numeric=None if numeric is None else tuple(numeric),
            categorical=None if categorical is None else tuple(categorical),
            detector=self.detector_id(),
            frame=reference.clear(),
            numeric_columns=numeric_columns,
            categorical_columns=categorical_columns,
            binning=self._binning(),
        )

    def compare_prepared(
        self, prepared: PreparedReference, current: pl.DataFrame | pl.LazyFrame
    ) -> DriftReport:
        """``compare(reference, current, numeric, categorical)`` for the reference and column
        lists given to :meth:`prepare_reference`: the same report, doing only the current
        side's work (a sort of its values, its counts) plus a linear merge per numeric column.
        """
        from mlx_plugins.drift_detectors import stats as st

        if not isinstance(prepared, PolarsPreparedReference):
            raise TypeError(
                "compare_prepared needs what PolarsDriftDetector.prepare_reference returned, "
                f"not a {type(prepared).__name__} (from {prepared.detector})"
            )
        self._check_binning(prepared)
        current = _collect(current)
        plan, skipped = self.plan_columns(
            prepared.frame,
            current,
            None if prepared.numeric is None else list(prepared.numeric),
            None if prepared.categorical is None else list(prepared.categorical),
        )

        def one(item: tuple[str, Kind]) -> _Fields:
            name, kind = item
            cur = current.get_column(name)
            if kind == "categorical":
                ref_counts = prepared.categorical_columns[name]
                _, rc, cc = ref_counts.align(cur)
                return self._categorical_result(name, rc, cc, ref_counts.rows, len(cur))
            ref = prepared.numeric_columns[name]
            _check_numeric_dtype(name, "current", cur)
            with prepared.workspace() as workspace:
                values, n_ref, n_cur = st.numeric_stats_prepared(
                    ref,
                    cur,
                    psi_epsilon=self.psi_epsilon,
                    wasserstein_min_std=self.wasserstein_min_std,
                    ks_method=self.ks_method,
                    workspace=workspace,
                )
            return self._numeric_result(name, values, n_ref, n_cur, ref.rows, len(cur))

        # threads only for a large current: against a small one each column is a few
        # milliseconds of short numpy calls, which the GIL serialises anyway
        results = self._map(one, plan, current.height)
        return self._report(results, prepared.reference_rows, current.height, skipped)

    def compare_prepared_many(
        self,
        prepared: PreparedReference,
        currents: Sequence[pl.DataFrame | pl.LazyFrame],
    ) -> list[DriftReport]:
        """``[compare_prepared(prepared, c) for c in currents]`` (one report per current, in
        order), each column compared for all the currents at once (see
        :mod:`mlx_plugins.drift_detectors.batch`): the same reports, bit for bit, whatever
        the other currents in the call. Currents are grouped by schema; columns run in
        ``max_workers`` threads when the currents hold 50,000 rows or more; errors are those
        of :meth:`compare_prepared`. Costs a few times less than the loop on the
        ``feature_drift`` asset's year (docs/drift.md).
        """
        from mlx_plugins.drift_detectors import batch

        if not isinstance(prepared, PolarsPreparedReference):
            return super().compare_prepared_many(prepared, currents)
        self._check_binning(prepared)
        frames = [_collect(c) for c in currents]
        numeric = None if prepared.numeric is None else list(prepared.numeric)
        categorical = None if prepared.categorical is None else list(prepared.categorical)
        heights = [frame.height for frame in frames]
        groups: dict[tuple[object, ...], list[int]] = {}
        for i, frame in enumerate(frames):
            # the schema, without building a polars Schema per frame
            groups.setdefault((tuple(frame.columns), tuple(frame.dtypes)), []).append(i)
        results: list[list[_Fields]] = [[] for _ in frames]
        skipped_of: list[list[str]] = [[] for _ in frames]
        pvalues = batch.PValues(self.ks_method, workers=self.max_workers)
        tasks: list[tuple[list[int], str, Kind]] = []
        for members in groups.values():
            plan, skipped = self.plan_columns(
                prepared.frame, frames[members[0]], numeric, categorical
            )
            for i in members:
                skipped_of[i] = skipped
            tasks.extend((members, name, kind) for name, kind in plan)

        def one(task: tuple[list[int], str, Kind]) -> list[_Fields] | _Pending:
            members, name, kind = task
            series = [frames[i].get_column(name) for i in members]
            cur_totals = [heights[i] for i in members]
            if kind == "categorical":
                ref_cat = prepared.categorical_columns[name]
                rc, cc = batch.category_matrix(ref_cat, series)
                many = batch.categorical_stats_many(rc, cc, psi_epsilon=self.psi_epsilon)
                return self._categorical_results(
                    name, many, int(rc.sum()), cc.sum(axis=1).tolist(), ref_cat.rows, cur_totals
                )
            ref = prepared.numeric_columns[name]
            _check_numeric_dtype(name, "current", series[0])
            with prepared.workspace() as workspace:
                stats_of = batch.numeric_stats_many(
                    ref,
                    series,
                    psi_epsilon=self.psi_epsilon,
                    wasserstein_min_std=self.wasserstein_min_std,
                    ks_method=self.ks_method,
                    workspace=workspace,
                    pvalues=pvalues,
                )
            return _Pending(name, stats_of, ref.rows, cur_totals)

        # columns in max_workers threads (numpy releases the GIL in its loops over the days)
        outcomes = self._map(one, tasks, sum(heights))
        pvalues.resolve()  # every column's KS p-values at once
        for (members, _, _), outcome in zip(tasks, outcomes, strict=True):
            if isinstance(outcome, _Pending):
                outcome = self._numeric_results(*outcome.args)
            for i, result in zip(members, outcome, strict=True):
                results[i].append(result)
        return [
            self._report(results[i], prepared.reference_rows, heights[i], skipped_of[i])
            for i in range(len(frames))
        ]

    # -- shared by compare and compare_prepared ------------------------------------------------
    def _check_binning(self, prepared: PolarsPreparedReference) -> None:
        if prepared.binning != self._binning():
            raise ValueError(
                f"the reference was prepared with numeric_bins={prepared.binning[0]}, "
                f"numeric_binning={prepared.binning[1]!r}; this detector has "
                f"numeric_bins={self.numeric_bins}, numeric_binning={self.numeric_binning!r}"
            )

    def _binning(self) -> tuple[int, Binning]:
        return self.numeric_bins, self.numeric_binning

    def _map(self, fn: Callable[[_I], _T], items: Sequence[_I], rows: int) -> list[_T]:
        """``[fn(item) for item in items]``, in ``max_workers`` threads when ``rows`` (the
        larger side) is at least 50,000."""
        workers = min(self.max_workers, len(items))
        if rows < _THREADED_MIN_ROWS:
            workers = 1
        if workers > 1:
            with ThreadPoolExecutor(workers, thread_name_prefix="mlx-drift") as pool:
                return list(pool.map(fn, items))
        return [fn(item) for item in items]

    def _report(
        self, results: list[_Fields], ref_rows: int, cur_rows: int, skipped: list[str]
    ) -> DriftReport:
        """The report of ``results`` (each column's fields, from :meth:`_result`), validated
        with its columns in one call (numpy scalars converted to the declared Python types)."""
        drifted = [c["drifted"] for c in results].count(True)
        share = drifted / len(results) if results else 0.0
        return DriftReport.model_validate(
            {
                "columns": results,
                "reference_rows": ref_rows,
                "current_rows": cur_rows,
                "drift_share": share,
                "share_threshold": self.drift_share,
                "dataset_drift": bool(results) and share >= self.drift_share,
                "skipped_columns": skipped,
                "detector": self.detector_id(),
            }
        )

    def plan_columns(
        self,
        reference: pl.DataFrame,
        current: pl.DataFrame,
        numeric: list[str] | None = None,
        categorical: list[str] | None = None,
    ) -> tuple[list[tuple[str, Kind]], list[str]]:
        """``([(column, kind), ...], skipped)``: what :meth:`compare` will compare.

        Raises ``ValueError`` for a named column missing from a frame or named twice, and
        ``TypeError`` (naming the column, both dtypes and the fix) for a named column whose
        sides cannot be compared on one scale: a numeric column must be a number, boolean or
        temporal type of the same family on both sides (units and time zones may differ, see
        :mod:`mlx_plugins.drift_detectors.dtypes`); a categorical column must render the same
        value as the same text on both sides. An inferred column whose sides disagree so is
        skipped instead."""
        _check_names(numeric, categorical, [("reference", reference), ("current", current)])
        plan: list[tuple[str, Kind]] = []
        if numeric is not None and categorical is not None:
            plan = [(c, "numeric") for c in numeric] + [(c, "categorical") for c in categorical]
        else:
            cur_schema = current.schema
            for name, dtype in reference.schema.items():
                if name in (numeric or ()):
                    plan.append((name, "numeric"))
                elif name in (categorical or ()):
                    plan.append((name, "categorical"))
                elif name in cur_schema:
                    kind = _common_kind(dtype, cur_schema[name])
                    if (kind == "numeric" and numeric is None) or (
                        kind == "categorical" and categorical is None
                    ):
                        plan.append((name, kind))
        _check_plan(plan, reference, current)
        compared = {name for name, _ in plan}
        everything = dict.fromkeys([*reference.columns, *current.columns])
        return plan, [c for c in everything if c not in compared]

    # -- per column ------------------------------------------------------------------------------
    def _decision(self, column: str, kind: str, reference_values: int) -> _Decision:
        """Which statistic decides ``column``'s drift, from ``column_tests`` or, failing that,
        the column's kind and size (``reference_values`` non-missing reference values).
        Raises ``ValueError`` for a ``column_tests`` entry that is not a test of ``kind``."""
        if column in self.column_tests:
            test = self.column_tests[column]
            allowed = get_args(NumericTest if kind == "numeric" else CategoricalTest)
            if test not in allowed:
                raise ValueError(
                    f"column_tests[{column!r}] = {test!r} is not a {kind} test; use one of "
                    f"{', '.join(allowed)}"
                )
        else:
            small = reference_values <= self.small_sample_max_rows
            if kind == "numeric":
                test = self.numeric_small_test if small else self.numeric_large_test
            else:
                test = self.categorical_small_test if small else self.categorical_large_test
        if test == "ks":
            return _Decision("ks", "ks_statistic", "ks_p_value", float(self.ks_p_value))
        if test == "chi2":
            if self.categorical_test == "evidently_chisquare_gof":
                return _Decision(
                    "chi2_gof", "chi2_gof", "chi2_gof_p_value", float(self.chi2_p_value)
                )
            return _Decision("chi2", "chi2", "chi2_p_value", float(self.chi2_p_value))
        if test == "wasserstein":
            return _Decision(
                "wasserstein", "wasserstein_norm", None, float(self.wasserstein_threshold)
            )
        if test == "psi":
            return _Decision("psi", "psi", None, float(self.psi_threshold))
        return _Decision(
            "jensenshannon", "jensenshannon", None, float(self.jensenshannon_threshold)
        )

    def _result(
        self,
        column: str,
        kind: str,
        decision: _Decision,
        values: Mapping[str, float | None],
        n_ref: int,
        n_cur: int,
        ref_total: int,
        cur_total: int,
        notes: list[str],
    ) -> _Fields:
        """One column's :class:`~mlx_plugins.drift_detectors.base.ColumnDrift` fields, for
        :meth:`_report` to validate (``values`` is copied by the validation, not kept)."""
        statistic = values[decision.statistic]
        if statistic is None:
            raise TypeError(f"column {column!r}: {decision.statistic} is None, not a number")
        p_value = None if decision.p_value is None else values[decision.p_value]
        threshold = decision.threshold
        if n_ref == 0 or n_cur == 0:
            empty = " and ".join(
                side for side, n in (("reference", n_ref), ("current", n_cur)) if n == 0
            )
            notes.insert(0, f"no values in {empty}: nothing to compare")
            drifted = self.empty_column_drifted
        elif decision.test in _P_VALUE_TESTS:
            drifted = p_value is not None and p_value < threshold
        else:
            drifted = statistic >= threshold
        return {
            "column": column,
            "kind": kind,
            "test": decision.test,
            "statistic": statistic,
            "p_value": p_value,
            "threshold": threshold,
            "drifted": bool(drifted),
            "stats": values,
            "note": "; ".join(notes),
            "reference_rows": n_ref,
            "current_rows": n_cur,
            "reference_null_share": (ref_total - n_ref) / ref_total if ref_total else 0.0,
            "current_null_share": (cur_total - n_cur) / cur_total if cur_total else 0.0,
        }

    def _numeric(
        self,
        column: str,
        ref: pl.Series,
        cur: pl.Series,
        workspace: st.Workspace | None = None,
        compiled: bool = False,
    ) -> _Fields:
        from mlx_plugins.drift_detectors import stats as st

        for side, s in (("reference", ref), ("current", cur)):
            _check_numeric_dtype(column, side, s)
        values, n_ref, n_cur = st.numeric_stats_of_series(
            ref,
            cur,
            bins=self.numeric_bins,
            binning=self.numeric_binning,
            psi_epsilon=self.psi_epsilon,
            wasserstein_min_std=self.wasserstein_min_std,
            ks_method=self.ks_method,
            workspace=workspace,
            compiled=compiled,
        )
        return self._numeric_result(column, values, n_ref, n_cur, len(ref), len(cur))

    def _numeric_result(
        self,
        column: str,
        values: dict[str, float],
        n_ref: int,
        n_cur: int,
        ref_total: int,
        cur_total: int,
    ) -> _Fields:
        return self._numeric_results(column, [(values, n_ref, n_cur)], ref_total, [cur_total])[0]

    def _numeric_results(
        self,
        column: str,
        stats_of: Sequence[tuple[dict[str, float], int, int]],
        ref_total: int,
        cur_totals: Sequence[int],
    ) -> list[_Fields]:
        """One numeric column's results against many currents: ``stats_of`` holds each
        current's ``(stats, n_ref, n_cur)``, ``cur_totals`` its row count."""
        constant = f"reference (nearly) constant: W normalised by {self.wasserstein_min_std:g}"
        decided: tuple[int, _Decision] | None = None
        out = []
        for (values, n_ref, n_cur), cur_total in zip(stats_of, cur_totals, strict=True):
            if decided is None or decided[0] != n_ref:  # one reference: the same every day
                decided = (n_ref, self._decision(column, "numeric", n_ref))
            notes = []
            if n_ref and values["reference_std"] < self.wasserstein_min_std:
                notes.append(constant)
            out.append(
                self._result(
                    column, "numeric", decided[1], values, n_ref, n_cur, ref_total, cur_total, notes
                )
            )
        return out

    def _categorical(self, column: str, ref: pl.Series, cur: pl.Series) -> _Fields:
        from mlx_plugins.drift_detectors import stats as st

        _, ref_counts, cur_counts = st.category_counts(ref, cur)
        return self._categorical_result(column, ref_counts, cur_counts, len(ref), len(cur))

    def _categorical_result(
        self,
        column: str,
        ref_counts: np.ndarray,
        cur_counts: np.ndarray,
        ref_total: int,
        cur_total: int,
    ) -> _Fields:
        from mlx_plugins.drift_detectors import stats as st

        values = st.categorical_stats(ref_counts, cur_counts, psi_epsilon=self.psi_epsilon)
        n_ref, n_cur = int(ref_counts.sum()), int(cur_counts.sum())
        (result,) = self._categorical_results(
            column, [values], n_ref, [n_cur], ref_total, [cur_total]
        )
        return result

    def _categorical_results(
        self,
        column: str,
        many: Sequence[dict[str, float]],
        n_ref: int,
        n_curs: Sequence[int],
        ref_total: int,
        cur_totals: Sequence[int],
    ) -> list[_Fields]:
        """One categorical column's results against many currents: ``many`` holds each
        current's stats, ``n_curs`` its non-missing values, ``cur_totals`` its row count;
        ``n_ref`` and ``ref_total`` are the reference's."""
        decision = self._decision(column, "categorical", n_ref)
        out = []
        for values, n_cur, cur_total in zip(many, n_curs, cur_totals, strict=True):
            notes = []
            if n_ref and n_cur and values["new_categories"]:
                share = values["new_category_share"]
                prefix = "all current values are" if share == 1.0 else f"{share:.1%} of current is"
                count = int(values["new_categories"])
                noun = "category" if count == 1 else "categories"
                notes.append(f"{prefix} in {count} {noun} unseen in the reference")
            out.append(
                self._result(
                    column,
                    "categorical",
                    decision,
                    values,
                    n_ref,
                    n_cur,
                    ref_total,
                    cur_total,
                    notes,
                )
            )
        return out


@dataclass(frozen=True, slots=True)
class _Decision:
    """Which statistic decides a column: the ``test`` reported, the keys of its statistic and
    p-value (``None``: a distance) in the column's stats, and the threshold."""

    test: str
    statistic: str
    p_value: str | None
    threshold: float


class _Pending:
    """A numeric column's results waiting for their KS p-values (``_numeric_results``' args:
    the column, each current's ``(stats, n_ref, n_cur)``, the reference's and each current's
    row counts)."""

    __slots__ = ("args",)

    def __init__(
        self,
        name: str,
        stats_of: list[tuple[dict[str, float], int, int]],
        ref_total: int,
        cur_totals: list[int],
    ) -> None:
        self.args = (name, stats_of, ref_total, cur_totals)


@dataclass(frozen=True, eq=False)
class PolarsPreparedReference(PreparedReference):
    """A reference prepared by :meth:`PolarsDriftDetector.prepare_reference`.

    ``numeric_columns`` / ``categorical_columns`` hold each column's reference side
    (:class:`~mlx_plugins.drift_detectors.stats.NumericReference`: sorted finite values, mean,
    std, bin edges and counts, row count; :class:`~mlx_plugins.drift_detectors.stats.
    CategoricalReference`: category counts, row counts). A reference column of dtype ``Null``
    can be in both, as its kind follows the current's. ``frame`` is the reference with no
    rows (its schema, to plan the columns of each current). Safe to share between threads.
    """

    frame: pl.DataFrame
    numeric_columns: dict[str, st.NumericReference]
    categorical_columns: dict[str, st.CategoricalReference]
    binning: tuple[int, Binning]
    """``(numeric_bins, numeric_binning)`` of the detector that prepared it."""
    _workspaces: queue.SimpleQueue[st.Workspace] = field(
        default_factory=queue.SimpleQueue, repr=False
    )

    @contextmanager
    def workspace(self) -> Iterator[st.Workspace]:
        """A scratch workspace for one column at a time, reused across calls (and threads, one
        at a time), so comparing many small currents does not fault in fresh buffers each time:
        about 17 bytes per reference value per busy thread, kept as long as this object."""
        from mlx_plugins.drift_detectors import stats as st

        try:
            workspace = self._workspaces.get_nowait()
        except queue.Empty:
            workspace = st.Workspace()
        try:
            yield workspace
        finally:
            self._workspaces.put(workspace)


def _check_names(
    numeric: Sequence[str] | None,
    categorical: Sequence[str] | None,
    frames: list[tuple[str, pl.DataFrame]],
) -> None:
    overlap = set(numeric or ()) & set(categorical or ())
    if overlap:
        raise ValueError(f"columns named both numeric and categorical: {sorted(overlap)}")
    for name in [*(numeric or ()), *(categorical or ())]:
        missing = [side for side, df in frames if name not in df.columns]
        if missing:
            raise ValueError(f"column {name!r} is not in the {' or '.join(missing)} frame")


def _check_numeric_dtype(column: str, side: str, series: pl.Series) -> None:
    check_numeric_dtype(column, side, series.dtype)


def _check_plan(
    plan: Sequence[tuple[str, Kind]], reference: pl.DataFrame, current: pl.DataFrame
) -> None:
    """Refuse, before anything is computed, every planned column whose two sides cannot be
    compared on one scale (see :mod:`mlx_plugins.drift_detectors.dtypes`)."""
    ref_schema, cur_schema = reference.schema, current.schema
    for name, kind in plan:
        check = check_numeric_pair if kind == "numeric" else check_categorical_pair
        check(name, ref_schema[name], cur_schema[name])


def _common_kind(a: pl.DataType, b: pl.DataType) -> Kind | None:
    """The kind both sides agree on; an all-null side (dtype ``Null``) agrees with anything."""
    import polars as pl

    if a == pl.Null:
        a, b = b, a
    kind = infer_column_kind(a)
    if b == pl.Null or infer_column_kind(b) == kind:
        check = check_numeric_pair if kind == "numeric" else check_categorical_pair
        try:
            check("", a, b)
        except TypeError:
            return None  # inferred, not named: left out (and listed as skipped)
        return kind
    return None


def _collect(frame: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    import polars as pl

    return frame.collect() if isinstance(frame, pl.LazyFrame) else frame

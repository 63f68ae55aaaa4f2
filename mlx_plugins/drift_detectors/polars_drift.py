"""The ``polars`` drift detector: per-column two-sample tests, vectorised with polars and numpy.

Per numeric column: Kolmogorov-Smirnov (statistic and p-value), Wasserstein distance
normalised by the reference's standard deviation, PSI and Jensen-Shannon distance over bins
fixed on the reference. Per categorical column: chi-square test of homogeneity (or, as a
compatibility option, Evidently's goodness-of-fit test), PSI and Jensen-Shannon distance over
category shares. Every statistic is computed and reported; one of them, picked per column by
type and size, decides whether the column drifted. The dataset drifted when the share of
drifted columns reaches ``drift_share``. See docs/drift.md for the defaults and how they
differ from Evidently's.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, get_args

import polars as pl
from pydantic import Field, field_validator

from mlx_plugins.drift_detectors import stats as st
from mlx_plugins.drift_detectors.base import ColumnDrift, DriftDetector, DriftReport
from mlx_plugins.kernel.metadata import PluginMetadata

NumericTest = Literal["ks", "wasserstein", "psi", "jensenshannon"]
CategoricalTest = Literal["chi2", "psi", "jensenshannon"]

_P_VALUE_TESTS = {"ks", "chi2", "chi2_gof"}


def infer_column_kind(dtype: pl.DataType) -> Literal["numeric", "categorical"] | None:
    """``"numeric"`` for integer, float and decimal dtypes; ``"categorical"`` for string,
    categorical, enum and boolean; ``None`` (not compared unless named) for anything else."""
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
    numeric_binning: st.Binning = "quantile"
    psi_epsilon: float = Field(
        default=1e-4, gt=0, lt=1, description="Floor of a bin's share in PSI (empty bins)."
    )
    wasserstein_min_std: float = Field(
        default=1e-3, gt=0, description="Floor of the reference std that normalises W."
    )
    ks_method: st.KSMethod = "auto"
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
        reference = _collect(reference)
        current = _collect(current)
        plan, skipped = self.plan_columns(reference, current, numeric, categorical)
        local = threading.local()

        workers = min(self.max_workers, len(plan))
        if max(reference.height, current.height) < 50_000:
            workers = 1

        def one(item: tuple[str, str]) -> ColumnDrift:
            name, kind = item
            ref, cur = reference.get_column(name), current.get_column(name)
            if kind == "categorical":
                return self._categorical(name, ref, cur)
            if not hasattr(local, "workspace"):
                local.workspace = st.Workspace()
            return self._numeric(name, ref, cur, local.workspace)

        if workers > 1:
            with ThreadPoolExecutor(workers, thread_name_prefix="mlx-drift") as pool:
                results = list(pool.map(one, plan))
        else:
            results = [one(item) for item in plan]
        drifted = sum(c.drifted for c in results)
        share = drifted / len(results) if results else 0.0
        meta = self.metadata
        return DriftReport(
            columns=tuple(results),
            reference_rows=reference.height,
            current_rows=current.height,
            drift_share=share,
            share_threshold=self.drift_share,
            dataset_drift=bool(results) and share >= self.drift_share,
            skipped_columns=tuple(skipped),
            detector=f"{meta.kind}.{meta.name}@{meta.version}",
        )

    def plan_columns(
        self,
        reference: pl.DataFrame,
        current: pl.DataFrame,
        numeric: list[str] | None = None,
        categorical: list[str] | None = None,
    ) -> tuple[list[tuple[str, Literal["numeric", "categorical"]]], list[str]]:
        """``([(column, kind), ...], skipped)``: what :meth:`compare` will compare."""
        overlap = set(numeric or ()) & set(categorical or ())
        if overlap:
            raise ValueError(f"columns named both numeric and categorical: {sorted(overlap)}")
        for name in [*(numeric or ()), *(categorical or ())]:
            missing = [
                side
                for side, df in (("reference", reference), ("current", current))
                if name not in df.columns
            ]
            if missing:
                raise ValueError(f"column {name!r} is not in the {' or '.join(missing)} frame")
        plan: list[tuple[str, Literal["numeric", "categorical"]]] = []
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
        compared = {name for name, _ in plan}
        everything = dict.fromkeys([*reference.columns, *current.columns])
        return plan, [c for c in everything if c not in compared]

    # -- per column ------------------------------------------------------------------------------
    def _test_for(self, column: str, kind: str, reference_values: int) -> str:
        if column in self.column_tests:
            test = self.column_tests[column]
            allowed = get_args(NumericTest if kind == "numeric" else CategoricalTest)
            if test not in allowed:
                raise ValueError(
                    f"column_tests[{column!r}] = {test!r} is not a {kind} test; use one of "
                    f"{', '.join(allowed)}"
                )
            return test
        small = reference_values <= self.small_sample_max_rows
        if kind == "numeric":
            return self.numeric_small_test if small else self.numeric_large_test
        return self.categorical_small_test if small else self.categorical_large_test

    def _decide(
        self, test: str, values: dict[str, float]
    ) -> tuple[str, float, float | None, float]:
        """``(test name, statistic, p-value or None, threshold)``."""
        if test == "ks":
            return "ks", values["ks_statistic"], values["ks_p_value"], self.ks_p_value
        if test == "chi2":
            if self.categorical_test == "evidently_chisquare_gof":
                return "chi2_gof", values["chi2_gof"], values["chi2_gof_p_value"], self.chi2_p_value
            return "chi2", values["chi2"], values["chi2_p_value"], self.chi2_p_value
        if test == "wasserstein":
            return "wasserstein", values["wasserstein_norm"], None, self.wasserstein_threshold
        if test == "psi":
            return "psi", values["psi"], None, self.psi_threshold
        return "jensenshannon", values["jensenshannon"], None, self.jensenshannon_threshold

    def _result(
        self,
        column: str,
        kind: str,
        values: dict[str, float],
        n_ref: int,
        n_cur: int,
        ref_total: int,
        cur_total: int,
        notes: list[str],
    ) -> ColumnDrift:
        test, statistic, p_value, threshold = self._decide(
            self._test_for(column, kind, n_ref), values
        )
        if n_ref == 0 or n_cur == 0:
            empty = " and ".join(
                side for side, n in (("reference", n_ref), ("current", n_cur)) if n == 0
            )
            notes.insert(0, f"no values in {empty}: nothing to compare")
            drifted = self.empty_column_drifted
        elif test in _P_VALUE_TESTS:
            drifted = p_value is not None and p_value < threshold
        else:
            drifted = statistic >= threshold
        return ColumnDrift(
            column=column,
            kind=kind,
            test=test,
            statistic=statistic,
            p_value=p_value,
            threshold=threshold,
            drifted=bool(drifted),
            stats=dict(values),
            note="; ".join(notes),
            reference_rows=n_ref,
            current_rows=n_cur,
            reference_null_share=(ref_total - n_ref) / ref_total if ref_total else 0.0,
            current_null_share=(cur_total - n_cur) / cur_total if cur_total else 0.0,
        )

    def _numeric(
        self,
        column: str,
        ref: pl.Series,
        cur: pl.Series,
        workspace: st.Workspace | None = None,
    ) -> ColumnDrift:
        for side, s in (("reference", ref), ("current", cur)):
            if s.dtype == pl.String or isinstance(s.dtype, pl.Categorical | pl.Enum):
                raise TypeError(f"numeric column {column!r} has dtype {s.dtype} in the {side}")
        values, n_ref, n_cur = st.numeric_stats_of_series(
            ref,
            cur,
            bins=self.numeric_bins,
            binning=self.numeric_binning,
            psi_epsilon=self.psi_epsilon,
            wasserstein_min_std=self.wasserstein_min_std,
            ks_method=self.ks_method,
            workspace=workspace,
        )
        notes = []
        if n_ref and values["reference_std"] < self.wasserstein_min_std:
            notes.append(
                f"reference (nearly) constant: W normalised by {self.wasserstein_min_std:g}"
            )
        return self._result(column, "numeric", values, n_ref, n_cur, len(ref), len(cur), notes)

    def _categorical(self, column: str, ref: pl.Series, cur: pl.Series) -> ColumnDrift:
        _, ref_counts, cur_counts = st.category_counts(ref, cur)
        values = st.categorical_stats(ref_counts, cur_counts, psi_epsilon=self.psi_epsilon)
        n_ref, n_cur = int(ref_counts.sum()), int(cur_counts.sum())
        notes = []
        if n_ref and n_cur and values["new_categories"]:
            share = values["new_category_share"]
            prefix = "all current values are" if share == 1.0 else f"{share:.1%} of current is"
            count = int(values["new_categories"])
            noun = "category" if count == 1 else "categories"
            notes.append(f"{prefix} in {count} {noun} unseen in the reference")
        return self._result(column, "categorical", values, n_ref, n_cur, len(ref), len(cur), notes)


def _common_kind(a: pl.DataType, b: pl.DataType) -> Literal["numeric", "categorical"] | None:
    """The kind both sides agree on; an all-null side (dtype ``Null``) agrees with anything."""
    if a == pl.Null:
        a, b = b, a
    kind = infer_column_kind(a)
    if b == pl.Null or infer_column_kind(b) == kind:
        return kind
    return None


def _collect(frame: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    return frame.collect() if isinstance(frame, pl.LazyFrame) else frame

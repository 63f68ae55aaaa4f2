"""The ``drift_detector`` kind."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from mlx_plugins.kernel.base import MLXPlugin

if TYPE_CHECKING:
    from collections.abc import Sequence

    import polars as pl


class ColumnDrift(BaseModel):
    model_config = ConfigDict(defer_build=True, frozen=True)

    column: str
    kind: str  # "numeric" | "categorical"
    test: str  # e.g. "ks", "chi2", "psi", "wasserstein", "jensenshannon"
    statistic: float
    p_value: float | None = None
    threshold: float
    drifted: bool
    stats: dict[str, float | None] = {}
    note: str = ""
    reference_rows: int = 0
    """Non-missing reference values the column was compared on."""
    current_rows: int = 0
    """Non-missing current values the column was compared on."""
    reference_null_share: float = 0.0
    """Share of reference rows that were missing (null, and for numbers also NaN/inf)."""
    current_null_share: float = 0.0
    """Share of current rows that were missing."""


class DriftReport(BaseModel):
    model_config = ConfigDict(defer_build=True, frozen=True)

    columns: tuple[ColumnDrift, ...]
    reference_rows: int
    current_rows: int
    drift_share: float
    share_threshold: float
    dataset_drift: bool
    skipped_columns: tuple[str, ...] = ()
    """Columns of either frame that were not compared (dtype neither numeric nor categorical,
    present on one side only, or not named when the columns were named)."""
    detector: str = ""
    """``kind.name@version`` of the plugin that produced the report."""

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def column(self, name: str) -> ColumnDrift:
        for c in self.columns:
            if c.column == name:
                return c
        raise KeyError(f"no column {name!r} in the drift report")

    def to_markdown(self) -> str:
        """A markdown table of the columns (for Dagster metadata)."""
        from mlx_plugins.drift_detectors.report import render_markdown

        return render_markdown(self)

    def to_html(self, title: str = "Data drift report") -> str:
        """A self-contained HTML page (no scripts, no network)."""
        from mlx_plugins.drift_detectors.report import render_html

        return render_html(self, title=title)


@dataclass(frozen=True, eq=False)
class PreparedReference:
    """A reference window made ready, once, to be compared with many current frames: what
    :meth:`DriftDetector.prepare_reference` returns and :meth:`DriftDetector.compare_prepared`
    takes. Detectors subclass it with what they cache; pass it back to a detector of the type
    (and, where it says so, the settings) that prepared it."""

    reference_rows: int
    numeric: tuple[str, ...] | None
    """The ``numeric`` list given to ``prepare_reference`` (``None``: inferred per current)."""
    categorical: tuple[str, ...] | None
    """The ``categorical`` list given to ``prepare_reference``."""
    detector: str
    """``kind.name@version`` of the plugin that prepared it."""


@dataclass(frozen=True, eq=False)
class ReferenceFrame(PreparedReference):
    """What the default :meth:`DriftDetector.prepare_reference` keeps: the frame itself."""

    frame: pl.DataFrame


class DriftDetector(MLXPlugin):
    """Compares the distribution of a current frame with a reference frame, column by column.

    Contract (``mlx_plugins.testing.DriftDetectorContract``): two samples of one distribution
    give no dataset drift; shifting two numeric columns gives dataset drift naming exactly
    those columns.
    """

    @abstractmethod
    def compare(
        self,
        reference: pl.DataFrame,
        current: pl.DataFrame,
        numeric: list[str] | None = None,
        categorical: list[str] | None = None,
    ) -> DriftReport:
        """Test each column of ``current`` against the same column of ``reference``.

        Parameters
        ----------
        reference, current
            Frames of any number of rows (nulls, NaN and inf count as missing). Numeric
            columns are integer, float, Decimal, Boolean, Date, Datetime or Duration
            (temporal values compared as instants / durations in ns); categorical columns are
            String, Categorical or Enum.
        numeric, categorical
            Columns to compare as such; None picks by dtype among the columns of both frames.

        Returns
        -------
        DriftReport
            One :class:`ColumnDrift` per compared column (statistic, p-value for tests that
            have one, threshold, drifted); ``drift_share`` is the share of drifted columns in
            ``[0, 1]`` and ``dataset_drift`` whether it reaches ``share_threshold``; columns
            not compared are in ``skipped_columns``.

        Raises
        ------
        ValueError
            A named column missing from a frame, or named both numeric and categorical.
        TypeError
            A column whose dtypes in the two frames share no scale (e.g. Date vs Duration);
            names the column, both dtypes and the fix.
        """

    def prepare_reference(
        self,
        reference: pl.DataFrame | pl.LazyFrame,
        numeric: list[str] | None = None,
        categorical: list[str] | None = None,
    ) -> PreparedReference:
        """Do the reference's share of :meth:`compare` once, for many
        :meth:`compare_prepared` calls that give the same reports as ``compare(reference,
        current, numeric, categorical)``. This default keeps the frame and compares it anew
        each time; detectors override both methods to cache per-column work."""
        import polars as pl

        if isinstance(reference, pl.LazyFrame):
            reference = reference.collect()
        return ReferenceFrame(
            reference_rows=reference.height,
            numeric=None if numeric is None else tuple(numeric),
            categorical=None if categorical is None else tuple(categorical),
            detector=self.detector_id(),
            frame=reference,
        )

    def compare_prepared(
        self, prepared: PreparedReference, current: pl.DataFrame | pl.LazyFrame
    ) -> DriftReport:
        """``compare(reference, current, numeric, categorical)`` for the reference and column
        lists given to :meth:`prepare_reference`."""
        import polars as pl

        if not isinstance(prepared, ReferenceFrame):
            raise TypeError(
                f"{type(self).__name__}.compare_prepared needs what its own prepare_reference "
                f"returned, not a {type(prepared).__name__} (from {prepared.detector})"
            )
        if isinstance(current, pl.LazyFrame):
            current = current.collect()
        return self.compare(
            prepared.frame,
            current,
            None if prepared.numeric is None else list(prepared.numeric),
            None if prepared.categorical is None else list(prepared.categorical),
        )

    def compare_prepared_many(
        self,
        prepared: PreparedReference,
        currents: Sequence[pl.DataFrame | pl.LazyFrame],
    ) -> list[DriftReport]:
        """``[compare_prepared(prepared, c) for c in currents]``: one report per current, in
        order (e.g. one per day of a backfill). Detectors override it to compare all the
        currents of a column at once; the reports are those of :meth:`compare_prepared`."""
        return [self.compare_prepared(prepared, current) for current in currents]

    @classmethod
    def detector_id(cls) -> str:
        """``kind.name@version``, as :attr:`DriftReport.detector`."""
        meta = cls.metadata
        return f"{meta.kind}.{meta.name}@{meta.version}"

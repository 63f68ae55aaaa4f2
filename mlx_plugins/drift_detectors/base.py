"""The ``drift_detector`` kind."""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from mlx_plugins.kernel.base import MLXPlugin

if TYPE_CHECKING:
    import polars as pl


class ColumnDrift(BaseModel):
    model_config = ConfigDict(frozen=True)

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
    model_config = ConfigDict(frozen=True)

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


class DriftDetector(MLXPlugin):
    @abstractmethod
    def compare(
        self,
        reference: pl.DataFrame,
        current: pl.DataFrame,
        numeric: list[str] | None = None,
        categorical: list[str] | None = None,
    ) -> DriftReport: ...

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


class DriftReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    columns: tuple[ColumnDrift, ...]
    reference_rows: int
    current_rows: int
    drift_share: float
    share_threshold: float
    dataset_drift: bool

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]


class DriftDetector(MLXPlugin):
    @abstractmethod
    def compare(
        self,
        reference: pl.DataFrame,
        current: pl.DataFrame,
        numeric: list[str] | None = None,
        categorical: list[str] | None = None,
    ) -> DriftReport: ...

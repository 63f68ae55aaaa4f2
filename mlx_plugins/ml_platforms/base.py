"""The ``ml_platform`` kind."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from mlx_plugins.kernel.base import MLXPlugin

if TYPE_CHECKING:
    import numpy as np
    import polars as pl


class TrainingDataError(ValueError):
    """Training input that cannot be trained on (a bad label, a feature that cannot be
    standardised, a column of the wrong type); the message names the frame, the column, the
    count of bad values and the fix. Raised before anything is trained or saved."""


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite during training; the message names the epoch and the loss
    (training or validation). Training stops there and no model is saved."""


class TrainingSpec(BaseModel):
    """What to learn: the columns. How to learn it is the plugin's config."""

    model_config = ConfigDict(frozen=True)

    numeric_features: tuple[str, ...]
    categorical_features: tuple[str, ...] = ()
    target: str
    artifact_dir: str
    """Where the plugin writes the model artifact (a fresh folder per training)."""


class EpochStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    epoch: int
    train_loss: float
    valid_loss: float
    seconds: float
    samples_per_second: float


class TrainedModel(BaseModel):
    """A trained model: where its artifact is and how to feed it."""

    model_config = ConfigDict(frozen=True)

    platform: str
    artifact_path: str
    artifact_sha256: str
    spec: TrainingSpec
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    history: tuple[EpochStats, ...] = ()
    device: str = "cpu"


EpochCallback = Callable[[EpochStats], None]


class MLPlatform(MLXPlugin):
    @abstractmethod
    def train(
        self,
        train: pl.DataFrame,
        valid: pl.DataFrame,
        spec: TrainingSpec,
        on_epoch: EpochCallback | None = None,
        *,
        context: Any = None,
    ) -> TrainedModel:
        """Train on ``train``, validate on ``valid``. ``context`` is the Dagster asset context,
        for plugins that launch work out of process (Pipes) and stream its logs back."""

    @abstractmethod
    def predict_proba(self, model: TrainedModel, frame: pl.DataFrame) -> np.ndarray:
        """Probability of the positive class for each row of ``frame``."""

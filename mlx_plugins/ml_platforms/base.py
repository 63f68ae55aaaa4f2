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
    """Trains binary classifiers on tabular frames and scores them.

    Contract (``mlx_plugins.testing.MLPlatformContract``): trained on a learnable problem the
    model beats chance (ROC AUC > 0.75), reports one :class:`EpochStats` per epoch, and
    predicts probabilities in ``[0, 1]``, one per row.
    """

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
        """Train on ``train``, validate on ``valid``.

        Parameters
        ----------
        train, valid
            Frames with at least ``spec.numeric_features`` (numeric dtypes; nulls allowed and
            imputed), ``spec.categorical_features`` (String or Categorical) and ``spec.target``
            (0/1 or bool; no nulls). Shape ``(rows, columns)``; ``valid`` may be smaller.
        spec
            The columns, and ``artifact_dir``: a fresh folder the model artifact is written to.
        on_epoch
            Called after each epoch with its :class:`EpochStats` (losses in nats per row,
            ``seconds`` wall time, ``samples_per_second``).
        context
            The Dagster asset context, for plugins that launch work out of process (Pipes)
            and stream its logs back; None outside Dagster.

        Returns
        -------
        TrainedModel
            The artifact's path and sha256, the preprocessing (standardisation, category
            vocabularies), ``history`` with one entry per epoch, and the device used.

        Raises
        ------
        TrainingDataError
            Input that can't be trained on (bad label, missing or wrong-typed column); raised
            before anything is trained or written; the message names frame, column and fix.
        TrainingDivergedError
            The loss became NaN or infinite; names the epoch. No model is saved.
        ValueError
            Config that can't run here (e.g. an empty training frame, DDP without devices).
        """

    @abstractmethod
    def predict_proba(self, model: TrainedModel, frame: pl.DataFrame) -> np.ndarray:
        """Probability of the positive class for each row of ``frame``.

        Parameters
        ----------
        model
            What :meth:`train` returned (of this platform).
        frame
            Shape ``(n, columns)`` with the model's feature columns (``model.spec``); other
            columns are ignored.

        Returns
        -------
        numpy.ndarray
            Shape ``(n,)``, dtype float32 or float64, values in ``[0, 1]``, in row order.

        Raises
        ------
        FileNotFoundError
            The model artifact is gone.
        ValueError
            The artifact does not match its recorded sha256, or a feature column is missing.
        """

"""The ``ml_platform`` kind: train a model on tabular frames and predict with it.

Three target kinds (``TrainingSpec.task``):

============  ==========================================  ==========================================
task          ``spec.target`` column                      :meth:`MLPlatform.predict` returns
============  ==========================================  ==========================================
binary        0/1 (any numeric dtype) or bool, no nulls   ``(n,)`` float64, P(class 1) in [0, 1]
multiclass    class index ``0..k-1``, an integer dtype    ``(n, k)`` float64, rows sum to 1
regression    numbers (float or integer), no nulls/NaN    ``(n,)`` float64, in the target's units
============  ==========================================  ==========================================

``k = len(spec.classes)``; ``spec.classes[i]`` names class index ``i``.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from mlx_plugins.kernel.base import MLXPlugin

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

Task = Literal["binary", "multiclass", "regression"]
TASKS: tuple[Task, ...] = ("binary", "multiclass", "regression")


class TrainingDataError(ValueError):
    """Training input that cannot be trained on (a bad label, a feature that cannot be
    standardised, a column of the wrong type, a task's classes that don't fit); the message
    names the frame, the column, the count of bad values, examples and the fix. Raised before
    anything is trained or saved."""


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite during training; the message names the epoch and the loss
    (training or validation). Training stops there and no model is saved."""


class UnsupportedTaskError(ValueError):
    """A method or platform asked for a task it does not serve: :meth:`MLPlatform.predict_proba`
    on a multiclass or regression model (use :meth:`MLPlatform.predict`), or a platform that
    does not train or predict that task (see ``MLPlatform.supported_tasks``)."""


class TrainingSpec(BaseModel):
    """What to learn: the columns and the target kind. How to learn it is the plugin's config.

    Attributes
    ----------
    numeric_features
        Numeric (or boolean) feature columns; nulls, NaN and +/-inf are missing values.
    categorical_features
        String or Categorical feature columns; unseen values and nulls share one category.
    target
        The label column (see ``task`` for what it must hold).
    artifact_dir
        Where the plugin writes the model artifact (a fresh folder per training).
    task
        ``"binary"`` (default): the target is 0/1 (any numeric dtype) or bool.
        ``"multiclass"``: the target is the class index ``0..k-1`` in an integer dtype,
        ``k = len(classes) >= 2``.
        ``"regression"``: the target is a number (float, or integer cast to float64); the
        predictions are in the target's units.
    classes
        Class labels in index order: required for multiclass (``k >= 2`` distinct names,
        ``classes[i]`` is index ``i``); optional for binary (``()`` or two names, index 0
        then 1); empty for regression. Checked when training starts
        (:func:`check_spec`, raising :class:`TrainingDataError`).
    """

    model_config = ConfigDict(defer_build=True, frozen=True)

    numeric_features: tuple[str, ...]
    categorical_features: tuple[str, ...] = ()
    target: str
    artifact_dir: str
    """Where the plugin writes the model artifact (a fresh folder per training)."""
    task: Task = "binary"
    classes: tuple[str, ...] = ()

    @property
    def n_classes(self) -> int:
        """``k`` for multiclass, 2 for binary, 0 for regression."""
        if self.task == "multiclass":
            return len(self.classes)
        return 2 if self.task == "binary" else 0


class EpochStats(BaseModel):
    """One epoch of training.

    ``train_loss`` and ``valid_loss`` are means per row: nats (binary cross-entropy, or
    cross-entropy over the ``k`` classes) for classification; for regression, the mean squared
    error of the standardised target (the MSE in target units divided by the training
    target's variance: 1.0 is as good as predicting the mean).
    """

    model_config = ConfigDict(defer_build=True, frozen=True)

    epoch: int
    train_loss: float
    valid_loss: float
    seconds: float
    samples_per_second: float


class TrainedModel(BaseModel):
    """A trained model: where its artifact is and how to feed it.

    ``spec`` records the task and the classes (``task`` and ``classes`` read them); a record
    written before tasks existed validates as a binary model.
    """

    model_config = ConfigDict(defer_build=True, frozen=True)

    platform: str
    artifact_path: str
    artifact_sha256: str
    spec: TrainingSpec
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    history: tuple[EpochStats, ...] = ()
    device: str = "cpu"

    @property
    def task(self) -> Task:
        return self.spec.task

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes


EpochCallback = Callable[[EpochStats], None]


class MLPlatform(MLXPlugin):
    """Trains binary classifiers, multiclass classifiers or regressors on tabular frames, and
    predicts with them.

    ``supported_tasks`` lists the tasks a platform trains and predicts (binary only unless a
    platform says more). Contract (``mlx_plugins.testing.MLPlatformContract``): trained on a
    learnable problem the model beats chance (binary ROC AUC > 0.75, multiclass accuracy well
    above ``1/k``, regression R^2 well above 0), reports one :class:`EpochStats` per epoch, and
    predicts one row of output per input row in the shapes of :meth:`predict`.
    """

    supported_tasks: ClassVar[tuple[Task, ...]] = ("binary",)

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
            (binary: 0/1 or bool; multiclass: the class index ``0..k-1``, an integer dtype;
            regression: numbers; never null). Shape ``(rows, columns)``; ``valid`` may be
            smaller.
        spec
            The columns, the task and its classes, and ``artifact_dir``: a fresh folder the
            model artifact is written to.
        on_epoch
            Called after each epoch with its :class:`EpochStats` (losses per row: nats for
            classification, standardised squared error for regression; ``seconds`` wall time,
            ``samples_per_second``).
        context
            The Dagster asset context, for plugins that launch work out of process (Pipes)
            and stream its logs back; None outside Dagster.

        Returns
        -------
        TrainedModel
            The artifact's path and sha256, the preprocessing (standardisation, category
            vocabularies; for regression also ``target_mean`` and ``target_std`` in target
            units), ``history`` with one entry per epoch, and the device used.

        Raises
        ------
        TrainingDataError
            Input that can't be trained on (bad label, missing or wrong-typed column, classes
            that don't fit the task); raised before anything is trained or written; the
            message names frame, column, value and fix.
        UnsupportedTaskError
            ``spec.task`` is not in ``supported_tasks``.
        TrainingDivergedError
            The loss became NaN or infinite; names the epoch. No model is saved.
        ValueError
            Config that can't run here (e.g. an empty training frame, DDP without devices).
        """

    @abstractmethod
    def predict_proba(self, model: TrainedModel, frame: pl.DataFrame) -> np.ndarray:
        """Probability of the positive class for each row of ``frame`` (binary models only).

        Parameters
        ----------
        model
            What :meth:`train` returned (of this platform), with ``task == "binary"``.
        frame
            Shape ``(n, columns)`` with the model's feature columns (``model.spec``); other
            columns are ignored.

        Returns
        -------
        numpy.ndarray
            Shape ``(n,)``, dtype float32 or float64, values in ``[0, 1]``, in row order.

        Raises
        ------
        UnsupportedTaskError
            The model is multiclass or regression: call :meth:`predict`.
        FileNotFoundError
            The model artifact is gone.
        ValueError
            The artifact does not match its recorded sha256, or a feature column is missing.
        """

    def predict(self, model: TrainedModel, frame: pl.DataFrame) -> np.ndarray:
        """Predictions of ``model`` for each row of ``frame``, by the model's task.

        The default serves binary models through :meth:`predict_proba`; a platform with more
        ``supported_tasks`` overrides it.

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
            dtype float64, in row order:

            - binary: shape ``(n,)``, P(class 1) in ``[0, 1]``;
            - multiclass: shape ``(n, k)``, ``k = len(model.spec.classes)``, column ``i`` is
              P(``classes[i]``), each row in ``[0, 1]`` and summing to 1;
            - regression: shape ``(n,)``, predicted values in the target's units.

        Raises
        ------
        UnsupportedTaskError
            This platform does not predict the model's task.
        FileNotFoundError
            The model artifact is gone.
        ValueError
            The artifact does not match its recorded sha256 or the model's task, or a feature
            column is missing.
        """
        import numpy as np

        if model.spec.task != "binary":
            raise UnsupportedTaskError(
                f"ml_platform {type(self).metadata.name!r} predicts binary models only; this "
                f"model's task is {model.spec.task!r}. fix: use a platform whose "
                "supported_tasks include it (local_torch serves all three)"
            )
        return np.asarray(self.predict_proba(model, frame), dtype=np.float64)


# -- checks every platform can use before it trains ------------------------------------------
def require_binary(model: TrainedModel, method: str = "predict_proba") -> None:
    """Raise :class:`UnsupportedTaskError` unless ``model`` is a binary model; the message
    names ``method`` and points to ``predict``."""
    if model.spec.task != "binary":
        shape = "(n, k) class probabilities" if model.spec.task == "multiclass" else "(n,) values"
        raise UnsupportedTaskError(
            f"{method} is for binary models; this model's task is {model.spec.task!r} "
            f"(target {model.spec.target!r}). fix: call predict(model, frame), which returns "
            f"{shape}"
        )


def check_spec(spec: TrainingSpec, supported: Sequence[str] = TASKS) -> None:
    """Raise unless ``spec.task`` and ``spec.classes`` fit together and the platform serves
    the task.

    Raises
    ------
    UnsupportedTaskError
        ``spec.task`` is not in ``supported``.
    TrainingDataError
        Multiclass with fewer than two classes, a binary spec with classes that are not two,
        a regression spec with classes, or duplicate or empty class names. The message names
        the target column, the classes and the fix.
    """
    if spec.task not in supported:
        raise UnsupportedTaskError(
            f"this ml_platform does not train task {spec.task!r} (target {spec.target!r}); it "
            f"trains {list(supported)}. fix: pick one of those, or a platform that trains it"
        )
    k, classes = len(spec.classes), list(spec.classes)
    where = f"the training spec of target column {spec.target!r}"
    if spec.task == "multiclass" and k < 2:
        raise TrainingDataError(
            f"{where} has task='multiclass' with classes={classes} ({k} class(es)); a "
            "multiclass target needs k >= 2 class labels, in index order. fix: list every "
            "class label in classes (index i is classes[i]), or use task='binary' for two"
        )
    if spec.task == "binary" and k not in (0, 2):
        raise TrainingDataError(
            f"{where} has task='binary' with classes={classes} ({k} label(s)); a binary "
            "target names no classes or exactly two (index 0, then 1). fix: give two labels, "
            "none, or use task='multiclass'"
        )
    if spec.task == "regression" and k:
        raise TrainingDataError(
            f"{where} has task='regression' with classes={classes}; a regression target has "
            "no classes. fix: drop classes, or use task='multiclass' for class indices"
        )
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates or any(not c for c in classes):
        raise TrainingDataError(
            f"{where} has classes={classes} with duplicate or empty names "
            f"({duplicates or ['']}). fix: give each class one distinct, non-empty label"
        )


def check_labels(
    df: pl.DataFrame,
    target: str,
    frame: str = "training",
    *,
    task: Task = "binary",
    classes: Sequence[str] = (),
) -> None:
    """Raise :class:`TrainingDataError` unless every row of ``target`` in ``df`` is a label of
    ``task``.

    binary: 0 or 1, numbers or booleans. multiclass: an integer dtype, values in
    ``0..len(classes)-1``. regression: a number (any integer or float dtype, not boolean),
    finite. Never null. The message names the frame, the column, the dtype or the count of
    nulls, NaN, +/-inf or out-of-range labels with examples, and the fix.
    """
    import polars as pl

    if target not in df.columns:
        raise TrainingDataError(
            f"the {frame} frame has no target column {target!r} (columns: {df.columns})"
        )
    col = df.get_column(target)
    if task == "binary":
        _check_binary(col, target, frame)
        return
    dtype = col.dtype
    if dtype == pl.Null:  # no value at all: say so, not "wrong dtype"
        raise TrainingDataError(
            f"target column {target!r} has {col.len()} null(s) (every row) in the {frame} "
            "frame; every row needs a label. fix: fill the target in the feature asset"
        )
    if task == "multiclass":
        k = len(classes)
        if not dtype.is_integer():
            mapping = ", ".join(f"{c!r}: {i}" for i, c in enumerate(classes[:3]))
            fix = (
                f"cast it to an integer dtype: pl.col({target!r}).cast(pl.Int32)"
                if dtype.is_numeric()
                else f"map the labels to indices: pl.col({target!r}).replace_strict("
                f"{{{mapping}{', ...' if k > 3 else ''}}}, return_dtype=pl.Int32)"
            )
            raise TrainingDataError(
                f"target column {target!r} has dtype {dtype} in the {frame} frame; a "
                f"multiclass target holds the class index 0..{k - 1} in an integer dtype "
                f"(classes {list(classes)}). fix: {fix} in the feature asset"
            )
        problems = []
        if col.null_count():
            problems.append(f"{col.null_count()} null(s)")
        values = col.drop_nulls()
        outside = values.filter((values < 0) | (values >= k))
        if outside.len():
            examples = sorted(set(outside.head(1000).to_list()))[:5]
            problems.append(f"{outside.len()} outside 0..{k - 1} (e.g. {examples})")
        if problems:
            raise TrainingDataError(
                f"target column {target!r} has {', '.join(problems)} in the {frame} frame "
                f"({col.len()} rows); every row needs a class index in 0..{k - 1} "
                f"(classes {list(classes)}). fix: drop or repair those rows in the feature "
                "asset, or add the missing classes to classes"
            )
        return
    # regression
    if not (dtype.is_integer() or dtype.is_float()):
        raise TrainingDataError(
            f"target column {target!r} has dtype {dtype} in the {frame} frame; a regression "
            f"target is a number. fix: cast it with pl.col({target!r}).cast(pl.Float64) in the "
            "feature asset (a boolean target is task='binary')"
        )
    problems, values = _not_finite(col)
    if problems:
        raise TrainingDataError(
            f"target column {target!r} has {', '.join(problems)} in the {frame} frame "
            f"({col.len()} rows); every row needs a finite target value. fix: drop or repair "
            "those rows in the feature asset before training"
        )
    finite = values.filter(values.is_finite())
    if finite.len():
        mean, std = finite.mean(), finite.std()
        for name, value in (("mean", mean), ("std", std)):
            if isinstance(value, float) and not math.isfinite(value):
                raise TrainingDataError(
                    f"target column {target!r} in the {frame} frame cannot be standardised: "
                    f"its {name} is {value} (values too large for float64). fix: rescale it "
                    "(e.g. a log or a unit change) in the feature asset"
                )


def _not_finite(col: pl.Series) -> tuple[list[str], pl.Series]:
    """``(["3 null(s)", "1 NaN", ...], the non-null values as Float64)`` of a target column."""
    import polars as pl

    problems = []
    if col.null_count():
        problems.append(f"{col.null_count()} null(s)")
    values = col.drop_nulls().cast(pl.Float64)
    nan = int(values.is_nan().sum())
    if nan:
        problems.append(f"{nan} NaN")
    inf = int(values.is_infinite().sum())
    if inf:
        problems.append(f"{inf} infinite")
    return problems, values


def _check_binary(col: pl.Series, target: str, frame: str) -> None:
    import polars as pl

    if not (col.dtype.is_numeric() or col.dtype in (pl.Boolean, pl.Null)):
        raise TrainingDataError(
            f"target column {target!r} has dtype {col.dtype} in the {frame} frame; a binary "
            "target must be 0/1 or boolean. fix: map it to 0/1 in the feature asset"
        )
    problems, values = _not_finite(col)
    finite = values.filter(values.is_finite())
    outside = finite.filter(~finite.is_in([0.0, 1.0]))
    if outside.len():
        examples = sorted(set(outside.head(1000).to_list()))[:5]
        problems.append(f"{outside.len()} outside {{0, 1}} (e.g. {examples})")
    if problems:
        raise TrainingDataError(
            f"target column {target!r} has {', '.join(problems)} in the {frame} frame "
            f"({col.len()} rows); every row needs a binary label, 0 or 1. fix: drop or repair "
            "those rows in the feature asset before training"
        )

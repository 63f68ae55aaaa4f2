"""Model metrics from scikit-learn: binary (ROC AUC, log loss, Brier, accuracy), multiclass
(accuracy, macro F1, log loss, support per class) and regression (RMSE, MAE, R^2), one call for
each task (:func:`task_metrics`), which way each is better (:data:`METRIC_DIRECTIONS`), and
calibration bins.

scikit-learn and numpy are imported per call so that loading the code location does not pay
for them. The scikit-learn values agree with the former numpy implementations to 1e-12
(``tests/test_layering.py::test_metrics_agree_with_the_former_numpy_code``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np
from pydantic import BaseModel, ConfigDict

MetricTask = Literal["binary", "multiclass", "regression"]

METRIC_DIRECTIONS: dict[str, Literal["max", "min"]] = {
    "roc_auc": "max",
    "accuracy": "max",
    "macro_f1": "max",
    "r2": "max",
    "log_loss": "min",
    "brier": "min",
    "rmse": "min",
    "mae": "min",
    "ece": "min",
    "log_loss_ratio": "min",
    "rmse_ratio": "min",
}
"""Which way each metric is better: ``"max"`` (higher is better) or ``"min"`` (lower is).
Covers every metric :func:`task_metrics` returns except the ``support_<class>`` row counts
(no direction), plus ``ece`` (expected calibration error) and the ``*_ratio`` of a metric to
its baseline's."""

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("roc_auc", "log_loss", "brier", "accuracy"),
    "multiclass": ("accuracy", "macro_f1", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
}
"""The metrics :func:`task_metrics` returns per task, in order (multiclass adds
``support_<class>`` for every class)."""

EPS = 1e-7
"""Probabilities are clipped to ``[EPS, 1 - EPS]`` for the log loss (a single confident miss
costs at most ``-ln(1e-7)`` = 16.1 nats instead of infinity)."""


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (:func:`sklearn.metrics.roc_auc_score`; ties count one half).

    Args:
        y: labels, shape ``(n,)``, bool or 0/1 of any numeric dtype.
        p: scores (probabilities of the positive class), shape ``(n,)``, float.

    Returns:
        A float in ``[0, 1]``; 0.5 when only one class is present (nothing to rank).

    Raises:
        ValueError: ``y`` and ``p`` have different lengths.
    """
    import numpy as np
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, bool)
    if y.all() or not y.any():
        if len(y) != len(p):
            raise ValueError(f"y has {len(y)} labels but p has {len(p)} scores")
        return 0.5
    return float(roc_auc_score(y, np.asarray(p, np.float64)))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy in nats (:func:`sklearn.metrics.log_loss`), ``p`` clipped to
    ``[EPS, 1 - EPS]``.

    Args:
        y: labels, shape ``(n,)``, 0/1.
        p: probabilities of the positive class, shape ``(n,)``, float.

    Returns:
        A float >= 0; NaN when ``y`` is empty.

    Raises:
        ValueError: ``y`` and ``p`` have different lengths.
    """
    import numpy as np
    from sklearn.metrics import log_loss as sk_log_loss

    y = np.asarray(y, np.float64)
    if not len(y):
        return float("nan")
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return float(sk_log_loss(y, p, labels=[0.0, 1.0]))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Brier score: mean squared gap between ``p`` and ``y``
    (:func:`sklearn.metrics.brier_score_loss`).

    Args:
        y: labels, shape ``(n,)``, 0/1.
        p: probabilities of the positive class, shape ``(n,)``, float in ``[0, 1]``.

    Returns:
        A float in ``[0, 1]``; NaN when ``y`` is empty.

    Raises:
        ValueError: different lengths, or ``p`` outside ``[0, 1]``.
    """
    import numpy as np
    from sklearn.metrics import brier_score_loss

    y = np.asarray(y, np.float64)
    if not len(y):
        return float("nan")
    return float(brier_score_loss(y, np.asarray(p, np.float64), pos_label=1.0))


class CalibrationBin(BaseModel):
    model_config = ConfigDict(defer_build=True, frozen=True)

    lower: float
    upper: float
    count: int
    mean_predicted: float
    observed_rate: float


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> tuple[list[CalibrationBin], float]:
    """Equal-width reliability bins and the expected calibration error (count-weighted gap)."""
    import numpy as np

    y = np.asarray(y, np.float64)
    p = np.asarray(p, np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    out, ece = [], 0.0
    for b in range(bins):
        if count[b] == 0:
            continue
        mp, obs = sum_p[b] / count[b], sum_y[b] / count[b]
        ece += count[b] / max(len(y), 1) * abs(mp - obs)
        out.append(
            CalibrationBin(
                lower=b / bins,
                upper=(b + 1) / bins,
                count=int(count[b]),
                mean_predicted=float(mp),
                observed_rate=float(obs),
            )
        )
    return out, float(ece)


def task_metrics(
    task: MetricTask, y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str] = ()
) -> dict[str, float]:
    """The metrics of ``task`` for predictions ``y_pred`` of the labels ``y_true``
    (scikit-learn).

    Parameters
    ----------
    task
        ``"binary"``, ``"multiclass"`` or ``"regression"``.
    y_true
        Shape ``(n,)``. binary: 0/1 or bool; multiclass: class indices ``0..k-1`` (any
        integer dtype, or floats holding integers); regression: numbers in the target's units.
    y_pred
        What ``MLPlatform.predict`` returns. binary: shape ``(n,)``, P(class 1) in ``[0, 1]``;
        multiclass: shape ``(n, k)``, class probabilities, rows summing to 1; regression:
        shape ``(n,)``, predicted values in the target's units.
    classes
        multiclass: the class labels in index order (``k`` names); they name the
        ``support_<class>`` keys. Empty: ``k`` is ``y_pred.shape[1]`` and the keys are
        ``support_0`` .. ``support_<k-1>``. Ignored for other tasks.

    Returns
    -------
    dict[str, float]
        binary: ``roc_auc`` in ``[0, 1]`` (0.5 with one class present), ``log_loss`` in nats
        per row (``p`` clipped to ``[EPS, 1 - EPS]``), ``brier`` in ``[0, 1]``,
        ``accuracy`` in ``[0, 1]`` (``p >= 0.5`` predicts class 1).
        multiclass: ``accuracy`` (argmax of each row), ``macro_f1`` (unweighted mean F1 over
        the classes present in ``y_true`` or predicted; 0 for a class never predicted
        correctly), ``log_loss`` in nats per row over ``labels=range(k)`` (a class absent
        from ``y_true`` is allowed), and ``support_<class>``: rows of each class in
        ``y_true`` (a count, as float; no direction in :data:`METRIC_DIRECTIONS`).
        regression: ``rmse`` and ``mae`` in the target's units, ``r2`` unitless (1 is
        perfect, 0 is as good as predicting the mean of ``y_true``, below 0 is worse; 0.0
        when ``y_true`` is constant and the prediction is not exact).
        With ``n == 0`` every value is NaN (supports are 0). Each key's better direction is
        in :data:`METRIC_DIRECTIONS`.

    Raises
    ------
    ValueError
        An unknown task; ``y_true`` and ``y_pred`` of different lengths; ``y_pred`` of the
        wrong shape for the task (naming the shape found and the one expected); multiclass
        labels outside ``0..k-1`` or not integers; non-finite regression values.
    """
    import numpy as np

    if task not in TASK_METRICS:
        raise ValueError(f"unknown task {task!r}; task_metrics takes one of {sorted(TASK_METRICS)}")
    y = np.asarray(y_true)
    pred = np.asarray(y_pred, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"y_true must have shape (n,), not {y.shape}")
    if len(pred) != len(y):
        raise ValueError(f"y_true has {len(y)} rows but y_pred has {len(pred)}")
    if task == "binary":
        return _binary_metrics(y, pred)
    if task == "multiclass":
        return _multiclass_metrics(y, pred, tuple(classes))
    return _regression_metrics(y, pred)


def _binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    import numpy as np
    from sklearn.metrics import accuracy_score

    if p.ndim != 1:
        raise ValueError(
            f"binary y_pred must have shape (n,) with P(class 1) per row, not {p.shape}"
        )
    if not len(y):
        return dict.fromkeys(TASK_METRICS["binary"], float("nan"))
    y01 = np.asarray(y, np.float64)
    if not np.isin(y01, (0.0, 1.0)).all():
        bad = sorted({float(v) for v in y01[~np.isin(y01, (0.0, 1.0))]})[:5]
        raise ValueError(f"binary y_true must be 0/1 or bool; found {bad}")
    return {
        "roc_auc": roc_auc(y01, p),
        "log_loss": log_loss(y01, p),
        "brier": brier(y01, p),
        "accuracy": float(accuracy_score(y01.astype(np.int64), (p >= 0.5).astype(np.int64))),
    }


def _multiclass_metrics(y: np.ndarray, p: np.ndarray, classes: tuple[str, ...]) -> dict[str, float]:
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.metrics import log_loss as sk_log_loss

    if p.ndim != 2:
        raise ValueError(
            f"multiclass y_pred must have shape (n, k) with one probability per class, "
            f"not {p.shape}"
        )
    k = p.shape[1]
    if classes and len(classes) != k:
        raise ValueError(
            f"multiclass y_pred has {k} columns but classes names {len(classes)}: {list(classes)}"
        )
    names = classes or tuple(str(i) for i in range(k))
    if len(y) and not np.all(np.mod(np.asarray(y, np.float64), 1) == 0):
        raise ValueError("multiclass y_true must hold integer class indices 0..k-1")
    labels = np.asarray(y, np.float64).astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        bad = sorted({int(v) for v in labels[(labels < 0) | (labels >= k)]})[:5]
        raise ValueError(f"multiclass y_true holds class indices outside 0..{k - 1}: {bad}")
    support = np.bincount(labels, minlength=k) if len(labels) else np.zeros(k, np.int64)
    counts = {f"support_{name}": float(n) for name, n in zip(names, support, strict=True)}
    if not len(labels):
        return {**dict.fromkeys(TASK_METRICS["multiclass"], float("nan")), **counts}
    guess = p.argmax(axis=1)
    return {
        "accuracy": float(accuracy_score(labels, guess)),
        "macro_f1": float(f1_score(labels, guess, average="macro", zero_division=0)),
        "log_loss": float(sk_log_loss(labels, p, labels=list(range(k)))),
        **counts,
    }


def _regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    import numpy as np
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    if pred.ndim != 1:
        raise ValueError(f"regression y_pred must have shape (n,), not {pred.shape}")
    if not len(y):
        return dict.fromkeys(TASK_METRICS["regression"], float("nan"))
    yf = np.asarray(y, np.float64)
    if not (np.isfinite(yf).all() and np.isfinite(pred).all()):
        raise ValueError(
            f"regression metrics need finite values: y_true has {int((~np.isfinite(yf)).sum())}"
            f" and y_pred {int((~np.isfinite(pred)).sum())} NaN or infinite"
        )
    return {
        "rmse": float(np.sqrt(mean_squared_error(yf, pred))),
        "mae": float(mean_absolute_error(yf, pred)),
        "r2": float(r2_score(yf, pred)) if len(yf) >= 2 else float("nan"),
    }

"""Classification metrics: ROC AUC, log loss and Brier from scikit-learn; calibration bins.

scikit-learn and numpy are imported per call so that loading the code location does not pay
for them. The scikit-learn values agree with the former numpy implementations to 1e-12
(``tests/test_layering.py::test_metrics_agree_with_the_former_numpy_code``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
from pydantic import BaseModel, ConfigDict

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
    model_config = ConfigDict(frozen=True)

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

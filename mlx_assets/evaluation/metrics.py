"""Classification metrics in numpy: ROC AUC, log loss, Brier, calibration.

numpy is imported per call so that loading the code location does not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
from pydantic import BaseModel, ConfigDict

EPS = 1e-7


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Mann-Whitney U with average ranks for ties; 0.5 when only one class is present."""
    import numpy as np

    y = np.asarray(y, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    order = np.argsort(p, kind="mergesort")
    sorted_p = np.asarray(p)[order]
    ranks = np.empty(len(p), np.float64)
    # average ranks over ties
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    import numpy as np

    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    y = np.asarray(y, np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(y) else float("nan")


def brier(y: np.ndarray, p: np.ndarray) -> float:
    import numpy as np

    return float(np.mean((np.asarray(p, np.float64) - np.asarray(y, np.float64)) ** 2))


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

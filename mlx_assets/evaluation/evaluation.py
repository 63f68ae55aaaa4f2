"""Model evaluation on the test days, and the quality gate that blocks registration."""

from typing import TYPE_CHECKING

import dagster as dg
import polars as pl
from pydantic import BaseModel, ConfigDict

from mlx_assets.evaluation.metrics import CalibrationBin, brier, calibration, log_loss, roc_auc
from mlx_assets.features.flight_features import TARGET
from mlx_assets.markdown import md_table
from mlx_assets.training.training_set import SPLIT
from mlx_assets.versioning import code_version
from mlx_plugins.ml_platforms.base import MLPlatform, TrainedModel
from mlx_resources.platform import Platform

if TYPE_CHECKING:
    import numpy as np


class SliceMetrics(BaseModel):
    model_config = ConfigDict(frozen=True)

    rows: int
    positive_rate: float
    roc_auc: float
    log_loss: float


class Evaluation(BaseModel):
    model_config = ConfigDict(frozen=True)

    rows: int
    positive_rate: float
    roc_auc: float
    log_loss: float
    brier: float
    baseline_log_loss: float
    """Log loss of predicting the training set's delay rate for every flight."""
    expected_calibration_error: float
    calibration: list[CalibrationBin]
    by_carrier: dict[str, SliceMetrics]

    def headline(self) -> dict[str, float]:
        return {
            "roc_auc": self.roc_auc,
            "log_loss": self.log_loss,
            "brier": self.brier,
            "baseline_log_loss": self.baseline_log_loss,
            "ece": self.expected_calibration_error,
        }


def evaluate(
    y: "np.ndarray", p: "np.ndarray", carriers: "np.ndarray", base_rate: float
) -> "Evaluation":
    import numpy as np

    bins, ece = calibration(y, p)
    by_carrier = {}
    for c in sorted(set(carriers.tolist())):
        m = carriers == c
        by_carrier[str(c)] = SliceMetrics(
            rows=int(m.sum()),
            positive_rate=float(y[m].mean()),
            roc_auc=roc_auc(y[m], p[m]),
            log_loss=log_loss(y[m], p[m]),
        )
    return Evaluation(
        rows=len(y),
        positive_rate=float(y.mean()) if len(y) else 0.0,
        roc_auc=roc_auc(y, p),
        log_loss=log_loss(y, p),
        brier=brier(y, p),
        baseline_log_loss=log_loss(y, np.full(len(y), base_rate)),
        expected_calibration_error=ece,
        calibration=bins,
        by_carrier=by_carrier,
    )


@dg.asset(
    group_name="evaluation",
    kinds={"python"},
    code_version=code_version(__file__),
    io_manager_key="object_io_manager",
    check_specs=[
        dg.AssetCheckSpec(
            "beats_baseline",
            asset="model_evaluation",
            blocking=True,
            description="ROC AUC above the gate and log loss below the base-rate predictor's; "
            "a model that fails is not registered.",
        )
    ],
    description="ROC AUC, log loss, Brier, calibration and per-carrier slices on the test days.",
)
def model_evaluation(
    context: dg.AssetExecutionContext,
    platform: Platform,
    ml_platform: MLPlatform,
    model: TrainedModel,
    training_set: pl.DataFrame,
):
    test = training_set.filter(pl.col(SPLIT) == "test")
    base_rate = float(training_set.filter(pl.col(SPLIT) == "train")[TARGET].mean() or 0.0)
    p = ml_platform.predict_proba(model, test)
    ev = evaluate(test[TARGET].to_numpy().astype(bool), p, test["carrier"].to_numpy(), base_rate)
    gate = platform.quality_gate
    ratio = ev.log_loss / ev.baseline_log_loss if ev.baseline_log_loss else float("inf")
    context.log.info(
        f"test ROC AUC {ev.roc_auc:.4f}, log loss {ev.log_loss:.4f} "
        f"(baseline {ev.baseline_log_loss:.4f})"
    )
    yield dg.Output(
        ev,
        metadata={
            **{k: dg.MetadataValue.float(v) for k, v in ev.headline().items()},
            "calibration": dg.MetadataValue.md(
                md_table(
                    ["bin", "n", "predicted", "observed"],
                    (
                        [
                            f"{b.lower:.1f}-{b.upper:.1f}",
                            b.count,
                            f"{b.mean_predicted:.3f}",
                            f"{b.observed_rate:.3f}",
                        ]
                        for b in ev.calibration
                    ),
                )
            ),
            "by_carrier": dg.MetadataValue.md(
                md_table(
                    ["carrier", "rows", "delayed", "ROC AUC", "log loss"],
                    (
                        [
                            c,
                            s.rows,
                            f"{s.positive_rate:.3f}",
                            f"{s.roc_auc:.3f}",
                            f"{s.log_loss:.4f}",
                        ]
                        for c, s in ev.by_carrier.items()
                    ),
                )
            ),
        },
    )
    passed = ev.roc_auc >= gate.min_roc_auc and ratio < gate.max_log_loss_ratio
    yield dg.AssetCheckResult(
        check_name="beats_baseline",
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "roc_auc": ev.roc_auc,
            "min_roc_auc": gate.min_roc_auc,
            "log_loss_ratio": ratio,
            "max_log_loss_ratio": gate.max_log_loss_ratio,
        },
        description=None if passed else "model does not beat the baseline; not registered",
    )

"""Model evaluation on the test days, and the quality gate that blocks registration."""

from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import BaseModel, ConfigDict

from mlx_assets.component.spec import GateSpec, Lifecycle
from mlx_assets.evaluation.metrics import CalibrationBin, brier, calibration, log_loss, roc_auc
from mlx_assets.markdown import md_table
from mlx_assets.training.model import ml_platform_key
from mlx_assets.training.target import encode_target
from mlx_assets.training.training_set import SPLIT
from mlx_assets.versioning import code_version
from mlx_plugins.ml_platforms.base import MLPlatform, TrainedModel
from mlx_resources.io_managers.frames import DataFrame

if TYPE_CHECKING:
    import numpy as np
    import polars as pl


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

    def gate_metrics(self) -> dict[str, float]:
        """The values a quality gate may name (``GATE_METRICS['binary']``)."""
        ratio = self.log_loss / self.baseline_log_loss if self.baseline_log_loss else float("inf")
        return {
            "roc_auc": self.roc_auc,
            "log_loss": self.log_loss,
            "brier": self.brier,
            "log_loss_ratio": ratio,
        }

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
) -> Evaluation:
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


class TaskEvaluation(BaseModel):
    """Evaluation of a multiclass or regression model on the test days.

    ``metrics``: ``mlx_assets.evaluation.metrics.task_metrics`` of the model; ``baseline``: the
    same for the baseline predictor (class frequencies of the train rows, or their mean);
    ``by_slice``: metrics per value of ``features.slice_by``.
    """

    model_config = ConfigDict(frozen=True)

    task: str
    rows: int
    metrics: dict[str, float]
    baseline: dict[str, float]
    by_slice: dict[str, dict[str, float]] = {}

    def gate_metrics(self) -> dict[str, float]:
        out = dict(self.metrics)
        for name in ("log_loss", "rmse"):
            if name in self.metrics and name in self.baseline:
                base = self.baseline[name]
                out[f"{name}_ratio"] = self.metrics[name] / base if base else float("inf")
        if "accuracy" in self.metrics and "accuracy" in self.baseline:
            # over always answering the training rows' most frequent class: a model can beat
            # the class frequencies in log loss and still be right less often than that
            out["accuracy_lift"] = self.metrics["accuracy"] - self.baseline["accuracy"]
        return out

    def headline(self) -> dict[str, float]:
        return {
            **{k: v for k, v in self.metrics.items() if not k.startswith("support_")},
            **{
                f"baseline_{k}": v for k, v in self.baseline.items() if not k.startswith("support_")
            },
        }


def gate_result(gate: GateSpec, values: dict[str, float]) -> tuple[bool, dict[str, Any], list[str]]:
    """``(passed, metadata, failures)`` of ``gate`` on ``values`` (metric -> value): every
    ``min`` rule needs value >= bound, every ``max`` rule value < bound."""
    meta: dict[str, Any] = {}
    failures: list[str] = []
    for m, bound in gate.min.items():
        v = values.get(m, float("nan"))
        meta[m], meta[f"min_{m}"] = v, bound
        if not v >= bound:
            failures.append(f"{m} {v:.4f} < {bound}")
    for m, bound in gate.max.items():
        v = values.get(m, float("nan"))
        meta[m], meta[f"max_{m}"] = v, bound
        if not v < bound:
            failures.append(f"{m} {v:.4f} >= {bound}")
    return not failures, meta, failures


def _evaluate_task(
    lc: Lifecycle, ml_platform: MLPlatform, model: TrainedModel, training_set: "pl.DataFrame"
) -> TaskEvaluation:
    import numpy as np
    import polars as pl

    from mlx_assets.evaluation.metrics import task_metrics

    t = lc.spec.target
    encoded = encode_target(lc, training_set)
    test = encoded.filter(pl.col(SPLIT) == "test")
    train = encoded.filter(pl.col(SPLIT) == "train")
    y = test[t.column].to_numpy()
    pred = ml_platform.predict(model, test)
    classes = tuple(t.classes)
    if t.kind == "multiclass":
        k = len(classes)
        freq = np.bincount(train[t.column].to_numpy().astype(np.int64), minlength=k) + 1.0
        base = np.tile(freq / freq.sum(), (len(y), 1))
    else:
        base = np.full(len(y), float(train[t.column].mean() or 0.0))
    slices: dict[str, dict[str, float]] = {}
    if lc.spec.features.slice_by:
        col = test[lc.spec.features.slice_by].to_numpy()
        for v in sorted({str(x) for x in col.tolist()}):
            m = col.astype(str) == v
            if m.sum() >= 2:
                slices[v] = task_metrics(t.kind, y[m], pred[m], classes)
    return TaskEvaluation(
        task=t.kind,
        rows=len(y),
        metrics=task_metrics(t.kind, y, pred, classes),
        baseline=task_metrics(t.kind, y, base, classes),
        by_slice=slices,
    )


def build_evaluation(lc: Lifecycle) -> dg.AssetsDefinition:
    """The instance's evaluation on the test days, with the blocking ``beats_baseline`` check
    (its quality gate): a model that fails is not registered."""
    platform_key = ml_platform_key(lc)
    gate = lc.gate
    rules = [f"{m} >= {v}" for m, v in gate.min.items()] + [
        f"{m} < {v}" for m, v in gate.max.items()
    ]
    slice_by = lc.spec.features.slice_by

    @dg.asset(
        key=lc.evaluation_key,
        ins={
            "model": dg.AssetIn(key=lc.model_key),
            "training_set": dg.AssetIn(key=lc.training_set_key),
        },
        group_name=lc.group,
        kinds={"python"},
        code_version=code_version(__file__),
        io_manager_key="object_io_manager",
        required_resource_keys={platform_key},
        check_specs=[
            dg.AssetCheckSpec(
                "beats_baseline",
                asset=lc.evaluation_key,
                blocking=True,
                description=f"Quality gate: {', '.join(rules)}; a model that fails is not "
                "registered.",
            )
        ],
        description=f"Test-day metrics of the {lc.task} model"
        + (f", by {slice_by}" if slice_by else "")
        + ", and its quality gate.",
    )
    def _evaluation(
        context: dg.AssetExecutionContext, model: TrainedModel, training_set: DataFrame
    ):
        ml_platform: MLPlatform = getattr(context.resources, platform_key)
        ev: Evaluation | TaskEvaluation
        if lc.task == "binary":
            ev = _evaluate_binary(lc, ml_platform, model, training_set)
            meta = _binary_metadata(ev, slice_by)
        else:
            ev = _evaluate_task(lc, ml_platform, model, training_set)
            meta = {k: dg.MetadataValue.float(v) for k, v in ev.headline().items()}
            if ev.by_slice:
                names = sorted({m for v in ev.by_slice.values() for m in v if "support" not in m})
                meta[f"by_{slice_by}"] = dg.MetadataValue.md(
                    md_table(
                        [str(slice_by), *names],
                        (
                            [s, *(f"{v.get(m, float('nan')):.4f}" for m in names)]
                            for s, v in ev.by_slice.items()
                        ),
                    )
                )
        context.log.info(
            "test " + ", ".join(f"{k} {v:.4f}" for k, v in list(ev.headline().items())[:4])
        )
        yield dg.Output(ev, metadata=meta)
        passed, check_meta, failures = gate_result(gate, ev.gate_metrics())
        yield dg.AssetCheckResult(
            check_name="beats_baseline",
            passed=passed,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata=check_meta,
            description=None
            if passed
            else f"model does not pass the quality gate ({'; '.join(failures)}); not registered",
        )

    return _evaluation


def _evaluate_binary(
    lc: Lifecycle, ml_platform: MLPlatform, model: TrainedModel, training_set: "pl.DataFrame"
) -> Evaluation:
    import numpy as np
    import polars as pl

    target = lc.spec.target.column
    encoded = encode_target(lc, training_set)
    test = encoded.filter(pl.col(SPLIT) == "test")
    base_rate = float(encoded.filter(pl.col(SPLIT) == "train")[target].mean() or 0.0)
    p = ml_platform.predict_proba(model, test)
    slice_by = lc.spec.features.slice_by
    slices = test[slice_by].to_numpy() if slice_by else np.full(test.height, "all")
    return evaluate(test[target].to_numpy().astype(bool), p, slices, base_rate)


def _binary_metadata(ev: Evaluation, slice_by: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
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
    }
    if slice_by:
        meta[f"by_{slice_by}"] = dg.MetadataValue.md(
            md_table(
                [slice_by, "rows", "positive", "ROC AUC", "log loss"],
                (
                    [c, s.rows, f"{s.positive_rate:.3f}", f"{s.roc_auc:.3f}", f"{s.log_loss:.4f}"]
                    for c, s in ev.by_carrier.items()
                ),
            )
        )
    return meta

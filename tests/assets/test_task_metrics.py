"""``task_metrics`` per task: hand-checked small cases, agreement with scikit-learn on random
data, empty inputs, bad inputs, and a direction for every metric it returns."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from mlx_assets.evaluation.metrics import METRIC_DIRECTIONS, TASK_METRICS, task_metrics


def test_binary_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    m = task_metrics("binary", y, p)
    assert list(m) == ["roc_auc", "log_loss", "brier", "accuracy"]
    assert m["roc_auc"] == pytest.approx(0.75)  # 3 of the 4 (pos, neg) pairs ranked right
    assert m["accuracy"] == pytest.approx(0.75)  # 0.35 < 0.5 is the one miss
    assert m["brier"] == pytest.approx((0.1**2 + 0.4**2 + 0.65**2 + 0.2**2) / 4)
    want = -(math.log(0.9) + math.log(0.6) + math.log(0.35) + math.log(0.8)) / 4
    assert m["log_loss"] == pytest.approx(want)
    # booleans are labels too; a single class present ranks nothing: AUC 0.5
    assert task_metrics("binary", y.astype(bool), p) == m
    assert task_metrics("binary", np.ones(3), np.array([0.2, 0.6, 0.9]))["roc_auc"] == 0.5


def test_multiclass_by_hand() -> None:
    y = np.array([0, 1, 2, 2], dtype=np.int32)
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    m = task_metrics("multiclass", y, p, ("sun", "rain", "snow"))
    assert m["accuracy"] == pytest.approx(0.75)  # the last row's argmax is class 0
    # F1: sun 2/3 (1 hit, 1 false alarm), rain 1, snow 2/3 (1 hit, 1 miss)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    want = -(math.log(0.7) + math.log(0.8) + math.log(0.5) + math.log(0.1)) / 4
    assert m["log_loss"] == pytest.approx(want)
    assert (m["support_sun"], m["support_rain"], m["support_snow"]) == (1.0, 1.0, 2.0)
    # without names the supports are numbered; a class absent from y_true is fine
    m2 = task_metrics("multiclass", np.array([0, 0]), p[:2])
    assert m2["support_2"] == 0.0 and m2["support_0"] == 2.0
    assert m2["log_loss"] == pytest.approx(-(math.log(0.7) + math.log(0.1)) / 2)


def test_regression_by_hand_and_units() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.5, 2.0, 2.5, 5.0])  # errors 0.5, 0, -0.5, 1
    m = task_metrics("regression", y, pred)
    assert m["mae"] == pytest.approx(0.5)
    assert m["rmse"] == pytest.approx(math.sqrt(0.375))
    assert m["r2"] == pytest.approx(1 - 1.5 / 5.0)  # SS_res 1.5, SS_tot 5
    # rmse and mae are in the target's units, r2 has none
    scaled = task_metrics("regression", y * 1000, pred * 1000)
    assert scaled["rmse"] == pytest.approx(1000 * m["rmse"])
    assert scaled["mae"] == pytest.approx(1000 * m["mae"])
    assert scaled["r2"] == pytest.approx(m["r2"])
    # predicting the mean scores r2 0; integers are numbers too
    assert task_metrics("regression", np.array([1, 2, 3]), np.full(3, 2.0))["r2"] == 0.0


def test_agrees_with_scikit_learn_on_random_data() -> None:
    rng = np.random.default_rng(7)
    n = 500
    y = rng.integers(0, 2, n)
    p = rng.random(n)
    m = task_metrics("binary", y, p)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p), abs=1e-12)
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p >= 0.5), abs=1e-12)

    k = 4
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = task_metrics("multiclass", y, p, ("a", "b", "c", "d"))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)), abs=1e-12)
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, p.argmax(1), average="macro"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p), abs=1e-12)
    assert sum(m[f"support_{c}"] for c in "abcd") == n

    y = rng.normal(50, 10, n)
    pred = y + rng.normal(0, 3, n)
    m = task_metrics("regression", y, pred)
    assert m["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y, pred)), abs=1e-12)
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, pred), abs=1e-12)
    assert m["r2"] == pytest.approx(skm.r2_score(y, pred), abs=1e-12)
    assert 0.85 < m["r2"] < 0.95  # noise variance 9 of 109


def test_empty_inputs_are_nan() -> None:
    assert all(math.isnan(v) for v in task_metrics("binary", np.array([]), np.array([])).values())
    m = task_metrics("multiclass", np.array([], np.int64), np.zeros((0, 2)), ("x", "y"))
    assert math.isnan(m["accuracy"]) and m["support_x"] == 0.0
    assert all(math.isnan(v) for v in task_metrics("regression", [], []).values())


@pytest.mark.parametrize(
    ("task", "y", "pred", "classes", "message"),
    [
        ("ranking", [0, 1], [0.1, 0.9], (), r"unknown task 'ranking'"),
        ("binary", [0, 1, 1], [0.1, 0.9], (), r"y_true has 3 rows but y_pred has 2"),
        ("binary", [0, 2], [0.1, 0.9], (), r"binary y_true must be 0/1.*\[2.0\]"),
        ("binary", [0, 1], [[0.9, 0.1], [0.1, 0.9]], (), r"shape \(n,\).*not \(2, 2\)"),
        ("multiclass", [0, 1], [0.1, 0.9], (), r"shape \(n, k\).*not \(2,\)"),
        ("multiclass", [0, 3], [[0.5, 0.5], [0.5, 0.5]], (), r"outside 0..1: \[3\]"),
        ("multiclass", [0, 0.5], [[0.5, 0.5], [0.5, 0.5]], (), r"integer class indices"),
        ("multiclass", [0, 1], [[0.5, 0.5], [0.5, 0.5]], ("a", "b", "c"), r"2 columns but"),
        ("regression", [1.0, math.nan], [1.0, 2.0], (), r"y_true has 1 and y_pred 0 NaN"),
    ],
)
def test_bad_inputs_are_clear_errors(task, y, pred, classes, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        task_metrics(task, np.asarray(y), np.asarray(pred), classes)


def test_every_returned_metric_has_a_direction() -> None:
    rng = np.random.default_rng(1)
    outputs = {
        "binary": task_metrics("binary", np.array([0, 1, 1]), np.array([0.2, 0.7, 0.4])),
        "multiclass": task_metrics("multiclass", np.array([0, 1]), rng.dirichlet([1, 1], 2)),
        "regression": task_metrics("regression", np.array([1.0, 3.0]), np.array([1.5, 2.0])),
    }
    for task, m in outputs.items():
        keys = [k for k in m if not k.startswith("support_")]
        assert keys == list(TASK_METRICS[task])
        assert set(keys) <= set(METRIC_DIRECTIONS), task
    assert METRIC_DIRECTIONS["roc_auc"] == "max" and METRIC_DIRECTIONS["log_loss"] == "min"
    assert METRIC_DIRECTIONS["r2"] == "max" and METRIC_DIRECTIONS["rmse"] == "min"
    assert set(METRIC_DIRECTIONS.values()) == {"max", "min"}


def test_accuracy_lift_is_over_always_answering_the_majority_class() -> None:
    """Seen: seattle_weather passed its log-loss gate with accuracy 0.533 against the majority
    class's 0.549. ``accuracy_lift`` lets a gate require beating it."""
    from mlx_assets.component.spec import GATE_METRICS, GateSpec
    from mlx_assets.evaluation.evaluation import TaskEvaluation, gate_result

    y = np.array([0, 0, 0, 1, 2])
    model = np.array([[0.2, 0.7, 0.1]] * 3 + [[0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])  # 2 of 5 right
    majority = np.tile([0.6, 0.2, 0.2], (5, 1))  # 3 of 5 right
    ev = TaskEvaluation(
        task="multiclass",
        rows=5,
        metrics=task_metrics("multiclass", y, model, ("a", "b", "c")),
        baseline=task_metrics("multiclass", y, majority, ("a", "b", "c")),
    )
    values = ev.gate_metrics()
    assert values["accuracy_lift"] == pytest.approx(0.4 - 0.6)
    assert "accuracy_lift" in GATE_METRICS["multiclass"]
    passed, meta, failures = gate_result(GateSpec(min={"accuracy_lift": 0.0}), values)
    assert not passed and failures == ["accuracy_lift -0.2000 < 0.0"]
    assert meta["min_accuracy_lift"] == 0.0

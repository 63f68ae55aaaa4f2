"""Multiclass and regression through ``local_torch`` (issue 10): training and prediction in both
isolation modes and through DDP, bad labels refused before anything is written, and binary
models recorded before tasks existed still load and predict exactly as they did."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import accuracy_score, r2_score

from mlx_plugins.kernel.metadata import PluginMetadata
from mlx_plugins.ml_platforms.base import (
    MLPlatform,
    TrainedModel,
    TrainingDataError,
    TrainingSpec,
    UnsupportedTaskError,
    check_spec,
)
from mlx_plugins.ml_platforms.local_torch import MODEL_FILE, LocalTorchPlatform
from mlx_plugins.testing.contracts import TASK_CLASSES, _learnable_frame, _task_frame

ISOLATIONS = ["none", "process"]
OLD_BINARY = Path(__file__).parent / "data" / "binary_model_v0_2"
"""A binary model written by local_torch 0.2.0 (before tasks): ``model.pt``, its
``TrainedModel`` record and its predictions for ``_learnable_frame(20, 3)``."""


def _spec(folder: Path, task: str, **update: Any) -> TrainingSpec:
    fields: dict[str, Any] = {
        "numeric_features": ("x", "z", "noise"),
        "categorical_features": ("cat",),
        "target": "cls" if task == "multiclass" else "amount",
        "artifact_dir": str(folder),
        "task": task,
        "classes": TASK_CLASSES if task == "multiclass" else (),
    }
    return TrainingSpec(**{**fields, **update})


def _plugin(isolation: str = "none", **config: Any) -> LocalTorchPlatform:
    settings: dict[str, Any] = {"epochs": 4, "hidden": [16], "batch_size": 256}
    return LocalTorchPlatform(
        **{**settings, **config, "num_threads": 1, "device": "cpu", "isolation": isolation}
    )


@pytest.fixture(scope="module")
def frames() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    return _task_frame(3000, 1), _task_frame(800, 2), _task_frame(1500, 3)


def test_multiclass_and_regression_in_both_isolation_modes(tmp_path: Path, frames: Any) -> None:
    train, valid, test = frames
    out: dict[tuple[str, str], Any] = {}
    for isolation in ISOLATIONS:
        plugin = _plugin(isolation)
        with plugin.session():
            for task in ("multiclass", "regression"):
                epochs: list[int] = []
                model = plugin.train(
                    train,
                    valid,
                    _spec(tmp_path / isolation / task, task),
                    on_epoch=lambda e, s=epochs: s.append(e.epoch),  # type: ignore[misc]
                )
                assert epochs == [1, 2, 3, 4]  # streamed back from the child too
                out[isolation, task] = (model, plugin.predict(model, test))
                assert plugin.predict(model, test.head(0)).shape == (
                    (0, 3) if task == "multiclass" else (0,)
                )

    for task in ("multiclass", "regression"):
        # the child trains the very same model as the calling process (seeded, CPU)
        np.testing.assert_array_equal(out["none", task][1], out["process", task][1])

    model, p = out["process", "multiclass"]
    assert model.task == "multiclass" and model.classes == TASK_CLASSES
    assert p.shape == (test.height, 3) and p.dtype == np.float64
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
    assert accuracy_score(test["cls"].to_numpy(), p.argmax(axis=1)) > 0.6  # chance is 1/3
    assert model.history[-1].train_loss < model.history[0].train_loss
    payload = torch.load(model.artifact_path, map_location="cpu", weights_only=True)
    assert payload["task"] == "multiclass" and payload["architecture"]["n_outputs"] == 3

    fewer = model.model_copy(
        update={"spec": model.spec.model_copy(update={"classes": TASK_CLASSES[:2]})}
    )
    with _plugin().session() as plugin, pytest.raises(ValueError, match=r"has 3 output\(s\)"):
        plugin.predict(fewer, test)

    model, pred = out["process", "regression"]
    assert pred.shape == (test.height,) and pred.dtype == np.float64
    # the network learns the standardised target; predict maps back to the target's units
    y = train["amount"]
    assert model.preprocessing["target_mean"] == pytest.approx(y.mean())
    assert model.preprocessing["target_std"] == pytest.approx(y.std())
    assert abs(float(pred.mean()) - float(test["amount"].mean())) < 0.2 * float(y.std())  # type: ignore[arg-type]
    assert r2_score(test["amount"].to_numpy(), pred) > 0.6
    with _plugin().session() as plugin, pytest.raises(UnsupportedTaskError, match=r"call predict"):
        plugin.predict_proba(model, test)


def test_binary_artifacts_keep_their_format(tmp_path: Path) -> None:
    """A binary model's file has exactly the keys it had before tasks; ``predict`` is
    ``predict_proba`` in float64."""
    train, valid = _learnable_frame(400, 1), _learnable_frame(100, 2)
    spec = TrainingSpec(
        numeric_features=("x", "noise"),
        categorical_features=("cat",),
        target="y",
        artifact_dir=str(tmp_path),
    )
    plugin = _plugin(epochs=1)
    with plugin.session():
        model = plugin.train(train, valid, spec)
        p, q = plugin.predict(model, valid), plugin.predict_proba(model, valid)
    np.testing.assert_array_equal(p, q)
    assert p.dtype == np.float64 and p.shape == (valid.height,)
    payload = torch.load(model.artifact_path, map_location="cpu", weights_only=True)
    assert set(payload) == {"state_dict", "architecture", "preprocessing"}
    assert set(payload["architecture"]) == {"n_numeric", "cardinalities", "hidden", "embedding_dim"}
    assert set(json.loads(payload["preprocessing"])) == {
        "numeric",
        "categorical",
        "means",
        "stds",
        "vocab",
    }


def test_an_old_binary_model_still_loads_and_predicts_the_same(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    shutil.copytree(OLD_BINARY, folder)
    record = json.loads((folder / "trained_model.json").read_text())
    assert "task" not in record["spec"]  # written before tasks existed
    record["artifact_path"] = str(folder / MODEL_FILE)
    model = TrainedModel.model_validate(record)
    assert model.task == "binary" and model.classes == ()
    want = json.loads((folder / "predictions.json").read_text())
    test = _learnable_frame(20, 3)
    plugin = LocalTorchPlatform(device="cpu")
    with plugin.session():
        # sha256 checked on load; the same predictions to float32's precision. The model runs
        # in float32, and torch's CPU kernels differ by instruction set: predictions.json was
        # written on an AVX2 machine, an AVX-512 one gives values up to 2.1e-8 apart (relative;
        # float32's epsilon is 1.2e-7), with torch 2.13 and 2.14 alike. A misread or different
        # model would be off by orders of magnitude more.
        np.testing.assert_allclose(plugin.predict_proba(model, test), want, rtol=1e-6, atol=0)
        np.testing.assert_allclose(plugin.predict(model, test), want, rtol=1e-6, atol=0)
    # a record that claims another task than its artifact holds is refused, not misread
    wrong = model.model_copy(update={"spec": model.spec.model_copy(update={"task": "regression"})})
    p2 = LocalTorchPlatform(device="cpu")
    with p2.session(), pytest.raises(ValueError, match=r"holds a binary model but its record says"):
        p2.predict(wrong, test)


def _with(df: pl.DataFrame, column: str, values: dict[int, object], dtype: Any = None) -> Any:
    col = df.get_column(column).to_list()
    for i, v in values.items():
        col[i] = v
    return df.with_columns(pl.Series(column, col, dtype=dtype or df.schema[column], strict=False))


BAD_LABELS = [
    (
        "multiclass",
        {5: 3, 6: 7},
        None,
        r"'cls' has 2 outside 0..2 \(e.g. \[3, 7\]\) in the {frame}",
    ),
    ("multiclass", {5: -1}, None, r"'cls' has 1 outside 0..2 \(e.g. \[-1\]\)"),
    ("multiclass", {5: None}, None, r"'cls' has 1 null\(s\) in the {frame} frame"),
    ("multiclass", {}, pl.Float64, r"'cls' has dtype Float64.*fix: cast it to an integer"),
    ("multiclass", {}, pl.String, r"'cls' has dtype String.*replace_strict\(\{'up': 0"),
    ("regression", {5: None, 6: None}, None, r"'amount' has 2 null\(s\) in the {frame}"),
    ("regression", {5: float("nan"), 6: float("inf")}, None, r"'amount' has 1 NaN, 1 infinite"),
    ("regression", {}, pl.Boolean, r"'amount' has dtype Boolean.*task='binary'"),
    ("regression", {}, pl.String, r"'amount' has dtype String.*cast\(pl.Float64\)"),
]


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize(("task", "rows", "dtype", "message"), BAD_LABELS)
@pytest.mark.parametrize("frame", ["training", "validation"])
def test_bad_labels_are_refused_before_anything_is_written(
    tmp_path: Path,
    isolation: str,
    task: str,
    rows: dict[int, object],
    dtype: Any,
    message: str,
    frame: str,
) -> None:
    train, valid = _task_frame(300, 1), _task_frame(100, 2)
    target = "cls" if task == "multiclass" else "amount"
    if dtype is pl.Boolean:
        bad = (valid if frame == "validation" else train).with_columns(pl.col(target) > 1000)
    else:
        source = valid if frame == "validation" else train
        bad = _with(source, target, rows) if rows else source
        if dtype is not None:
            bad = bad.with_columns(pl.col(target).cast(dtype))
    train, valid = (train, bad) if frame == "validation" else (bad, valid)
    plugin = _plugin(isolation, epochs=1)
    pattern = message.replace("{frame}", frame)
    with plugin.session(), pytest.raises(TrainingDataError, match=pattern) as info:
        plugin.train(train, valid, _spec(tmp_path, task))
    assert f"the {frame} frame" in str(info.value) and "fix:" in str(info.value)
    assert not any(tmp_path.rglob("*.pt")) and not any(tmp_path.iterdir())


SPECS = [
    ("multiclass", ("only",), r"task='multiclass' with classes=\['only'\] \(1 class"),
    ("multiclass", (), r"task='multiclass' with classes=\[\] \(0 class"),
    ("multiclass", ("a", "b", "a"), r"duplicate or empty names \(\['a'\]\)"),
    ("binary", ("a", "b", "c"), r"task='binary' with classes=\['a', 'b', 'c'\] \(3 label"),
    ("regression", ("a", "b"), r"task='regression' with classes=\['a', 'b'\]"),
]


@pytest.mark.parametrize(("task", "classes", "message"), SPECS)
def test_classes_that_do_not_fit_the_task(
    tmp_path: Path, task: str, classes: tuple[str, ...], message: str
) -> None:
    train, valid = _task_frame(200, 1), _task_frame(50, 2)
    if task == "binary":
        train, valid = (df.with_columns(amount=pl.col("cls") == 1) for df in (train, valid))
    spec = _spec(
        tmp_path, task, classes=classes, target="amount" if task != "multiclass" else "cls"
    )
    plugin = _plugin(epochs=1)
    with plugin.session(), pytest.raises(TrainingDataError, match=message) as e:
        plugin.train(train, valid, spec)
    assert "fix:" in str(e.value) and f"{spec.target!r}" in str(e.value)
    assert not any(tmp_path.iterdir())


def test_binary_only_platforms_refuse_other_tasks_clearly(tmp_path: Path) -> None:
    """The base class's default ``predict`` serves binary models and names the platform for the
    others; ``check_spec`` refuses a task a platform does not train."""

    class BinaryOnly(MLPlatform):
        metadata: ClassVar[PluginMetadata] = PluginMetadata(
            name="binary_only", kind="ml_platform", version="0.1.0", capabilities=("predict",)
        )

        def train(self, train: Any, valid: Any, spec: Any, on_epoch: Any = None, **_: Any) -> Any:
            check_spec(spec, self.supported_tasks)
            raise AssertionError("not reached in this test")

        def predict_proba(self, model: Any, frame: pl.DataFrame) -> Any:
            return np.full(frame.height, 0.25, dtype=np.float32)

    platform = BinaryOnly()
    binary = TrainedModel(
        platform="binary_only",
        artifact_path="-",
        artifact_sha256="-",
        spec=TrainingSpec(numeric_features=("x",), target="y", artifact_dir="-"),
    )
    p = platform.predict(binary, pl.DataFrame({"x": [1.0, 2.0]}))
    assert p.dtype == np.float64 and p.tolist() == [0.25, 0.25]
    multi = binary.model_copy(update={"spec": _spec(tmp_path, "multiclass")})
    with pytest.raises(UnsupportedTaskError, match=r"'binary_only' predicts binary models only"):
        platform.predict(multi, pl.DataFrame({"x": [1.0]}))
    with pytest.raises(UnsupportedTaskError, match=r"does not train task 'regression'"):
        platform.train(pl.DataFrame(), pl.DataFrame(), _spec(tmp_path, "regression"))


@pytest.mark.slow
def test_multiclass_and_regression_through_ddp(tmp_path: Path, frames: Any) -> None:
    """Two gloo ranks on the CPU (the multi-GPU code path minus NCCL), inside a materialize."""
    train, valid, test = frames
    trained: dict[str, TrainedModel] = {}

    @dg.asset
    def task_models(context, ml_platform: LocalTorchPlatform) -> dg.MaterializeResult:  # type: ignore[no-untyped-def]
        for task in ("multiclass", "regression"):
            spec = _spec(tmp_path / task, task)
            trained[task] = ml_platform.train(train, valid, spec, context=context)
        return dg.MaterializeResult()

    platform = LocalTorchPlatform(
        distributed="always",
        nproc_per_node=2,
        device="cpu",
        epochs=4,
        hidden=[16],
        batch_size=128,
        num_threads=1,
    )
    result = dg.materialize(
        [task_models],
        resources={"ml_platform": platform},
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    scorer = _plugin()
    with scorer.session():
        mc, rg = trained["multiclass"], trained["regression"]
        assert mc.params["world_size"] == 2 and mc.params["replica_divergence"] == 0.0
        assert rg.params["replica_divergence"] == 0.0
        p = scorer.predict(mc, test)
        pred = scorer.predict(rg, test)
    assert p.shape == (test.height, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
    assert accuracy_score(test["cls"].to_numpy(), p.argmax(axis=1)) > 0.6
    assert "target_mean" in rg.preprocessing
    assert r2_score(test["amount"].to_numpy(), pred) > 0.6


def test_label_edge_cases() -> None:
    """All-null targets, unsigned indices, integer regression targets, overflowing targets."""
    from mlx_plugins.ml_platforms.base import check_labels

    empty = pl.DataFrame({"t": [None, None]})
    for task in ("multiclass", "regression"):
        with pytest.raises(TrainingDataError, match=r"'t' has 2 null\(s\) \(every row\)"):
            check_labels(empty, "t", task=task, classes=("a", "b"))  # type: ignore[arg-type]
    unsigned = pl.DataFrame({"t": [0, 2]}, schema={"t": pl.UInt8})
    check_labels(unsigned, "t", task="multiclass", classes=("a", "b", "c"))
    with pytest.raises(TrainingDataError, match=r"1 outside 0..1 \(e.g. \[200\]\)"):
        check_labels(
            pl.DataFrame({"t": [0, 200]}, schema={"t": pl.UInt8}),
            "t",
            "validation",
            task="multiclass",
            classes=("a", "b"),
        )
    check_labels(pl.DataFrame({"t": [3, 7]}), "t", task="regression")  # counts are numbers
    with pytest.raises(TrainingDataError, match=r"cannot be standardised: its std is inf"):
        check_labels(pl.DataFrame({"t": [1e308, -1e308, 0.0]}), "t", task="regression")
    with pytest.raises(TrainingDataError, match=r"no target column 'nope'"):
        check_labels(empty, "nope", task="regression")


def test_classes_absent_from_training_still_get_a_column(tmp_path: Path, frames: Any) -> None:
    """k = 5 declared, 3 seen: predict still returns (n, 5), the unseen classes unlikely."""
    train, valid, test = frames
    spec = _spec(tmp_path, "multiclass", classes=(*TASK_CLASSES, "never", "rare"))
    plugin = _plugin(epochs=2)
    with plugin.session():
        p = plugin.predict(plugin.train(train, valid, spec), test)
    assert p.shape == (test.height, 5)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
    assert p[:, 3:].mean() < p[:, :3].mean()

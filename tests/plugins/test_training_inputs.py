"""Bad training input (issue 9 item 3): non-finite features are missing values, bad labels are
refused with column and count, a loss that is not finite stops training before any model is
saved; the same errors in both isolation modes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from mlx_plugins.ml_platforms import torch_mlp as tm
from mlx_plugins.ml_platforms.base import TrainingDataError, TrainingDivergedError, TrainingSpec
from mlx_plugins.ml_platforms.local_torch import MODEL_FILE, LocalTorchPlatform
from mlx_plugins.testing.contracts import _learnable_frame

ISOLATIONS = ["none", "process"]


def _spec(folder: Path) -> TrainingSpec:
    return TrainingSpec(
        numeric_features=("x", "noise"),
        categorical_features=("cat",),
        target="y",
        artifact_dir=str(folder),
    )


def _plugin(isolation: str, **config: object) -> LocalTorchPlatform:
    settings: dict[str, object] = {"epochs": 2, "hidden": [8], "num_threads": 1, "device": "cpu"}
    return LocalTorchPlatform(**{**settings, **config, "isolation": isolation})


def _set(df: pl.DataFrame, column: str, rows: dict[int, object]) -> pl.DataFrame:
    values = df.get_column(column).to_list()
    for i, v in rows.items():
        values[i] = v
    return df.with_columns(pl.Series(column, values, dtype=df.schema[column], strict=False))


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_infinite_features_are_missing_values(tmp_path: Path, isolation: str) -> None:
    train, valid = _learnable_frame(400, 1), _learnable_frame(100, 2)
    bad = _set(train, "x", {7: math.inf, 8: -math.inf, 9: math.nan})
    bad = _set(bad, "noise", {3: math.inf})
    as_nulls = _set(_set(train, "x", {7: None, 8: None, 9: None}), "noise", {3: None})
    plugin = _plugin(isolation)
    with plugin.session():
        model = plugin.train(bad, _set(valid, "x", {0: math.inf}), _spec(tmp_path / "inf"))
        preds = plugin.predict_proba(model, bad)
        reference = plugin.train(as_nulls, _set(valid, "x", {0: None}), _spec(tmp_path / "null"))
        want = plugin.predict_proba(reference, as_nulls)
    assert np.isfinite(preds).all() and len(preds) == 400
    assert all(math.isfinite(h.train_loss) and math.isfinite(h.valid_loss) for h in model.history)
    assert model.params["non_finite_features"] == {"x": 3, "noise": 1}
    # exactly what the same rows with nulls give: the same statistics, model and predictions
    assert model.preprocessing["means"] == reference.preprocessing["means"]
    assert model.preprocessing["stds"] == reference.preprocessing["stds"]
    assert all(math.isfinite(m) for m in model.preprocessing["means"])
    np.testing.assert_array_equal(preds, want)


def test_values_beyond_float32_and_overflowing_statistics() -> None:
    df = pl.DataFrame({"a": [1.0, 2.0, 3.0, 1e40], "b": [1.0, -1e300, 1e300, 0.0]})
    with pytest.raises(TrainingDataError, match=r"feature 'b' cannot be standardised.*fix:"):
        tm.Preprocessor.fit(df, ["a", "b"], [])
    pre = tm.Preprocessor.fit(df.head(3), ["a"], [])
    num, _ = pre.transform(df)
    assert torch.isfinite(num).all()
    assert num[3, 0].item() == 0.0  # 1e40 does not fit float32: missing, like NaN
    assert tm.Preprocessor.fit(df, ["a"], []).means == [pytest.approx(2.5e39)]


def test_train_loop_stops_at_the_first_non_finite_loss() -> None:
    x = torch.randn(64, 2)
    x[5, 0] = math.inf  # bypassing the preprocessor: the loop's own guard must catch it
    y = (torch.rand(64) > 0.5).float()
    cat = torch.zeros((64, 0), dtype=torch.int64)
    model = tm.TabularMLP(2, [], [4])
    seen: list[int] = []
    with pytest.raises(TrainingDivergedError, match=r"epoch 1 of 3: the training loss is nan"):
        tm.train_loop(
            model,
            (x, cat, y),
            (x[:8].clone().nan_to_num(0.0), cat[:8], y[:8]),
            tm.LoopConfig(epochs=3, batch_size=16, bf16=False),
            torch.device("cpu"),
            lambda r: seen.append(r.epoch),
        )
    assert seen == []  # no epoch with a poisoned loss is reported


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_diverging_loss_stops_training_and_saves_nothing(tmp_path: Path, isolation: str) -> None:
    train, valid = _learnable_frame(400, 1), _learnable_frame(100, 2)
    plugin = _plugin(isolation, learning_rate=1e20, epochs=3)
    epochs: list[float] = []
    with (
        plugin.session(),
        pytest.raises(TrainingDivergedError, match=r"epoch \d of 3: the (training|validation) "),
    ):
        plugin.train(train, valid, _spec(tmp_path), on_epoch=lambda e: epochs.append(e.train_loss))
    assert all(math.isfinite(loss) for loss in epochs)
    assert not (tmp_path / MODEL_FILE).exists() and not any(tmp_path.rglob("*.pt"))


LABELS = [
    ({4: None, 9: None}, r"2 null\(s\)"),
    ({4: math.nan}, "1 NaN"),
    ({4: math.inf, 5: -math.inf}, "2 infinite"),
    ({4: 2.0, 5: -1.0, 6: 0.5}, r"3 outside \{0, 1\} \(e.g. \[-1.0, 0.5, 2.0\]\)"),
]


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize(("rows", "message"), LABELS)
@pytest.mark.parametrize("frame", ["training", "validation"])
def test_bad_labels_are_refused_with_column_and_count(
    tmp_path: Path, isolation: str, rows: dict[int, object], message: str, frame: str
) -> None:
    train, valid = _learnable_frame(400, 1), _learnable_frame(100, 2)
    train, valid = (df.with_columns(pl.col("y").cast(pl.Float64)) for df in (train, valid))
    if frame == "training":
        train = _set(train, "y", rows)
    else:
        valid = _set(valid, "y", rows)
    plugin = _plugin(isolation)
    pattern = rf"target column 'y' has {message} in the {frame} frame.*fix:"
    with plugin.session(), pytest.raises(TrainingDataError, match=pattern):
        plugin.train(train, valid, _spec(tmp_path))
    assert not any(tmp_path.rglob("*.pt"))


def test_labels_of_the_wrong_type_and_features_that_are_not_numbers(tmp_path: Path) -> None:
    train, valid = _learnable_frame(400, 1), _learnable_frame(100, 2)
    plugin = _plugin("none")
    with plugin.session():
        words = train.with_columns(pl.col("y").cast(pl.String))
        with pytest.raises(TrainingDataError, match=r"target column 'y' has dtype String"):
            plugin.train(words, valid, _spec(tmp_path))
        text = train.with_columns(pl.col("noise").cast(pl.String))
        with pytest.raises(TrainingDataError, match=r"\{'noise': 'String'\}.*fix:"):
            plugin.train(text, valid, _spec(tmp_path))
        # booleans are fine labels and features
        flags = train.with_columns(pl.col("y").cast(pl.Boolean), flag=pl.col("x") > 0)
        spec = _spec(tmp_path).model_copy(update={"numeric_features": ("x", "noise", "flag")})
        model = plugin.train(flags, valid.with_columns(flag=pl.col("x") > 0), spec)
        assert np.isfinite(plugin.predict_proba(model, flags)).all()

"""What runs in a served model's worker, in process: request decoding and its errors, the
preprocessing against ``Preprocessor.transform``, the numpy forward pass against torch,
adaptive batching and load shedding."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from mlx_plugins.ml_platforms import torch_mlp as tm
from mlx_plugins.model_servers.bentoml_runtime import (
    MODEL_FILE,
    AdaptiveBatcher,
    Admission,
    LoadedModel,
    Overloaded,
    RequestDecoder,
    RequestError,
    RowError,
    request_schema,
)


@pytest.fixture(scope="module")
def loaded(tiny_package) -> LoadedModel:
    return LoadedModel.load(tiny_package.path)


def _body(rows: Any) -> bytes:
    return json.dumps({"rows": rows}).encode()


def test_rows_decode_in_feature_order(loaded: LoadedModel) -> None:
    decoder = RequestDecoder(loaded.schema)
    rows = decoder.decode(_body([{"cat": "b", "noise": 2, "x": None}]))
    assert rows == [(None, 2.0, "b")]  # x, noise, cat: numeric then categorical


@pytest.mark.parametrize(
    ("body", "row", "field", "problem"),
    [
        (_body([{"x": "1.5", "noise": 0, "cat": "a"}]), 0, "x", "got a string"),
        (_body([{"x": 1, "noise": False, "cat": "a"}]), 0, "noise", "got true/false"),
        (_body([{"x": 1, "noise": 0, "cat": 7}]), 0, "cat", "expected a category"),
        (_body([{"x": 1, "noise": 0, "cat": "a", "cta": "a"}]), 0, "cta", "unknown feature"),
        (_body([{"x": 1, "cat": "a"}]), 0, "noise", "missing feature"),
        (_body([]), None, "rows", "no rows"),
        (b'{"rows": [{"x": 1,', None, "body", "not valid JSON"),
        (b'{"row": []}', None, "row", "unknown field"),
        (b"[]", None, "body", "Expected `object`"),
        # not UTF-8: was a 500 (msgspec raises UnicodeDecodeError, not a DecodeError)
        (b'{"rows": [{"x": 1, "noise": 0, "cat": "\xff"}]}', None, "body", "not valid UTF-8"),
        (b'{"rows": [{"x": 1e999, "noise": 0, "cat": "a"}]}', 0, "x", "out of float64's range"),
    ],
)
def test_request_errors_name_row_and_field(
    loaded: LoadedModel, body: bytes, row: int | None, field: str, problem: str
) -> None:
    with pytest.raises(RequestError) as caught:
        RequestDecoder(loaded.schema).decode(body)
    [entry] = caught.value.detail
    assert entry["row"] == row and entry["field"] == field
    assert problem in entry["problem"]


def test_features_equal_the_training_preprocessing(tiny_model, tiny_frames) -> None:
    """Nulls, extremes, values beyond float32 and unseen categories: what
    ``Preprocessor.transform`` makes of the same rows (categories and missing values exactly;
    numbers to one float32 rounding: polars divides a long column by multiplying with the
    reciprocal, a 1-row frame it divides)."""
    pre = tm.Preprocessor.from_dict(tiny_model.preprocessing)
    frame = pl.concat(
        [
            tiny_frames[1].select("x", "noise", "cat"),
            pl.DataFrame(
                {
                    "x": [None, 1e40, -1e300, 0.0, 3.5],
                    "noise": [1.0, None, 2.0, -0.0, 1e-45],
                    "cat": ["zz", None, "a", "c", ""],
                },
                schema={"x": pl.Float64, "noise": pl.Float64, "cat": pl.String},
            ),
        ]
    )
    want_num, want_cat = pre.transform(frame)
    model = LoadedModel.load_from(tiny_model.artifact_path, request_schema(pre.to_dict()))
    rows = [tuple(r) for r in frame.iter_rows()]
    num, cat = model.featurize(rows)
    assert torch.equal(cat, want_cat.contiguous())
    torch.testing.assert_close(num, want_num.contiguous(), rtol=1e-6, atol=1e-7)
    assert torch.equal(num == 0, want_num == 0)  # missing and non-finite values: 0


def test_unknown_categories_can_be_refused(tiny_model) -> None:
    pre = tiny_model.preprocessing
    model = LoadedModel.load_from(
        tiny_model.artifact_path, request_schema(pre, unknown_category="reject")
    )
    with pytest.raises(RowError) as caught:
        model.featurize([(0.0, 0.0, "a"), (0.0, 0.0, "zz"), (0.0, 0.0, None)])
    [entry] = caught.value.detail
    assert (entry["row"], entry["field"]) == (1, "cat")
    assert 'unknown category "zz" (3 known, e.g. a, b, c)' in entry["problem"]


@pytest.mark.parametrize("n_outputs", [1, 3])
def test_numpy_forward_matches_torch(n_outputs: int) -> None:
    torch.manual_seed(0)
    net = tm.TabularMLP(5, [3, 4], [16, 8], embedding_dim=4, dropout=0.1, n_outputs=n_outputs)
    pre = tm.Preprocessor(
        ["a", "b", "c", "d", "e"],
        ["k", "m"],
        [0.0] * 5,
        [1.0] * 5,
        {"k": ["p", "q", "r"], "m": ["s", "t", "u", "v"]},
    )
    schema = request_schema(pre.to_dict())
    model = LoadedModel.from_parts(net.eval(), pre.to_dict(), schema)
    assert model.fast is not None
    num = torch.randn(200, 5)
    cat = torch.stack([torch.randint(0, 4, (200,)), torch.randint(0, 5, (200,))], dim=1)
    np.testing.assert_allclose(
        model.forward(num, cat), model.torch_forward(num, cat), rtol=1e-5, atol=1e-6
    )


def test_a_network_numpy_cannot_mirror_is_served_by_torch(loaded: LoadedModel) -> None:
    net = torch.nn.Module()  # no mlp, no embeddings: not a TabularMLP
    from mlx_plugins.model_servers.bentoml_runtime import numpy_forward

    assert numpy_forward(net, loaded) is None


def test_predictions_by_task(loaded: LoadedModel) -> None:
    logits = np.array([0.0, 2.0])
    assert loaded.to_predictions(logits) == pytest.approx([0.5, 1 / (1 + math.exp(-2))])
    multi = loaded.__class__(**{**loaded.__dict__})
    multi.schema = loaded.schema.model_copy(
        update={"task": "multiclass", "classes": ("up", "down")}
    )
    [p] = multi.to_predictions(np.array([[0.0, math.log(3)]]))
    assert p["label"] == "down" and p["probabilities"] == pytest.approx({"up": 0.25, "down": 0.75})
    reg = loaded.__class__(**{**loaded.__dict__, "target_mean": 1000.0, "target_std": 400.0})
    reg.schema = loaded.schema.model_copy(update={"task": "regression"})
    assert reg.to_predictions(np.array([0.5])) == [1200.0]


class _SlowModel:
    """A forward pass that takes ``seconds`` of CPU and records its batch sizes."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.sizes = seconds, []

    def forward(self, num: Any, cat: Any) -> Any:
        end = __import__("time").thread_time() + self.seconds
        while __import__("time").thread_time() < end:
            pass
        self.sizes.append(int(num.shape[0]))
        return num[:, 0].double().numpy()


def test_cheap_passes_run_inline_dear_ones_batch() -> None:
    async def go(seconds: float, n: int) -> tuple[list[int], list[Any]]:
        model = _SlowModel(seconds)
        batcher = AdaptiveBatcher(model, max_batch_rows=8, max_latency_ms=10_000)  # type: ignore[arg-type]
        # learns the cost: several passes, as the first may pay torch's lazy set-up (CI once
        # measured a cold first pass of the cheap model above inline_ms and batched [8, 4])
        for _ in range(30):
            await batcher.submit(torch.zeros(1, 2), torch.zeros(1, 0))
        model.sizes.clear()
        rows = [torch.full((1, 2), float(i)) for i in range(n)]
        outs = await asyncio.gather(*(batcher.submit(r, torch.zeros(1, 0)) for r in rows))
        return model.sizes, outs

    sizes, outs = asyncio.run(go(0.0, 12))
    assert sizes == [1] * 12  # cheap: one pass per request, no waiting
    sizes, outs = asyncio.run(go(0.003, 12))
    assert sum(sizes) == 12 and len(sizes) < 12 and max(sizes) <= 8  # dear: batched
    assert [float(o[0]) for o in outs] == [float(i) for i in range(12)]  # each its own rows


def test_overload_is_shed_not_queued() -> None:
    async def go() -> tuple[int, int]:
        model = _SlowModel(0.004)
        batcher = AdaptiveBatcher(model, max_batch_rows=2, max_latency_ms=1000)  # type: ignore[arg-type]
        await batcher.submit(torch.zeros(1, 2), torch.zeros(1, 0))
        # about three passes may wait: whatever a pass takes on this machine now
        batcher.max_latency_s = 3.5 * batcher.wall_s
        results = await asyncio.gather(
            *(batcher.submit(torch.zeros(1, 2), torch.zeros(1, 0)) for _ in range(40)),
            return_exceptions=True,
        )
        shed = sum(isinstance(r, Overloaded) for r in results)
        return shed, len(results) - shed

    shed, answered = asyncio.run(go())
    assert shed > 0 and answered > 0


def test_admission_sheds_when_the_expected_wait_is_too_long() -> None:
    admission = Admission(max_latency_ms=50)
    assert admission.enter()
    admission.leave(started=0.0)
    admission.interval_s = 0.010  # 10 ms between answers
    for _ in range(5):
        assert admission.enter()  # 0..4 ahead: at most 40 ms
    assert admission.enter()  # 5 ahead: 50 ms
    assert not admission.enter()  # 6 ahead: 60 ms > 50: shed
    admission.leave(started=0.0)
    assert admission.enter()  # one answered: room again


def test_a_damaged_package_is_refused(tiny_package, tmp_path) -> None:
    import shutil
    from pathlib import Path

    copy = Path(shutil.copytree(tiny_package.path, tmp_path / "pkg"))
    (copy / MODEL_FILE).write_bytes((copy / MODEL_FILE).read_bytes() + b"x")
    with pytest.raises(ValueError, match="is damaged; package the version again"):
        LoadedModel.load(copy)

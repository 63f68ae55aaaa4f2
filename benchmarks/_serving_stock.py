"""The serving benchmark's stock BentoML 1.4 service: the package MLX serves, loaded through
``BentoModel`` and served by an idiomatic ``@bentoml.api(batchable=True)`` method with BentoML's
default server settings (access log, tracing, metrics middlewares).

    bentoml serve _serving_stock:StockService --working-dir benchmarks \
        --arg model=bench_tiny:v0001 --arg workers=2

Request body: ``{"x": [[f1, ..., fn]]}`` (the feature vector in the model's order)."""

from __future__ import annotations

import bentoml
import numpy as np
import torch
from _serving_model import load_net, predict
from bentoml.models import BentoModel
from pydantic import BaseModel


class Args(BaseModel):
    model: str
    workers: int = 1
    max_batch_size: int = 64
    max_latency_ms: int = 250


ARGS = bentoml.use_arguments(Args)


@bentoml.service(workers=ARGS.workers)
class StockService:
    package = BentoModel(ARGS.model)

    def __init__(self) -> None:
        torch.set_num_threads(1)
        self.net, self.means, self.stds = load_net(self.package.path)

    @bentoml.api(
        batchable=True, max_batch_size=ARGS.max_batch_size, max_latency_ms=ARGS.max_latency_ms
    )
    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(predict(self.net, self.means, self.stds, x), dtype=np.float64)

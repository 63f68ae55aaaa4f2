"""The serving benchmark's baseline: a hand-written FastAPI + uvicorn app serving the same
package (``MLX_BENCH_PACKAGE``: the package folder), one forward pass per request.

    MLX_BENCH_PACKAGE=... uvicorn _serving_fastapi:app --app-dir benchmarks --workers 2

Request body: ``{"x": [[f1, ..., fn]]}``."""

from __future__ import annotations

import os

import numpy as np
import torch
from _serving_model import load_net, predict
from fastapi import FastAPI
from pydantic import BaseModel

torch.set_num_threads(1)
NET, MEANS, STDS = load_net(os.environ["MLX_BENCH_PACKAGE"])
app = FastAPI()


class Request(BaseModel):
    x: list[list[float]]


@app.post("/predict")
def predict_route(req: Request) -> dict[str, list[float]]:
    return {"predictions": predict(NET, MEANS, STDS, np.asarray(req.x, dtype=np.float32))}


@app.get("/readyz")
def readyz() -> dict[str, bool]:
    return {"ready": True}

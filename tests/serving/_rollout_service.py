"""A minimal BentoML 1.4 service for the rollout, router and autoscaling tests.

Behaviour from the environment (so one file serves a healthy, a broken and a slow version):
``MLX_TEST_VERSION`` (echoed in answers), ``MLX_TEST_FAIL_RATE`` (share of requests that raise:
HTTP 500), ``MLX_TEST_DELAY_MS`` (sleep per request), ``MLX_TEST_WORKERS``.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import bentoml

VERSION = os.environ.get("MLX_TEST_VERSION", "v0001")
FAIL_RATE = float(os.environ.get("MLX_TEST_FAIL_RATE", "0"))
DELAY_S = float(os.environ.get("MLX_TEST_DELAY_MS", "0")) / 1000.0


@bentoml.service(workers=int(os.environ.get("MLX_TEST_WORKERS", "1")))
class RolloutEcho:
    @bentoml.api
    def predict(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if DELAY_S:
            time.sleep(DELAY_S)
        if FAIL_RATE and random.random() < FAIL_RATE:
            raise RuntimeError("deliberate failure of the broken test version")
        return {"version": VERSION, "predictions": [0.5 for _ in rows]}

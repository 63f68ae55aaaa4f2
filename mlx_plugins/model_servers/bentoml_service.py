"""The BentoML service that serves one packaged model version (what ``bentoml serve`` runs).

    BENTOML_HOME=<store> bentoml serve mlx_plugins.model_servers.bentoml_service:MLXModelService \
        --port 3000 --arg model=flight_delay:v0003 --arg workers=2

The package is a BentoML model (``bentoml.models.create``) referenced at class level through
``BentoModel``, so ``bentoml build`` puts it in the Bento and ``bentoml serve`` resolves it from
the store. Each worker loads it once in ``__init__``, warms it up and freezes its heap out of
the garbage collector's full collections (``ServingState.freeze_heap``); ``/readyz`` answers
200 only after that (``__is_ready__``). Predictions go through the lean ASGI app of
:mod:`mlx_plugins.model_servers.bentoml_runtime`, mounted on the BentoML server, which keeps its
process supervision, ``/healthz``, ``/readyz`` and the multi-worker Prometheus ``/metrics``.

Arguments (``--arg KEY=VALUE``): ``model`` (the BentoML model tag, required), ``workers``
(processes, default 1), ``max_batch_rows`` (rows per forward pass, default 64),
``max_latency_ms`` (shed a request expected to wait longer, default 250), ``torch_threads``
(per worker, default 1), ``timeout_s`` (per request, default 30), ``unknown_category`` and
``max_request_rows`` (override the package's request schema), ``max_inflight`` (prediction
requests a worker holds at once; one more is answered 503 before BentoML's middlewares see it,
see :mod:`mlx_plugins.model_servers.inflight`; default: no limit).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import bentoml
from bentoml.models import BentoModel
from pydantic import BaseModel, ConfigDict, Field

from mlx_plugins.kernel.process_identity import PARENT_ENV, die_with_parent
from mlx_plugins.model_servers.bentoml_runtime import STATE, build_app
from mlx_plugins.model_servers.inflight import InflightLimit
from mlx_plugins.model_servers.request_timeout import replace_bentoml_timeout


class ServiceArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="BentoML model tag of the package, e.g. flight_delay:v0003.")
    workers: int = Field(default=1, ge=1)
    max_batch_rows: int = Field(default=64, ge=1)
    max_latency_ms: float = Field(default=250.0, gt=0)
    torch_threads: int = Field(default=1, ge=1)
    timeout_s: float = Field(default=30.0, gt=0)
    unknown_category: Literal["missing", "reject"] | None = None
    max_request_rows: int | None = Field(default=None, ge=1)
    max_inflight: int | None = Field(default=None, ge=1)


if os.environ.get(PARENT_ENV):  # started with die_with_caller: the arbiter and every worker
    die_with_parent()  # exit when the process that started the server dies

ARGS = bentoml.use_arguments(ServiceArgs)
APP = build_app(STATE)


@bentoml.service(
    name="mlx_model",
    workers=ARGS.workers,
    traffic={"timeout": ARGS.timeout_s},
    # per-request access logs and tracing spans cost more than a small model's forward pass;
    # the app's own Prometheus metrics count every request (docs/serving.md)
    logging={"access": {"enabled": False}},
    tracing={"sample_rate": 0.0, "excluded_urls": ["/predict"]},
)
@bentoml.asgi_app(APP, path="/")
class MLXModelService:
    package = BentoModel(ARGS.model)

    def __init__(self) -> None:
        STATE.load(
            self.package.path,
            max_batch_rows=ARGS.max_batch_rows,
            max_latency_ms=ARGS.max_latency_ms,
            torch_threads=ARGS.torch_threads,
            unknown_category=ARGS.unknown_category,
            max_request_rows=ARGS.max_request_rows,
        )
        STATE.freeze_heap()  # no 0.1-0.5 s full-collection pauses over the loaded libraries

    def __is_ready__(self) -> bool:
        return STATE.ready


def _shed_by_limit() -> None:
    if STATE.metrics is not None:
        STATE.metrics.observe_shed("inflight")


class _LimitedService(type(MLXModelService)):  # type: ignore[misc]
    """The service whose server app is wrapped in the in-flight limit, outside BentoML's own
    middlewares (``Service.middlewares`` would put it inside them), and whose request timeout
    ends with the request (:mod:`mlx_plugins.model_servers.request_timeout`: BentoML's leaves a
    timer per request alive for the whole timeout, which the garbage collector then scans)."""

    __slots__ = ()

    def to_asgi(self, is_main: bool = True) -> Any:
        app = super().to_asgi(is_main)
        if not replace_bentoml_timeout(app):
            logging.getLogger(__name__).warning(
                "BentoML's TimeoutMiddleware was not found in the worker's app: requests keep "
                "BentoML's own timeout (a timer per request; see docs/serving.md)"
            )
        if ARGS.max_inflight is None:
            return app
        return InflightLimit(app, limit=ARGS.max_inflight, on_shed=_shed_by_limit)


MLXModelService.__class__ = _LimitedService

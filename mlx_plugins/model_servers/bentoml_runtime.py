"""What runs inside a served model's worker: the request schema, the preprocessing, adaptive
batching, the ``/predict`` ASGI app and its Prometheus metrics.

The ``bentoml`` plugin's service (:mod:`mlx_plugins.model_servers.bentoml_service`) loads the
package through ``BentoModel`` and mounts :func:`build_app`'s app on the BentoML server, which
keeps BentoML's process management, ``/healthz``, ``/readyz`` and ``/metrics``. The request
path is this module's, not BentoML's ``@bentoml.api`` machinery: profiled, BentoML's per-request
handling costs about three times the model itself on a small MLP (``docs/serving.md``).

Preprocessing here is the training preprocessing (``torch_mlp.Preprocessor.transform``) done in
numpy on the request's rows, with the same float32 arithmetic, so a served prediction equals
the platform's own ``predict`` on the same row.

Heavy imports (torch, starlette, prometheus_client) happen inside functions: the plugin module
imports this one for :func:`request_schema` without loading a server.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import math
import os
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_plugins.model_servers.schema import RequestSchema, Task, UnknownCategory

log = logging.getLogger("mlx.serving")

MODEL_FILE = "model.pt"
"""The registered artifact inside the package folder (``local_torch``'s ``model.pt``)."""
PACKAGE_FILE = "mlx_package.json"
"""The package's description inside its folder: request schema, preprocessing, task, lineage."""

LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Histogram buckets of ``mlx_serving_request_duration_seconds`` (seconds): fine below 100 ms
for a p99 goal of 50 ms, and a bucket at the rollout rule's 1 s."""


# -- the request schema ------------------------------------------------------------------------
def request_schema(
    preprocessing: dict[str, Any],
    *,
    task: Task = "binary",
    classes: tuple[str, ...] = (),
    unknown_category: UnknownCategory = "missing",
    max_batch_rows: int = 1024,
) -> RequestSchema:
    """The :class:`RequestSchema` of a model trained with ``preprocessing`` (a
    ``torch_mlp.Preprocessor.to_dict()``: ``numeric``, ``categorical``, ``vocab``).

    Raises
    ------
    ValueError
        ``preprocessing`` lacks ``numeric`` or a categorical feature's vocabulary.
    """
    try:
        numeric = tuple(str(c) for c in preprocessing["numeric"])
        vocab = preprocessing.get("vocab", {})
        categorical = {
            str(c): tuple(str(v) for v in vocab[c]) for c in preprocessing["categorical"]
        }
    except (KeyError, TypeError) as exc:
        raise ValueError(
            f"the model's preprocessing has no {exc} entry; it is not a local_torch model "
            "artifact (numeric, categorical and vocab are needed to build the request schema)"
        ) from None
    return RequestSchema(
        numeric=numeric,
        categorical=categorical,
        unknown_category=unknown_category,
        max_batch_rows=max_batch_rows,
        task=task,
        classes=classes,
    )


class RequestError(ValueError):
    """A request body that does not fit the schema; ``detail`` is the 422 body's list: one
    entry per problem with ``row`` (index, or None for the body), ``field`` and ``problem``
    (what is wrong and what is expected)."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__(detail[0]["problem"] if detail else "bad request")
        self.detail = detail


BODY_FORMAT = 'the body is {"rows": [{feature: value, ...}, ...]}'
_WHAT = {"str": "a string", "int": "a number", "float": "a number", "bool": "true/false"}


class RequestDecoder:
    """Decodes and validates ``{"rows": [row, ...]}`` for ``schema`` in one pass (msgspec):
    every feature present (``null`` for a missing value), numeric features JSON numbers (not
    ``true``/``false``, not strings), categorical ones strings, nothing else; 1 row or more
    (the row limit is checked apart: it is a 413, not a 422).

    msgspec rather than pydantic here: for the 1024 features of the wide benchmark model a
    pydantic ``TypedDict`` took about 60 times as long per row (docs/serving.md)."""

    def __init__(self, schema: RequestSchema) -> None:
        import msgspec

        self.schema = schema
        names = list(schema.features)
        n_num = len(schema.numeric)
        fields: list[tuple[str, Any]] = [(f"c{i}", float | None) for i in range(n_num)]
        fields += [(f"c{i}", str | None) for i in range(n_num, len(names))]
        row = msgspec.defstruct(
            "Row",
            fields,
            forbid_unknown_fields=True,
            rename={f"c{i}": name for i, name in enumerate(names)},
        )
        request = msgspec.defstruct(
            "Request",
            [("rows", list[row])],  # type: ignore[valid-type]
            forbid_unknown_fields=True,
        )
        self._decoder = msgspec.json.Decoder(request)
        self._astuple = msgspec.structs.astuple
        # msgspec raises UnicodeDecodeError (not a DecodeError) on bytes that are not UTF-8
        self._errors = (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError)

    def decode(self, body: bytes) -> list[tuple[Any, ...]]:
        """The rows as tuples of values in ``schema.features`` order.

        Raises
        ------
        RequestError
            The body is not valid JSON or does not fit the schema (HTTP 422).
        """
        try:
            request: Any = self._decoder.decode(body)
        except self._errors as exc:
            raise RequestError([self.describe(exc)]) from None
        if not request.rows:
            raise RequestError(
                [{"row": None, "field": "rows", "problem": "no rows; " + BODY_FORMAT}]
            )
        astuple = self._astuple
        return [astuple(r) for r in request.rows]

    def describe(self, exc: Exception) -> dict[str, Any]:
        """A msgspec error as a 422 ``detail`` entry naming the row and the field."""
        import msgspec

        if isinstance(exc, UnicodeDecodeError):
            return {
                "row": None,
                "field": "body",
                "problem": f"not valid UTF-8 (a string holds the byte "
                f"{exc.object[exc.start : exc.start + 1]!r}); send the JSON body encoded as UTF-8",
            }
        if not isinstance(exc, msgspec.ValidationError):  # (a subclass of DecodeError)
            return {"row": None, "field": "body", "problem": f"not valid JSON ({exc})"}
        message, _, path = str(exc).partition(" - at `")
        path = path.rstrip("`")
        named = re.search(r"field `([^`]*)`", message)
        found = re.match(r"^\$\.rows\[(\d+)\](?:\.(.+))?$", path)
        if found is None:  # the body itself: not an object, no rows, an unknown key
            field_name = named.group(1) if named else "rows" if path == "$.rows" else "body"
            return {"row": None, "field": field_name, "problem": f"{message}; {BODY_FORMAT}"}
        field_name = found.group(2) or (named.group(1) if named else "")
        got = re.search(r"got `([^`]*)`", message)
        got_text = _WHAT.get(got.group(1), got.group(1)) if got else "something else"
        if "unknown field" in message:
            features = ", ".join(self.schema.features)
            problem = f"unknown feature; the model's features are: {features}"
        elif "missing required field" in message:
            problem = "missing feature (send null for a missing value)"
        elif field_name in self.schema.categorical:
            problem = f"expected a category (a string) or null, got {got_text}"
        elif field_name in self.schema.numeric and "out of range" in message:
            problem = "expected a number or null, got a number out of float64's range"
        elif field_name in self.schema.numeric:
            problem = f"expected a number or null, got {got_text}"
        else:
            problem = f"{message}; each row is an object {{feature: value, ...}}"
        return {"row": int(found.group(1)), "field": field_name, "problem": problem}


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- the model ---------------------------------------------------------------------------------
class RowError(ValueError):
    """A row that passed the schema but cannot be scored (an unknown category when the package
    refuses them); ``detail`` is the 422 body's list."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__(detail[0]["problem"] if detail else "bad row")
        self.detail = detail


@dataclass
class LoadedModel:
    """A package's network and preprocessing, ready to score request rows on the CPU."""

    net: Any
    schema: RequestSchema
    means: Any
    stds: Any
    codes: dict[str, dict[str, int]]
    target_mean: float | None = None
    target_std: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    fast: Any = None
    """The network as float32 numpy operations (see :func:`numpy_forward`), or None."""

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> LoadedModel:
        """Load the package in ``folder`` (``model.pt`` and ``mlx_package.json``).

        Raises
        ------
        FileNotFoundError
            A file of the package is missing.
        ValueError
            The artifact's sha256 is not the one the package records.
        """
        import hashlib

        folder = Path(folder)
        meta = json.loads((folder / PACKAGE_FILE).read_text())
        blob = (folder / MODEL_FILE).read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        if digest != meta["artifact_sha256"]:
            raise ValueError(
                f"{folder / MODEL_FILE} has sha256 {digest}, not the registered "
                f"{meta['artifact_sha256']}: the package is damaged; package the version again"
            )
        schema = RequestSchema.model_validate(meta["request_schema"])
        return cls.load_from(folder / MODEL_FILE, schema, meta)

    @classmethod
    def load_from(
        cls,
        artifact: str | os.PathLike[str],
        schema: RequestSchema,
        meta: dict[str, Any] | None = None,
    ) -> LoadedModel:
        """Load a ``local_torch`` artifact (``model.pt``) to serve with ``schema``."""
        import torch

        from mlx_plugins.ml_platforms.torch_mlp import TabularMLP

        payload = torch.load(artifact, map_location="cpu", weights_only=True)
        net = TabularMLP(**payload["architecture"])
        net.load_state_dict(payload["state_dict"])
        pre = json.loads(payload["preprocessing"])
        return cls.from_parts(net.eval(), pre, schema, meta)

    @classmethod
    def from_parts(
        cls,
        net: Any,
        preprocessing: dict[str, Any],
        schema: RequestSchema,
        meta: dict[str, Any] | None = None,
    ) -> LoadedModel:
        """A model from its torch module (eval mode) and ``Preprocessor.to_dict()``."""
        import numpy as np

        pre, vocab = preprocessing, preprocessing.get("vocab", {})
        model = cls(
            net=net,
            schema=schema,
            means=np.asarray(pre["means"], dtype=np.float32),
            stds=np.asarray(pre["stds"], dtype=np.float32),
            codes={c: {v: i + 1 for i, v in enumerate(vocab[c])} for c in pre["categorical"]},
            target_mean=pre.get("target_mean"),
            target_std=pre.get("target_std"),
            meta=meta or {},
        )
        model.fast = numpy_forward(net, model)
        return model

    def featurize(self, rows: list[tuple[Any, ...]]) -> tuple[Any, Any]:
        """Rows (values in ``schema.features`` order, as :meth:`RequestDecoder.decode` gives
        them) -> ``(numeric float32 (n, f), categorical int64 (n, c))`` tensors, exactly as
        ``Preprocessor.transform`` does: ``(float32(x) - mean) / std`` in float32, non-finite
        results (null, NaN, +/-inf, beyond float32) 0; category index + 1, 0 for null and
        unseen (or :class:`RowError` when the schema refuses unseen categories)."""
        import numpy as np
        import torch

        schema = self.schema
        n, k = len(rows), len(schema.numeric)
        if k:
            raw = np.array([r[:k] for r in rows], dtype=np.float64)  # null -> NaN
            with np.errstate(over="ignore", invalid="ignore"):
                x = (raw.astype(np.float32) - self.means) / self.stds
            x[~np.isfinite(x)] = 0.0
        else:
            x = np.zeros((n, 0), dtype=np.float32)
        cats = list(self.codes)
        codes = np.zeros((n, len(cats)), dtype=np.int64)
        bad: list[dict[str, Any]] = []
        for j, c in enumerate(cats):
            table = self.codes[c]
            for i, r in enumerate(rows):
                v = r[k + j]
                if v is None:
                    continue
                code = table.get(v, 0)
                if code == 0 and schema.unknown_category == "reject":
                    known = schema.categorical.get(c, ())
                    bad.append(
                        {
                            "row": i,
                            "field": c,
                            "problem": f"unknown category {_short(v)} ({len(known)} known, "
                            f"e.g. {', '.join(known[:5])}); send null if it is missing",
                        }
                    )
                codes[i, j] = code
        if bad:
            raise RowError(bad)
        return torch.from_numpy(x), torch.from_numpy(codes)

    def forward(self, num: Any, cat: Any) -> Any:
        """Raw network outputs, float64 numpy: ``(n,)`` or ``(n, k)``."""
        if self.fast is not None:
            return self.fast(num.numpy(), cat.numpy())
        return self.torch_forward(num, cat)

    def torch_forward(self, num: Any, cat: Any) -> Any:
        """:meth:`forward` through the torch module itself."""
        import torch

        with torch.inference_mode():
            return self.net(num, cat).double().numpy()

    def to_predictions(self, outputs: Any) -> list[Any]:
        """Raw outputs -> the JSON predictions of the task (see the kind's HTTP contract);
        the same float64 arithmetic as ``local_torch``'s ``predict``."""
        import numpy as np

        task = self.schema.task
        if task == "binary":
            return (1.0 / (1.0 + np.exp(-outputs))).tolist()  # type: ignore[no-any-return]
        if task == "regression":
            mean = self.target_mean if self.target_mean is not None else 0.0
            std = self.target_std if self.target_std is not None else 1.0
            return (outputs * std + mean).tolist()  # type: ignore[no-any-return]
        z = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        probs = z / z.sum(axis=1, keepdims=True)
        classes = self.schema.classes or tuple(str(i) for i in range(probs.shape[1]))
        return [
            {
                "label": classes[int(p.argmax())],
                "probabilities": dict(zip(classes, p.tolist(), strict=True)),
            }
            for p in probs
        ]


def numpy_forward(net: Any, model: LoadedModel) -> Any:
    """``TabularMLP``'s forward pass as float32 numpy operations, or None when the network is
    not a plain stack of embeddings, ``Linear``, ``ReLU`` (and ``Dropout``, the identity when
    serving).

    For one row the torch module spends several times the arithmetic in per-operator dispatch
    (docs/serving.md); numpy's matrix products on the same float32 weights cost a fraction of
    it. The result is checked against the module on 64 random rows when the model loads
    (largest difference of the outputs under 1e-5, else None: torch serves)."""
    import numpy as np
    import torch
    from torch import nn

    mlp = getattr(net, "mlp", None)
    embeddings = getattr(net, "embeddings", None)
    if not isinstance(mlp, nn.Sequential) or not isinstance(embeddings, nn.ModuleList):
        return None
    layers: list[tuple[Any, Any] | None] = []  # (weight.T, bias) or None for a ReLU
    for layer in mlp:
        if isinstance(layer, nn.Linear) and layer.bias is not None:
            w = layer.weight.detach().numpy().astype(np.float32)
            layers.append((np.ascontiguousarray(w.T), layer.bias.detach().numpy().copy()))
        elif isinstance(layer, nn.ReLU):
            layers.append(None)
        elif not isinstance(layer, nn.Dropout):
            return None
    tables = [e.weight.detach().numpy().copy() for e in embeddings if isinstance(e, nn.Embedding)]
    if len(tables) != len(embeddings):
        return None
    squeeze = getattr(net, "n_outputs", 1) == 1

    def forward(num: Any, cat: Any) -> Any:
        h = (
            num
            if not tables
            else np.concatenate([num, *(t[cat[:, i]] for i, t in enumerate(tables))], axis=1)
        )
        for step in layers:
            if step is None:
                np.maximum(h, 0.0, out=h)
            else:
                h = h @ step[0]
                h += step[1]
        out = h.astype(np.float64)
        return out[:, 0] if squeeze else out

    rng = np.random.default_rng(0)
    n_num = len(model.means)
    probe_num = rng.normal(size=(64, n_num)).astype(np.float32)
    probe_cat = (
        np.stack([rng.integers(0, t.shape[0], size=64) for t in tables], axis=1)
        if tables
        else np.zeros((64, 0), dtype=np.int64)
    )
    try:
        want = model.torch_forward(torch.from_numpy(probe_num), torch.from_numpy(probe_cat))
        got = forward(probe_num, probe_cat)
    except Exception:  # a shape this code does not know: torch serves
        return None
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-5):
        return None
    return forward


# -- adaptive batching -------------------------------------------------------------------------
class Overloaded(RuntimeError):
    """The batcher cannot answer within ``max_latency_ms``: the request is shed (HTTP 503)."""


@dataclass
class _Item:
    num: Any
    cat: Any
    future: asyncio.Future[Any]


class AdaptiveBatcher:
    """Scores requests one by one while the forward pass is cheap, and batches them once it is
    not: the adaptive batching of the served model.

    The cost of a pass is measured as it runs (an average of its CPU time, so a busy machine
    does not make it look dearer). Cheaper than ``inline_ms``, a request's rows are scored at
    once on the event loop: a queue or a thread hop would cost more than the pass, and batching
    would save nothing. Dearer, requests queue: one pass at a time runs in a thread (so the
    loop parses the next requests meanwhile) on every row waiting when it starts, at most
    ``max_batch_rows`` rows; no timer waits for company, so a lone request is not delayed.

    Load shedding: a request whose expected wait (the passes ahead of it times the recent wall
    time of a pass) exceeds ``max_latency_ms`` is refused at once with :class:`Overloaded`
    (HTTP 503), so the queue never holds more than can be answered in time.
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        max_batch_rows: int = 64,
        max_latency_ms: float = 250.0,
        inline_ms: float = 0.5,
    ) -> None:
        self.model = model
        self.max_batch_rows = max_batch_rows
        self.max_latency_s = max_latency_ms / 1000.0
        self.inline_s = inline_ms / 1000.0
        self.queue: deque[_Item] = deque()
        self.queued_rows = 0
        self.cpu_s = 0.0  # average CPU time of one pass, seconds
        self.wall_s = 0.0  # average wall time of one pass, seconds
        self.running = False
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlx-forward")
        self.batch_rows: list[int] = []  # sizes of recent passes, for the metrics
        self._drainer: asyncio.Future[None] | None = None

    @property
    def batching(self) -> bool:
        """Whether requests queue for batched passes (the pass is dearer than ``inline_ms``)."""
        return self.cpu_s > self.inline_s

    def expected_wait_s(self, rows: int) -> float:
        """Seconds until a request of ``rows`` rows would be answered, from the queue now."""
        passes = math.ceil((self.queued_rows + rows) / self.max_batch_rows)
        return (passes + (1 if self.running else 0)) * self.wall_s

    def _timed_forward(self, num: Any, cat: Any) -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        out = self.model.forward(num, cat)
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        first = not self.wall_s
        self.cpu_s = cpu if first else 0.8 * self.cpu_s + 0.2 * cpu
        self.wall_s = wall if first else 0.8 * self.wall_s + 0.2 * wall
        self.batch_rows.append(int(num.shape[0]))
        return out

    async def submit(self, num: Any, cat: Any) -> Any:
        """Raw outputs for these rows (float64, ``(n,)`` or ``(n, k)``).

        Raises :class:`Overloaded` when the expected wait exceeds ``max_latency_ms``."""
        if not self.batching and not self.running:
            return self._timed_forward(num, cat)
        rows = int(num.shape[0])
        wait = self.expected_wait_s(rows)
        if wait > self.max_latency_s:
            raise Overloaded(
                f"expected wait {wait * 1000:.0f} ms exceeds max_latency_ms "
                f"{self.max_latency_s * 1000:.0f}"
            )
        loop = asyncio.get_running_loop()
        item = _Item(num, cat, loop.create_future())
        self.queue.append(item)
        self.queued_rows += rows
        if not self.running:
            self.running = True
            self._drainer = asyncio.ensure_future(self._drain())
        return await item.future

    def _take(self) -> list[_Item]:
        batch = [self.queue.popleft()]
        rows = int(batch[0].num.shape[0])
        while self.queue and rows + int(self.queue[0].num.shape[0]) <= self.max_batch_rows:
            item = self.queue.popleft()
            rows += int(item.num.shape[0])
            batch.append(item)
        self.queued_rows -= rows
        return batch

    async def _drain(self) -> None:
        import torch

        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(0)  # the requests parsed in this turn of the loop join
            while self.queue:
                batch = self._take()
                num = batch[0].num if len(batch) == 1 else torch.cat([b.num for b in batch])
                cat = batch[0].cat if len(batch) == 1 else torch.cat([b.cat for b in batch])
                try:
                    if self.batching:
                        out = await loop.run_in_executor(self.pool, self._timed_forward, num, cat)
                    else:
                        out = self._timed_forward(num, cat)
                except Exception as exc:  # the requests fail, the worker goes on
                    for b in batch:
                        if not b.future.done():
                            b.future.set_exception(exc)
                    continue
                at = 0
                for b in batch:
                    n = int(b.num.shape[0])
                    if not b.future.done():
                        b.future.set_result(out[at : at + n])
                    at += n
                await asyncio.sleep(0)  # let the requests that arrived meanwhile queue up
        finally:
            self.running = False
            while self.queue:  # only when the loop above was cancelled or broke
                item = self.queue.popleft()
                self.queued_rows -= int(item.num.shape[0])
                if not item.future.done():
                    item.future.set_exception(RuntimeError("the batcher stopped"))


# -- metrics -----------------------------------------------------------------------------------
class Metrics:
    """The server's Prometheus metrics (names in ``docs/serving.md``).

    Created in the worker after BentoML has set ``PROMETHEUS_MULTIPROC_DIR``, so every worker's
    values are summed in BentoML's ``/metrics``."""

    def __init__(self, model: str, version: str) -> None:
        import prometheus_client as prom

        self.labels = {"model": model, "version": version}
        names = ["model", "version"]
        self.requests = prom.Counter(
            "mlx_serving_requests",
            "Prediction requests answered, by HTTP status (503: shed by adaptive batching).",
            [*names, "status"],
        )
        self.duration = prom.Histogram(
            "mlx_serving_request_duration_seconds",
            "Time from a prediction request's arrival in the worker to its answer (seconds), "
            "every status.",
            [*names, "status"],
            buckets=LATENCY_BUCKETS_S,
        )
        self.rows = prom.Counter(
            "mlx_serving_rows", "Rows predicted (requests answered 200).", names
        )
        self.batch = prom.Histogram(
            "mlx_serving_batch_rows",
            "Rows per forward pass (adaptive batching).",
            names,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )
        self.shed = prom.Counter(
            "mlx_serving_shed_requests",
            "Prediction requests refused with 503 to shed load (also in mlx_serving_requests "
            "status 503), by reason: inflight (the worker's max_inflight limit, before BentoML's "
            "middlewares) or queue (the expected wait exceeded max_latency_ms).",
            [*names, "reason"],
        )
        self.info = prom.Gauge(
            "mlx_serving_model_info",
            "1 for the model version this server serves (labels: package tag, sha256).",
            [*names, "package", "artifact_sha256"],
            multiprocess_mode="max",
        )
        self.frozen = prom.Gauge(
            "mlx_serving_gc_frozen_objects",
            "Objects a worker moved out of the garbage collector's view after loading "
            "(gc.freeze), the smallest over the live workers; 0: its full collections scan the "
            "whole heap (0.1-0.5 s pauses).",
            names,
            multiprocess_mode="livemin",
        )
        self._children: dict[int, tuple[Any, Any]] = {}

    def observe(self, status: int, seconds: float, rows: int = 0) -> None:
        child = self._children.get(status)
        if child is None:
            labels = {**self.labels, "status": str(status)}
            child = (self.requests.labels(**labels), self.duration.labels(**labels))
            self._children[status] = child
        child[0].inc()
        child[1].observe(seconds)
        if rows:
            self.rows.labels(**self.labels).inc(rows)

    def observe_shed(self, reason: str, seconds: float = 0.0) -> None:
        """Count one request shed for ``reason`` (``inflight`` or ``queue``) as a 503."""
        self.shed.labels(**self.labels, reason=reason).inc()
        self.observe(503, seconds)

    def observe_batches(self, sizes: list[int]) -> None:
        hist = self.batch.labels(**self.labels)
        for n in sizes:
            hist.observe(n)
        sizes.clear()


# -- the app -----------------------------------------------------------------------------------
class Admission:
    """Back-pressure for one worker, by Little's law: a request arriving while ``inflight``
    others are inside the handler is expected to wait ``inflight x interval``, where
    ``interval`` is the recent time between answers while busy (HTTP, parsing, the forward
    pass and the machine's contention all included). Above ``max_latency_ms`` it is answered
    503 at once and counted. Requests only wait inside the handler for a batched forward pass,
    so this guards the batched path (where a 503 costs a fraction of a pass); the batcher adds
    its own estimate (passes queued ahead x pass time).

    Not shed on the event loop's lag: measured (docs/serving.md), answering 503 through
    BentoML's server costs about three quarters of answering 200 for a small model, so under a
    closed loop of clients shedding by lag turned most answers into 503s without shortening
    the queue (64 connections: 24 answers/s instead of 471)."""

    def __init__(self, max_latency_ms: float) -> None:
        self.max_latency_s = max_latency_ms / 1000.0
        self.inflight = 0
        self.interval_s = 0.0
        self.last_done = 0.0

    def expected_wait_s(self) -> float:
        return self.inflight * self.interval_s

    def enter(self) -> bool:
        """Admit a request (True) or shed it (False); an admitted one must :meth:`leave`."""
        if self.expected_wait_s() > self.max_latency_s:
            return False
        self.inflight += 1
        return True

    def leave(self, started: float) -> None:
        now = time.perf_counter()
        gap = now - max(self.last_done, started)  # busy time since the previous answer
        self.interval_s = gap if not self.interval_s else 0.9 * self.interval_s + 0.1 * gap
        self.last_done = now
        self.inflight -= 1


@dataclass
class ServingState:
    """What the app serves; filled by the service's ``__init__`` in each worker."""

    model: LoadedModel | None = None
    batcher: AdaptiveBatcher | None = None
    metrics: Metrics | None = None
    admission: Admission = field(default_factory=lambda: Admission(250.0))
    decoder: RequestDecoder | None = None
    tracer: Any = None
    """The platform's tracer when an exporter is configured (``OTEL_*``), else None: no span."""
    max_body_bytes: int = 1 << 20
    ready: bool = False
    error: str = ""

    def load(
        self,
        folder: str | os.PathLike[str],
        *,
        max_batch_rows: int = 64,
        max_latency_ms: float = 250.0,
        torch_threads: int = 1,
        metrics: bool = True,
        unknown_category: UnknownCategory | None = None,
        max_request_rows: int | None = None,
    ) -> None:
        """Load the package, warm it up with one prediction and mark the state ready;
        ``unknown_category`` and ``max_request_rows`` override the package's schema."""
        import torch

        torch.set_num_threads(torch_threads)
        model = LoadedModel.load(folder)
        update: dict[str, Any] = {}
        if unknown_category is not None:
            update["unknown_category"] = unknown_category
        if max_request_rows is not None:
            update["max_batch_rows"] = max_request_rows
        if update:
            model.schema = model.schema.model_copy(update=update)
        self.model = model
        self.decoder = RequestDecoder(model.schema)
        features = max(1, len(model.schema.features))
        self.max_body_bytes = model.schema.max_batch_rows * (features * 64 + 64) + 4096
        self.batcher = AdaptiveBatcher(
            model, max_batch_rows=max_batch_rows, max_latency_ms=max_latency_ms
        )
        self.admission = Admission(max_latency_ms)
        self.tracer = request_tracer()
        if metrics:
            self.metrics = Metrics(model.meta["model"], model.meta["version_label"])
            self.metrics.info.labels(
                **self.metrics.labels,
                package=model.meta["package_tag"],
                artifact_sha256=model.meta["artifact_sha256"],
            ).set(1)
        from mlx_plugins.model_servers.schema import example_row

        warm = self.decoder.decode(json.dumps({"rows": [example_row(model.schema)]}).encode())
        model.to_predictions(model.forward(*model.featurize(warm)))  # warm-up
        self.ready = True

    def freeze_heap(self) -> int:
        """Move every object this process holds now (the imported libraries, the model,
        BentoML's service) into the garbage collector's permanent generation
        (:func:`gc.freeze`, after one full collection), so later full collections scan only
        what requests create. Returns the number of objects frozen; also the
        ``mlx_serving_gc_frozen_objects`` gauge.

        Why: a worker holds about 0.4 million objects once torch, BentoML and the model are
        loaded, and a full (generation 2) collection over them stops the event loop for
        0.1-0.5 s on a shared 2-core machine, every few tens of thousands of requests
        (``docs/serving.md``, "Why the direct tails were wrong"). Call it once, in the worker,
        after :meth:`load`: frozen objects are never collected (they stay until the process
        exits), so freezing in a long-lived process that keeps creating garbage would leak."""
        gc.collect()
        gc.freeze()
        count = gc.get_freeze_count()
        if self.metrics is not None:
            self.metrics.frozen.labels(**self.metrics.labels).set(count)
        return count


STATE = ServingState()
"""This worker's state (one per process)."""

SPAN_NAME = "mlx.serving.predict"
"""The span of one prediction request (see :func:`trace_request`)."""


def request_tracer() -> Any:
    """The platform's tracer (:mod:`mlx_plugins.kernel.telemetry`, configured from the
    ``OTEL_*`` variables) when it exports spans, else None: without an exporter the request
    path makes no span at all (one ``is None`` check per request).

    Raises
    ------
    RuntimeError
        OTLP export is asked for but its exporter package is not installed (the message names
        it).
    """
    from mlx_plugins.kernel import telemetry

    tracer = telemetry.configure()
    return tracer if telemetry._STATE.exporting else None


def trace_request(
    tracer: Any,
    headers: Any,
    start_ns: int,
    *,
    model: str,
    version: str,
    rows: int,
    status: int,
) -> None:
    """Record one prediction request as a SERVER span ``mlx.serving.predict`` from
    ``start_ns`` (Unix ns) to now, continuing the caller's trace: its parent is the W3C
    ``traceparent`` header (and ``tracestate``) of the request when present, else it starts a
    trace. Attributes: ``mlx.model``, ``mlx.version`` (``v0003``), ``mlx.rows`` (rows predicted,
    0 unless 200) and ``http.response.status_code``; a 5xx other than 503 (shed load) marks the
    span as an error."""
    from opentelemetry.trace import SpanKind, Status, StatusCode

    carrier: dict[str, str] = {}
    parent = headers.get("traceparent")
    if parent:
        carrier["traceparent"] = parent
        state = headers.get("tracestate")
        if state:
            carrier["tracestate"] = state
    context = _propagator().extract(carrier) if carrier else None
    span = tracer.start_span(
        SPAN_NAME,
        context=context,
        kind=SpanKind.SERVER,
        start_time=start_ns,
        attributes={
            "mlx.model": model,
            "mlx.version": version,
            "mlx.rows": rows,
            "http.request.method": "POST",
            "url.path": "/predict",
            "http.response.status_code": status,
        },
    )
    if status >= 500 and status != 503:
        span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
    span.end()


@functools.cache
def _propagator() -> Any:
    """W3C trace context (imported on first use: the plugin module imports this one)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


def _json(body: Any, status: int = 200) -> Any:
    from starlette.responses import Response

    return Response(
        json.dumps(body, separators=(",", ":"), allow_nan=False),
        status_code=status,
        media_type="application/json",
    )


def build_app(state: ServingState = STATE) -> Any:
    """The ASGI app serving ``state``: ``POST /predict``, ``GET /schema`` (the request schema
    as JSON) and ``GET /`` (what is served). Health, readiness and metrics are BentoML's
    routes on the same server."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    async def predict(request: Request) -> Any:
        start = time.perf_counter()
        start_ns = time.time_ns()
        status, rows = 500, 0
        admission = state.admission
        if not admission.enter():
            status = 503
            if state.metrics is not None:
                state.metrics.observe_shed("queue", time.perf_counter() - start)
            if state.tracer is not None and state.model is not None:
                meta = state.model.meta
                trace_request(
                    state.tracer,
                    request.headers,
                    start_ns,
                    model=str(meta.get("model", "")),
                    version=str(meta.get("version_label", "")),
                    rows=0,
                    status=503,
                )
            wait_ms = admission.expected_wait_s() * 1000
            return _json(
                {
                    "error": f"overloaded: expected wait {wait_ms:.0f} ms exceeds "
                    f"max_latency_ms {admission.max_latency_s * 1000:.0f}; retry"
                },
                503,
            )
        try:
            response, status, rows = await _predict(request)
            return response
        except Exception as exc:  # nothing a request does may take the worker down
            log.exception("prediction failed")
            status = 500
            return _json({"error": f"internal error: {type(exc).__name__}"}, 500)
        finally:
            admission.leave(start)
            if state.metrics is not None:
                if status == 503:
                    state.metrics.shed.labels(**state.metrics.labels, reason="queue").inc()
                state.metrics.observe(status, time.perf_counter() - start, rows)
                if state.batcher is not None and state.batcher.batch_rows:
                    state.metrics.observe_batches(state.batcher.batch_rows)
            elif state.batcher is not None:
                state.batcher.batch_rows.clear()  # no metrics: keep the list from growing
            if state.tracer is not None:
                meta = state.model.meta if state.model is not None else {}
                trace_request(
                    state.tracer,
                    request.headers,
                    start_ns,
                    model=str(meta.get("model", "")),
                    version=str(meta.get("version_label", "")),
                    rows=rows,
                    status=status,
                )

    async def _predict(request: Request) -> tuple[Any, int, int]:
        model, batcher = state.model, state.batcher
        if not state.ready or model is None or batcher is None:
            return _json({"error": "the model is not loaded yet; retry"}, 503), 503, 0
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > state.max_body_bytes:
            return (
                _json(
                    {
                        "error": f"request body of {length} bytes is larger than this model "
                        f"accepts ({state.max_body_bytes} bytes, at most "
                        f"{model.schema.max_batch_rows} rows); split the batch"
                    },
                    413,
                ),
                413,
                0,
            )
        body = await request.body()
        if len(body) > state.max_body_bytes:
            return _json({"error": "request body too large; split the batch"}, 413), 413, 0
        assert state.decoder is not None
        try:
            rows = state.decoder.decode(body)
        except RequestError as exc:
            return _json({"detail": exc.detail}, 422), 422, 0
        if len(rows) > model.schema.max_batch_rows:
            return (
                _json(
                    {
                        "error": f"{len(rows)} rows in one request; this model accepts at "
                        f"most {model.schema.max_batch_rows}: split the batch"
                    },
                    413,
                ),
                413,
                0,
            )
        try:
            num, cat = model.featurize(rows)
        except RowError as exc:
            return _json({"detail": exc.detail}, 422), 422, 0
        try:
            outputs = await batcher.submit(num, cat)
        except Overloaded as exc:
            return _json({"error": f"overloaded: {exc}; retry"}, 503), 503, 0
        body_out = {
            "model": model.meta["model"],
            "version": model.meta["version_label"],
            "predictions": model.to_predictions(outputs),
        }
        return _json(body_out), 200, len(rows)

    async def schema(request: Request) -> Any:
        if state.model is None:
            return _json({"error": "the model is not loaded yet"}, 503)
        return _json(state.model.schema.model_dump(mode="json"))

    async def index(request: Request) -> Any:
        meta = state.model.meta if state.model is not None else {}
        return _json(
            {
                "model": meta.get("model"),
                "version": meta.get("version_label"),
                "package": meta.get("package_tag"),
                "ready": state.ready,
                "endpoints": ["POST /predict", "GET /schema", "/healthz", "/readyz", "/metrics"],
            }
        )

    return Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/schema", schema, methods=["GET"]),
            Route("/", index, methods=["GET"]),
        ]
    )


__all__ = [
    "STATE",
    "AdaptiveBatcher",
    "LoadedModel",
    "Metrics",
    "Overloaded",
    "RequestDecoder",
    "RequestError",
    "RowError",
    "ServingState",
    "build_app",
    "request_schema",
]

"""The parent <-> DDP worker protocol of ``local_torch``: the job goes to the workers as a Pipes
extra (:class:`DDPJob`), rank 0's per-epoch metrics and result come back as custom Pipes
messages (:class:`DDPEpochMessage`, :class:`DDPResultMessage`).

Only a DDP training run imports this module (``LocalTorchPlatform``'s DDP path and
``ddp_worker``): loading the code location does not create these classes
(docs/lifecycle_component.md, "Load time"). They stay importable from
``mlx_plugins.ml_platforms.local_torch``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field

from mlx_plugins.ml_platforms.base import EpochStats, Task


class DDPJob(BaseModel):
    """Everything a DDP worker needs; sent as the ``mlx_ddp`` Pipes extra."""

    model_config = ConfigDict(defer_build=True, frozen=True, extra="forbid")

    train_path: str
    valid_path: str
    target: str
    artifact_dir: str
    task: Task = "binary"
    classes: list[str] = Field(default_factory=list)
    preprocessing: dict[str, Any]
    loop: dict[str, Any]
    """``torch_mlp.LoopConfig`` fields (hidden, epochs, batch size, optimizer, precision)."""
    embedding_dim: int
    device: Literal["cuda", "cpu"]
    pin_memory: bool = False
    num_threads: int | None = None


class DDPEpochMessage(BaseModel):
    """Custom Pipes message sent by rank 0 after each epoch."""

    model_config = ConfigDict(defer_build=True)

    kind: Literal["epoch"] = "epoch"
    epoch: EpochStats


class DDPResultMessage(BaseModel):
    """Custom Pipes message sent by rank 0 once the artifact is saved."""

    model_config = ConfigDict(defer_build=True)

    kind: Literal["result"] = "result"
    artifact_path: str
    history: list[EpochStats]
    world_size: int
    backend: str
    device: str
    replica_divergence: float
    """Largest weight difference between ranks after training (0 when the replicas agree)."""


class _EpochForwardingReader(dg.PipesTempFileMessageReader):
    """The default temp-file reader, also handing each epoch message to a callback as it lands."""

    def __init__(self, on_message: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self._on_message = on_message

    @property
    def expected_writer_count(self) -> int:
        return 1  # rank 0 alone writes messages

    @contextmanager
    def read_messages(self, handler: Any) -> Iterator[Any]:
        with super().read_messages(_ForwardingHandler(handler, self._on_message)) as params:
            yield params


class _ForwardingHandler:
    def __init__(self, inner: Any, on_message: Callable[[dict[str, Any]], None]) -> None:
        self._inner = inner
        self._on_message = on_message

    def handle_message(self, message: dict[str, Any]) -> None:
        self._inner.handle_message(message)
        if message.get("method") != "report_custom_message":
            return
        payload = (message.get("params") or {}).get("payload")
        if isinstance(payload, dict):
            try:
                self._on_message(payload)
            except Exception as exc:  # never kill the reader thread: later messages matter
                context = getattr(self._inner, "_context", None)
                if context is not None:
                    context.log.warning(f"[ddp] epoch callback failed: {exc!r}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

"""The cluster side of ``databricks`` training: runs on the Databricks driver under Dagster Pipes.

Started by the entry script that ``DatabricksPlatform`` uploads to DBFS (a
``spark_python_task``), with this package imported from the uploaded zip of ``mlx_plugins``.
It reads the job (a :class:`RemoteJob`, the ``mlx_databricks`` Pipes extra), the training and
validation frames (parquet on DBFS), trains with ``local_torch``'s own ``train`` (in this
process, no DDP), reports each epoch as a Pipes log line and a custom message, copies the
artifact to DBFS (temporary name, then rename) and reports the result. A
:class:`~mlx_plugins.ml_platforms.base.TrainingDataError` or
:class:`~mlx_plugins.ml_platforms.base.TrainingDivergedError` is reported as a typed message
(the caller raises the same class) before the task fails.

DBFS is reached through its FUSE mount, ``/dbfs`` on a cluster (``MLX_DBFS_FUSE_ROOT``
overrides it: the loopback server maps DBFS to a local folder). Pipes parameters come from the
environment (``new_cluster.spark_env_vars``) or, on an existing cluster, from the command line.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

EXTRA = "mlx_databricks"
"""The Pipes extra that carries the :class:`RemoteJob`."""
TRACEPARENT_EXTRA = "traceparent"
"""The Pipes extra with the W3C ``traceparent`` of the caller's plugin-call span: the cluster's
spans continue that trace (its environment is the cluster's, not the caller's)."""
FUSE_ROOT_ENV = "MLX_DBFS_FUSE_ROOT"
INTERVAL_ARG = "--mlx-message-interval"


class RemoteJob(BaseModel):
    """What the cluster trains: sent as the ``mlx_databricks`` Pipes extra."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    train_path: str
    """``dbfs:/.../train.parquet``."""
    valid_path: str
    spec: dict[str, Any]
    """The ``TrainingSpec`` fields (``artifact_dir`` is replaced by a local folder)."""
    torch: dict[str, Any]
    """``LocalTorchPlatform`` config (isolation and DDP are forced off on the cluster)."""
    artifact_path: str
    """``dbfs:/.../model.pt``: where the trained artifact goes."""


class EpochMessage(BaseModel):
    kind: Literal["epoch"] = "epoch"
    epoch: dict[str, Any]


class ResultMessage(BaseModel):
    kind: Literal["result"] = "result"
    model: dict[str, Any]
    """The ``TrainedModel`` as trained on the cluster (its local artifact path is moot)."""
    artifact_path: str
    artifact_sha256: str


class TraceMessage(BaseModel):
    """The trace id (32 hex digits) the cluster's span joined: the caller records it on its
    plugin-call span as ``mlx.databricks_trace_id``."""

    kind: Literal["trace"] = "trace"
    trace_id: str


class ErrorMessage(BaseModel):
    kind: Literal["error"] = "error"
    type: str
    message: str


def fuse_path(dbfs_path: str) -> Path:
    """The FUSE path of ``dbfs:/a/b`` on this cluster (``/dbfs/a/b``)."""
    root = os.environ.get(FUSE_ROOT_ENV, "/dbfs")
    return Path(root) / dbfs_path.removeprefix("dbfs:").lstrip("/")


def _pipes_classes() -> tuple[Any, Any]:
    from dagster_pipes import DagsterPipesError, PipesDbfsContextLoader, PipesDbfsMessageWriter

    class FuseContextLoader(PipesDbfsContextLoader):
        """``PipesDbfsContextLoader`` reading through :func:`fuse_path`."""

        @contextmanager
        def load_context(self, params: Any) -> Iterator[Any]:
            import json

            with open(fuse_path(params["path"]), encoding="utf-8") as f:
                yield json.load(f)

    class FuseMessageWriter(PipesDbfsMessageWriter):
        """``PipesDbfsMessageWriter`` writing through :func:`fuse_path`; the cluster log
        location is looked up only where Spark runs (it is extra information)."""

        def make_channel(self, params: Any) -> Any:
            from dagster_pipes import PipesBufferedFilesystemMessageWriterChannel

            return PipesBufferedFilesystemMessageWriterChannel(
                path=str(fuse_path(params["path"])), interval=self.interval
            )

        def get_opened_extras(self) -> Any:
            try:
                return super().get_opened_extras()
            except DagsterPipesError:  # no Spark session here (the loopback cluster)
                return {}

    return FuseContextLoader, FuseMessageWriter


def _interval(argv: list[str]) -> float:
    if INTERVAL_ARG in argv:
        i = argv.index(INTERVAL_ARG)
        if i + 1 < len(argv):
            return float(argv[i + 1])
    return 10.0


def train_remote(job: RemoteJob, pipes: Any) -> None:
    """Train ``job`` with ``local_torch`` and report through ``pipes`` (a ``PipesContext``)."""
    import polars as pl

    from mlx_plugins.ml_platforms.base import EpochStats, TrainingSpec
    from mlx_plugins.ml_platforms.local_torch import LocalTorchPlatform, sha256_file

    train = pl.read_parquet(fuse_path(job.train_path))
    valid = pl.read_parquet(fuse_path(job.valid_path))
    plugin = LocalTorchPlatform(**{**job.torch, "isolation": "none", "distributed": "off"})
    pipes.log.info(
        f"[databricks] training on {train.height} rows, validating on {valid.height} "
        f"(python {sys.version.split()[0]}, {os.environ.get('DATABRICKS_RUNTIME_VERSION', '?')})"
    )

    def on_epoch(e: EpochStats) -> None:
        pipes.log.info(
            f"[databricks] epoch {e.epoch}: train_loss={e.train_loss:.4f} "
            f"valid_loss={e.valid_loss:.4f} ({e.samples_per_second:,.0f} samples/s)"
        )
        pipes.report_custom_message(EpochMessage(epoch=e.model_dump(mode="json")).model_dump())

    with tempfile.TemporaryDirectory(prefix="mlx-dbx-model-") as local:
        spec = TrainingSpec.model_validate({**job.spec, "artifact_dir": local})
        with plugin.session():
            model = plugin.train(train, valid, spec, on_epoch=on_epoch)
        target = fuse_path(job.artifact_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(model.artifact_path, tmp)
            os.replace(tmp, target)  # never a half-written model under the final name
        finally:
            tmp.unlink(missing_ok=True)
        digest = sha256_file(target)
    pipes.log.info(f"[databricks] model saved to {job.artifact_path} (sha256 {digest[:12]})")
    result = ResultMessage(
        model=model.model_dump(mode="json"),
        artifact_path=job.artifact_path,
        artifact_sha256=digest,
    )
    pipes.report_custom_message(result.model_dump())


def main(argv: list[str] | None = None) -> None:
    from dagster_pipes import (
        PipesCliArgsParamsLoader,
        PipesEnvVarParamsLoader,
        open_dagster_pipes,
    )

    from mlx_plugins.ml_platforms.base import (
        TrainingDataError,
        TrainingDivergedError,
        UnsupportedTaskError,
    )

    argv = sys.argv if argv is None else argv
    loader_cls, writer_cls = _pipes_classes()
    params = (
        PipesCliArgsParamsLoader()
        if "--dagster-pipes-context" in argv
        else PipesEnvVarParamsLoader()
    )
    with open_dagster_pipes(
        params_loader=params,
        context_loader=loader_cls(),
        message_writer=writer_cls(interval=_interval(argv)),
    ) as pipes:
        if EXTRA not in pipes.extras:
            raise KeyError(f"the Pipes extras lack {EXTRA!r}; submit this through the plugin")
        try:
            with _traced(pipes):
                train_remote(RemoteJob.model_validate(pipes.extras[EXTRA]), pipes)
        except (TrainingDataError, TrainingDivergedError, UnsupportedTaskError) as exc:
            pipes.report_custom_message(
                ErrorMessage(type=type(exc).__name__, message=str(exc)).model_dump()
            )
            raise


@contextmanager
def _traced(pipes: Any) -> Iterator[None]:
    """A span ``databricks.train.remote`` in the caller's trace (the ``traceparent`` extra),
    its trace id reported as a :class:`TraceMessage`; spans are exported as the cluster's
    ``OTEL_*`` variables say (e.g. ``new_cluster.spark_env_vars``) and flushed at the end."""
    from mlx_plugins.kernel import telemetry

    traceparent = pipes.extras.get(TRACEPARENT_EXTRA) or ""
    token = telemetry.attach_parent_from_env({"TRACEPARENT": traceparent})
    try:
        with telemetry.tracer().start_as_current_span(
            "databricks.train.remote",
            attributes={"mlx.databricks_runtime": os.environ.get("DATABRICKS_RUNTIME_VERSION", "")},
        ):
            trace_id = telemetry.current_trace_id()
            if trace_id:
                pipes.report_custom_message(TraceMessage(trace_id=trace_id).model_dump())
            yield
    finally:
        if token is not None:
            telemetry.detach(token)
        telemetry.shutdown()  # flush the exporter before the task process ends


ENTRY_SCRIPT = '''"""MLX trainer entry point (generated by the databricks ml_platform)."""
import os
import sys

_root = os.environ.get("{fuse_env}", "/dbfs")
sys.path.insert(0, os.path.join(_root, {package_zip!r}.removeprefix("dbfs:").lstrip("/")))

from mlx_plugins.ml_platforms.databricks_trainer import main  # noqa: E402

main()
'''
"""The ``spark_python_task`` file: puts the uploaded ``mlx_plugins`` zip first on the path."""


if __name__ == "__main__":  # pragma: no cover - started through ENTRY_SCRIPT
    main()

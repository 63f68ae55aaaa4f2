"""``databricks``: train the tabular MLP as a Databricks job, through Dagster Pipes.

``train`` uploads the training and validation frames (parquet), the ``mlx_plugins`` package
(a zip, cached on DBFS by content hash) and a small entry script to DBFS, then submits one
``spark_python_task`` with dagster-databricks' ``PipesDatabricksClient``. On the cluster,
``databricks_trainer`` trains with ``local_torch``'s own ``train`` (the same code as on a
laptop; new training options and tasks come with it), streams each epoch back through Pipes
(DBFS message chunks: log lines in the run's event log, ``on_epoch`` called per epoch) and
writes ``model.pt`` to DBFS. The artifact is then downloaded into ``spec.artifact_dir``, where
the registry reads it, and checked against the sha256 the cluster reported. Scoring is
local (``local_torch``'s loader). The SDK and dagster-databricks are imported inside methods.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
import time
import uuid
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from mlx_plugins.kernel.base import PluginConfig
from mlx_plugins.kernel.metadata import PluginMetadata
from mlx_plugins.kernel.secrets import redact
from mlx_plugins.ml_platforms.base import (
    EpochCallback,
    EpochStats,
    MLPlatform,
    Task,
    TrainedModel,
    TrainingDataError,
    TrainingDivergedError,
    TrainingSpec,
    UnsupportedTaskError,
    check_spec,
)
from mlx_plugins.ml_platforms.local_torch import LocalTorchPlatform

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

TASK_KEY = "mlx_train"
TRAINER_LIBRARIES = (
    "dagster",
    "polars",
    "pydantic",
    "pyyaml",
    "opentelemetry-sdk",
    "prometheus-client",
)
"""What the trainer imports besides torch (preinstalled on ML runtimes); pinned to this
environment's versions unless ``libraries`` says otherwise."""
GPU_NODE_PATTERN = re.compile(
    r"^(g4dn|g5|g6e?|p3|p4d|p4de|p5)\.|^Standard_N[CDV]|^a2-|^a3-|^g2-", re.IGNORECASE
)
SPARK_VERSION_PATTERN = re.compile(r"^\d+\.\d+\.x-(cpu-ml|gpu-ml)-scala\d+\.\d+\Z")
NODE_TYPE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
"""A node type id as clouds spell them: i3.xlarge, Standard_NC6s_v3, n1-highmem-4, a2-highgpu-1g."""


class DatabricksError(RuntimeError):
    """A Databricks call or run that failed; the message names the run, its page and the fix."""


class DatabricksAuthError(DatabricksError):
    """The workspace refused the token (HTTP 401/403)."""


class ClusterSpec(PluginConfig):
    """A job cluster (``new_cluster`` of the submitted task), created for the run and gone after.

    ``spark_version`` must be a Databricks ML runtime (``15.4.x-cpu-ml-scala2.12``,
    ``15.4.x-gpu-ml-scala2.12``): torch is preinstalled only there. A GPU node type
    (``g5.xlarge``, ``Standard_NC6s_v3``, ``a2-highgpu-1g`` ...) needs the ``gpu-ml`` runtime.
    ``num_workers: 0`` is a single-node cluster (the driver trains; the Spark single-node
    profile is set for you).
    """

    spark_version: str = Field(default="15.4.x-cpu-ml-scala2.12")
    node_type_id: str = Field(default="i3.xlarge", min_length=1)
    driver_node_type_id: str | None = None
    num_workers: int = Field(default=0, ge=0, le=1000)
    autotermination_minutes: int | None = Field(
        default=None,
        ge=10,
        le=43200,
        description="All-purpose clusters only; a job cluster ends with its run anyway.",
    )
    spark_env_vars: dict[str, str] = Field(default_factory=dict)
    custom_tags: dict[str, str] = Field(default_factory=dict)
    policy_id: str | None = None

    @field_validator("spark_version")
    @classmethod
    def _ml_runtime(cls, v: str) -> str:
        if not SPARK_VERSION_PATTERN.match(v):
            raise ValueError(
                f"spark_version {v!r} is not a Databricks ML runtime; use e.g. "
                "'15.4.x-cpu-ml-scala2.12' or '15.4.x-gpu-ml-scala2.12' (torch is "
                "preinstalled only on ML runtimes)"
            )
        return v

    @field_validator("node_type_id", "driver_node_type_id")
    @classmethod
    def _node_type(cls, v: str | None, info: Any) -> str | None:
        if v is not None and not NODE_TYPE_PATTERN.fullmatch(v):
            raise ValueError(
                f"{info.field_name} {v!r} is not a node type id; write one as the workspace lists "
                "it (Compute > Create compute, or `databricks clusters list-node-types`), e.g. "
                "i3.xlarge, g5.xlarge, Standard_DS3_v2, Standard_NC6s_v3, n1-standard-4"
            )
        return v

    @model_validator(mode="after")
    def _gpu_runtime(self) -> ClusterSpec:
        for field in ("node_type_id", "driver_node_type_id"):
            node = getattr(self, field)
            if node and GPU_NODE_PATTERN.search(node) and "-gpu-ml-" not in self.spark_version:
                fix = self.spark_version.replace("-cpu-ml-", "-gpu-ml-")
                raise ValueError(
                    f"{field} {node!r} is a GPU node type but spark_version "
                    f"{self.spark_version!r} is a CPU runtime; use {fix!r}"
                )
        return self

    def request(self) -> dict[str, Any]:
        """The ``new_cluster`` object of the Jobs API."""
        out: dict[str, Any] = {
            "spark_version": self.spark_version,
            "node_type_id": self.node_type_id,
            "num_workers": self.num_workers,
            "spark_env_vars": dict(self.spark_env_vars),
            "custom_tags": dict(self.custom_tags),
        }
        for key in ("driver_node_type_id", "autotermination_minutes", "policy_id"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.num_workers == 0:
            out["spark_conf"] = {
                "spark.databricks.cluster.profile": "singleNode",
                "spark.master": "local[*]",
            }
            out["custom_tags"] = {**out["custom_tags"], "ResourceClass": "SingleNode"}
        return out

    def lineage(self) -> dict[str, Any]:
        """The spec for lineage: environment variable names only (their values may be
        secrets)."""
        out = self.request()
        out["spark_env_vars"] = sorted(self.spark_env_vars)
        return out


class DatabricksPlatform(MLPlatform):
    """Trains on a Databricks job cluster (or an existing cluster) through Dagster Pipes."""

    metadata: ClassVar[PluginMetadata] = PluginMetadata(
        name="databricks",
        kind="ml_platform",
        version="0.1.0",
        capabilities=("train:tabular_mlp", "predict", "pipes:dbfs", "remote"),
        description="PyTorch MLP trained as a Databricks job (dagster-databricks Pipes); "
        "the same training code as local_torch.",
    )

    host: str = Field(
        description="Workspace URL, e.g. https://adb-1234567890123456.7.azuredatabricks.net",
    )
    token: str = Field(
        description="Personal access token; give it as {env: DATABRICKS_TOKEN}.",
        min_length=1,
        json_schema_extra={"secret": True},
    )
    new_cluster: ClusterSpec = Field(
        default_factory=ClusterSpec,
        description="The job cluster created for each run (unless existing_cluster_id).",
    )
    existing_cluster_id: str | None = Field(
        default=None, description="Run on this all-purpose cluster instead of a job cluster."
    )
    dbfs_root: str = Field(
        default="dbfs:/tmp/mlx",
        description="DBFS folder for the trainer package, the frames and the artifacts.",
    )
    libraries: list[str] | None = Field(
        default=None,
        description="pip requirements installed on the cluster; default: the trainer's "
        "dependencies pinned to this environment's versions (torch comes with the ML runtime).",
    )
    torch: dict[str, Any] = Field(
        default_factory=dict,
        description="local_torch config for the trainer (epochs, hidden, batch_size, "
        "learning_rate, seed, ...).",
    )
    poll_interval_s: float = Field(
        default=5.0, gt=0, le=300, description="Seconds between run-state polls."
    )
    timeout_s: int = Field(
        default=3600, ge=1, description="The run is cancelled and the step fails after this."
    )
    http_timeout_s: float = Field(default=60.0, gt=0, description="Per HTTP request.")
    retry_timeout_s: int = Field(
        default=120,
        ge=0,
        description="How long the SDK retries one call on transient errors (connection "
        "refused, 429, 503) before failing; the health check retries at most 5 s.",
    )
    keep_remote_files: bool = Field(
        default=False, description="Keep the run's frames and artifact on DBFS afterwards."
    )
    model_cache_size: int = Field(default=4, ge=1)

    supported_tasks: ClassVar[tuple[Task, ...]] = LocalTorchPlatform.supported_tasks
    """Whatever local_torch trains: the cluster runs its ``train``."""

    _client: Any = PrivateAttr(default=None)
    _scorer: Any = PrivateAttr(default=None)

    @field_validator("torch")
    @classmethod
    def _torch_config(cls, v: dict[str, Any]) -> dict[str, Any]:
        from mlx_plugins.ml_platforms.local_torch import LocalTorchPlatform

        unknown = sorted(set(v) - set(LocalTorchPlatform.model_fields) - {"mlx_env"})
        if unknown:
            raise ValueError(
                f"unknown local_torch field(s) {unknown}; valid: "
                f"{sorted(f for f in LocalTorchPlatform.model_fields if f != 'mlx_env')}"
            )
        LocalTorchPlatform(**v)  # the same validation (and errors) as for local_torch
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/]+/?$", v):
            raise ValueError(
                f"host {v!r} is not a workspace URL; write it with its scheme and without a "
                "path, e.g. https://adb-1234567890123456.7.azuredatabricks.net"
            )
        return v.rstrip("/")

    @field_validator("dbfs_root")
    @classmethod
    def _dbfs_root(cls, v: str) -> str:
        if not re.match(r"^dbfs:/[A-Za-z0-9_./-]+$", v) or ".." in v.split("/"):
            raise ValueError(
                f"dbfs_root {v!r} is not a DBFS folder; write e.g. dbfs:/tmp/mlx (letters, "
                "digits, _ . / -)"
            )
        return v.rstrip("/")

    @model_validator(mode="after")
    def _one_cluster(self) -> DatabricksPlatform:
        if self.existing_cluster_id and self.new_cluster != ClusterSpec():
            raise ValueError(
                "new_cluster and existing_cluster_id are both set; keep one: new_cluster for a "
                "job cluster per run, existing_cluster_id for an all-purpose cluster"
            )
        return self

    # -- lifecycle --------------------------------------------------------------------------
    def open(self) -> None:
        if self._client is None:
            self._client = self._workspace_client(self.retry_timeout_s)

    def _workspace_client(self, retry_timeout_s: int) -> Any:
        from databricks.sdk import WorkspaceClient
        from databricks.sdk.config import Config

        return WorkspaceClient(
            config=Config(
                host=self.host,
                token=self.token,
                auth_type="pat",
                http_timeout_seconds=self.http_timeout_s,
                retry_timeout_seconds=retry_timeout_s,
            )
        )

    def close(self) -> None:
        if self._scorer is not None:
            self._scorer.close()
        self._scorer = None
        self._client = None

    @property
    def client(self) -> Any:
        """The ``databricks.sdk.WorkspaceClient`` (after :meth:`open`)."""
        if self._client is None:
            self.open()
        return self._client

    def _probe(self) -> str:
        client = self._workspace_client(min(self.retry_timeout_s, 5))  # a health check is quick
        with self._api("checking the token"):
            me = client.current_user.me()
            detail = f"Databricks {self.host} as {me.user_name}"
            if self.existing_cluster_id:
                cluster = client.clusters.get(cluster_id=self.existing_cluster_id)
                state = getattr(cluster.state, "value", cluster.state)
                detail += f", cluster {self.existing_cluster_id} {state}"
                return detail
        with self._api("listing the workspace's node types and runtimes"):
            node_types = client.clusters.list_node_types().node_types or []
            versions = client.clusters.spark_versions().versions or []
        self._check_offered(
            {n.node_type_id for n in node_types if n.node_type_id},
            {v.key for v in versions if v.key},
        )
        c = self.new_cluster
        return f"{detail}, new_cluster {c.node_type_id} on {c.spark_version} offered"

    def _check_offered(self, node_types: set[str], versions: set[str]) -> None:
        """Refuse a ``new_cluster`` whose node types or runtime the workspace does not offer
        (an empty listing is not checked), naming the field, close matches and the fix."""
        import difflib

        c = self.new_cluster
        wanted = [("node_type_id", c.node_type_id, node_types)]
        if c.driver_node_type_id:
            wanted.append(("driver_node_type_id", c.driver_node_type_id, node_types))
        ml = {v for v in versions if SPARK_VERSION_PATTERN.match(v)}
        wanted.append(("spark_version", c.spark_version, ml))
        problems = []
        for name, value, offered in wanted:
            if offered and value not in offered:
                close = difflib.get_close_matches(value, sorted(offered), n=3, cutoff=0.5)
                hint = f" (close: {', '.join(close)})" if close else ""
                problems.append(
                    f"new_cluster.{name} {value!r} is not offered by this workspace{hint}"
                )
        if problems:
            raise DatabricksError(
                f"Databricks at {self.host}: {'; '.join(problems)}. Fix: set it in the "
                "composition to one the workspace lists (`databricks clusters "
                "list-node-types` / `databricks clusters spark-versions`, ML runtimes only)"
            )

    @contextmanager
    def _api(self, doing: str) -> Iterator[None]:
        """Turn SDK errors into errors naming what was being done and the fix."""
        from databricks.sdk.errors import DatabricksError as SdkError
        from databricks.sdk.errors import PermissionDenied, Unauthenticated

        try:
            yield
        except (PermissionDenied, Unauthenticated) as exc:
            raise DatabricksAuthError(
                f"Databricks at {self.host} refused the token while {doing} "
                f"({type(exc).__name__}: {exc}); set a valid personal access token as the "
                "ml_platform's `token` (e.g. token: {env: DATABRICKS_TOKEN})"
            ) from None
        except SdkError as exc:
            if (
                exc.error_code == "INVALID_PARAMETER_VALUE"
                and self.existing_cluster_id
                and (self.existing_cluster_id in str(exc))
            ):
                raise DatabricksError(
                    f"existing_cluster_id {self.existing_cluster_id!r}: {exc}; fix "
                    "existing_cluster_id or remove it to use new_cluster"
                ) from None
            raise DatabricksError(
                f"Databricks at {self.host} failed while {doing}: {type(exc).__name__}: {exc}"
            ) from exc
        except OSError as exc:  # connection refused, DNS, TLS
            raise DatabricksError(
                f"cannot reach Databricks at {self.host} while {doing}: {exc}; check `host`"
            ) from exc

    # -- training ---------------------------------------------------------------------------
    def _libraries(self) -> list[str]:
        if self.libraries is not None:
            return list(self.libraries)
        from importlib.metadata import PackageNotFoundError, version

        out = []
        for name in TRAINER_LIBRARIES:
            try:
                out.append(f"{name}=={version(name)}")
            except PackageNotFoundError:
                out.append(name)
        return out

    def _task(self, entry: str, interval: float) -> Any:
        from databricks.sdk.service import compute, jobs

        task: dict[str, Any] = {
            "task_key": TASK_KEY,
            "spark_python_task": {
                "python_file": entry,
                "parameters": ["--mlx-message-interval", f"{interval:g}"],
            },
            "libraries": [{"pypi": {"package": p}} for p in self._libraries()],
        }
        if self.existing_cluster_id:
            task["existing_cluster_id"] = self.existing_cluster_id
        else:
            task["new_cluster"] = self.new_cluster.request()
        spec = jobs.SubmitTask.from_dict(task)
        assert all(isinstance(lib, compute.Library) for lib in spec.libraries or [])
        return spec

    def cluster_lineage(self) -> dict[str, Any]:
        if self.existing_cluster_id:
            return {"existing_cluster_id": self.existing_cluster_id}
        return {"new_cluster": self.new_cluster.lineage()}

    def _upload_package(self) -> str:
        """Upload the ``mlx_plugins`` zip unless DBFS has it already; its ``dbfs:/`` path."""
        data, digest = package_zip()
        path = f"{self.dbfs_root}/packages/mlx_plugins-{digest[:16]}.zip"
        from databricks.sdk.errors import NotFound

        try:
            status = self.client.dbfs.get_status(path)
            if status.file_size == len(data):
                return path
        except NotFound:
            pass
        self.client.dbfs.upload(path, io.BytesIO(data), overwrite=True)
        return path

    def _upload_frame(self, df: pl.DataFrame, path: str) -> None:
        buf = io.BytesIO()
        df.write_parquet(buf, compression="zstd")
        buf.seek(0)
        self.client.dbfs.upload(path, buf, overwrite=True)

    def train(
        self,
        train: pl.DataFrame,
        valid: pl.DataFrame,
        spec: TrainingSpec,
        on_epoch: EpochCallback | None = None,
        *,
        context: Any = None,
    ) -> TrainedModel:
        """Train on Databricks; see :meth:`MLPlatform.train`.

        Besides the kind's errors: :class:`DatabricksAuthError` (the token was refused),
        :class:`DatabricksError` (a failed, cancelled or vanished run: its state message,
        its error line and its run page), ``TimeoutError`` (not done within ``timeout_s``:
        the run is cancelled). An interrupted step (Dagster run termination, Ctrl-C) cancels
        the run before the step ends.
        """
        from mlx_plugins.ml_platforms import torch_mlp as tm

        if train.height == 0:
            raise ValueError("the training frame is empty; widen the training window")
        check_spec(spec, self.supported_tasks)  # the same checks as local_torch, before upload
        for name, df in (("training", train), ("validation", valid)):
            tm.check_target(df, spec.target, name, task=spec.task, classes=spec.classes)
            tm.check_numeric_features(df, spec.numeric_features)
        columns = list(
            dict.fromkeys([*spec.numeric_features, *spec.categorical_features, spec.target])
        )
        for name, df in (("training", train), ("validation", valid)):
            missing = [c for c in columns if c not in df.columns]
            if missing:
                raise TrainingDataError(
                    f"the {name} frame lacks the spec's column(s) {missing}; it has "
                    f"{df.columns}. fix: add them to the features or drop them from the spec"
                )
        run_dir = f"{self.dbfs_root}/runs/{time.strftime('%Y%m%d')}-{uuid.uuid4().hex[:12]}"
        job_paths = {
            "train_path": f"{run_dir}/train.parquet",
            "valid_path": f"{run_dir}/valid.parquet",
            "artifact_path": f"{run_dir}/model.pt",
        }
        log = _logger(context)
        try:
            with self._api("uploading the trainer and the frames to DBFS"):
                package = self._upload_package()
                entry = f"{self.dbfs_root}/packages/entry-{package.rsplit('-', 1)[-1][:-4]}.py"
                self._put_text(entry, entry_script(package))
                self._upload_frame(train.select(columns), job_paths["train_path"])
                self._upload_frame(valid.select(columns), job_paths["valid_path"])
            log.info(
                f"[databricks] uploaded {train.height} + {valid.height} rows to {run_dir}; "
                "submitting the training run"
            )
            from mlx_plugins.ml_platforms.databricks_trainer import RemoteJob

            job = RemoteJob(
                spec=spec.model_dump(mode="json"),
                torch=dict(self.torch),
                **job_paths,
            )
            outcome = self._run_pipes(job, entry, on_epoch, context)
            with self._api(f"downloading the model from {job.artifact_path}"):
                path = self._download_artifact(job.artifact_path, spec.artifact_dir)
        finally:
            if not self.keep_remote_files:
                self._delete_quietly(run_dir)
        from mlx_plugins.ml_platforms.local_torch import sha256_file

        digest = sha256_file(path)
        if digest != outcome.result.artifact_sha256:
            path.unlink(missing_ok=True)
            raise DatabricksError(
                f"the downloaded model {path} has sha256 {digest}, but the cluster wrote "
                f"{outcome.result.artifact_sha256}; DBFS changed under the run "
                f"{outcome.run_id} ({outcome.run_url}); train again"
            )
        remote = TrainedModel.model_validate(outcome.result.model)
        params = {
            **remote.params,
            "databricks_run_id": outcome.run_id,
            "databricks_run_url": outcome.run_url,
            "databricks_host": self.host,
            "cluster": self.cluster_lineage(),
            "libraries": self._libraries(),
            "remote_device": remote.device,
        }
        return TrainedModel(
            platform=self.metadata.name,
            artifact_path=str(path),
            artifact_sha256=digest,
            spec=spec,
            preprocessing=remote.preprocessing,
            params=params,
            history=remote.history,
            device=f"databricks:{remote.device}",
        )

    def _put_text(self, path: str, text: str) -> None:
        import base64

        from databricks.sdk.errors import NotFound

        data = text.encode()
        try:
            if self.client.dbfs.get_status(path).file_size == len(data):
                return
        except NotFound:
            pass
        self.client.dbfs.put(path, contents=base64.b64encode(data).decode(), overwrite=True)

    def _download_artifact(self, remote: str, artifact_dir: str) -> Path:
        from mlx_plugins.ml_platforms.local_torch import MODEL_FILE

        folder = Path(artifact_dir)
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / MODEL_FILE
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".model-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out, self.client.dbfs.download(remote) as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            os.replace(tmp, final)  # whole or absent
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return final

    def _delete_quietly(self, path: str) -> None:
        with contextlib.suppress(Exception):  # best effort: the run's outcome is what matters
            self.client.dbfs.delete(path, recursive=True)

    def _run_pipes(
        self,
        job: Any,
        entry: str,
        on_epoch: EpochCallback | None,
        context: Any,
    ) -> _Outcome:

        from mlx_plugins.kernel import telemetry
        from mlx_plugins.ml_platforms.databricks_trainer import (
            EXTRA,
            TRACEPARENT_EXTRA,
            ErrorMessage,
            ResultMessage,
        )

        # the cluster continues this call's trace: the W3C traceparent travels as a Pipes extra
        # (the cluster's environment is its own) and it reports the trace id it joined
        traceparent = telemetry.traceparent_env().get("TRACEPARENT")
        call_span = telemetry.trace_api().get_current_span()
        payloads: list[dict[str, Any]] = []

        def on_message(payload: dict[str, Any]) -> None:
            payloads.append(payload)
            if payload.get("kind") == "trace" and payload.get("trace_id"):
                call_span.set_attribute("mlx.databricks_trace_id", str(payload["trace_id"]))
            if payload.get("kind") == "epoch" and on_epoch is not None:
                on_epoch(EpochStats.model_validate(payload["epoch"]))

        interval = min(self.poll_interval_s, 10.0)
        client = _make_client(self, on_message, interval)
        task = self._task(entry, interval)

        def submit(ctx: Any) -> None:
            with warnings.catch_warnings():  # dagster-databricks' own use of preview APIs
                warnings.simplefilter("ignore", category=dg.PreviewWarning)
                warnings.filterwarnings(  # Dagster's Pipes session reads them, not our code
                    "ignore",
                    message=r"AssetExecutionContext\.(run_id|dagster_run) is deprecated",
                    category=DeprecationWarning,
                )
                _submit(ctx)

        def _submit(ctx: Any) -> None:
            try:
                _run(ctx)
            except BaseException:  # interrupted or failed: never leave the cluster run going
                client.cancel_if_active(ctx)
                raise

        def _run(ctx: Any) -> None:
            client.run(
                context=ctx,
                task=task,
                extras={
                    EXTRA: job.model_dump(mode="json"),
                    **({TRACEPARENT_EXTRA: traceparent} if traceparent else {}),
                },
                submit_args={
                    "run_name": f"mlx-train-{job.artifact_path.rsplit('/', 2)[-2]}",
                    "timeout_seconds": self.timeout_s,
                },
            )

        try:
            if context is not None:
                submit(context)
            else:  # outside Dagster (tests, scripts): Pipes needs a run, so run a one-op job
                failed: list[BaseException] = []

                @dg.op(name="mlx_databricks_train")
                def train_op(context):  # type: ignore[no-untyped-def]  # Dagster reads it
                    try:
                        submit(context)
                    except BaseException as exc:  # raised below, as it was raised here
                        failed.append(exc)

                @dg.job(name="mlx_databricks_train")
                def train_job() -> None:
                    train_op()

                train_job.execute_in_process(
                    run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
                    raise_on_error=True,
                )
                if failed:
                    raise failed[0]
        except BaseException as exc:
            errors = [ErrorMessage.model_validate(p) for p in payloads if p.get("kind") == "error"]
            if errors and errors[-1].type in _TYPED_ERRORS:
                raise _TYPED_ERRORS[errors[-1].type](errors[-1].message) from None
            if type(exc).__name__ == "DagsterPipesExecutionError":
                raise DatabricksError(redact(str(exc))) from None
            from databricks.sdk.errors import DatabricksError as SdkError
            from databricks.sdk.errors import PermissionDenied, Unauthenticated

            if isinstance(exc, (PermissionDenied, Unauthenticated)):
                raise DatabricksAuthError(
                    f"Databricks at {self.host} refused the token while running the training "
                    f"job ({exc}); set a valid personal access token as the ml_platform's `token`"
                ) from None
            if isinstance(exc, SdkError):  # e.g. runs/submit refused the task spec
                raise DatabricksError(
                    f"Databricks at {self.host} refused the training job: "
                    f"{type(exc).__name__}: {exc}; check new_cluster / existing_cluster_id"
                ) from exc
            raise
        results = [ResultMessage.model_validate(p) for p in payloads if p.get("kind") == "result"]
        if not results:
            raise DatabricksError(
                f"Databricks run {client.run_id} ({client.run_url}) succeeded without reporting "
                "a model; see its driver logs"
            )
        return _Outcome(result=results[-1], run_id=client.run_id, run_url=client.run_url)

    # -- scoring (here, with local_torch's loader: the artifact is local_torch's format) -----
    def _local(self) -> Any:
        if self._scorer is None:  # torch loads here, on the first prediction, not at open
            scorer = LocalTorchPlatform(
                device="cpu", isolation="none", model_cache_size=self.model_cache_size
            )
            scorer.open()
            self._scorer = scorer
        return self._scorer

    def predict_proba(self, model: TrainedModel, frame: pl.DataFrame) -> np.ndarray:
        """P(class 1) per row, shape ``(n,)`` float64 (see :meth:`MLPlatform.predict_proba`);
        :class:`UnsupportedTaskError` for multiclass and regression models."""
        result: np.ndarray = self._local().predict_proba(model, frame)
        return result

    def predict(self, model: TrainedModel, frame: pl.DataFrame) -> np.ndarray:
        """Predictions by task, float64 (see :meth:`MLPlatform.predict`)."""
        result: np.ndarray = self._local().predict(model, frame)
        return result


_TYPED_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls for cls in (TrainingDataError, TrainingDivergedError, UnsupportedTaskError)
}


class _Outcome(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    result: Any
    run_id: int | None
    run_url: str | None


def _logger(context: Any) -> Any:
    if context is not None:
        return context.log
    import logging

    return logging.getLogger("mlx.databricks")


def package_zip() -> tuple[bytes, str]:
    """The ``mlx_plugins`` package as a zip (sources and package data, fixed timestamps) and
    the sha256 of its content: the same code gives the same bytes and name."""
    import mlx_plugins

    root = Path(next(iter(mlx_plugins.__path__))).resolve()
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.suffix in (".py", ".yaml", ".html", ".typed")
    )
    buf = io.BytesIO()
    digest = hashlib.sha256()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in files:
            name = "mlx_plugins/" + p.relative_to(root).as_posix()
            data = p.read_bytes()
            digest.update(name.encode() + b"\0" + data + b"\0")
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue(), digest.hexdigest()


def entry_script(package: str) -> str:
    """The ``spark_python_task`` file for a package zip at ``package`` (``dbfs:/...``)."""
    from mlx_plugins.ml_platforms.databricks_trainer import ENTRY_SCRIPT, FUSE_ROOT_ENV

    return ENTRY_SCRIPT.format(fuse_env=FUSE_ROOT_ENV, package_zip=package)


def _make_client(plugin: DatabricksPlatform, on_message: Any, interval: float) -> Any:
    """A ``PipesDatabricksClient`` that forwards custom messages as they land, bounds the run
    by ``timeout_s``, cancels it on any interruption, and fails with the run's page."""
    from dagster._core.errors import DagsterExecutionInterruptedError
    from dagster_databricks import PipesDatabricksClient, PipesDbfsMessageReader
    from databricks.sdk.errors import NotFound
    from databricks.sdk.service import jobs

    from mlx_plugins.ml_platforms.local_torch import _ForwardingHandler

    class Reader(PipesDbfsMessageReader):
        @contextmanager
        def read_messages(self, handler: Any) -> Iterator[Any]:
            with super().read_messages(_ForwardingHandler(handler, on_message)) as params:
                yield params

    class Client(PipesDatabricksClient):
        run_id: int | None = None
        run_url: str | None = None

        def _poll_til_success(self, context: Any, run_id: int) -> None:
            self.run_id = run_id
            deadline = time.monotonic() + plugin.timeout_s
            try:
                run = self._run(run_id)
                self.run_url = run.run_page_url
                context.log.info(f"[databricks] run {run_id} submitted: {self.run_url}")
                last = None
                while True:
                    state = self._state(run_id)
                    if state.life_cycle_state != last:
                        phase = getattr(state.life_cycle_state, "value", state.life_cycle_state)
                        context.log.info(f"[databricks] run {run_id}: {phase}")
                        last = state.life_cycle_state
                    if state.life_cycle_state in (
                        jobs.RunLifeCycleState.TERMINATED,
                        jobs.RunLifeCycleState.SKIPPED,
                        jobs.RunLifeCycleState.INTERNAL_ERROR,
                    ):
                        if state.result_state == jobs.RunResultState.SUCCESS:
                            return
                        if state.result_state == jobs.RunResultState.TIMEDOUT:
                            raise TimeoutError(
                                f"Databricks run {run_id} timed out ({state.state_message}); "
                                f"the run's limit is timeout_s={plugin.timeout_s} s "
                                f"({self.run_url})"
                            )
                        raise DatabricksError(self._failure(run_id, state))
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"Databricks run {run_id} did not finish within timeout_s="
                            f"{plugin.timeout_s} s; it was cancelled ({self.run_url})"
                        )
                    time.sleep(self.poll_interval_seconds)
            except DagsterExecutionInterruptedError:
                raise  # the base class cancels the run and waits for it
            except BaseException as exc:
                if not isinstance(exc, DatabricksError):  # may still run: cancel it
                    self._cancel_quietly(context, run_id)
                raise

        def _state(self, run_id: int) -> Any:
            try:
                return self._get_run_state(run_id)
            except NotFound as exc:
                raise self._disappeared(run_id, exc) from None

        def _run(self, run_id: int) -> Any:
            try:
                return self.client.jobs.get_run(run_id)
            except NotFound as exc:  # deleted between runs/submit and the first runs/get
                raise self._disappeared(run_id, exc) from None

        def _disappeared(self, run_id: int, exc: Exception) -> DatabricksError:
            return DatabricksError(
                f"Databricks run {run_id} disappeared ({exc}): it was deleted or its "
                f"workspace changed ({self.run_url or 'no run page yet'}); materialize "
                "again to retrain"
            )

        def _failure(self, run_id: int, state: Any) -> str:
            result = getattr(state.result_state, "value", state.result_state)
            lifecycle = getattr(state.life_cycle_state, "value", state.life_cycle_state)
            error = ""
            try:
                run = self._run(run_id)
                task_run = next(iter(run.tasks or []), None)
                if task_run is not None and task_run.run_id is not None:
                    out = self.client.jobs.get_run_output(task_run.run_id)
                    error = (out.error or "").strip()
            except Exception:  # the state message below is the essential part
                pass
            text = (
                f"Databricks run {run_id} ended {result or lifecycle}: "
                f"{state.state_message or 'no state message'}"
            )
            if error and error not in text:
                text += f"; error: {error}"
            return redact(f"{text}; run page: {self.run_url}")

        def cancel_if_active(self, context: Any) -> None:
            """Cancel this client's run unless it has ended: the safety net for an interruption
            that surfaced outside ``_poll_til_success`` (Dagster may defer a SIGINT while it
            handles an event, and raise it later, past dagster-databricks' own cancel)."""
            if self.run_id is None:
                return
            try:
                state = self._get_run_state(self.run_id)
            except Exception:  # the run is gone or unreachable: nothing to cancel here
                return
            if state.life_cycle_state not in (
                jobs.RunLifeCycleState.TERMINATING,
                jobs.RunLifeCycleState.TERMINATED,
                jobs.RunLifeCycleState.SKIPPED,
                jobs.RunLifeCycleState.INTERNAL_ERROR,
            ):
                self._cancel_quietly(context, self.run_id)

        def _cancel_quietly(self, context: Any, run_id: int) -> None:
            try:
                context.log.info(f"[databricks] cancelling run {run_id}")
                self.client.jobs.cancel_run(run_id)
                end = time.monotonic() + 60
                while time.monotonic() < end:
                    state = self._get_run_state(run_id)
                    if state.life_cycle_state in (
                        jobs.RunLifeCycleState.TERMINATING,
                        jobs.RunLifeCycleState.TERMINATED,
                        jobs.RunLifeCycleState.SKIPPED,
                        jobs.RunLifeCycleState.INTERNAL_ERROR,
                    ):
                        return
                    time.sleep(self.poll_interval_seconds)
            except Exception as exc:  # cancellation is best effort; the cause is re-raised
                context.log.warning(f"[databricks] could not cancel run {run_id}: {exc}")

    return Client(
        client=plugin.client,
        message_reader=Reader(client=plugin.client, interval=max(0.0, interval - 1)),
        poll_interval_seconds=plugin.poll_interval_s,
        forward_termination=True,
    )


__all__ = [
    "ClusterSpec",
    "DatabricksAuthError",
    "DatabricksError",
    "DatabricksPlatform",
    "entry_script",
    "package_zip",
]

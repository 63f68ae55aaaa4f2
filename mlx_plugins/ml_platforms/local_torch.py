"""``local_torch``: train the tabular MLP with torch on this machine (CPU, CUDA or MPS).

One GPU or the CPU: training runs in the run's own process. Several GPUs: data-parallel (DDP)
workers started by ``torchrun`` under Dagster Pipes, so their logs and per-epoch metrics
stream into the run (see ``ddp_worker``). torch is imported inside methods only: loading the
code location never pays for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from mlx_plugins.kernel.metadata import PluginMetadata
from mlx_plugins.ml_platforms.base import (
    TASKS,
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
    require_binary,
)

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    # the DDP protocol's classes, re-exported through __getattr__ below
    from mlx_plugins.ml_platforms.ddp_protocol import DDPEpochMessage as DDPEpochMessage
    from mlx_plugins.ml_platforms.ddp_protocol import DDPJob as DDPJob
    from mlx_plugins.ml_platforms.ddp_protocol import DDPResultMessage as DDPResultMessage
    from mlx_plugins.ml_platforms.ddp_protocol import (
        _EpochForwardingReader as _EpochForwardingReader,
    )
    from mlx_plugins.ml_platforms.ddp_protocol import _ForwardingHandler as _ForwardingHandler

MODEL_FILE = "model.pt"
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"
DDP_EXTRA = "mlx_ddp"
"""The Pipes extra that carries a :class:`DDPJob` to the workers."""
DDP_WORKER_MODULE = "mlx_plugins.ml_platforms.ddp_worker"

_DDP_PROTOCOL = frozenset(
    {
        "DDPJob",
        "DDPEpochMessage",
        "DDPResultMessage",
        "_EpochForwardingReader",
        "_ForwardingHandler",
    }
)


def __getattr__(name: str) -> Any:
    """The DDP protocol's classes, still importable from here. They live in
    :mod:`mlx_plugins.ml_platforms.ddp_protocol`, imported on first use: only a DDP training
    run needs them, and loading the code location (which imports this module for the plugin
    class) no longer creates them (~1 ms, docs/lifecycle_component.md, "Load time")."""
    if name in _DDP_PROTOCOL:
        from mlx_plugins.ml_platforms import ddp_protocol

        return getattr(ddp_protocol, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_artifact(
    model: Any,
    pre: Any,
    hidden: list[int],
    embedding_dim: int,
    artifact_dir: str,
    task: Task = "binary",
) -> Path:
    """Write ``model.pt`` (weights, architecture, preprocessing) atomically into the folder.

    A binary model's file holds exactly what it held before tasks existed; other tasks add
    ``task`` to the payload and ``n_outputs`` to the architecture (a file without them is a
    binary model with one output)."""
    import torch

    folder = Path(artifact_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MODEL_FILE
    architecture: dict[str, Any] = {
        "n_numeric": len(pre.numeric),
        "cardinalities": pre.cardinalities,
        "hidden": list(hidden),
        "embedding_dim": embedding_dim,
    }
    n_outputs = getattr(model, "n_outputs", 1)
    if n_outputs != 1:
        architecture["n_outputs"] = n_outputs
    payload: dict[str, Any] = {
        "state_dict": model.state_dict(),
        "architecture": architecture,
        "preprocessing": json.dumps(pre.to_dict()),
    }
    if task != "binary":
        payload["task"] = task
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".model-", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class LocalTorchPlatform(MLPlatform):
    """Seeded, reproducible on CPU; picks a GPU automatically when one exists.

    Trains every task (``supported_tasks``): binary (BCE with logits, one output), multiclass
    (cross-entropy, ``k`` outputs) and regression (MSE on the target standardised with the
    training frame's mean and std, mapped back to target units by :meth:`predict`).
    """

    supported_tasks: ClassVar[tuple[Task, ...]] = TASKS

    metadata: ClassVar[PluginMetadata] = PluginMetadata(
        name="local_torch",
        kind="ml_platform",
        version="0.3.0",
        capabilities=(
            "train:tabular_mlp",
            "predict",
            "task:binary",
            "task:multiclass",
            "task:regression",
            "device:auto",
            "bf16",
            "compile",
            "ddp:torchrun",
        ),
        description="PyTorch MLP trained in the run's own process, or with DDP on several GPUs.",
    )

    hidden: list[int] = Field(default=[64, 32], min_length=1)
    epochs: int = Field(default=6, ge=1)
    batch_size: int = Field(default=2048, ge=1, description="Rows per step on CPU/MPS.")
    gpu_batch_size: int | None = Field(
        default=16384,
        ge=1,
        description="Rows per step on CUDA, per process; None uses batch_size. A small MLP is "
        "bound by kernel launches on a GPU, so a larger batch is what makes it fast.",
    )
    learning_rate: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)
    seed: int = 0
    device: str = Field(
        default="auto",
        pattern=DEVICE_PATTERN,
        description="'auto', 'cpu', 'cuda', 'cuda:1', 'mps'.",
    )
    bf16: bool = Field(default=True, description="bf16 autocast on GPUs that support it.")
    compile: bool = Field(default=False, description="torch.compile the model.")
    cuda_graphs: bool = Field(
        default=True,
        description="Replay each full-batch training step from a CUDA graph (CUDA only; "
        "ignored with compile; falls back to eager if capture fails): removes the per-kernel "
        "launch cost that bounds a small MLP (3-6x faster on an H200).",
    )
    pin_memory: bool = Field(
        default=False,
        description="Stage data for the GPU in page-locked host memory (asynchronous copy). "
        "Off by default: for the one-shot copy of a training set, allocating pinned memory "
        "costs more than the faster copy saves (docs/gpu_training.md).",
    )
    distributed: Literal["auto", "off", "always"] = Field(
        default="auto",
        description="DDP through torchrun: 'auto' when more than one GPU is visible and the "
        "asset passed its context; 'always' also on one GPU or on CPU (gloo); 'off' never.",
    )
    nproc_per_node: int | None = Field(
        default=None, ge=1, description="DDP processes; default: one per visible GPU."
    )
    ddp_min_samples: int = Field(
        default=1_000_000_000,
        ge=0,
        description="'auto' starts DDP only for at least this many training samples (rows x "
        "epochs): below it the workers' start-up (~17-19 s on an H200 host) costs more than "
        "the second GPU saves (docs/gpu_training.md).",
    )
    num_threads: int | None = Field(default=None, ge=1, description="CPU threads for torch.")
    embedding_dim: int = Field(default=8, ge=1)
    model_cache_size: int = Field(default=4, ge=1, description="Models kept loaded (LRU).")
    verify_artifacts: bool = Field(default=True, description="Check sha256 before loading.")
    isolation: Literal["process", "none"] = Field(
        default="process",
        description="'process' trains in a child process (from a forkserver that has torch "
        "loaded), so a crash or leak in training cannot take the run down while the run's "
        "other steps stay in-process; 'none' trains in the calling process.",
    )

    _models: OrderedDict[str, Any] = PrivateAttr(default_factory=OrderedDict)

    def open(self) -> None:
        import torch

        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        self._models = OrderedDict()

    def close(self) -> None:
        self._models.clear()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - torch is a core dependency
            pass

    def _probe(self) -> str:
        from mlx_plugins.ml_platforms.torch_mlp import pick_device

        return f"torch device {pick_device(self.device)}"

    # -- training ----------------------------------------------------------------------------
    def effective_batch_size(self, device_type: str) -> int:
        if device_type == "cuda" and self.gpu_batch_size is not None:
            return self.gpu_batch_size
        return self.batch_size

    def loop_config(self, device_type: str = "cpu") -> Any:
        from mlx_plugins.ml_platforms.torch_mlp import LoopConfig

        return LoopConfig(
            hidden=tuple(self.hidden),
            epochs=self.epochs,
            batch_size=self.effective_batch_size(device_type),
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            seed=self.seed,
            bf16=self.bf16,
            compile=self.compile,
            cuda_graphs=self.cuda_graphs,
        )

    def _params(self, device_type: str, **extra: Any) -> dict[str, Any]:
        return {
            **self.loop_config(device_type).__dict__,
            "hidden": list(self.hidden),
            "embedding_dim": self.embedding_dim,
            **extra,
        }

    def ddp_world_size(self, context: Any = None, samples: int | None = None) -> int | None:
        """How many DDP processes ``train`` starts for ``samples`` (rows x epochs), or None to
        train in this process."""
        if self.distributed == "off":
            return None
        import torch

        cpu = self.device == "cpu"
        gpus = torch.cuda.device_count() if torch.cuda.is_available() and not cpu else 0
        if self.distributed == "auto":
            if context is None or self.device not in ("auto", "cuda") or gpus < 2:
                return None
            if samples is not None and samples < self.ddp_min_samples:
                return None
            n = min(self.nproc_per_node or gpus, gpus)
            return n if n > 1 else None
        if context is None:
            raise ValueError(
                "distributed='always' starts DDP workers under Dagster Pipes and needs the "
                "asset's context: call ml_platform.train(..., context=context)"
            )
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(
                f"distributed='always' runs on 'auto', 'cuda' or 'cpu', not device={self.device!r}"
            )
        if gpus == 0:
            if self.device == "cuda":
                raise RuntimeError("distributed='always' with device='cuda' but no GPU is visible")
            if self.nproc_per_node is None:
                raise ValueError("DDP on CPU needs nproc_per_node (no GPUs to count)")
            return self.nproc_per_node
        n = self.nproc_per_node or gpus
        if n > gpus:
            raise ValueError(
                f"nproc_per_node={n} but this run sees {gpus} GPU(s) "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})"
            )
        return n

    def train(
        self,
        train: pl.DataFrame,
        valid: pl.DataFrame,
        spec: TrainingSpec,
        on_epoch: EpochCallback | None = None,
        *,
        context: Any = None,
    ) -> TrainedModel:
        """Fit the MLP; with a Dagster ``context`` and several GPUs, through DDP workers.

        Input is checked first, in this process, whatever the isolation: ``spec.task`` and
        ``spec.classes`` must fit (:func:`~mlx_plugins.ml_platforms.base.check_spec`), every
        label of ``spec.target`` in both frames must fit the task (binary 0 or 1; multiclass an
        integer index below ``len(classes)``; regression a finite number), and numeric
        features must be numbers or booleans (else :class:`TrainingDataError` naming frame,
        column, count and fix).
        NaN and +/-inf feature values are missing values, like nulls (counted per column in
        ``params["non_finite_features"]`` and logged as a warning). A loss that becomes NaN or
        infinite raises :class:`TrainingDivergedError` naming the epoch and the loss, and no
        model is saved."""
        import torch

        from mlx_plugins.ml_platforms import torch_mlp as tm

        if train.height == 0:
            raise ValueError("the training frame is empty; widen the training window")
        check_spec(spec, self.supported_tasks)
        for name, df in (("training", train), ("validation", valid)):
            tm.check_target(df, spec.target, name, task=spec.task, classes=spec.classes)
            tm.check_numeric_features(df, spec.numeric_features)
        non_finite = tm.non_finite_counts(train, spec.numeric_features)
        if non_finite and context is not None:
            context.log.warning(
                f"non-finite feature values treated as missing (rows per column): {non_finite}"
            )
        world = self.ddp_world_size(context, train.height * self.epochs)
        if world is not None:
            return self._train_ddp(train, valid, spec, on_epoch, context, world)
        if self.isolation == "process":
            return _train_in_child_process(self, train, valid, spec, on_epoch)
        torch.manual_seed(self.seed)
        device = tm.pick_device(self.device)
        tm.apply_memory_fraction(device)
        pin = self.pin_memory and device.type == "cuda"
        pre = _fit_preprocessor(train, spec)
        model = tm.TabularMLP(
            len(pre.numeric),
            pre.cardinalities,
            self.hidden,
            self.embedding_dim,
            n_outputs=tm.n_outputs(spec),
        )
        tensors = [
            (*pre.transform(df, pin_memory=pin), _target(df, spec, pre, pin))
            for df in (train, valid)
        ]

        from mlx_plugins.kernel import telemetry

        def forward(r: tm.EpochResult) -> None:
            telemetry.epoch_span(self.metadata.name, r.epoch, r.seconds, r.samples_per_second)
            if on_epoch is not None:
                on_epoch(EpochStats(**r.__dict__))

        cfg = self.loop_config(device.type)
        started = time.perf_counter()
        history = tm.train_loop(model, tensors[0], tensors[1], cfg, device, forward, task=spec.task)
        telemetry.observe_training(
            self.metadata.name, time.perf_counter() - started, train.height * len(history)
        )
        path = self._save(model.cpu(), pre, spec)
        return TrainedModel(
            platform=self.metadata.name,
            artifact_path=str(path),
            artifact_sha256=sha256_file(path),
            spec=spec,
            preprocessing=pre.to_dict(),
            params=self._params(device.type, non_finite_features=non_finite),
            history=tuple(EpochStats(**h.__dict__) for h in history),
            device=str(device),
        )

    def _train_ddp(
        self,
        train: pl.DataFrame,
        valid: pl.DataFrame,
        spec: TrainingSpec,
        on_epoch: EpochCallback | None,
        context: Any,
        world: int,
    ) -> TrainedModel:
        """Fit once in this process, train in ``world`` torchrun workers, return their model."""
        import torch

        from mlx_plugins.kernel.process_identity import with_parent_death
        from mlx_plugins.ml_platforms import torch_mlp as tm
        from mlx_plugins.ml_platforms.ddp_protocol import (
            DDPEpochMessage,
            DDPJob,
            DDPResultMessage,
            _EpochForwardingReader,
        )

        use_cuda = self.device != "cpu" and torch.cuda.is_available()
        device_type = "cuda" if use_cuda else "cpu"
        if use_cuda:
            tm.memory_fraction_from_env()  # a bad value fails here, not in every worker
        pre = _fit_preprocessor(train, spec)
        cfg = self.loop_config(device_type)
        columns = [*pre.columns, spec.target]
        with tempfile.TemporaryDirectory(prefix=f"mlx-ddp-{os.getpid()}-") as tmp:
            paths = {name: str(Path(tmp) / f"{name}.arrow") for name in ("train", "valid")}
            for name, df in (("train", train), ("valid", valid)):
                df.select(columns).write_ipc(paths[name], compression="uncompressed")
            job = DDPJob(
                train_path=paths["train"],
                valid_path=paths["valid"],
                target=spec.target,
                artifact_dir=spec.artifact_dir,
                task=spec.task,
                classes=list(spec.classes),
                preprocessing=pre.to_dict(),
                loop={**cfg.__dict__, "hidden": list(cfg.hidden)},
                embedding_dim=self.embedding_dim,
                device=device_type,
                pin_memory=self.pin_memory,
                num_threads=self.num_threads,
            )

            def on_message(payload: dict[str, Any]) -> None:
                if payload.get("kind") == "epoch" and on_epoch is not None:
                    on_epoch(DDPEpochMessage.model_validate(payload).epoch)

            client = dg.PipesSubprocessClient(message_reader=_EpochForwardingReader(on_message))
            context.log.info(
                f"[ddp] training on {world} {device_type} process(es) through torchrun "
                f"({'nccl' if use_cuda else 'gloo'}), batch {cfg.batch_size} per process"
            )
            invocation = client.run(
                context=context,
                command=with_parent_death(torchrun_command(world)),  # workers die with us
                extras={DDP_EXTRA: job.model_dump(mode="json")},
                env=self._worker_env(),
            )
            custom = invocation.get_custom_messages()
            results = [m for m in custom if isinstance(m, dict) and m.get("kind") == "result"]
            traces = [m for m in custom if isinstance(m, dict) and m.get("kind") == "trace"]
            if traces:  # the trace id rank 0 saw (TRACEPARENT through torchrun): one trace
                from mlx_plugins.kernel import telemetry

                telemetry.trace_api().get_current_span().set_attribute(
                    "mlx.ddp_trace_id", str(traces[-1].get("trace_id", ""))
                )
        if not results:
            raise RuntimeError(
                "the DDP workers exited without reporting a model; see the run's stderr"
            )
        result = DDPResultMessage.model_validate(results[-1])
        path = Path(result.artifact_path)
        return TrainedModel(
            platform=self.metadata.name,
            artifact_path=str(path),
            artifact_sha256=sha256_file(path),
            spec=spec,
            preprocessing=pre.to_dict(),
            params=self._params(
                device_type,
                world_size=result.world_size,
                backend=result.backend,
                replica_divergence=result.replica_divergence,
            ),
            history=tuple(result.history),
            device=result.device,
        )

    def _worker_env(self) -> dict[str, str]:
        import mlx_plugins
        from mlx_plugins.kernel import telemetry

        root = str(Path(next(iter(mlx_plugins.__path__))).resolve().parent)
        env = {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        # W3C TRACEPARENT of the current span (the train call): torchrun hands it to every
        # rank, whose spans continue the run's trace (ddp_worker.main)
        env.update(telemetry.traceparent_env())
        if self.num_threads:
            env["OMP_NUM_THREADS"] = str(self.num_threads)
        return env

    def _save(self, model: Any, pre: Any, spec: TrainingSpec) -> Path:
        return save_artifact(
            model, pre, self.hidden, self.embedding_dim, spec.artifact_dir, spec.task
        )

    # -- scoring -----------------------------------------------------------------------------
    def load(self, model: TrainedModel) -> tuple[Any, Any]:
        """The torch module and preprocessor for ``model``, from a small LRU cache."""
        import torch

        from mlx_plugins.ml_platforms import torch_mlp as tm

        key = model.artifact_sha256
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]  # type: ignore[no-any-return]
        path = Path(model.artifact_path)
        if not path.exists():
            raise FileNotFoundError(f"model artifact {path} is missing; re-materialize the model")
        if self.verify_artifacts and sha256_file(path) != key:
            raise ValueError(f"model artifact {path} does not match its recorded sha256 {key}")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        stored = payload.get("task", "binary")  # files from before tasks are binary
        if stored != model.spec.task:
            raise ValueError(
                f"model artifact {path} holds a {stored} model but its record says task "
                f"{model.spec.task!r}; re-materialize the model"
            )
        outputs = payload["architecture"].get("n_outputs", 1)
        if outputs != tm.n_outputs(model.spec):
            raise ValueError(
                f"model artifact {path} has {outputs} output(s) but its record names "
                f"{len(model.spec.classes)} classes {list(model.spec.classes)}; "
                "re-materialize the model"
            )
        net = tm.TabularMLP(**payload["architecture"])
        net.load_state_dict(payload["state_dict"])
        pre = tm.Preprocessor.from_dict(json.loads(payload["preprocessing"]))
        self._models[key] = (net, pre)
        while len(self._models) > self.model_cache_size:
            self._models.popitem(last=False)
        return net, pre

    def predict_proba(self, model: TrainedModel, frame: pl.DataFrame) -> np.ndarray:
        """P(class 1) per row, shape ``(n,)`` float64, of a binary model (see
        :meth:`MLPlatform.predict_proba`); :class:`UnsupportedTaskError` for other tasks."""
        require_binary(model, "predict_proba")
        return self._predict(model, frame)

    def predict(self, model: TrainedModel, frame: pl.DataFrame) -> np.ndarray:
        """Predictions by task, float64 (see :meth:`MLPlatform.predict`): binary ``(n,)``
        P(class 1); multiclass ``(n, k)`` softmax probabilities; regression ``(n,)`` values in
        target units (``output * target_std + target_mean``)."""
        return self._predict(model, frame)

    def _predict(self, model: TrainedModel, frame: pl.DataFrame) -> np.ndarray:
        from mlx_plugins.ml_platforms import torch_mlp as tm

        if model.spec.task not in self.supported_tasks:  # pragma: no cover - all three are
            raise UnsupportedTaskError(f"local_torch does not predict {model.spec.task!r}")
        net, pre = self.load(model)
        outputs = tm.predict_logits(net, *pre.transform(frame))
        return tm.outputs_to_predictions(outputs, model.spec.task, pre)


def _fit_preprocessor(train: pl.DataFrame, spec: TrainingSpec) -> Any:
    """Feature statistics of ``train``; for regression also the target's mean and std."""
    from mlx_plugins.ml_platforms import torch_mlp as tm

    pre = tm.Preprocessor.fit(train, spec.numeric_features, spec.categorical_features)
    return pre.fit_target(train, spec.target) if spec.task == "regression" else pre


def _target(df: pl.DataFrame, spec: TrainingSpec, pre: Any, pin: bool) -> Any:
    """The target tensor of ``df`` for ``spec.task`` (regression: standardised with ``pre``)."""
    from mlx_plugins.ml_platforms import torch_mlp as tm

    scale = (pre.target_mean, pre.target_std) if spec.task == "regression" else None
    return tm.target_tensor(
        df, spec.target, pin_memory=pin, task=spec.task, classes=spec.classes, scale=scale
    )


def torchrun_command(nproc: int) -> list[str]:
    """``torchrun`` on this interpreter: a single-node rendezvous on a free port."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "--module",
        DDP_WORKER_MODULE,
    ]


# -- process isolation ------------------------------------------------------------------------
# Environment the child must see as the parent does now: the forkserver keeps the environment it
# started with, and the run launcher sets these per run.
_CHILD_ENV = ("CUDA_VISIBLE_DEVICES", "MLX_GPU_MEMORY_FRACTION")
_PRELOAD = [
    "torch",
    "torch._dynamo",  # imported lazily by the first optimizer: 1.3 s in every child otherwise
    "polars",
    "mlx_plugins.ml_platforms.local_torch",
    "mlx_plugins.ml_platforms.torch_mlp",
]


_TYPED_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls for cls in (TrainingDataError, TrainingDivergedError)
}
"""Errors about the input or the training itself: the child sends the message and the parent
raises the same class, so the caller sees what ``isolation='none'`` would raise."""


def _train_in_child_process(
    plugin: LocalTorchPlatform,
    train: pl.DataFrame,
    valid: pl.DataFrame,
    spec: TrainingSpec,
    on_epoch: EpochCallback | None,
) -> TrainedModel:
    """Train in a forked child; epochs stream back as they finish, errors come back whole."""
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("forkserver")
    # The server also imports the main module once; otherwise every child re-imports it.
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    main = ["__main__"] if main_file and os.path.exists(main_file) else []
    ctx.set_forkserver_preload([*main, *_PRELOAD])
    config = {**plugin.model_dump(), "isolation": "none"}
    from mlx_plugins.kernel import telemetry
    from mlx_plugins.kernel.process_identity import parent_env

    # The child dies with this process (mlx_plugins.kernel.process_identity.die_with_parent);
    # its spans join this trace (W3C TRACEPARENT, mlx_plugins.kernel.telemetry).
    env = {
        **{k: os.environ[k] for k in _CHILD_ENV if k in os.environ},
        **parent_env(),
        **telemetry.traceparent_env(),
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"mlx-train-{os.getpid()}-") as tmp:
        paths = (str(Path(tmp) / "train.arrow"), str(Path(tmp) / "valid.arrow"))
        train.write_ipc(paths[0], compression="uncompressed")
        valid.write_ipc(paths[1], compression="uncompressed")
        messages = ctx.Queue()
        child = ctx.Process(
            target=_child_main,
            args=(config, env, paths, spec.model_dump_json(), messages),
            name="mlx-train",
        )
        child.start()
        try:
            while True:
                try:
                    kind, body = messages.get(timeout=1.0)
                except queue_mod.Empty:
                    if not child.is_alive():
                        raise RuntimeError(
                            f"the training process died (exit code {child.exitcode}) before "
                            "returning a model; see the step's stderr"
                        ) from None
                    continue
                if kind == "epoch":
                    if on_epoch is not None:
                        on_epoch(EpochStats.model_validate_json(body))
                elif kind == "trace":  # the child's trace id: the same trace as this call
                    telemetry.trace_api().get_current_span().set_attribute(
                        "mlx.child_trace_id", body
                    )
                elif kind == "result":
                    model = TrainedModel.model_validate_json(body)
                    telemetry.observe_training(
                        plugin.metadata.name,
                        time.perf_counter() - started,
                        train.height * len(model.history),
                    )
                    return model
                elif kind in _TYPED_ERRORS:  # the same error as in-process, by its message
                    raise _TYPED_ERRORS[kind](body)
                else:
                    raise RuntimeError(f"training failed in the child process:\n{body}")
        finally:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()


def _child_main(
    config: dict[str, Any],
    env: dict[str, str],
    paths: tuple[str, str],
    spec_json: str,
    messages: Any,
) -> None:
    os.environ.update(env)
    from mlx_plugins.kernel import telemetry
    from mlx_plugins.kernel.process_identity import die_with_parent

    die_with_parent()  # a kill -9 of the run's process must not leave this child training
    try:  # the forkserver's providers are not this child's to export through
        telemetry.configure(force=True)
    except RuntimeError as exc:  # e.g. OTLP asked for but not installed: say so, whole
        messages.put(("error", str(exc)))
        return
    token = telemetry.attach_parent_from_env(env)
    try:
        with telemetry.tracer().start_as_current_span("local_torch.train.child"):
            messages.put(("trace", telemetry.current_trace_id() or ""))
            _child_train(config, paths, spec_json, messages)
    finally:
        if token is not None:
            telemetry.detach(token)
        telemetry.shutdown()  # flush the child's spans before it exits


def _child_train(
    config: dict[str, Any], paths: tuple[str, str], spec_json: str, messages: Any
) -> None:
    import traceback

    import polars as pl

    try:
        plugin = LocalTorchPlatform(**config)
        with plugin.session():
            model = plugin.train(
                pl.read_ipc(paths[0]),
                pl.read_ipc(paths[1]),
                TrainingSpec.model_validate_json(spec_json),
                on_epoch=lambda e: messages.put(("epoch", e.model_dump_json())),
            )
        messages.put(("result", model.model_dump_json()))
    except (TrainingDataError, TrainingDivergedError) as exc:
        messages.put((type(exc).__name__, str(exc)))
    except BaseException as exc:  # the parent raises it with the child's traceback
        messages.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))

"""One DDP rank of ``local_torch`` training, started by ``torchrun`` under Dagster Pipes.

``python -m torch.distributed.run --standalone --nproc-per-node=N --module
mlx_plugins.ml_platforms.ddp_worker``, with the Pipes bootstrap variables that
``dagster.PipesSubprocessClient`` sets. Every rank reads the job (a :class:`DDPJob`) from the
Pipes extras; rank 0 alone opens the Pipes message channel, logs each epoch, reports the
per-epoch metrics as custom messages and saves the artifact in the single-process format.
Backend: NCCL on CUDA (one GPU per rank, ``cuda:LOCAL_RANK``), gloo on CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from mlx_plugins.ml_platforms.ddp_protocol import DDPEpochMessage, DDPJob, DDPResultMessage
from mlx_plugins.ml_platforms.local_torch import DDP_EXTRA, save_artifact


def _read_extras() -> dict[str, Any]:
    """The Pipes extras, read without opening a message channel (ranks other than 0)."""
    from dagster_pipes import PipesDefaultContextLoader, PipesEnvVarParamsLoader

    params = PipesEnvVarParamsLoader().load_context_params()
    with PipesDefaultContextLoader().load_context(params) as data:
        return dict(data["extras"] or {})


def train_rank(job: DDPJob, rank: int, local_rank: int, world: int, pipes: Any) -> None:
    """Train this rank's shard; on rank 0 report epochs through ``pipes`` and save the model."""
    import polars as pl
    import torch
    import torch.distributed as dist

    from mlx_plugins.ml_platforms import torch_mlp as tm
    from mlx_plugins.ml_platforms.base import EpochStats

    if job.num_threads:
        torch.set_num_threads(job.num_threads)
    if job.device == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    dist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None)
    try:
        tm.apply_memory_fraction(device)
        torch.manual_seed(job.loop["seed"])
        pre = tm.Preprocessor.from_dict(job.preprocessing)
        pin = job.pin_memory and device.type == "cuda"

        scale = (pre.target_mean, pre.target_std) if job.task == "regression" else None

        def load(path: str) -> tuple[Any, Any, Any]:
            df = pl.read_ipc(path)
            target = tm.target_tensor(
                df, job.target, pin_memory=pin, task=job.task, classes=job.classes, scale=scale
            )
            return (*pre.transform(df, pin_memory=pin), target)

        cfg = tm.LoopConfig(**{**job.loop, "hidden": tuple(job.loop["hidden"])})
        n_outputs = len(job.classes) if job.task == "multiclass" else 1
        model = tm.TabularMLP(
            len(pre.numeric), pre.cardinalities, cfg.hidden, job.embedding_dim, n_outputs=n_outputs
        )

        def report(r: tm.EpochResult) -> None:
            stats = EpochStats(**r.__dict__)
            pipes.log.info(
                f"[ddp] epoch {r.epoch}/{cfg.epochs}: train_loss={r.train_loss:.4f} "
                f"valid_loss={r.valid_loss:.4f} ({r.samples_per_second:,.0f} samples/s "
                f"on {world} {device.type} rank(s))"
            )
            pipes.report_custom_message(DDPEpochMessage(epoch=stats).model_dump(mode="json"))

        history = tm.train_loop(
            model,
            load(job.train_path),
            load(job.valid_path),
            cfg,
            device,
            report if rank == 0 else None,
            distributed_sampler=(rank, world),
            task=job.task,
        )
        divergence = tm.replica_divergence(model)  # a collective: every rank takes part
        if rank == 0:
            path = save_artifact(
                model.cpu(), pre, list(cfg.hidden), job.embedding_dim, job.artifact_dir, job.task
            )
            pipes.log.info(f"[ddp] rank 0 saved the model to {path}")
            result = DDPResultMessage(
                artifact_path=str(path),
                history=[EpochStats(**h.__dict__) for h in history],
                world_size=world,
                backend=backend,
                device=f"{device.type} (ddp x{world})",
                replica_divergence=divergence,
            )
            pipes.report_custom_message(result.model_dump(mode="json"))
    finally:
        dist.destroy_process_group()


def main() -> None:
    from mlx_plugins.kernel.process_identity import die_with_parent

    die_with_parent()  # dies with torchrun and with the run's process (MLX_PARENT_PROCESS)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    world = int(os.environ["WORLD_SIZE"])
    if rank == 0:
        from dagster_pipes import open_dagster_pipes

        channel: Any = open_dagster_pipes()
    else:
        channel = nullcontext(None)
    with channel as pipes:
        extras = pipes.extras if pipes is not None else _read_extras()
        if DDP_EXTRA not in extras:
            raise KeyError(f"the Pipes extras lack {DDP_EXTRA!r}; start this through local_torch")
        job = DDPJob.model_validate(extras[DDP_EXTRA])
        with _rank_span(rank, world) as trace_id:
            if pipes is not None:
                pipes.report_custom_message({"kind": "trace", "rank": rank, "trace_id": trace_id})
            train_rank(job, rank, local_rank, world, pipes)


@contextmanager
def _rank_span(rank: int, world: int) -> Iterator[str]:
    """A span ``local_torch.ddp.rank`` continuing the caller's trace (the ``TRACEPARENT`` the
    parent put in torchrun's environment); yields its trace id (32 hex digits, or "")."""
    from mlx_plugins.kernel import telemetry

    telemetry.configure(force=True)  # a RuntimeError (OTLP asked, not installed) fails the rank
    token = telemetry.attach_parent_from_env()
    try:
        attrs = {"mlx.rank": rank, "mlx.world_size": world}
        with telemetry.tracer().start_as_current_span("local_torch.ddp.rank", attributes=attrs):
            yield telemetry.current_trace_id() or ""
    finally:
        if token is not None:
            telemetry.detach(token)
        telemetry.shutdown()  # flush this rank's spans before it exits


if __name__ == "__main__":
    main()

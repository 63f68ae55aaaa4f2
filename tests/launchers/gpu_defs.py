"""Real asset definitions the launcher tests create runs from (loaded by file path in run workers).

Assets record the GPU environment they see in ``<out_dir>/<run_id>.json`` and, when ``hold`` is
set, wait until ``<out_dir>/<run_id>.release`` exists so tests can keep a GPU busy on demand.
"""

import json
import os
import time
from pathlib import Path

from dagster import AssetExecutionContext, Config, Definitions, asset, define_asset_job

ENV_KEYS = (
    "CUDA_VISIBLE_DEVICES",
    "MLX_GPU_COUNT",
    "MLX_GPU_MEMORY_FRACTION",
    "MLX_GPU_MEMORY_GB",
)
HOLD_LIMIT_SECONDS = 300  # safety net so a broken test can't leave run workers behind forever


class ProbeConfig(Config):
    out_dir: str = ""
    hold: bool = False


def _probe(context: AssetExecutionContext, config: ProbeConfig) -> None:
    if not config.out_dir:
        return
    out = Path(config.out_dir)
    seen = {key: os.environ.get(key) for key in ENV_KEYS}
    seen["pid"] = os.getpid()
    tmp = out / f"{context.run_id}.json.tmp"
    tmp.write_text(json.dumps(seen))
    tmp.rename(out / f"{context.run_id}.json")
    if config.hold:
        release = out / f"{context.run_id}.release"
        deadline = time.monotonic() + HOLD_LIMIT_SECONDS
        while not release.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"test never released run {context.run_id}")
            time.sleep(0.1)


@asset(
    pool="gpu",
    op_tags={"mlx/gpu": "1", "mlx/gpu-type": "h100", "mlx/gpu-memory-gb": "40"},
)
def train_model(context: AssetExecutionContext, config: ProbeConfig) -> None:
    _probe(context, config)


@asset
def cpu_features(context: AssetExecutionContext, config: ProbeConfig) -> None:
    _probe(context, config)


@asset(pool="gpu", op_tags={"mlx/gpu": "2", "mlx/gpu-type": "a100"})
def big_model() -> None:
    pass


@asset(pool="gpu")
def pool_only_model() -> None:
    pass


@asset(pool="gpu", op_tags={"mlx/gpu": "0"})
def zero_gpu_model() -> None:
    pass


@asset(pool="gpu", op_tags={"mlx/gpu": "1.5"})
def fractional_gpu_model() -> None:
    pass


defs = Definitions(
    assets=[
        train_model,
        cpu_features,
        big_model,
        pool_only_model,
        zero_gpu_model,
        fractional_gpu_model,
    ],
    jobs=[
        define_asset_job("gpu_job", selection=["train_model"]),
        define_asset_job("cpu_job", selection=["cpu_features"]),
        define_asset_job("mixed_job", selection=["cpu_features", "train_model"]),
        define_asset_job("big_job", selection=["big_model"]),
        define_asset_job("pool_only_job", selection=["pool_only_model"]),
        define_asset_job("zero_gpu_job", selection=["zero_gpu_model"]),
        define_asset_job("fractional_gpu_job", selection=["fractional_gpu_model"]),
        define_asset_job("conflicting_types_job", selection=["train_model", "big_model"]),
    ],
)

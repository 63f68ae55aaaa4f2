"""Subprocess driver for the fault-injection tests: run real MLX work, optionally killed at a point.

``python -m tests.faults._driver job NAME...`` jobs executed in this process (the CLI's way)
``python -m tests.faults._driver train DIR``   local_torch (isolation: process) on a tiny frame
``python -m tests.faults._driver train-ddp DIR``   the same through torchrun (2 CPU workers)
``python -m tests.faults._driver register ROOT ARTIFACT``  one registration in ROOT

``MLX_FAULT_KILL_AT`` picks where this process SIGKILLs itself (a real ``kill -9``: no
``finally`` runs):

* ``partition-write``: at the first rename of a ``raw_weather`` temp file onto its final name
  (every partition of the run has been written to its temp name, none committed).
* ``training``: when the first epoch of the forked training child (or of the DDP workers)
  arrives; the pids of all descendant processes are written to ``$MLX_FAULT_PIDS`` first.
* ``registration``: at the rename of the registry's staging folder onto its version folder.
* ``registration-after-rename``: just after that rename, before the version is recorded.

``MLX_FAULT_MARK`` (a path) is created just before the kill, so a test can tell the point was
reached.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

SMALL_DAYS = [f"2013-01-{d:02d}" for d in range(1, 8)]
SMALL_ENV = {"MLX__PLUGINS__ML_PLATFORM__CONFIG__EPOCHS": "2"}
"""Small configurations for the jobs the driver runs."""


def _die() -> None:
    mark = os.environ.get("MLX_FAULT_MARK")
    if mark:
        Path(mark).write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(point: str) -> None:
    if point == "partition-write":
        from mlx_resources.leftovers import temp_owner

        real_replace = os.replace

        def replace(src, dst, *a, **k):  # type: ignore[no-untyped-def]
            s, d = Path(os.fsdecode(src)), Path(os.fsdecode(dst))
            if temp_owner(s.name)[0] and "raw_weather" in d.parts:
                _die()
            return real_replace(src, dst, *a, **k)

        os.replace = replace  # type: ignore[assignment]
    elif point == "registration":
        real_rename = os.rename

        def rename(src, dst, *a, **k):  # type: ignore[no-untyped-def]
            if re.fullmatch(r"v\d{4}", Path(os.fsdecode(dst)).name):
                _die()
            return real_rename(src, dst, *a, **k)

        os.rename = rename  # type: ignore[assignment]
    elif point == "registration-after-rename":
        real_rename2 = os.rename

        def rename_then_die(src, dst, *a, **k):  # type: ignore[no-untyped-def]
            real_rename2(src, dst, *a, **k)
            if re.fullmatch(r"v\d{4}", Path(os.fsdecode(dst)).name):
                _die()

        os.rename = rename_then_die  # type: ignore[assignment]
    elif point == "training":
        import psutil

        def first_epoch_anywhere(e):  # type: ignore[no-untyped-def]
            pids = [p.pid for p in psutil.Process().children(recursive=True)]
            Path(os.environ["MLX_FAULT_PIDS"]).write_text(" ".join(map(str, pids)))
            _die()

        from mlx_plugins.ml_platforms import local_torch

        real_train = local_torch._train_in_child_process

        def train(plugin, train, valid, spec, on_epoch):  # type: ignore[no-untyped-def]
            return real_train(plugin, train, valid, spec, first_epoch_anywhere)

        local_torch._train_in_child_process = train
        _EPOCH_HOOK["hook"] = first_epoch_anywhere
    elif point:
        raise SystemExit(f"unknown MLX_FAULT_KILL_AT={point!r}")


def main(argv: list[str]) -> int:
    os.environ.update({k: v for k, v in SMALL_ENV.items() if k not in os.environ})
    _arm(os.environ.get("MLX_FAULT_KILL_AT", ""))
    if argv[0] == "job":
        import dagster as dg
        from dagster._core.definitions.reconstruct import ReconstructableRepository

        from mlx_resources.instance_home import ensure_dagster_home

        ensure_dagster_home()
        with dg.DagsterInstance.get() as instance:
            for job in argv[1:]:
                tags = {}
                if job in ("daily", "monitoring"):
                    tags = {
                        "dagster/asset_partition_range_start": SMALL_DAYS[0],
                        "dagster/asset_partition_range_end": SMALL_DAYS[-1],
                    }
                recon = ReconstructableRepository.for_module(
                    "mlx_assets.definitions", "defs", working_directory=None
                ).get_reconstructable_job(job)
                with dg.execute_job(recon, instance, tags=tags) as result:
                    if not result.success:
                        return 1
        return 0
    if argv[0] == "train":
        train_tiny(Path(argv[1]))
        return 0
    if argv[0] == "train-ddp":
        train_ddp_tiny(Path(argv[1]))
        return 0
    if argv[0] == "register":
        register(Path(argv[1]), Path(argv[2]))
        return 0
    raise SystemExit(f"unknown action {argv[0]!r}")


def tiny_frames(n: int = 256) -> tuple[object, object]:
    """A train and a valid frame: two numeric features, one categorical, a 0/1 target."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(0)
    df = pl.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.normal(size=n),
            "c": [f"k{i % 3}" for i in range(n)],
            "y": (rng.random(n) < 0.3).astype(np.int64),
        }
    )
    return df, df.head(64)


def train_tiny(artifact_dir: Path, epochs: int = 1_000_000) -> None:
    """Train in a forked child for (practically) ever: the test kills this process meanwhile."""
    from mlx_plugins.ml_platforms.base import TrainingSpec
    from mlx_plugins.ml_platforms.local_torch import LocalTorchPlatform

    train, valid = tiny_frames()
    plugin = LocalTorchPlatform(epochs=epochs, batch_size=64, hidden=[4], isolation="process")
    spec = TrainingSpec(
        numeric_features=["a", "b"],
        categorical_features=["c"],
        target="y",
        artifact_dir=str(artifact_dir),
    )
    with plugin.session():
        plugin.train(train, valid, spec, on_epoch=lambda e: None)


def train_ddp_tiny(artifact_dir: Path, epochs: int = 1_000_000) -> None:
    """DDP on CPU (torchrun, 2 workers, Dagster Pipes) in an asset, for (practically) ever."""
    import dagster as dg

    from mlx_plugins.ml_platforms.base import TrainingSpec
    from mlx_plugins.ml_platforms.local_torch import LocalTorchPlatform

    train, valid = tiny_frames()
    spec = TrainingSpec(
        numeric_features=["a", "b"],
        categorical_features=["c"],
        target="y",
        artifact_dir=str(artifact_dir),
    )
    on_epoch = _EPOCH_HOOK.get("hook") or (lambda e: None)

    @dg.asset
    def ddp_model(context) -> None:  # type: ignore[no-untyped-def]
        plugin = LocalTorchPlatform(
            epochs=epochs,
            batch_size=64,
            hidden=[4],
            device="cpu",
            distributed="always",
            nproc_per_node=2,
        )
        with plugin.session():
            plugin.train(train, valid, spec, on_epoch=on_epoch, context=context)

    dg.materialize([ddp_model], instance=dg.DagsterInstance.ephemeral())


_EPOCH_HOOK: dict[str, object] = {}


def register(root: Path, artifact: Path) -> None:
    """Register ``artifact`` as a new version of model ``m`` (lineage without a data version)."""
    from mlx_resources.model_registry import ModelLineage, ModelRegistry
    from mlx_resources.process_identity import identity

    ModelRegistry(root=str(root)).register(
        "m",
        artifact,
        "0" * 64,
        {"roc_auc": 0.7},
        {"writer": identity().pid},
        ModelLineage(training_data_version=None, partitions=[]),
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

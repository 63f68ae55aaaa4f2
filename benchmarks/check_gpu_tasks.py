"""GPU check of the training loop's three task losses (not a benchmark: no timings).

On one GPU each task (binary, multiclass, regression) trains 3 epochs with bf16 autocast, with
and without CUDA graphs (the losses must agree: the graphed step is the eager one); on two GPUs
multiclass and regression train through NCCL data parallelism (the replicas must stay equal).
Prints and writes ``$OUT/tasks_gpu.json`` (one record per run: validation losses per epoch,
score on the validation rows: accuracy, or R^2 of the standardised target, output shape,
warnings, replica divergence).

The device image has torch but not polars, pydantic or dagster, which the loop never uses: the
modules ``torch_mlp`` imports are stubbed and it is loaded from its file. Run from the
repository root: ``python3 benchmarks/check_gpu_tasks.py`` (result of 2026-11-30 on 2x H200:
``benchmarks/results/gpu_tasks_h200x2.json``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
import warnings
from typing import Any

for _name in ("polars", "mlx_plugins", "mlx_plugins.ml_platforms"):
    sys.modules.setdefault(_name, types.ModuleType(_name))
_base: Any = types.ModuleType("mlx_plugins.ml_platforms.base")
_base.TrainingDataError = type("TrainingDataError", (ValueError,), {})
_base.TrainingDivergedError = type("TrainingDivergedError", (RuntimeError,), {})
_base.Task, _base.TrainingSpec, _base.check_labels = str, object, (lambda *a, **k: None)
sys.modules["mlx_plugins.ml_platforms.base"] = _base
_spec: Any = importlib.util.spec_from_file_location(
    "torch_mlp", "mlx_plugins/ml_platforms/torch_mlp.py"
)
tm: Any = importlib.util.module_from_spec(_spec)
sys.modules["torch_mlp"] = tm
_spec.loader.exec_module(tm)

import torch  # noqa: E402

TASKS = ("binary", "multiclass", "regression")


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    c = torch.randint(0, 3, (n, 1), generator=g)
    s = torch.stack([2 * x[:, 0], -2 * x[:, 0] + 1.5 * (c[:, 0] == 0), 2 * x[:, 1]], 1)
    cls = torch.multinomial(torch.softmax(s, 1), 1, generator=g)[:, 0]
    amount = 300 * x[:, 0] - 150 * x[:, 1] + 200 * (c[:, 0] == 1)
    amount = amount + 50 * torch.randn(n, generator=g)
    binary = (torch.rand(n, generator=g) < torch.sigmoid(2.5 * x[:, 0])).float()
    ys = {
        "multiclass": cls,
        "regression": ((amount - amount.mean()) / amount.std()).float(),
        "binary": binary,
    }
    return x, c + 1, ys


def score(task: str, out: torch.Tensor, y: torch.Tensor) -> float:
    if task == "multiclass":
        return float((out.argmax(1) == y).float().mean())
    if task == "binary":
        return float(((out > 0).float() == y).float().mean())
    return float(1 - ((out - y) ** 2).mean() / y.var())


def run(
    task: str, device: torch.device, graphs: bool, dist: tuple[int, int] | None = None
) -> dict[str, Any]:
    (x, c, ys), (vx, vc, vys) = data(200_000, 1), data(20_000, 2)
    torch.manual_seed(0)
    model = tm.TabularMLP(3, [3], [64, 32], 8, n_outputs=3 if task == "multiclass" else 1)
    cfg = tm.LoopConfig(hidden=(64, 32), epochs=3, batch_size=16384, cuda_graphs=graphs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hist = tm.train_loop(
            model,
            (x, c, ys[task]),
            (vx, vc, vys[task]),
            cfg,
            device,
            distributed_sampler=dist,
            task=task,
        )
    out = torch.from_numpy(tm.predict_logits(model, vx, vc))
    return {
        "task": task,
        "graphs": graphs,
        "losses": [round(h.valid_loss, 4) for h in hist],
        "score": round(score(task, out, vys[task]), 4),
        "shape": list(out.shape),
        "warnings": [str(m.message)[:120] for m in caught],
        "div": tm.replica_divergence(model) if dist else None,
    }


def rank_main(rank: int, world: int, queue: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl", rank=rank, world_size=world, device_id=device)
    try:
        for task in ("multiclass", "regression"):
            result = run(task, device, True, (rank, world))
            if rank == 0:
                queue.put(result)
    finally:
        torch.distributed.destroy_process_group()


def main() -> None:
    device = torch.device(os.environ.get("CHECK_DEVICE", "cuda"))
    results = [run(t, device, g) for t in TASKS for g in (True, False)]
    if device.type == "cuda" and torch.cuda.device_count() >= 2:
        queue = torch.multiprocessing.get_context("spawn").Queue()
        torch.multiprocessing.start_processes(
            rank_main, args=(2, queue), nprocs=2, start_method="spawn"
        )
        results += [dict(queue.get(), ddp=2) for _ in range(2)]
    text = json.dumps(results, indent=1)
    print(text)
    with open(os.path.join(os.environ.get("OUT", "."), "tasks_gpu.json"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()

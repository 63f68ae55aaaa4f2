"""Quality of ``local_torch`` on the contract kit's multiclass and regression problems (CPU).

The contract's frames (4,000 training rows) and config (3 epochs, ``hidden=[16]``, batch 256),
scored on its 2,000 test rows by ``task_metrics``. Not a benchmark (no timings):
``.venv/bin/python benchmarks/check_task_quality.py`` (figures in ``docs/tasks.md``).
"""

from __future__ import annotations

import tempfile

from mlx_assets.evaluation.metrics import task_metrics
from mlx_plugins.ml_platforms.base import TrainingSpec
from mlx_plugins.ml_platforms.local_torch import LocalTorchPlatform
from mlx_plugins.testing.contracts import TASK_CLASSES, _task_frame


def main() -> None:
    train, valid, test = (_task_frame(n, s) for n, s in ((4000, 1), (1000, 2), (2000, 3)))
    plugin = LocalTorchPlatform(
        epochs=3, hidden=[16], batch_size=256, num_threads=1, device="cpu", isolation="none"
    )
    with plugin.session(), tempfile.TemporaryDirectory() as tmp:
        for task, target in (("multiclass", "cls"), ("regression", "amount")):
            spec = TrainingSpec(
                numeric_features=("x", "z", "noise"),
                categorical_features=("cat",),
                target=target,
                artifact_dir=f"{tmp}/{task}",
                task=task,  # type: ignore[arg-type]
                classes=TASK_CLASSES if task == "multiclass" else (),
            )
            model = plugin.train(train, valid, spec)
            found = task_metrics(
                task, test[target].to_numpy(), plugin.predict(model, test), model.classes
            )  # type: ignore[arg-type]
            print(task, {k: round(v, 4) for k, v in found.items()})


if __name__ == "__main__":
    main()

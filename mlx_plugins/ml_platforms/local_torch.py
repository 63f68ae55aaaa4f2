"""``local_torch``: train the tabular MLP with torch on this machine (CPU, CUDA or MPS).

torch is imported inside methods only: loading the code location never pays for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, PrivateAttr

from mlx_plugins.kernel.metadata import PluginMetadata
from mlx_plugins.ml_platforms.base import (
    EpochCallback,
    EpochStats,
    MLPlatform,
    TrainedModel,
    TrainingSpec,
)

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

MODEL_FILE = "model.pt"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class LocalTorchPlatform(MLPlatform):
    """Seeded, reproducible on CPU; picks a GPU automatically when one exists."""

    metadata: ClassVar[PluginMetadata] = PluginMetadata(
        name="local_torch",
        kind="ml_platform",
        version="0.1.0",
        capabilities=("train:tabular_mlp", "predict", "device:auto", "bf16", "compile"),
        description="PyTorch MLP trained in the run's own process.",
    )

    hidden: list[int] = Field(default=[64, 32], min_length=1)
    epochs: int = Field(default=6, ge=1)
    batch_size: int = Field(default=2048, ge=1)
    learning_rate: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)
    seed: int = 0
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda', 'cuda:1', 'mps'.")
    bf16: bool = Field(default=True, description="bf16 autocast on GPUs that support it.")
    compile: bool = Field(default=False, description="torch.compile the model.")
    num_threads: int | None = Field(default=None, ge=1, description="CPU threads for torch.")
    embedding_dim: int = Field(default=8, ge=1)
    model_cache_size: int = Field(default=4, ge=1, description="Models kept loaded (LRU).")
    verify_artifacts: bool = Field(default=True, description="Check sha256 before loading.")

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
    def loop_config(self) -> Any:
        from mlx_plugins.ml_platforms.torch_mlp import LoopConfig

        return LoopConfig(
            hidden=tuple(self.hidden),
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            seed=self.seed,
            bf16=self.bf16,
            compile=self.compile,
        )

    def train(
        self,
        train: pl.DataFrame,
        valid: pl.DataFrame,
        spec: TrainingSpec,
        on_epoch: EpochCallback | None = None,
    ) -> TrainedModel:
        import torch

        from mlx_plugins.ml_platforms import torch_mlp as tm

        if train.height == 0:
            raise ValueError("the training frame is empty; widen the training window")
        torch.manual_seed(self.seed)
        device = tm.pick_device(self.device)
        tm.apply_memory_fraction(device)
        pre = tm.Preprocessor.fit(train, spec.numeric_features, spec.categorical_features)
        model = tm.TabularMLP(len(pre.numeric), pre.cardinalities, self.hidden, self.embedding_dim)
        tensors = [(*pre.transform(df), tm.target_tensor(df, spec.target)) for df in (train, valid)]

        def forward(r: tm.EpochResult) -> None:
            if on_epoch is not None:
                on_epoch(EpochStats(**r.__dict__))

        history = tm.train_loop(model, tensors[0], tensors[1], self.loop_config(), device, forward)
        path = self._save(model.cpu(), pre, spec)
        return TrainedModel(
            platform=self.metadata.name,
            artifact_path=str(path),
            artifact_sha256=sha256_file(path),
            spec=spec,
            preprocessing=pre.to_dict(),
            params={
                **self.loop_config().__dict__,
                "hidden": list(self.hidden),
                "embedding_dim": self.embedding_dim,
            },
            history=tuple(EpochStats(**h.__dict__) for h in history),
            device=str(device),
        )

    def _save(self, model: Any, pre: Any, spec: TrainingSpec) -> Path:
        import torch

        folder = Path(spec.artifact_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MODEL_FILE
        payload = {
            "state_dict": model.state_dict(),
            "architecture": {
                "n_numeric": len(pre.numeric),
                "cardinalities": pre.cardinalities,
                "hidden": list(self.hidden),
                "embedding_dim": self.embedding_dim,
            },
            "preprocessing": json.dumps(pre.to_dict()),
        }
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".model-", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(payload, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

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
        net = tm.TabularMLP(**payload["architecture"])
        net.load_state_dict(payload["state_dict"])
        pre = tm.Preprocessor.from_dict(json.loads(payload["preprocessing"]))
        self._models[key] = (net, pre)
        while len(self._models) > self.model_cache_size:
            self._models.popitem(last=False)
        return net, pre

    def predict_proba(self, model: TrainedModel, frame: pl.DataFrame) -> np.ndarray:
        import numpy as np

        from mlx_plugins.ml_platforms import torch_mlp as tm

        net, pre = self.load(model)
        logits = tm.predict_logits(net, *pre.transform(frame))
        return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))

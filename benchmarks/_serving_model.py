"""Loading a served package's network for the serving benchmark's baselines (the stock BentoML
service and the FastAPI app), exactly as MLX's server loads it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def load_net(folder: str) -> tuple[torch.nn.Module, np.ndarray, np.ndarray]:
    """The package's network (eval mode) and its feature means and stds (float32)."""
    from mlx_plugins.ml_platforms.torch_mlp import TabularMLP

    payload = torch.load(Path(folder) / "model.pt", map_location="cpu", weights_only=True)
    net = TabularMLP(**payload["architecture"])
    net.load_state_dict(payload["state_dict"])
    net.eval()
    pre = json.loads(payload["preprocessing"])
    return net, np.asarray(pre["means"], np.float32), np.asarray(pre["stds"], np.float32)


def predict(
    net: torch.nn.Module, means: np.ndarray, stds: np.ndarray, x: np.ndarray
) -> list[float]:
    """P(class 1) per row of ``x`` (rows, features), as MLX's server computes it."""
    num = torch.from_numpy((x.astype(np.float32) - means) / stds)
    with torch.inference_mode():
        logits = net(num, torch.zeros((num.shape[0], 0), dtype=torch.int64)).double().numpy()
    return (1.0 / (1.0 + np.exp(-logits))).tolist()

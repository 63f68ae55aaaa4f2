"""The ``model_server`` kind (at most one per platform)."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from mlx_plugins.kernel.base import MLXPlugin


class ModelServer(MLXPlugin):
    @abstractmethod
    def package(self, model_version: Any) -> str:
        """Package a registered model version; returns the package's tag or path."""

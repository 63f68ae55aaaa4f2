"""The model registry: now the ``model_registry`` plugin kind (:mod:`mlx_plugins.model_registries`).

``ModelRegistry`` here is the built-in ``local`` plugin (numbered version folders with an
SQLite index, under the MLX home), kept under its former name for the platform's own modules
(leftover cleaning, tests); asset code takes the kind's base class,
:class:`mlx_plugins.model_registries.base.ModelRegistry`, so that any registry plugin fits.
"""

from __future__ import annotations

from mlx_plugins.model_registries.base import ModelLineage, ModelVersion, identity
from mlx_plugins.model_registries.local import LocalModelRegistry
from mlx_plugins.model_registries.local import LocalModelRegistry as ModelRegistry

__all__ = ["LocalModelRegistry", "ModelLineage", "ModelRegistry", "ModelVersion", "identity"]

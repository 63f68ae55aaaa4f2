"""The built-in ``local`` registry passes the registry contract; it is the default."""

from __future__ import annotations

import pytest

from mlx_plugins.model_registries.local import LocalModelRegistry
from mlx_plugins.testing import ModelRegistryContract


class TestLocalRegistry(ModelRegistryContract):
    @pytest.fixture
    def plugin(self, tmp_path):
        return LocalModelRegistry(root=str(tmp_path / "registry"))


def test_empty_root_is_placed_in_the_home(tmp_path):
    reg = LocalModelRegistry()
    with pytest.raises(ValueError, match=r"plugins\.model_registry\.config\.root"):
        reg.versions("m")
    placed = reg.with_home(tmp_path)
    assert placed.root == str(tmp_path / "registry")
    explicit = LocalModelRegistry(root=str(tmp_path / "elsewhere"))
    assert explicit.with_home(tmp_path) is explicit

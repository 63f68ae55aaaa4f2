"""The ``bentoml`` plugin passes the ``model_server`` contract (mlx_plugins.testing)."""

from __future__ import annotations

from typing import Any

import pytest

from mlx_plugins.testing.server_contract import ModelServerContract


class TestBentoMLServer(ModelServerContract):
    @pytest.fixture
    def plugin(self, serving_home) -> Any:
        from mlx_plugins.model_servers.bentoml_server import BentoMLServer

        return BentoMLServer(home=str(serving_home / "bentoml"), die_with_caller=True)

    @pytest.fixture
    def registered(self, tiny_version, tiny_registry) -> Any:
        return tiny_version, tiny_registry

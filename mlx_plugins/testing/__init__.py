"""Contract tests every plugin, ours or a third party's, runs to prove it meets its kind.

Usage in a plugin package's tests::

    from mlx_plugins.testing import DataSourceContract

    class TestMySource(DataSourceContract):
        @pytest.fixture
        def plugin(self):
            return MySource(bucket="...")

pytest collects the inherited ``test_*`` methods. The kit is also a pytest plugin (registered
through the ``pytest11`` entry point) that adds the ``--mlx-contract-kind`` option's fixtures.
"""

from mlx_plugins.testing.contracts import (
    DataSourceContract,
    DriftDetectorContract,
    LLMProviderContract,
    MLPlatformContract,
    PluginContract,
)
from mlx_plugins.testing.registry_contract import ModelRegistryContract
from mlx_plugins.testing.server_contract import ModelServerContract

__all__ = [
    "DataSourceContract",
    "DriftDetectorContract",
    "LLMProviderContract",
    "MLPlatformContract",
    "ModelRegistryContract",
    "ModelServerContract",
    "PluginContract",
]

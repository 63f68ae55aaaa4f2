"""The ``model_registry`` contract: register, get by version and by alias, list, immutability,
concurrent registration, and identical registration as a no-op."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mlx_plugins.testing.contracts import PluginContract


def _lineage(data_version: str | None, **code_versions: str) -> Any:
    from mlx_plugins.model_registries.base import ModelLineage

    return ModelLineage(
        training_data_version=data_version,
        partitions=["2024-01-01", "2024-01-02"],
        partition_data_versions={"2024-01-01": "d1", "2024-01-02": "d2"},
        code_versions=code_versions,
        window={"train": ["2024-01-01", "2024-01-02"]},
        run_id="run-1",
    )


def _artifact(folder: Path, content: bytes) -> tuple[Path, str]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model-{hashlib.sha256(content).hexdigest()[:8]}.pt"
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


class ModelRegistryContract(PluginContract):
    """Provide a ``plugin`` fixture returning a registry. Each test registers a model of its
    own name (``contract_<test>``), so the storage may be shared between tests (a tracking
    server that is slow to start), as long as it starts empty of those names."""

    model_name = "contract_model"

    @pytest.fixture(autouse=True)
    def _own_model_name(self, request: Any) -> None:
        self.model_name = f"contract_{request.node.name}".replace("[", "_").replace("]", "")

    def _register(self, plugin: Any, tmp: Path, content: bytes, lineage: Any, **kw: Any) -> Any:
        path, sha = _artifact(tmp / "src", content)
        metrics = kw.pop("metrics", {"roc_auc": 0.75, "log_loss": 0.5})
        config = kw.pop("config", {"epochs": 3, "hidden": [16, 8]})
        return plugin.register_once(self.model_name, path, sha, metrics, config, lineage)

    def test_register_and_get_by_version(self, plugin: Any, tmp_path: Path) -> None:
        with plugin.session():
            assert plugin.versions(self.model_name) == []
            assert plugin.latest(self.model_name) is None
            v1, created1 = self._register(plugin, tmp_path, b"first model", _lineage("a"))
            v2, created2 = self._register(
                plugin, tmp_path, b"second model", _lineage("b"), metrics={"roc_auc": 0.8}
            )
            assert created1 and created2
            assert (v1.version, v2.version) == (1, 2)
            assert v1.model == self.model_name
            got = plugin.get(self.model_name, 1)
            assert got == v1
            assert got.metrics == {"roc_auc": 0.75, "log_loss": 0.5}
            assert got.config == {"epochs": 3, "hidden": [16, 8]}
            assert got.lineage == _lineage("a")
            assert got.artifact_sha256 == hashlib.sha256(b"first model").hexdigest()
            assert [v.version for v in plugin.versions(self.model_name)] == [1, 2]
            assert plugin.latest(self.model_name) == v2
            out = plugin.download_artifact(got, tmp_path / "download")
            assert Path(out).read_bytes() == b"first model"
            with pytest.raises(KeyError, match="no version 3"):
                plugin.get(self.model_name, 3)

    def test_aliases(self, plugin: Any, tmp_path: Path) -> None:
        with plugin.session():
            v1, _ = self._register(plugin, tmp_path, b"one", _lineage("a"))
            v2, _ = self._register(plugin, tmp_path, b"two", _lineage("b"))
            assert plugin.aliases(self.model_name) == {}
            plugin.set_alias(self.model_name, "champion", 1)
            plugin.set_alias(self.model_name, "challenger", 2)
            assert plugin.get_by_alias(self.model_name, "champion") == v1
            assert plugin.get_by_alias(self.model_name, "challenger") == v2
            plugin.set_alias(self.model_name, "champion", 2)  # promotion moves the alias
            assert plugin.aliases(self.model_name) == {"champion": 2, "challenger": 2}
            with pytest.raises(KeyError, match="no alias 'staging'"):
                plugin.get_by_alias(self.model_name, "staging")
            with pytest.raises(KeyError, match="no version 9"):
                plugin.set_alias(self.model_name, "champion", 9)
            with pytest.raises(ValueError, match="alias 'v1' is not valid"):
                plugin.set_alias(self.model_name, "v1", 1)

    def test_versions_are_immutable(self, plugin: Any, tmp_path: Path) -> None:
        with plugin.session():
            v1, _ = self._register(plugin, tmp_path, b"original bytes", _lineage("a"))
            # the caller's file changing afterwards does not change the registered artifact
            source, _ = _artifact(tmp_path / "src", b"original bytes")
            source.write_bytes(b"tampered")
            self._register(plugin, tmp_path, b"other bytes", _lineage("b"))
            again = plugin.get(self.model_name, 1)
            assert again == v1
            out = plugin.download_artifact(again, tmp_path / "d")
            assert Path(out).read_bytes() == b"original bytes"
            assert not hasattr(plugin, "delete") and not hasattr(plugin, "update")

    def test_identical_registration_is_a_noop(self, plugin: Any, tmp_path: Path) -> None:
        with plugin.session():
            v1, created = self._register(plugin, tmp_path, b"m", _lineage("a", model="c1"))
            same, again = self._register(plugin, tmp_path, b"m", _lineage("a", model="c1"))
            assert created and not again
            assert same == v1
            # another code version or config is another version
            v2, c2 = self._register(plugin, tmp_path, b"m", _lineage("a", model="c2"))
            v3, c3 = self._register(plugin, tmp_path, b"m", _lineage("a", model="c1"), config={})
            assert c2 and c3 and (v2.version, v3.version) == (2, 3)
            # no training-set data version: nothing can be proven identical
            n1, _ = self._register(plugin, tmp_path, b"m", _lineage(None))
            n2, _ = self._register(plugin, tmp_path, b"m", _lineage(None))
            assert (n1.version, n2.version) == (4, 5)

    def test_concurrent_registration(self, plugin: Any, tmp_path: Path) -> None:
        n = 6
        with plugin.session():

            def distinct(i: int) -> Any:
                return self._register(
                    plugin, tmp_path / str(i), f"model {i}".encode(), _lineage(f"d{i}")
                )

            with ThreadPoolExecutor(n) as pool:
                made = list(pool.map(distinct, range(n)))
            assert all(created for _, created in made)
            numbers = sorted(v.version for v, _ in made)
            assert numbers == list(range(1, n + 1)), "each registration gets its own number"
            by_number = {v.version: v for v, _ in made}
            for number, v in by_number.items():
                assert plugin.get(self.model_name, number) == v

            def identical(i: int) -> Any:
                return self._register(plugin, tmp_path / f"same{i}", b"same", _lineage("same"))

            with ThreadPoolExecutor(n) as pool:
                same = list(pool.map(identical, range(n)))
            assert sum(created for _, created in same) == 1
            assert len({v.version for v, _ in same}) == 1
            assert len(plugin.versions(self.model_name)) == n + 1

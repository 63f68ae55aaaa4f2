"""The registry numbers versions, never overwrites one, and leaves nothing half-written."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from mlx_resources.model_registry import ModelLineage, ModelRegistry

LINEAGE = ModelLineage(training_data_version="abc", partitions=["2013-01-01"])


def _artifact(tmp_path, content: bytes):
    path = tmp_path / f"model-{len(content)}.pt"
    path.write_bytes(content)
    return path


def test_versions_are_numbered_and_immutable(tmp_path):
    reg = ModelRegistry(root=str(tmp_path / "registry"))
    v1 = reg.register("m", _artifact(tmp_path, b"one"), "sha1", {"auc": 0.7}, {}, LINEAGE)
    v2 = reg.register("m", _artifact(tmp_path, b"two!"), "sha2", {"auc": 0.8}, {}, LINEAGE)
    assert (v1.version, v2.version) == (1, 2)
    assert v1.tag == "m:v0001"
    # the first version's files are untouched by the second
    from pathlib import Path

    assert Path(v1.artifact_path).read_bytes() == b"one"
    body = json.loads((Path(v1.artifact_path).parent / "version.json").read_text())
    assert body["metrics"] == {"auc": 0.7}
    assert [v.version for v in reg.versions("m")] == [1, 2]
    assert reg.latest("m").artifact_sha256 == "sha2"


def test_concurrent_writers_get_distinct_versions(tmp_path):
    reg = ModelRegistry(root=str(tmp_path / "registry"))
    art = _artifact(tmp_path, b"x")
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(reg.register, "m", art, "sha", {}, {}, LINEAGE) for _ in range(6)]
        out = [f.result().version for f in futures]  # re-raises a writer's error
    assert sorted(out) == [1, 2, 3, 4, 5, 6]
    assert [v.version for v in reg.versions("m")] == [1, 2, 3, 4, 5, 6]


def test_failed_registration_leaves_no_version(tmp_path):
    reg = ModelRegistry(root=str(tmp_path / "registry"))
    with pytest.raises(FileNotFoundError):
        reg.register("m", tmp_path / "missing.pt", "sha", {}, {}, LINEAGE)
    folder = tmp_path / "registry" / "m"
    assert not [p for p in folder.iterdir() if p.name.startswith(".v")], "no staging left"
    assert reg.versions("m") == []

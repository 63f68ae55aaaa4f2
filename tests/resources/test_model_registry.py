"""The registry numbers versions, never overwrites one, and leaves nothing half-written."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from mlx_resources.model_registry import ModelLineage, ModelRegistry

LINEAGE = ModelLineage(training_data_version="abc", partitions=["2013-01-01"])


def _lineage(data_version: str | None, **code_versions: str) -> ModelLineage:
    return ModelLineage(
        training_data_version=data_version, partitions=["2013-01-01"], code_versions=code_versions
    )


def _artifact(tmp_path, content: bytes):
    path = tmp_path / f"model-{len(content)}.pt"
    path.write_bytes(content)
    return path


def test_versions_are_numbered_and_immutable(tmp_path):
    reg = ModelRegistry(root=str(tmp_path / "registry"))
    v1 = reg.register("m", _artifact(tmp_path, b"one"), "sha1", {"auc": 0.7}, {}, _lineage("a"))
    v2 = reg.register("m", _artifact(tmp_path, b"two!"), "sha2", {"auc": 0.8}, {}, _lineage("b"))
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
        futures = [
            pool.submit(reg.register, "m", art, "sha", {}, {}, _lineage(f"d{i}")) for i in range(6)
        ]
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


def test_identical_registration_is_a_no_op_naming_the_version(tmp_path):
    """Same training-set data version, code versions and config: no new version."""
    reg = ModelRegistry(root=str(tmp_path / "registry"))
    cfg = {"params": {"epochs": 6}, "window": {"test_end": "2013-10-31"}}
    lin = _lineage("ts1", model="c1", training_set="c2")
    v1, created = reg.register_once("m", _artifact(tmp_path, b"one"), "s1", {"auc": 0.7}, cfg, lin)
    assert created and v1.version == 1
    # the re-run: the same inputs and code (even a retrained artifact with other metrics)
    again, created = reg.register_once(
        "m", _artifact(tmp_path, b"one again"), "s2", {"auc": 0.71}, dict(cfg), lin
    )
    assert not created
    assert again == v1 and again.tag == "m:v0001"
    assert [v.version for v in reg.versions("m")] == [1]
    assert sorted(p.name for p in (tmp_path / "registry" / "m").iterdir()) == ["v0001"]


@pytest.mark.parametrize(
    "change",
    [
        {"lineage": _lineage("ts2", model="c1", training_set="c2")},  # new training data
        {"lineage": _lineage("ts1", model="c9", training_set="c2")},  # new code version
        {"lineage": _lineage("ts1", model="c1")},  # one code version fewer
        {"config": {"params": {"epochs": 7}, "window": {"test_end": "2013-10-31"}}},
        {"config": {"params": {"epochs": 6}, "window": {"test_end": "2013-11-30"}}},
    ],
)
def test_any_difference_registers_a_new_version(tmp_path, change):
    reg = ModelRegistry(root=str(tmp_path / "registry"))
    cfg = {"params": {"epochs": 6}, "window": {"test_end": "2013-10-31"}}
    lin = _lineage("ts1", model="c1", training_set="c2")
    reg.register("m", _artifact(tmp_path, b"one"), "s1", {}, cfg, lin)
    v, created = reg.register_once(
        "m",
        _artifact(tmp_path, b"two"),
        "s2",
        {},
        change.get("config", cfg),
        change.get("lineage", lin),
    )
    assert created and v.version == 2


def test_unknown_training_data_version_is_never_identical(tmp_path):
    reg = ModelRegistry(root=str(tmp_path / "registry"))
    art = _artifact(tmp_path, b"x")
    reg.register("m", art, "s", {}, {}, _lineage(None))
    _, created = reg.register_once("m", art, "s", {}, {}, _lineage(None))
    assert created
    assert [v.version for v in reg.versions("m")] == [1, 2]


def test_concurrent_identical_registrations_give_one_version(tmp_path):
    reg = ModelRegistry(root=str(tmp_path / "registry"))
    art = _artifact(tmp_path, b"x")
    lin = _lineage("same", model="c")
    with ThreadPoolExecutor(6) as pool:
        out = list(pool.map(lambda _: reg.register_once("m", art, "s", {}, {}, lin), range(6)))
    assert sorted(created for _, created in out) == [False] * 5 + [True]
    assert {v.version for v, _ in out} == {1}
    assert [v.version for v in reg.versions("m")] == [1]

"""A snapshot of every asset spec: a change to the graph's shape is a reviewed diff.

Regenerate after an intended change with ``MLX_UPDATE_SNAPSHOTS=1 ./dev test tests/assets``.
Code versions are hashes of source files, so the snapshot records only that each asset has one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SNAPSHOT = Path(__file__).with_name("asset_specs.snapshot.json")


def _spec_table(defs) -> dict[str, dict]:
    graph = defs.resolve_asset_graph()
    out = {}
    for key in sorted(graph.get_all_asset_keys()):
        node = graph.get(key)
        checks = sorted(c.name for c in graph.get_check_keys_for_assets([key]))
        spec = node.assets_def.get_asset_spec(key) if node.is_materializable else None
        out[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "partitions": type(node.partitions_def).__name__ if node.partitions_def else None,
            "backfill_policy": str(node.backfill_policy.policy_type)
            if node.backfill_policy
            else None,
            "kinds": sorted(spec.kinds) if spec else [],
            "has_code_version": bool(node.code_version),
            "pool": (node.pools and sorted(p for p in node.pools if p)) or None,
            "checks": checks,
            "blocking_checks": sorted(c.name for c in node.assets_def.check_specs if c.blocking),
            "retry": bool(node.assets_def.op.retry_policy) if node.is_executable else False,
            "io_manager": node.assets_def.get_io_manager_key_for_asset_key(key),
            "owners": list(spec.owners) if spec else [],
        }
    return out


def test_asset_specs_match_snapshot():
    """Every lifecycle instance of the repository (mlx.yaml names the data of both)."""
    from mlx_assets.build import build_definitions
    from mlx_plugins.kernel.composition import load_composition

    repo = Path(__file__).resolve().parents[2]
    defs = build_definitions(load_composition(repo / "mlx.yaml", environ={}))
    actual = _spec_table(defs)
    if os.environ.get("MLX_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    assert SNAPSHOT.exists(), "no snapshot yet: run with MLX_UPDATE_SNAPSHOTS=1 and commit it"
    expected = json.loads(SNAPSHOT.read_text())
    assert actual == expected, "asset specs changed; review and regenerate the snapshot"
    assert all(v["has_code_version"] for v in actual.values())

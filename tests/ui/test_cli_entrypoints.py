"""Both CLIs materialize the code location's assets: `dg launch`, `dagster asset materialize`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from mlx_resources.platform import REPO_ROOT

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        ["dg", "launch", "--assets", "planes"],
        ["dagster", "asset", "materialize", "-m", "mlx_assets.definitions", "--select", "planes"],
    ],
    ids=["dg", "dagster"],
)
def test_cli_materializes_planes(tmp_path, command):
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MLX_HOME": str(tmp_path),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    done = subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("planes"))
    assert event is not None
    assert event.asset_materialization.metadata["dagster/row_count"].value == 3322
    assert (tmp_path / "data" / "planes.arrow").exists()

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


def test_printed_fix_commands_work_as_printed(tmp_path):
    """Issue 9 item 14: the command in a missing/corrupt file's fix runs as written in a shell."""
    import re

    from mlx_resources.io_managers.polars_io import _missing_fix

    fix = _missing_fix("raw_weather", "2013-01-02", multi=False)
    commands = re.findall(r"`([^`]+)`", fix)
    assert commands[0] == "mlx lifecycle"
    printed = commands[1]
    assert printed.startswith("DAGSTER_HOME=$(mlx home) dagster asset materialize -m ")
    env = {
        **os.environ,
        "MLX_HOME": str(tmp_path),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("DAGSTER_HOME", None)
    done = subprocess.run(
        ["bash", "-c", printed],
        cwd=tmp_path,  # any folder: the command names its code location
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        assert instance.get_materialized_partitions(dg.AssetKey("raw_weather")) == {"2013-01-02"}
    assert (tmp_path / "data" / "raw_weather" / "2013-01-02.arrow").exists()

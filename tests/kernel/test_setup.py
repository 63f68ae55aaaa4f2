"""Set-up truths (issue 8): CI runs the README's command, one install serves every command,
the distribution name is free, the license is an SPDX string, kinds say what is stored."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tomllib
from importlib.metadata import distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _substance(path: Path) -> list[str]:
    """The lines of a shell script that do something (no comments, set -e, cd to the root)."""
    lines = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("set -"):
            continue
        if line.startswith("cd ") and "dirname" in line:
            continue
        lines.append(line)
    return lines


def test_ci_runs_exactly_the_readme_test_command():
    assert _substance(ROOT / ".ci" / "run") == ["exec ./dev test -p no:cacheprovider"]
    assert "./dev test" in (ROOT / "README.md").read_text()


def test_dev_test_installs_every_extra_the_suite_needs():
    text = (ROOT / "dev").read_text()
    extras = re.search(r"^TEST_EXTRAS=(\S+)$", text, re.M)
    assert extras, "dev names the extras the test suite needs"
    declared = set(PYPROJECT["project"]["optional-dependencies"]) - {"bench"}
    assert set(extras.group(1).split(",")) == declared
    # lifecycle and ui need the base install only: no reinstall when switching commands
    # (`./dev lifecycle --serve` adds the serving extra)
    assert '    bootstrap ""\n    exec "$VENV/bin/mlx" lifecycle "$@"' in text
    assert 'bootstrap "serving"' in text
    assert 'ui)\n    bootstrap ""' in text


def test_dev_test_sets_up_chromium_and_postgres_and_lints_first():
    text = (ROOT / "dev").read_text()
    test_branch = text[text.index("  test)") : text.index("  lint)")]
    order = [test_branch.index(s) for s in ("ensure_chromium", "ensure_postgres", "lint", "pytest")]
    assert order == sorted(order)
    assert "apt-get install -y -qq chromium" in text
    assert "pg_ctlcluster --skip-systemctl-redirect" in text


def test_distribution_name_is_distinct_and_license_is_spdx():
    project = PYPROJECT["project"]
    assert project["name"] == "mlx-platform", "`mlx` on PyPI is Apple's array framework"
    assert project["license"] == "Apache-2.0"
    requires = PYPROJECT["build-system"]["requires"]
    assert any(r.startswith("setuptools>=") and int(r.split(">=")[1]) >= 77 for r in requires)
    dist = distribution("mlx-platform")
    assert dist.metadata["License-Expression"] == "Apache-2.0"
    assert any(ep.group == "pytest11" for ep in dist.entry_points)


def test_readme_and_kinds_say_arrow_not_parquet():
    from mlx_assets.definitions import defs

    readme = (ROOT / "README.md").read_text()
    assert "stored as\nparquet" not in readme and "Arrow IPC" in readme
    graph = defs.resolve_asset_graph()
    polars_assets = []
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if not node.is_materializable:
            continue
        kinds = node.assets_def.get_asset_spec(key).kinds
        assert "parquet" not in kinds, key
        if "polars" in kinds:
            polars_assets.append(key)
            assert "arrow" in kinds, key
    assert polars_assets


def _stamp_is_current() -> bool:
    stamp = ROOT / ".venv" / ".mlx-installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    return stamp.exists() and stamp.read_text().split()[0] == want


@pytest.mark.skipif(not _stamp_is_current(), reason="the venv is not set up by ./dev")
def test_dev_test_explains_a_selection_that_matches_nothing():
    done = subprocess.run(
        ["./dev", "test", "-p", "no:cacheprovider", "-q", "tests/kernel/test_setup.py", "-k", "zz"],
        cwd=ROOT,
        env={**os.environ, "MLX_LINT": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 5
    assert "no test matched" in done.stderr
    assert "setting up" not in done.stderr, "an installed venv is not reinstalled"

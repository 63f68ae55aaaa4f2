"""The embedded Dagster home: ``.mlx_home/dagster`` with a link to the repository's dagster.yaml.

Dagster reads ``$DAGSTER_HOME/dagster.yaml``; linking it keeps the instance config in one
obvious place (the repository root) while SQLite files stay out of the source tree.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlx_resources.platform import HOME_ENV, REPO_ROOT


def ensure_dagster_home(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("DAGSTER_HOME"):
        home = Path(env["DAGSTER_HOME"])
    else:
        root = Path(env.get(HOME_ENV) or REPO_ROOT / ".mlx_home")
        home = root / "dagster"
        env["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    link = home / "dagster.yaml"
    if not link.exists() and not link.is_symlink():
        link.symlink_to(REPO_ROOT / "dagster.yaml")
    return home

"""Shared fixtures. Every test gets its own MLX home so nothing leaks between tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path_factory.mktemp("mlx_home")
    monkeypatch.setenv("MLX_HOME", str(home))
    for var in ("MLX_PROFILE", "MLX_COMPOSITION"):
        monkeypatch.delenv(var, raising=False)
    yield home

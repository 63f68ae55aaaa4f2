"""Shared fixtures. Every test gets its own MLX home so nothing leaks between tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path_factory.mktemp("mlx_home")
    monkeypatch.setenv("MLX_HOME", str(home))
    for var in ("MLX_PROFILE", "MLX_COMPOSITION"):
        # set, then delete: monkeypatch then restores the state before the test at its end,
        # also when the code under test set the variable itself (mlx lifecycle does)
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    # The suite's compositions name the flights data source only: load the flights lifecycle
    # instance alone unless a test picks others (tests/lifecycle/test_component.py does).
    monkeypatch.setenv("MLX__SETTINGS__LIFECYCLES", "[flight_delay]")
    yield home


def flights_lifecycle(platform=None):
    """The flights lifecycle instance (``mlx_assets/defs/flight_delay``) resolved against
    ``platform`` (default: the default settings)."""
    from mlx_assets.component.loader import load_specs
    from mlx_assets.component.spec import Lifecycle
    from mlx_resources.platform import Platform

    ((spec, file),) = load_specs(only=["flight_delay"])
    return Lifecycle(spec, platform or Platform(), file)

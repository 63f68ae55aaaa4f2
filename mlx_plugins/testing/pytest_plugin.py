"""pytest plugin (entry point ``pytest11``): fixtures for testing plugins against compositions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture
def mlx_composition(tmp_path: Any) -> Callable[[str], Any]:
    """Write YAML text to a file and parse it as a composition: ``mlx_composition(text)``."""
    from mlx_plugins.kernel.composition import load_composition

    def make(text: str, **kwargs: Any) -> Any:
        path = tmp_path / "mlx.yaml"
        path.write_text(text)
        return load_composition(path, **kwargs)

    return make

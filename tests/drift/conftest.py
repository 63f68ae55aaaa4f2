"""Fixtures shared by the drift tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mlx_plugins.drift_detectors import stats as st


@pytest.fixture(params=["radix", "numpy"])
def either_sort(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test with the compiled path sorting by the radix sort, then by numpy's sort:
    ``stats.radix_sorts_faster`` picks one per machine, and both must give the same bits."""
    monkeypatch.setattr(st, "radix_sorts_faster", lambda: request.param == "radix")
    yield request.param

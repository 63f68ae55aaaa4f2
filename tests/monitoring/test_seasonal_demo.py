"""On the real data, summer drifts against a winter-trained model and early spring less so."""

from __future__ import annotations

from mlx_assets.monitoring.seasonal_demo import monthly_drift
from mlx_plugins.data_sources.nycflights13 import NYCFlights13Source
from mlx_plugins.drift_detectors.polars_drift import PolarsDriftDetector


def test_summer_drifts_against_winter():
    table = {
        r["month"]: r for r in monthly_drift(NYCFlights13Source(), PolarsDriftDetector()).to_dicts()
    }
    assert list(table) == ["Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    assert table["Jul"]["dataset_drift"]
    assert "temp" in table["Jul"]["drifted_columns"]
    assert table["Jul"]["drift_share"] > table["Mar"]["drift_share"]
    assert not table["Mar"]["dataset_drift"]

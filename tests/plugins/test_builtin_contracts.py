"""Every built-in plugin passes its kind's contract."""

from __future__ import annotations

from datetime import date

import pytest

from mlx_plugins.testing import DataSourceContract, DriftDetectorContract, MLPlatformContract


class TestNYCFlights13(DataSourceContract):
    sample_partition = date(2013, 7, 4)

    @pytest.fixture
    def plugin(self):
        from mlx_plugins.data_sources.nycflights13 import NYCFlights13Source

        return NYCFlights13Source()


class TestLocalTorch(MLPlatformContract):
    @pytest.fixture
    def plugin(self):
        from mlx_plugins.ml_platforms.local_torch import LocalTorchPlatform

        return LocalTorchPlatform(epochs=3, hidden=[16], batch_size=256, num_threads=1)


class TestPolarsDrift(DriftDetectorContract):
    @pytest.fixture
    def plugin(self):
        from mlx_plugins.drift_detectors.polars_drift import PolarsDriftDetector

        return PolarsDriftDetector()

"""The drift policy's ``min_rows``: a day with fewer rows is ``insufficient_data``, never drift,
and the rule is set in a lifecycle's ``drift`` block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mlx_assets.component.loader import load_spec
from mlx_assets.monitoring.policy import DRIFT_SEVERITIES, severity
from mlx_plugins.drift_detectors.polars_drift import PolarsDriftDetector
from mlx_resources.platform import DriftPolicy

SEATTLE = Path(__file__).parents[2] / "mlx_assets" / "defs" / "seattle_weather" / "defs.yaml"


def _frame(rows: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({"a": rng.normal(0, 1, rows), "b": rng.normal(5, 2, rows)})


def test_a_small_day_of_the_same_distribution_is_insufficient_data_not_drift() -> None:
    detector = PolarsDriftDetector()
    reference = _frame(5000, seed=1)
    prepared = detector.prepare_reference(reference)
    small, large = detector.compare_prepared_many(prepared, [_frame(4, 2), _frame(2000, 3)])
    # the detector alone flags the 4-row day (4 values cannot match a distribution)...
    assert small.dataset_drift
    assert severity(small, DriftPolicy()) == "retrain"
    # ...the policy's minimum turns it into insufficient data, which is no drift event
    policy = DriftPolicy(min_rows=30)
    assert severity(small, policy) == "insufficient_data"
    assert severity(small, policy) not in DRIFT_SEVERITIES
    assert severity(large, policy) == "ok"
    assert severity(small, DriftPolicy(min_rows=4)) == "retrain"  # 4 rows are not fewer than 4


def test_min_rows_is_set_in_the_lifecycle_drift_block(tmp_path: Path) -> None:
    text = SEATTLE.read_text(encoding="utf-8")
    anchor = "    retrain_on_dataset_drift: false\n"
    assert anchor in text
    path = tmp_path / "defs.yaml"
    path.write_text(text.replace(anchor, anchor + "    min_rows: 50\n"), encoding="utf-8")
    spec = load_spec(path)
    assert spec.drift is not None and spec.drift.min_rows == 50
    assert load_spec(SEATTLE).drift.min_rows == 0  # type: ignore[union-attr]  # off by default
    path.write_text(text.replace(anchor, anchor + "    min_rows: -1\n"), encoding="utf-8")
    with pytest.raises(Exception, match="min_rows"):
        load_spec(path)

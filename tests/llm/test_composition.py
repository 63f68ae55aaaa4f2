"""LLM providers in the composition: keys from {env:}, never shown; SDKs not imported at load;
the incident summary asset requires exactly the configured providers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from mlx_plugins.kernel.composition import load_composition

KEY = "sk-composition-secret-77aa"


def compose(tmp_path: Path) -> Path:
    repo = Path(__file__).resolve().parents[2]
    data = yaml.safe_load((repo / "mlx.yaml").read_text())
    data["plugins"]["llm_provider"] = [
        {
            "plugin": "openai",
            "config": {
                "model": "gpt-4o-mini",
                "api_key": {"env": "MLX_TEST_OPENAI_KEY"},
                "base_url": "http://127.0.0.1:9/v1",
                "timeout_s": 5.0,
            },
        },
        {
            "plugin": "anthropic",
            "config": {"model": "claude-test", "api_key": {"env": "MLX_TEST_ANTHROPIC_KEY"}},
        },
    ]
    path = tmp_path / "mlx.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_providers_load_with_env_keys_and_the_asset_requires_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_TEST_OPENAI_KEY", KEY)
    monkeypatch.setenv("MLX_TEST_ANTHROPIC_KEY", KEY + "-b")
    composition = load_composition(compose(tmp_path))
    names = [e.name for e in composition.of_kind("llm_provider")]
    assert names == ["openai", "anthropic"]
    from mlx_assets.build import build_definitions

    defs = build_definitions(composition)
    import dagster as dg

    node = defs.resolve_asset_graph().get(dg.AssetKey("drift_incident_summary"))
    required = {"openai", "anthropic", "platform", "llm_settings"}
    assert required <= set(node.assets_def.required_resource_keys)
    assert "llm_settings" in defs.resources  # settings.llm (here the defaults), for the UI too
    assert KEY not in repr(composition.model_dump())


def test_loading_a_composition_with_providers_imports_no_sdk(tmp_path):
    path = compose(tmp_path)
    code = (
        "import mlx_assets.definitions as d; d.defs.resolve_asset_graph()\n"
        "import sys, json; print(json.dumps(sorted(sys.modules)))"
    )
    env = {
        **os.environ,
        "MLX_COMPOSITION": str(path),
        "MLX_TEST_OPENAI_KEY": KEY,
        "MLX_TEST_ANTHROPIC_KEY": KEY,
    }
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "mlx_plugins.llm_providers.openai_provider" in loaded  # used by the composition
    for name in ("openai", "anthropic", "purgatory", "tenacity", "diskcache", "httpx"):
        assert name not in loaded, f"{name} imported while loading the code location"
    assert KEY not in out.stdout + out.stderr


def test_an_api_key_written_in_the_file_is_refused_naming_the_entry(tmp_path, monkeypatch):
    import pytest

    from mlx_assets.build import build_definitions
    from mlx_plugins.kernel.errors import CompositionError

    monkeypatch.setenv("MLX_TEST_OPENAI_KEY", KEY)
    monkeypatch.setenv("MLX_TEST_ANTHROPIC_KEY", KEY)
    path = compose(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["plugins"]["llm_provider"][1]["config"]["api_key"] = "sk-literal-in-file-123"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CompositionError) as info:
        build_definitions(load_composition(path))
    message = str(info.value)
    assert "plugins.llm_provider[1].config.api_key" in message
    assert "{env: ANTHROPIC_API_KEY}" in message
    assert "sk-literal-in-file-123" not in message

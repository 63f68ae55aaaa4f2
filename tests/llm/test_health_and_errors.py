"""Issue 13's findings: the health check makes a real call; errors name the resource and
server; an open breaker keeps the real cause; a group is built from a dict or a list."""

from __future__ import annotations

import pytest

from mlx_plugins.llm_providers.anthropic_provider import AnthropicProvider
from mlx_plugins.llm_providers.group import GroupSettings, ProviderGroup
from mlx_plugins.llm_providers.openai_provider import OpenAIProvider
from tests.llm.conftest import SECRET, provider_for

REFUSED = "http://127.0.0.1:9/v1"  # the discard port: nothing listens (connection refused)
FAST = {"backoff_initial_s": 0.0, "backoff_max_s": 0.0, "jitter_s": 0.0, "hedge": "off"}


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_health_asks_the_models_list(servers, wire):
    server = servers(wire, api_key=SECRET)
    status = provider_for(server).check_health()
    assert status.healthy, status.detail
    assert server.models_requests == 1
    assert "models list" in status.detail and server.base_url in status.detail


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_health_reports_a_refused_key_as_unhealthy_without_the_key(servers, wire):
    server = servers(wire, api_key="the-right-key-0000")
    status = provider_for(server).check_health()  # sends SECRET
    assert not status.healthy
    assert "unauthorized" in status.detail
    assert server.base_url in status.detail and f"'{wire}'" in status.detail
    assert SECRET not in status.detail


@pytest.mark.parametrize("cls", [OpenAIProvider, AnthropicProvider])
def test_health_reports_an_unreachable_server(cls):
    status = cls(model="m", base_url=REFUSED, api_key=SECRET, timeout_s=2).check_health()
    assert not status.healthy
    assert "unreachable" in status.detail and REFUSED in status.detail
    assert SECRET not in status.detail


def test_errors_name_the_resource_and_the_server():
    provider = OpenAIProvider(model="m", base_url=REFUSED, api_key=SECRET, timeout_s=2)
    g = ProviderGroup({"local_vllm": provider}, GroupSettings(attempts=1, **FAST))
    [r] = g.run(["q"])
    assert r.error_kind == "connection"
    assert r.error.startswith("local_vllm: connection:") and REFUSED in r.error
    assert SECRET not in r.error


def test_an_open_breaker_keeps_the_real_cause(servers):
    provider = OpenAIProvider(model="m", base_url=REFUSED, api_key=SECRET, timeout_s=2)
    g = ProviderGroup(
        {"openai": provider},
        GroupSettings(attempts=1, breaker_threshold=2, max_concurrency=1, **FAST),
    )
    results = g.run([f"q{i}" for i in range(4)])
    assert g.breaker_states() == {"openai": "opened"}
    skipped = [r for r in results if r.attempts == ["openai:circuit_open"]]
    assert skipped, [r.attempts for r in results]
    for r in results:
        assert r.error_kind == "connection", r.error
    for r in skipped:
        assert "cannot reach the server" in r.error and "circuit breaker is now open" in r.error


def test_a_group_from_a_list_is_named_after_each_plugin(servers):
    a, b = servers("anthropic"), servers("openai")
    g = ProviderGroup([provider_for(a), provider_for(b)], GroupSettings(**FAST))
    assert list(g.providers) == ["anthropic", "openai"]  # the list order is the failover order
    [r] = g.run(["q"])
    assert r.ok and r.provider == "anthropic"


def test_a_group_refuses_clashing_names_and_non_providers(servers):
    a = servers("openai")
    with pytest.raises(ValueError, match="pass a dict"):
        ProviderGroup([provider_for(a), provider_for(a)])
    with pytest.raises(TypeError, match=r"\{name: provider\}"):
        ProviderGroup(["openai"])
    with pytest.raises(TypeError, match=r"\{name: provider\}"):
        ProviderGroup({"openai": "gpt-4o"})

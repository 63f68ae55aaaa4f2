"""Both built-in providers pass the kit's llm_provider contract, plain and streamed, against
loopback servers speaking their wire format through the official SDKs."""

from __future__ import annotations

import pytest

from mlx_plugins.testing import LLMProviderContract
from tests.llm.conftest import FAULTS, SECRET, provider_for


class _Base(LLMProviderContract):
    wire = "openai"
    stream = False

    @pytest.fixture
    def plugin(self, servers):
        return provider_for(servers(self.wire), stream=self.stream)

    @pytest.fixture
    def plugin_with_fault(self, servers):
        def make(fault: str):
            server = servers(self.wire, faults=[FAULTS[fault]])
            return provider_for(server, stream=self.stream, timeout_s=0.2)

        return make


class TestOpenAI(_Base):
    wire = "openai"


class TestOpenAIStreaming(_Base):
    wire = "openai"
    stream = True


class TestAnthropic(_Base):
    wire = "anthropic"


class TestAnthropicStreaming(_Base):
    wire = "anthropic"
    stream = True


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True])
def test_request_carries_config_and_streams_when_asked(servers, wire, stream):
    server = servers(wire)
    p = provider_for(server, stream=stream, max_tokens=77, temperature=0.3)
    c = p.complete("what is drift?", system="be brief")
    body = server.requests[0]
    assert body["model"] == f"{wire}-test-model"
    assert body["max_tokens"] == 77 and body["temperature"] == 0.3
    assert bool(body.get("stream")) is stream
    assert c.text.startswith("hello from the contract server: what is drift?")
    # the key is sent to the server (and only there)
    assert SECRET in server.auth_headers[0]

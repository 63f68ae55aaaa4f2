"""Loopback servers per wire format, and plugins pointed at them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from mlx_plugins.llm_providers.anthropic_provider import AnthropicProvider
from mlx_plugins.llm_providers.base import LLMProvider
from mlx_plugins.llm_providers.loopback import Fault, LoopbackLLMServer
from mlx_plugins.llm_providers.openai_provider import OpenAIProvider
from mlx_plugins.testing.contracts import contract_answer

SECRET = "sk-test-never-shown-5c1f"
PLUGINS: dict[str, type[LLMProvider]] = {"openai": OpenAIProvider, "anthropic": AnthropicProvider}

FAULTS = {
    "server_error": Fault("server_error", status=503),
    "rate_limited": Fault("rate_limited", retry_after=2),
    "timeout": Fault("timeout", delay_s=0.6),
    "malformed": Fault("malformed"),
    "bad_request": Fault("bad_request"),
}


@pytest.fixture
def servers() -> Iterator[Callable[..., LoopbackLLMServer]]:
    """A factory of started servers, all stopped at the end of the test."""
    started: list[LoopbackLLMServer] = []

    def make(wire: str, **kwargs: object) -> LoopbackLLMServer:
        kwargs.setdefault("answer", contract_answer)
        server = LoopbackLLMServer(wire, **kwargs).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def provider_for(server: LoopbackLLMServer, **config: object) -> LLMProvider:
    config.setdefault("model", f"{server.wire}-test-model")
    config.setdefault("api_key", SECRET)
    config.setdefault("timeout_s", 0.5)
    config.setdefault("input_price_per_mtok", 3.0)
    config.setdefault("output_price_per_mtok", 15.0)
    return PLUGINS[server.wire](base_url=server.base_url, **config)

"""Anthropic Messages through the official ``anthropic`` SDK."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from mlx_plugins.kernel.metadata import PluginMetadata
from mlx_plugins.llm_providers._errors import MALFORMED, classify
from mlx_plugins.llm_providers.base import Completion, LLMProvider


class AnthropicProvider(LLMProvider):
    """Messages (``POST {base_url}/v1/messages``), optionally streamed.

    The SDK's own retries are off (``max_retries=0``): the provider group retries.
    """

    sdk_module: ClassVar[str] = "anthropic"
    sdk_client: ClassVar[str] = "AsyncAnthropic"
    metadata: ClassVar[PluginMetadata] = PluginMetadata(
        name="anthropic",
        kind="llm_provider",
        version="0.1.0",
        capabilities=("chat", "structured_output", "streaming", "usage"),
        description="Anthropic Messages via the anthropic SDK.",
    )

    async def _acall(self, prompt: str, *, system: str | None, max_tokens: int) -> Completion:
        import anthropic

        client = self._client_for_loop(self._make_client)
        kwargs: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "messages": [{"role": "user", "content": prompt}],
        }
        if system:
            kwargs["system"] = system
        start = time.perf_counter()
        try:
            if self.stream:
                text, model, usage = await self._streamed(client, kwargs)
            else:
                resp = await client.messages.create(**kwargs)
                text = "".join(b.text for b in resp.content if b.type == "text")
                model = resp.model
                usage = (resp.usage.input_tokens, resp.usage.output_tokens)
            if not isinstance(usage[0], int) or not isinstance(usage[1], int):
                raise ValueError("no usage in the answer")
        except (anthropic.AnthropicError, *MALFORMED) as exc:
            raise classify(anthropic, self.provider_name, exc, self.server) from None
        return self._completion(model, text, usage, start)

    async def _streamed(
        self, client: Any, kwargs: dict[str, Any]
    ) -> tuple[str, str, tuple[int, int]]:
        stream = await client.messages.create(**kwargs, stream=True)
        parts: list[str] = []
        model = ""
        input_tokens = output_tokens = 0
        started = False
        async for event in stream:
            if event.type == "message_start":
                started = True
                model = event.message.model
                input_tokens = event.message.usage.input_tokens or 0
                output_tokens = event.message.usage.output_tokens or 0
            elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                parts.append(event.delta.text)
            elif event.type == "message_delta" and event.usage is not None:
                output_tokens = event.usage.output_tokens or output_tokens
        if not started:
            raise ValueError("the event stream has no message_start")
        return "".join(parts), model, (input_tokens, output_tokens)

"""OpenAI Chat Completions through the official ``openai`` SDK (any compatible server:
vLLM, Ollama, a gateway, with ``base_url``)."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from mlx_plugins.kernel.metadata import PluginMetadata
from mlx_plugins.llm_providers._errors import MALFORMED, classify
from mlx_plugins.llm_providers.base import Completion, LLMProvider


class OpenAIProvider(LLMProvider):
    """Chat Completions (``POST {base_url}/chat/completions``), optionally streamed.

    The SDK's own retries are off (``max_retries=0``): the provider group retries with
    backoff, jitter and ``Retry-After``, and fails over between providers.
    """

    sdk_module: ClassVar[str] = "openai"
    sdk_client: ClassVar[str] = "AsyncOpenAI"
    metadata: ClassVar[PluginMetadata] = PluginMetadata(
        name="openai",
        kind="llm_provider",
        version="0.1.0",
        capabilities=("chat", "structured_output", "streaming", "usage"),
        description="OpenAI Chat Completions (or any compatible server) via the openai SDK.",
    )

    async def _acall(self, prompt: str, *, system: str | None, max_tokens: int) -> Completion:
        import openai

        client = self._client_for_loop(self._make_client)
        messages: list[dict[str, str]] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": prompt})
        start = time.perf_counter()
        try:
            if self.stream:
                text, model, usage = await self._streamed(client, messages, max_tokens)
            else:
                resp = await client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    max_tokens=max_tokens,
                    temperature=self.temperature,
                )
                text = resp.choices[0].message.content
                model = resp.model
                usage = (resp.usage.prompt_tokens, resp.usage.completion_tokens)
            if not isinstance(text, str):
                raise ValueError("no text in the answer")
        except (openai.OpenAIError, *MALFORMED) as exc:
            raise classify(openai, self.provider_name, exc, self.server) from None
        if usage is None:
            raise self.error("malformed", "the answer reports no usage")
        return self._completion(model, text, usage, start)

    async def _streamed(
        self, client: Any, messages: list[dict[str, str]], max_tokens: int
    ) -> tuple[str, str, tuple[int, int] | None]:
        stream = await client.chat.completions.create(
            model=self.model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=self.temperature,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts: list[str] = []
        model = ""
        usage: tuple[int, int] | None = None
        async for chunk in stream:
            model = chunk.model or model
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        return "".join(parts), model, usage

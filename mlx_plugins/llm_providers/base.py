"""The ``llm_provider`` kind (any number per platform, called in parallel).

A provider answers one prompt at a time (:meth:`LLMProvider.acomplete`, async; ``complete`` is
its blocking twin). Everything about running many prompts over several providers (bounded
concurrency, circuit breakers, retries, failover, hedging, the result cache) lives in
:mod:`mlx_plugins.llm_providers.group`, so a provider only speaks its wire format and says
which of its errors are worth retrying (:class:`LLMError`).

SDKs are imported inside methods: loading the code location never imports ``openai`` or
``anthropic``.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from abc import abstractmethod
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from mlx_plugins.kernel.base import MLXPlugin
from mlx_plugins.llm_providers._errors import LLMError, classify

T = TypeVar("T", bound=BaseModel)


class Completion(BaseModel):
    """One answer.

    Attributes:
        provider: the plugin's resource name (``openai``, ``anthropic``, ...).
        model: the model that answered (as the server reports it).
        text: the answer text.
        input_tokens / output_tokens: usage reported by the server (tokens, >= 0).
        cost_usd: estimated cost in US dollars from the provider's configured prices.
        latency_s: wall time of the call in seconds.
    """

    model_config = ConfigDict(frozen=True)

    provider: str
    model: str = ""
    text: str
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)
    latency_s: float = Field(default=0.0, ge=0)


def schema_instruction(schema: type[BaseModel]) -> str:
    """The instruction appended to a prompt asking for JSON matching ``schema``."""
    return (
        "Answer with a single JSON object and nothing else, matching this JSON schema:\n"
        + json.dumps(schema.model_json_schema(), sort_keys=True)
    )


def parse_structured(provider: str, text: str, schema: type[T]) -> T:
    """``text`` (a JSON object, possibly in a ```json fence) validated as ``schema``.

    Raises:
        LLMError: kind ``structured_output`` (retriable: a model may answer better next time)
            naming the schema and the first problem.
    """
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`")
        body = body.split("\n", 1)[1] if "\n" in body else body
    start, end = body.find("{"), body.rfind("}")
    try:
        if start < 0 or end < start:
            raise ValueError("the answer holds no JSON object")
        return schema.model_validate_json(body[start : end + 1])
    except (ValidationError, ValueError) as exc:
        err = LLMError(
            provider,
            "structured_output",
            f"answer does not match {schema.__name__}: {str(exc).splitlines()[0]}",
        )
        err.retriable = True
        raise err from None


class LLMProvider(MLXPlugin):
    """Base of every LLM provider plugin: config common to all and the call contract.

    Subclasses implement :meth:`_acall` (one request, raising :class:`LLMError` on failure).
    API keys are read only from ``{env: NAME}`` in the composition and are secret.
    """

    model: str = Field(description="Model name sent to the server.")
    base_url: str | None = Field(
        default=None, description="Server URL; None is the vendor's public API."
    )
    api_key: str | None = Field(
        default=None,
        json_schema_extra={"secret": True},
        description="API key; write {env: NAME} in the composition, never the key itself.",
    )
    timeout_s: float = Field(default=30.0, gt=0, description="Per-request timeout, seconds.")
    max_tokens: int = Field(default=512, gt=0, description="Answer length limit, tokens.")
    temperature: float = Field(default=0.0, ge=0, le=2, description="Sampling temperature.")
    stream: bool = Field(default=False, description="Read answers as server-sent events.")
    input_price_per_mtok: float = Field(
        default=0.0, ge=0, description="US dollars per million input tokens (cost metadata)."
    )
    output_price_per_mtok: float = Field(
        default=0.0, ge=0, description="US dollars per million output tokens (cost metadata)."
    )

    #: For providers backed by a vendor SDK: its module (``openai``) and async client class
    #: (``AsyncOpenAI``); :meth:`_make_client` and :meth:`_probe` use them.
    sdk_module: ClassVar[str] = ""
    sdk_client: ClassVar[str] = ""

    _clients: dict[int, Any] = PrivateAttr(default_factory=dict)
    _resource_name: str | None = PrivateAttr(default=None)

    #: How long the health check's one call may take at most, seconds.
    HEALTH_TIMEOUT_S: ClassVar[float] = 5.0

    @property
    def provider_name(self) -> str:
        """The resource name this provider runs as (set by the provider group from its keys:
        the composition's ``name:``), else the plugin's registry name (``openai``)."""
        return self._resource_name or type(self).metadata.name

    @property
    def server(self) -> str:
        """Where calls go, for messages: ``base_url``, or the vendor's public API."""
        return self.base_url or f"the {type(self).metadata.name} public API"

    def error(self, kind: str, message: str, **kwargs: Any) -> LLMError:
        """An :class:`LLMError` naming this provider's resource and server (never the key)."""
        return LLMError(self.provider_name, kind, f"{message} [server {self.server}]", **kwargs)

    def cache_params(self) -> dict[str, Any]:
        """What, besides the prompt, decides an answer: the cache key's parameters."""
        return {
            "provider": type(self).metadata.name,  # the plugin: a key stable across names
            "base_url": self.base_url or "",
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """Estimated cost in US dollars of a call with this usage."""
        return (
            input_tokens * self.input_price_per_mtok + output_tokens * self.output_price_per_mtok
        ) / 1e6

    def open(self) -> None:
        """Nothing to open: clients are made per event loop on first use."""

    def close(self) -> None:
        """Forget the clients (their connections close with them)."""
        self._clients.clear()

    def _make_client(self) -> Any:
        """A new async SDK client; the SDK's own retries are off (the provider group retries)."""
        sdk = importlib.import_module(self.sdk_module)
        return getattr(sdk, self.sdk_client)(
            api_key=self.api_key or "unset",
            base_url=self.base_url,
            timeout=self.timeout_s,
            max_retries=0,
        )

    def _probe(self) -> str:
        """One cheap real call: the models list (``GET {base_url}/models`` for OpenAI-compatible
        servers, ``GET /v1/models`` for Anthropic), with a short timeout and no retries.

        Raises:
            RuntimeError: the server is unreachable, refuses the key or answers an error,
                naming the resource and ``base_url`` (never the key).
        """
        if not self.sdk_module:
            return super()._probe()
        sdk = importlib.import_module(self.sdk_module)
        sync_client = self.sdk_client.removeprefix("Async")
        client = getattr(sdk, sync_client)(
            api_key=self.api_key or "unset",
            base_url=self.base_url,
            timeout=min(self.timeout_s, self.HEALTH_TIMEOUT_S),
            max_retries=0,
        )
        try:
            page = client.models.list()
            count = len(page.data)
        except Exception as exc:
            err = classify(sdk, self.provider_name, exc)
            what = {
                "auth": "unauthorized (the server refused the API key)",
                "connection": "unreachable",
                "timeout": "unreachable (no answer in time)",
            }.get(err.kind, f"unhealthy ({err.kind})")
            raise RuntimeError(
                f"llm_provider {self.provider_name!r} at {self.server}: {what}: {err.detail}"
            ) from None
        finally:
            client.close()
        return (
            f"{self.provider_name} at {self.server}: models list answered ({count} models); "
            f"{self.sdk_module} SDK {sdk.__version__}, model {self.model}"
        )

    def _completion(
        self, model: str | None, text: str, usage: tuple[int, int], start: float
    ) -> Completion:
        """The :class:`Completion` of a call begun at ``start`` (``time.perf_counter()``)."""
        return Completion(
            provider=self.provider_name,
            model=model or self.model,
            text=text,
            input_tokens=usage[0],
            output_tokens=usage[1],
            cost_usd=self.cost(*usage),
            latency_s=time.perf_counter() - start,
        )

    def _client_for_loop(self, make: Any) -> Any:
        """One SDK client per running event loop (an async client is bound to its loop)."""
        loop = asyncio.get_running_loop()
        held = self._clients.get(id(loop))
        if held is None or held[0] is not loop:
            held = (loop, make())
            self._clients[id(loop)] = held
        return held[1]

    async def aclose(self) -> None:
        """Close the clients made on the running loop."""
        held = self._clients.pop(id(asyncio.get_running_loop()), None)
        if held is not None:
            await held[1].close()

    @abstractmethod
    async def _acall(self, prompt: str, *, system: str | None, max_tokens: int) -> Completion:
        """One request. Raises :class:`LLMError` (classified) on any failure."""

    async def acomplete(
        self, prompt: str, *, system: str | None = None, max_tokens: int | None = None
    ) -> Completion:
        """Answer ``prompt`` (one request, no retries).

        Raises:
            LLMError: classified failure (``retriable`` says whether to try again).
        """
        return await self._acall(prompt, system=system, max_tokens=max_tokens or self.max_tokens)

    def complete(
        self, prompt: str, *, system: str | None = None, max_tokens: int | None = None
    ) -> Completion:
        """Blocking :meth:`acomplete` (runs its own event loop; not inside a running one)."""

        async def go() -> Completion:
            try:
                return await self.acomplete(prompt, system=system, max_tokens=max_tokens)
            finally:
                await self.aclose()

        return asyncio.run(go())

    async def acomplete_structured(
        self, prompt: str, schema: type[T], *, system: str | None = None
    ) -> tuple[T, Completion]:
        """Answer ``prompt`` as an instance of the pydantic ``schema`` (JSON asked, validated).

        Raises:
            LLMError: the call failed, or the answer does not match (kind
                ``structured_output``).
        """
        completion = await self.acomplete(
            f"{prompt}\n\n{schema_instruction(schema)}", system=system
        )
        return parse_structured(self.provider_name, completion.text, schema), completion

    def complete_structured(
        self, prompt: str, schema: type[T], *, system: str | None = None
    ) -> tuple[T, Completion]:
        """Blocking :meth:`acomplete_structured`."""

        async def go() -> tuple[T, Completion]:
            try:
                return await self.acomplete_structured(prompt, schema, system=system)
            finally:
                await self.aclose()

        return asyncio.run(go())

"""Map an official SDK's exceptions (openai, anthropic: same hierarchy) to :class:`LLMError`."""

from __future__ import annotations

import json
from types import ModuleType

from mlx_plugins.llm_providers.base import LLMError, parse_retry_after

MALFORMED = (json.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError, ValueError)


def classify(
    sdk: ModuleType, provider: str, exc: BaseException, server: str | None = None
) -> LLMError:
    """The :class:`LLMError` for ``exc`` raised by ``sdk`` (the ``openai`` or ``anthropic``
    module): 429 -> ``rate_limited`` with ``Retry-After``; 408/409/5xx -> ``server_error``;
    401/403 -> ``auth``; other 4xx -> ``bad_request``; timeouts, connection errors and bodies
    that do not parse -> ``timeout``, ``connection``, ``malformed``. ``server`` (the
    ``base_url``) is named in the message when given. Never includes the key."""
    if isinstance(exc, LLMError):
        return exc
    err = _classify(sdk, provider, exc)
    if server is None:
        return err
    named = LLMError(
        provider,
        err.kind,
        f"{err.detail} [server {server}]",
        retry_after=err.retry_after,
        status=err.status,
    )
    named.retriable = err.retriable
    return named


def _classify(sdk: ModuleType, provider: str, exc: BaseException) -> LLMError:
    if isinstance(exc, sdk.APITimeoutError):
        return LLMError(provider, "timeout", "the request timed out")
    if isinstance(exc, sdk.APIConnectionError):
        return LLMError(provider, "connection", f"cannot reach the server ({type(exc).__name__})")
    if isinstance(exc, sdk.APIStatusError):
        status = exc.status_code
        headers = exc.response.headers
        retry_after = parse_retry_after(headers.get("retry-after"))
        if retry_after is None and headers.get("retry-after-ms"):
            ms = parse_retry_after(headers.get("retry-after-ms"))
            retry_after = ms / 1000 if ms is not None else None
        detail = f"HTTP {status}: {_short(exc.message)}"
        if status == 429:
            kind = "rate_limited"
        elif status in (408, 409) or status >= 500:
            kind = "server_error"
        elif status in (401, 403):
            kind = "auth"
        else:
            kind = "bad_request"
        return LLMError(provider, kind, detail, retry_after=retry_after, status=status)
    if isinstance(exc, (sdk.APIResponseValidationError, *MALFORMED)):
        return LLMError(provider, "malformed", f"unreadable response ({type(exc).__name__})")
    return LLMError(provider, "other", f"{type(exc).__name__}: {_short(str(exc))}")


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""Map an official SDK's exceptions (openai, anthropic: same hierarchy) to :class:`LLMError`."""

from __future__ import annotations

import json
from types import ModuleType

from mlx_plugins.kernel.secrets import redact


class LLMError(Exception):
    """A failed call, classified.

    Attributes:
        provider: the provider's name.
        kind: ``rate_limited`` | ``server_error`` | ``timeout`` | ``connection`` |
            ``malformed`` | ``bad_request`` | ``auth`` | ``structured_output`` | ``other``.
        retriable: whether the same call may succeed later (429, 5xx, timeouts, connection
            errors, malformed bodies); 4xx other than 408/409/429 are not.
        retry_after: seconds the server asked to wait (``Retry-After``), when it said so.
        status: the HTTP status, when there was a response.
    """

    RETRIABLE_KINDS = frozenset(
        {"rate_limited", "server_error", "timeout", "connection", "malformed"}
    )

    def __init__(
        self,
        provider: str,
        kind: str,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(redact(f"{provider}: {kind}: {message}"))
        self.provider = provider
        self.kind = kind
        self.detail = redact(message)
        """The message without the ``provider: kind:`` prefix."""
        self.retriable = kind in self.RETRIABLE_KINDS
        self.retry_after = retry_after
        self.status = status


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` (or ``retry-after-ms``) header value: ``"2"`` -> 2.0,
    an HTTP date -> seconds from now (>= 0); ``None`` when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime
        from time import time

        return max(0.0, parsedate_to_datetime(value).timestamp() - time())
    except (TypeError, ValueError, IndexError):
        return None


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

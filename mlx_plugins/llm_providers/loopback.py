"""Loopback HTTP servers speaking the OpenAI Chat Completions and Anthropic Messages wire
formats, with injectable faults: for tests, the contract kit and the benchmark.

The official SDKs talk to them unchanged (``base_url=server.base_url``)::

    with LoopbackLLMServer("openai", script=lambda i, prompt: Fault("server_error") if i % 2
                           else Fault()) as server:
        provider = OpenAIProvider(model="m", base_url=server.base_url, api_key="k")

A fault is picked per request, first from ``faults`` (consumed in order), then from ``script``
(``(request index, prompt) -> Fault``), else an immediate good answer. Streaming
(``"stream": true`` in the request body) answers with server-sent events in each vendor's
format. ``GET /v1/models`` answers each vendor's models list (what the providers' health check
asks); with ``api_key`` set, a request without that key is answered 401. Nothing here is
imported by the platform at run time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

from mlx_plugins.kernel.loopback_http import LoopbackHTTPServer

Wire = Literal["openai", "anthropic"]
FaultKind = Literal[
    "ok", "server_error", "rate_limited", "timeout", "slow", "malformed", "bad_request"
]


@dataclass(frozen=True)
class Fault:
    """What the server does with one request.

    Attributes:
        kind: ``ok`` (answer), ``server_error`` (HTTP ``status``, 500 by default),
            ``rate_limited`` (429 with ``Retry-After: retry_after``), ``timeout`` (sleep
            ``delay_s`` before answering: set it above the client's timeout), ``slow`` (answer
            after ``delay_s``), ``malformed`` (200 with a body that is not the format),
            ``bad_request`` (400).
        delay_s: seconds to wait before answering (any kind).
        retry_after: the ``Retry-After`` header, seconds (``rate_limited``).
        status: the HTTP status of ``server_error``.
    """

    kind: FaultKind = "ok"
    delay_s: float = 0.0
    retry_after: float | None = 1.0
    status: int = 500


def default_answer(prompt: str) -> str:
    """The answer a server gives by default: a deterministic echo."""
    return "answer to: " + " ".join(prompt.split()[:12])


class LoopbackLLMServer(LoopbackHTTPServer):
    """One server on 127.0.0.1 (an ephemeral port) in a background thread.

    Attributes:
        requests: every request body received (parsed JSON), in arrival order.
        auth_headers: the ``Authorization`` / ``x-api-key`` values received.
        served: answers sent with ``ok``/``slow`` (the "paid" calls).
    """

    def __init__(
        self,
        wire: Wire,
        *,
        faults: list[Fault] | None = None,
        script: Callable[[int, str], Fault] | None = None,
        answer: Callable[[str], str] = default_answer,
        latency_s: float = 0.0,
        api_key: str | None = None,
        models: tuple[str, ...] = ("loopback-model",),
    ) -> None:
        super().__init__()
        self.poll_interval_s = 0.02
        self.wire = wire
        self.api_key = api_key
        self.models = models
        self.models_requests = 0
        self.faults = list(faults or [])
        self.script = script
        self.answer = answer
        self.latency_s = latency_s
        self.requests: list[dict[str, Any]] = []
        self.auth_headers: list[str] = []
        self.served = 0
        self._lock = threading.Lock()

    # -- one request (LoopbackHTTPServer hands each here) ----------------------------------
    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        if method == "GET":
            self._handle_get(h)
        else:
            self._handle(h)

    @property
    def base_url(self) -> str:
        """What to pass as the SDK's ``base_url`` (OpenAI's includes ``/v1``)."""
        return self.url + "/v1" if self.wire == "openai" else self.url

    @property
    def calls(self) -> int:
        """Requests received so far."""
        return len(self.requests)

    # -- one request ----------------------------------------------------------------------
    def _next_fault(self, index: int, prompt: str) -> Fault:
        with self._lock:
            if self.faults:
                return self.faults.pop(0)
        return self.script(index, prompt) if self.script else Fault()

    def _authorized(self, h: BaseHTTPRequestHandler) -> bool:
        if self.api_key is None:
            return True
        given = h.headers.get("x-api-key") or (h.headers.get("authorization") or "")
        return given.removeprefix("Bearer ") == self.api_key

    def _handle_get(self, h: BaseHTTPRequestHandler) -> None:
        """``GET /v1/models``: the models list, in the wire's format."""
        path = h.path.split("?", 1)[0].rstrip("/")
        if path != "/v1/models":
            return self._send_json(h, 404, self._error_body(f"no route {path}"))
        with self._lock:
            self.models_requests += 1
        if not self._authorized(h):
            return self._send_json(h, 401, self._error_body("invalid API key"))
        if self.wire == "openai":
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": "loopback"}
                for m in self.models
            ]
            return self._send_json(h, 200, {"object": "list", "data": data})
        data = [
            {"id": m, "type": "model", "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
            for m in self.models
        ]
        first, last = (self.models[0], self.models[-1]) if self.models else (None, None)
        body = {"data": data, "has_more": False, "first_id": first, "last_id": last}
        return self._send_json(h, 200, body)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("content-length") or 0)
        try:
            body = json.loads(h.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            return self._send_json(h, 400, self._error_body("invalid JSON body"))
        prompt = _prompt_of(body)
        with self._lock:
            index = len(self.requests)
            self.requests.append(body)
            self.auth_headers.append(
                h.headers.get("authorization") or h.headers.get("x-api-key") or ""
            )
        if not self._authorized(h):
            return self._send_json(h, 401, self._error_body("invalid API key"))
        fault = self._next_fault(index, prompt)
        delay = fault.delay_s + self.latency_s
        if delay:
            time.sleep(delay)
        try:
            if fault.kind == "server_error":
                return self._send_json(h, fault.status, self._error_body("injected failure"))
            if fault.kind == "rate_limited":
                extra = {} if fault.retry_after is None else {"retry-after": str(fault.retry_after)}
                return self._send_json(h, 429, self._error_body("rate limited"), extra)
            if fault.kind == "bad_request":
                return self._send_json(h, 400, self._error_body("bad request"))
            if fault.kind == "malformed":
                return self._send_raw(h, 200, b'{"choices": [ {"oops', "application/json")
            text = self.answer(prompt)
            with self._lock:
                self.served += 1
            model = str(body.get("model", "loopback"))
            usage = (len(prompt.split()), len(text.split()))
            if body.get("stream"):
                return self._send_stream(h, model, text, usage)
            return self._send_json(h, 200, self._answer_body(model, text, usage))
        except (BrokenPipeError, ConnectionResetError):
            return None  # the client gave up (timeout, hedge cancelled)

    # -- wire formats ---------------------------------------------------------------------
    def _error_body(self, message: str) -> dict[str, Any]:
        if self.wire == "openai":
            return {"error": {"message": message, "type": "server_error", "code": None}}
        return {"type": "error", "error": {"type": "api_error", "message": message}}

    def _answer_body(self, model: str, text: str, usage: tuple[int, int]) -> dict[str, Any]:
        if self.wire == "openai":
            return {
                "id": "chatcmpl-loopback",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": usage[0],
                    "completion_tokens": usage[1],
                    "total_tokens": sum(usage),
                },
            }
        return {
            "id": "msg_loopback",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
        }

    def _events(self, model: str, text: str, usage: tuple[int, int]) -> list[bytes]:
        words = text.split(" ")
        pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
        out: list[bytes] = []
        if self.wire == "openai":
            for i, piece in enumerate(pieces):
                delta = {"content": piece, **({"role": "assistant"} if i == 0 else {})}
                chunk = {
                    "id": "chatcmpl-loopback",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                }
                out.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            last = {
                "id": "chatcmpl-loopback",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": {
                    "prompt_tokens": usage[0],
                    "completion_tokens": usage[1],
                    "total_tokens": sum(usage),
                },
            }
            out.append(b"data: " + json.dumps(last).encode() + b"\n\n")
            out.append(b"data: [DONE]\n\n")
            return out

        def event(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        out.append(
            event(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_loopback",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": usage[0], "output_tokens": 1},
                    },
                },
            )
        )
        out.append(
            event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            )
        )
        for piece in pieces:
            out.append(
                event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
            )
        out.append(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        out.append(
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": usage[1]},
                },
            )
        )
        out.append(event("message_stop", {"type": "message_stop"}))
        return out

    # -- sending --------------------------------------------------------------------------
    def _send_json(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        self._send_raw(h, status, json.dumps(body).encode(), "application/json", headers)

    @staticmethod
    def _send_raw(
        h: BaseHTTPRequestHandler,
        status: int,
        data: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        h.send_response(status)
        h.send_header("content-type", content_type)
        h.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _send_stream(
        self, h: BaseHTTPRequestHandler, model: str, text: str, usage: tuple[int, int]
    ) -> None:
        data = b"".join(self._events(model, text, usage))
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("content-length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


def _prompt_of(body: dict[str, Any]) -> str:
    """The last user message's text of a Chat Completions or Messages request body."""
    for message in reversed(body.get("messages") or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return ""

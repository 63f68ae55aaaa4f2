"""Secret values never leave the platform: every error and log line is redacted.

What is secret:

- every value read through ``{env: NAME}`` in the composition (registered when the composition
  is loaded, and again when a plugin receives the value at run time);
- every plugin config field declared secret, with ``Field(json_schema_extra={"secret": True})``
  (Dagster's own ``{"dagster__is_secret": True}`` is honoured too), see :func:`is_secret_field`.

Where it is redacted:

- exceptions raised from plugin methods (``MLXPlugin`` wraps them): the message, the
  arguments, ``OSError`` file names and notes of the exception and of its whole
  ``__cause__``/``__context__`` chain are rewritten in place, so the type and the traceback
  stay and Dagster's event log, console and GraphQL error causes only see ``***``;
- log records of every logger (a ``logging`` record factory rewrites ``msg`` and ``args``
  as records are made, so console, file and Dagster event-log handlers all get redacted text);
- Dagster's serialized errors, whatever raised them (asset code, IO managers, Dagster itself):
  step/run failures in the event log, on the console and in GraphQL.

Not redacted: values shorter than :data:`MIN_SECRET_LENGTH` characters, numbers and booleans
(replacing every ``7`` or ``true`` of a log because ``seed: {env: S}`` read ``7`` would destroy
the log and protect nothing), and values of ``Literal`` fields (one of a few public words).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterable
from typing import Any

MASK = "***"
MIN_SECRET_LENGTH = 4
# Numbers, booleans and null (as YAML 1.2 reads them) are config values, not secrets: masking
# every "true" or "1000" of every log would destroy the logs and protect nothing.
_NOT_SECRET = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|0o[0-7]+|0x[0-9a-fA-F]+"
    r"|true|false|null|~|[-+]?\.inf|\.nan)$",
    re.IGNORECASE,
)

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()  # longest first, so a secret containing another goes first
_factory_installed = False


def register_secret(value: object) -> None:
    """Treat ``value`` (its ``str``) as secret from now on, in this process. Idempotent."""
    global _secrets
    if value is None:
        return
    text = value if isinstance(value, str) else str(value)
    if len(text) < MIN_SECRET_LENGTH or text in _secrets or _NOT_SECRET.match(text):
        return
    with _lock:
        if text not in _secrets:
            _secrets = tuple(sorted({*_secrets, text}, key=len, reverse=True))
    install_log_redaction()


def registered_secrets() -> tuple[str, ...]:
    """The secrets registered in this process (for tests and diagnostics)."""
    return _secrets


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def contains_secret(text: str) -> bool:
    return any(secret in text for secret in _secrets)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        for secret in _secrets:
            value = value.replace(secret.encode(), MASK.encode())
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_redact_value(v) for v in value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    text = str(value)
    return redact(text) if contains_secret(text) else value


class SecretRedactedError(RuntimeError):
    """Stands in for an exception whose message kept a secret after redaction."""


def redact_exception(exc: BaseException) -> BaseException:
    """Redact ``exc`` and its ``__cause__``/``__context__`` chain in place.

    Returns ``exc`` itself when its text is clean afterwards (type and traceback unchanged),
    else a :class:`SecretRedactedError` naming the original type with the redacted text, whose
    cause is the redacted rest of the chain.
    """
    if not _secrets:
        return exc
    return _redact_one(exc, set())


def _redact_one(exc: BaseException, seen: set[int]) -> BaseException:
    if id(exc) in seen:
        return exc
    seen.add(id(exc))
    with contextlib.suppress(Exception):  # args is read-only on some extension types
        exc.args = tuple(_redact_value(a) for a in exc.args)
    if isinstance(exc, OSError):
        for attr in ("filename", "filename2", "strerror"):
            if getattr(exc, attr, None) is not None:
                setattr(exc, attr, _redact_value(getattr(exc, attr)))
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        exc.__notes__ = [redact(n) if isinstance(n, str) else n for n in notes]
    for attr in vars(exc) if hasattr(exc, "__dict__") else ():
        if attr.startswith("__"):
            continue
        value = getattr(exc, attr, None)
        if isinstance(value, str) and contains_secret(value):
            with contextlib.suppress(Exception):
                setattr(exc, attr, redact(value))
    if exc.__cause__ is not None:
        exc.__cause__ = _redact_one(exc.__cause__, seen)
    if exc.__context__ is not None:
        exc.__context__ = _redact_one(exc.__context__, seen)
    try:
        text = str(exc)
    except Exception:
        text = ""
    if contains_secret(text):
        name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        stand_in = SecretRedactedError(f"{name}: {redact(text)}")
        stand_in.__cause__ = exc.__cause__
        stand_in.__context__ = exc.__context__
        stand_in.__suppress_context__ = exc.__suppress_context__
        stand_in.__traceback__ = exc.__traceback__
        return stand_in
    return exc


def _redact_record(record: logging.LogRecord) -> None:
    if not _secrets:
        return
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    elif record.msg is not None and contains_secret(str(record.msg)):
        record.msg = redact(str(record.msg))
    if record.args:
        if isinstance(record.args, dict):
            record.args = {k: _redact_value(v) for k, v in record.args.items()}
        else:
            record.args = tuple(_redact_value(a) for a in record.args)
    if record.exc_info and record.exc_info[1] is not None:
        redact_exception(record.exc_info[1])
    if record.exc_text:
        record.exc_text = redact(record.exc_text)


class RedactSecretsFilter(logging.Filter):
    """A ``logging.Filter`` that redacts secrets in place and lets every record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


def _redact_error_info(info: Any) -> Any:
    """A Dagster ``SerializableErrorInfo`` with secrets redacted from its message and stack."""
    message = redact(info.message)
    stack = [redact(line) for line in info.stack]
    if message == info.message and stack == list(info.stack):
        return info
    return type(info)(
        message=message,
        stack=stack,
        cls_name=info.cls_name,
        cause=info.cause,
        context=info.context,
    )


def _redact_dagster_error_infos() -> None:
    """Make Dagster's error records redacted, whatever raised (asset code, IO managers...).

    Every error Dagster stores or shows (step and run failures in the event log, the console,
    GraphQL's error causes) is built by ``SerializableErrorInfo.from_traceback``, recursively
    for causes and contexts; wrapping that one constructor redacts them all. Internal API:
    ``tests/kernel/test_secret_redaction.py`` fails if a Dagster upgrade moves it.
    """
    try:
        from dagster_shared.error import SerializableErrorInfo
    except ImportError:  # pragma: no cover - Dagster moved it; the test says so
        return
    original = next(
        (
            k.__dict__["from_traceback"]
            for k in SerializableErrorInfo.__mro__
            if "from_traceback" in k.__dict__
        ),
        None,
    )
    func = getattr(original, "__func__", None)
    if func is None or getattr(func, "_mlx_redacting", False):
        return

    def from_traceback(cls: Any, tb: Any) -> Any:
        return _redact_error_info(func(cls, tb))

    from_traceback._mlx_redacting = True  # type: ignore[attr-defined]
    SerializableErrorInfo.from_traceback = classmethod(from_traceback)  # type: ignore[assignment,method-assign]


def install_log_redaction(loggers: Iterable[str] = ("dagster", "mlx")) -> None:
    """Redact secrets from every log record and Dagster error record of this process.
    Idempotent.

    Installs a record factory (covers every logger, including records made before a handler
    is attached), a :class:`RedactSecretsFilter` on the named loggers and their handlers, and
    redaction of Dagster's serialized errors (:func:`_redact_dagster_error_infos`).
    """
    global _factory_installed
    with _lock:
        if not _factory_installed:
            _redact_dagster_error_infos()
            previous = logging.getLogRecordFactory()

            def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = previous(*args, **kwargs)
                _redact_record(record)
                return record

            logging.setLogRecordFactory(factory)
            _factory_installed = True
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecretsFilter) for f in logger.filters):
            logger.addFilter(RedactSecretsFilter())
        for handler in logger.handlers:
            if not any(isinstance(f, RedactSecretsFilter) for f in handler.filters):
                handler.addFilter(RedactSecretsFilter())

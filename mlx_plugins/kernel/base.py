"""The base class of every plugin: a Dagster resource with metadata, health and lifecycle."""

from __future__ import annotations

import contextvars
import functools
import inspect
import math
import os
import time
import types
import typing
from collections.abc import Callable, Generator
from typing import Any, ClassVar, Self

import dagster as dg
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mlx_plugins.kernel.metadata import PluginMetadata
from mlx_plugins.kernel.sandbox import LOCAL_METHODS, SANDBOX_FIELD, run_sandboxed
from mlx_plugins.kernel.secrets import redact, redact_exception, register_secret

ENV_FIELD = "mlx_env"
"""The hidden config field that carries ``{env: NAME}`` values Dagster cannot read itself."""


class HealthStatus(BaseModel):
    model_config = ConfigDict(defer_build=True, frozen=True)

    healthy: bool
    detail: str = ""
    latency_ms: float = 0.0


def scalar_type(annotation: Any) -> type | None:
    """``int``, ``float``, ``bool`` or ``str`` when ``annotation`` is one of them (possibly
    ``Optional`` or ``Annotated``), else ``None`` (models, lists, ``Literal``, unions...)."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            return None
        return scalar_type(args[0])
    if annotation in (int, float, bool, str):
        return typing.cast(type, annotation)
    return None


def dagster_reads_env(annotation: Any) -> bool:
    """Whether Dagster's config system itself reads ``{env: NAME}`` into a field of this type
    (its ``StringSource``, ``IntSource`` and ``BoolSource``: ``str``, ``int`` and ``bool``)."""
    return scalar_type(annotation) in (str, int, bool)


def parse_env_value(annotation: Any, text: str) -> Any:
    """An environment variable's text as a value of ``annotation``: ``"7"`` -> 7 for ``int``,
    ``"0.5"`` -> 0.5 for ``float``, ``"true"``/``"1"`` -> True for ``bool``, a ``str`` field
    gets the text unchanged. Text that does not parse is returned as is, so the model's own
    validation reports it (with the value redacted)."""
    if scalar_type(annotation) is str:
        return text
    try:
        return TypeAdapter(annotation).validate_strings(text)
    except Exception:
        return text


_STRICT_MESSAGES = {
    int: "Input should be a whole number (int)",
    float: "Input should be a finite number",
    bool: "Input should be true or false",
    str: "Input should be text (str)",
}


def _strict_ok(expected: type, value: Any) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:  # .inf and .nan are refused: no field means them (a count, a
        # size, a threshold, a time), and they fail far from the file (int(inf), timedelta)
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (isinstance(value, int) or math.isfinite(value))
        )
    return isinstance(value, str)


def _check_strict_scalar(model: type[BaseModel], value: Any, info: ValidationInfo) -> None:
    """Refuse a scalar of the wrong kind for a field (``"2"`` or ``true`` for an ``int``)."""
    field = model.model_fields.get(info.field_name or "")
    if field is not None and value is not None:
        expected = scalar_type(field.annotation)
        if expected is not None and not _strict_ok(expected, value):
            raise PydanticCustomError("strict_scalar", _STRICT_MESSAGES[expected])


class PluginConfig(dg.Config):
    """Base of a plugin's nested config models (``new_cluster: {num_workers: 2}``,
    ``read_tables: {t: {...}}``): the same strict scalars as a plugin's own fields, so
    ``num_workers: "2"`` or ``lowercase: 1`` is refused naming the key, not coerced."""

    @field_validator("*", mode="wrap")
    @classmethod
    def _strict(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        from dagster._config.field_utils import is_dagster_env_var

        if not is_dagster_env_var(value):
            _check_strict_scalar(cls, value, info)
        return handler(value)


class MLXPlugin(dg.ConfigurableResource):  # type: ignore[type-arg]
    """A swappable platform part.

    Subclasses set ``metadata`` and keep clients, pools and caches in private attributes
    created by :meth:`open` and released by :meth:`close`. Dagster calls them around each
    step through ``setup_for_execution``/``teardown_after_execution``; tests and the CLI use
    the ``session()`` context manager. Heavy libraries (torch, bentoml, cloud SDKs) are imported
    inside methods so that loading the code location never pays for them.

    Config rules every plugin gets:

    - scalars are strict: ``epochs: true`` is refused for an ``int`` field (a bool is not a
      number), ``"6"`` for an ``int`` and ``6`` for a ``str`` too;
    - a field declared ``Field(json_schema_extra={"secret": True})`` is secret: its value is
      redacted from every error and log line (so is every ``{env: NAME}`` value);
    - an exception raised by a public method (and ``_probe``) is re-raised with secrets
      redacted from its message and cause chain, keeping its type.
    """

    # Validators are built when a plugin class is first instantiated (when the composition
    # validates it), not at import: the kind bases (DataSource, MLPlatform...) never are.
    model_config = ConfigDict(defer_build=True)

    metadata: ClassVar[PluginMetadata]

    mlx_env: dict[str, str] = Field(
        default_factory=dict,
        description="Config fields whose value is read from an environment variable at run "
        "time ({env: NAME} in the composition), for field types Dagster cannot read from the "
        "environment itself (float, Literal, ...). Written by the composition, not by hand.",
    )
    mlx_sandbox: str = Field(
        default="",
        description="The sandbox this plugin's calls run in (JSON of "
        "mlx_plugins.kernel.sandbox.SandboxPlan; empty: in process). Written by the "
        "composition from the entry's sandbox: key, not by hand.",
    )

    # -- config ----------------------------------------------------------------------------
    @model_validator(mode="before")
    @classmethod
    def _fields_from_env(cls, data: Any) -> Any:
        """At run time Dagster has resolved ``mlx_env`` to the variables' text: parse each as
        its field's type (``"0.5"`` -> 0.5 for a float) and put it in place."""
        if not isinstance(data, dict) or not data.get(ENV_FIELD):
            return data
        carried = data[ENV_FIELD]
        out = dict(data)
        for name, value in carried.items():
            if isinstance(value, dg.EnvVar) or name not in cls.model_fields:
                continue  # not resolved yet (definitions time), or refused by the composition
            if isinstance(value, str):
                info = cls.model_fields[name]
                register_env_value(info.annotation, info.json_schema_extra, value)
                out[name] = parse_env_value(info.annotation, value)
        return out

    @field_validator("*", mode="wrap")
    @classmethod
    def _strict_and_env(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        from dagster._config.field_utils import is_dagster_env_var

        if is_dagster_env_var(value):
            # A Dagster EnvVar: read and validated at run time, when its value is known (the
            # composition has validated the current value already).
            field = cls.model_fields.get(info.field_name or "")
            register_env_value(
                field.annotation if field else None,
                field.json_schema_extra if field else None,
                os.environ.get(value.env_var_name),
            )
            return value
        _check_strict_scalar(cls, value, info)
        field = cls.model_fields.get(info.field_name or "")
        secret = field is not None and is_secret_field(field.json_schema_extra)
        if secret and isinstance(value, str):
            register_secret(value)
        return handler(value)

    # -- secrets in errors -----------------------------------------------------------------
    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for name, attr in list(vars(cls).items()):
            if not inspect.isfunction(attr) or getattr(attr, "_mlx_redacting", False):
                continue
            if name.startswith("__") or (name.startswith("_") and name != "_probe"):
                continue
            setattr(cls, name, _redacting(attr))

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> None:
        """Create clients, pools and caches. Idempotent."""

    def close(self) -> None:
        """Release what :meth:`open` created. Idempotent."""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.open()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def session(self) -> _Session:
        """Open the plugin (and close it on exit), outside of a Dagster run.

        Yields the opened plugin. When the config reads environment variables (``{env:}``)
        that is :meth:`resolved`, a copy with their values read and validated as Dagster
        does at run time: use the yielded object.
        """
        return _Session(self.resolved() if self.reads_env() else self)

    def reads_env(self) -> bool:
        """Whether a config value is still an ``{env: NAME}`` reference (read at run time)."""
        return any(_holds_env_var(self.__dict__.get(name)) for name in type(self).model_fields)

    def resolved(self) -> Self:
        """A copy with every ``{env: NAME}`` reference read now and validated as its field's
        type, as Dagster makes at run time (``mlx health``, ``session()``, scripts).

        Raises ``RuntimeError`` naming the variable if one is not set; ``ValidationError``
        (secrets redacted) if a value does not fit its field.
        """
        data: dict[str, Any] = {}
        for name, info in type(self).model_fields.items():
            value = self.__dict__.get(name)
            if name == ENV_FIELD:
                fields = type(self).model_fields
                data[name] = {
                    k: _env_text(v, fields[k].annotation if k in fields else None)
                    for k, v in (value or {}).items()
                }
            elif _is_env_var(value):
                data[name] = parse_env_value(info.annotation, _env_text(value, info.annotation))
            else:
                data[name] = _read_env_vars(value)
        return type(self)(**data)

    # -- health --------------------------------------------------------------------------------
    def check_health(self) -> HealthStatus:
        """Probe the plugin's backing system. Override ``_probe`` rather than this."""
        if self.reads_env():
            with self.session() as live:
                status: HealthStatus = live.check_health()
                return status
        start = time.perf_counter()
        try:
            detail = self._probe()
        except Exception as exc:  # a failed probe is a result, not a crash
            return HealthStatus(
                healthy=False,
                detail=redact(f"{type(exc).__name__}: {exc}"),
                latency_ms=(time.perf_counter() - start) * 1000,
            )
        return HealthStatus(
            healthy=True,
            detail=redact(detail or "ok"),
            latency_ms=(time.perf_counter() - start) * 1000,
        )

    def _probe(self) -> str:
        return "ok"


def _is_env_var(value: Any) -> bool:
    from dagster._config.field_utils import is_dagster_env_var

    return bool(is_dagster_env_var(value))


def _holds_env_var(value: Any) -> bool:
    if _is_env_var(value):
        return True
    if isinstance(value, dict):
        return any(_holds_env_var(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_env_var(v) for v in value)
    if isinstance(value, BaseModel):  # a nested config (files.<table>: FileTable)
        return any(_holds_env_var(value.__dict__.get(n)) for n in type(value).model_fields)
    return False


def _env_text(value: Any, annotation: Any = None) -> Any:
    """The text of an ``EnvVar``/``IntEnvVar`` (registered as a secret); others unchanged."""
    if not _is_env_var(value):
        return value
    name = value.env_var_name
    text = os.environ.get(name)
    if text is None:
        raise RuntimeError(
            f"environment variable {name} is not set; export {name}=... (the composition "
            "reads it with {env: " + name + "})"
        )
    register_env_value(annotation, None, text)
    return text


def _read_env_vars(value: Any, annotation: Any = None) -> Any:
    """``value`` with every ``{env:}`` reference in it read, also inside lists, dicts and
    nested config models (each read as its nested field's type)."""
    if _is_env_var(value):
        text = _env_text(value, annotation)
        return parse_env_value(annotation, text) if annotation is not None else text
    if isinstance(value, dict):
        return {k: _read_env_vars(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_read_env_vars(v) for v in value]
    if isinstance(value, BaseModel) and _holds_env_var(value):
        fields = type(value).model_fields
        return type(value)(
            **{
                n: _read_env_vars(value.__dict__[n], info.annotation)
                for n, info in fields.items()
                if n in value.__dict__
            }
        )
    return value


def register_env_value(annotation: Any, extra: Any, text: str | None) -> None:
    """Register a value read from the environment for a field as secret, unless the field is
    a ``Literal`` choice and not declared secret (numbers and booleans are never masked)."""
    if text is None:
        return
    if not is_secret_field(extra) and _is_literal(annotation):
        return
    register_secret(text)


def _is_literal(annotation: Any) -> bool:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return all(_is_literal(a) for a in typing.get_args(annotation) if a is not type(None))
    return typing.get_origin(annotation) is typing.Literal


def is_secret_field(extra: Any) -> bool:
    """Whether a field's ``json_schema_extra`` declares it secret (``{"secret": True}`` or
    Dagster's ``{"dagster__is_secret": True}``)."""
    return isinstance(extra, dict) and bool(extra.get("secret") or extra.get("dagster__is_secret"))


_telemetry: Any = None
_NOT_CALLS = frozenset({"init_private_attributes", "model_post_init", "with_home"})
"""Methods wrapped for redaction that are not plugin calls: what pydantic adds to a class, and
``with_home`` (placing a plugin's data in the MLX home while the definitions are built: counting
it would import OpenTelemetry and Prometheus at code-location load)."""


def _call_scope(args: tuple[Any, ...], method: str, current: bool = True) -> Any:
    """The telemetry scope of this plugin call (``mlx_plugins.kernel.telemetry``, imported on the
    first call so that loading plugins never pays for OpenTelemetry), or ``None``."""
    global _telemetry
    if method in _NOT_CALLS or not args or not isinstance(args[0], MLXPlugin):
        return None
    if _telemetry is None:
        from mlx_plugins.kernel import telemetry

        _telemetry = telemetry
    return _telemetry.plugin_call(args[0], method, current=current)


def _failed(scope: Any, exc: BaseException) -> BaseException:
    """End ``scope`` for a call that raised ``exc``; the exception to raise: ``exc`` itself, or
    for an ``Exception`` whose message, arguments or causes hold a secret, its redacted copy
    (an interruption such as ``KeyboardInterrupt`` is never rewritten)."""
    clean = redact_exception(exc) if isinstance(exc, Exception) else exc
    scope.finish(None, clean)
    return clean


class _NoScope:
    """The scope of a call that is not instrumented (not a plugin method, or a helper)."""

    def __enter__(self) -> _NoScope:
        return self

    def finish(self, result: Any, exc: BaseException | None) -> None:
        pass


_NO_SCOPE = _NoScope()


_LOCAL: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar(
    "mlx_sandbox_local", default=frozenset()
)
"""Sandboxed plugins (by id) running a lifecycle method here: their nested calls stay here."""


def _sandboxed(args: tuple[Any, ...], method: str) -> bool:
    """Whether this call goes to the sandbox runner (:mod:`mlx_plugins.kernel.sandbox`)."""
    if not args or not isinstance(args[0], MLXPlugin) or not args[0].__dict__.get(SANDBOX_FIELD):
        return False
    return method not in LOCAL_METHODS and id(args[0]) not in _LOCAL.get()


def _call(fn: Callable[..., Any], method: str, args: tuple[Any, ...], kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, or the same call through the sandbox runner when the plugin is
    sandboxed (a lifecycle method of a sandboxed plugin runs here, with its nested calls)."""
    plugin = args[0] if args else None
    if not isinstance(plugin, MLXPlugin) or not plugin.__dict__.get(SANDBOX_FIELD):
        return fn(*args, **kwargs)
    if method in LOCAL_METHODS:
        token = _LOCAL.set(_LOCAL.get() | {id(plugin)})
        try:
            return fn(*args, **kwargs)
        finally:
            _LOCAL.reset(token)
    if id(plugin) in _LOCAL.get():
        return fn(*args, **kwargs)
    return run_sandboxed(plugin, method, args[1:], dict(kwargs))


def _not_sandboxable(args: tuple[Any, ...], method: str, what: str) -> None:
    if _sandboxed(args, method):
        name = type(args[0]).metadata.name
        raise TypeError(
            f"plugin {name!r}: {method}() is {what}, which the sandbox cannot run out of process "
            "(it runs plain methods only); fix: remove the plugin's sandbox: key, or call a "
            "plain method"
        )


def _redacting(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` whose exceptions have secrets redacted (message, arguments, cause chain), and whose
    call is instrumented once: a span ``<kind>.<plugin>.<method>``, Prometheus metrics and the
    audit log (:func:`mlx_plugins.kernel.telemetry.plugin_call`)."""
    method = fn.__name__
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            _not_sandboxable(args, method, "a coroutine")
            scope = _call_scope(args, method) or _NO_SCOPE
            scope.__enter__()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                clean = _failed(scope, exc)
                if clean is exc:
                    raise
                raise clean from clean.__cause__
            scope.finish(result, None)
            return result

        async_wrapper._mlx_redacting = True  # type: ignore[attr-defined]
        return async_wrapper
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            # a generator runs between its consumer's steps: its span is not made current
            _not_sandboxable(args, method, "a generator")
            scope = _call_scope(args, method, current=False) or _NO_SCOPE
            try:
                scope.__enter__()
                result = yield from fn(*args, **kwargs)
            except GeneratorExit:  # the consumer stopped early: not a failure of the plugin
                scope.finish(None, None)
                raise
            except BaseException as exc:
                clean = _failed(scope, exc)
                if clean is exc:
                    raise
                raise clean from clean.__cause__
            scope.finish(result, None)
            return result

        gen_wrapper._mlx_redacting = True  # type: ignore[attr-defined]
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        scope = _call_scope(args, method) or _NO_SCOPE
        scope.__enter__()
        try:
            result = _call(fn, method, args, kwargs)
        except BaseException as exc:
            clean = _failed(scope, exc)
            if clean is exc:
                raise
            raise clean from clean.__cause__
        scope.finish(result, None)
        return result

    wrapper._mlx_redacting = True  # type: ignore[attr-defined]
    return wrapper


class _Session:
    def __init__(self, plugin: MLXPlugin) -> None:
        self.plugin = plugin

    def __enter__(self) -> MLXPlugin:
        self.plugin.open()
        return self.plugin

    def __exit__(self, *exc: object) -> None:
        self.plugin.close()


__all__ = [
    "ENV_FIELD",
    "HealthStatus",
    "MLXPlugin",
    "PluginConfig",
    "dagster_reads_env",
    "is_secret_field",
    "parse_env_value",
    "scalar_type",
]

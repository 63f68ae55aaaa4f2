"""Errors a user sees when a composition is wrong. Each names the file, the key and the fix."""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any

from pydantic import BaseModel

from mlx_plugins.kernel.secrets import redact
from mlx_plugins.kernel.yaml12 import yaml11_hint


class CompositionError(ValueError):
    """One clear problem in a composition file: ``file``, dotted ``key``, ``problem``, ``fix``.

    Secrets registered with :mod:`mlx_plugins.kernel.secrets` are redacted from all four.
    """

    def __init__(self, file: str, key: str, problem: str, fix: str) -> None:
        self.file = file
        self.key = key
        self.problem = redact(problem)
        self.fix = redact(fix)
        super().__init__(f"{file}: {key}: {self.problem}\n  fix: {self.fix}")


class PluginNotFoundError(LookupError):
    pass


# Well-known credential shapes: OpenAI/Anthropic/Stripe-style keys, AWS access key ids,
# Databricks, GitHub and Slack tokens, JWTs, PEM blocks. A pattern, compiled (and cached by
# ``re``) on first use: only an error needs it, and the code location loads without one.
_CREDENTIAL_SHAPE = (
    r"^(?:sk-|sk_|pk_|rk_|AKIA|ASIA|dapi|dkea|ghp_|gho_|ghs_|github_pat_|xox[abprs]-|eyJ)"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)


def looks_like_credential(value: Any) -> bool:
    """Whether ``value`` is text shaped like a well-known credential (``sk-...``, ``AKIA...``,
    ``dapi...``, a JWT, a PEM private key): such a value pasted into a non-secret field is not
    echoed in an error either."""
    return isinstance(value, str) and bool(re.search(_CREDENTIAL_SHAPE, value.strip()))


def from_validation_error(
    file: str,
    key: str,
    exc: Exception,
    fields: dict[str, Any] | None = None,
    secret_fields: frozenset[str] = frozenset(),
) -> CompositionError:
    """The first problem of a pydantic ``ValidationError`` as a ``CompositionError``.

    ``fields`` are the validated model's ``model_fields`` (used to name the expected type,
    the known keys of nested models and an example). The offending value is quoted unless it
    came from a secret (an ``{env: ...}`` reference or a field declared secret).
    """
    errors = exc.errors() if hasattr(exc, "errors") else []
    if not errors:
        return CompositionError(file, key, str(exc).splitlines()[0], "fix the value")
    # a misspelled key also makes the real one "missing": name the misspelling, which is the fix
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = [str(p) for p in err["loc"]]
    field = loc[0] if loc else ""
    parent_fields, info = _walk(fields or {}, loc)
    annotation = getattr(info, "annotation", None)
    secret = field in secret_fields
    value = err.get("input")
    if secret:
        given = "a value not shown (a secret field, or read from the environment)"
    elif looks_like_credential(value):
        given = "a value not shown (it looks like a credential: never write one in the file)"
    else:
        given = repr(value)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    where = ".".join([key, *loc]) if loc else key

    if err["type"] == "extra_forbidden":
        known = sorted(k for k in parent_fields if not k.startswith("_"))
        close = difflib.get_close_matches(loc[-1], known, n=1)
        return CompositionError(
            file,
            where,
            "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "") + more,
            f"use one of: {', '.join(known)}" if known else "remove it",
        )
    msg = str(err["msg"])
    if err["type"] == "value_error":
        # A validator's own message: "Value error, <problem>[\nfix: <fix>]".
        msg = msg.removeprefix("Value error, ")
        if "\nfix: " in msg:
            problem, _, fix = msg.partition("\nfix: ")
            return CompositionError(file, where, f"{problem}{more}", fix)
        if not secret:
            return CompositionError(
                file,
                where,
                f"{msg}{more}",
                f"correct the value as said ({_short_type(annotation)} field)"
                if annotation is not None
                else "correct the value as said",
            )
    problem = f"{msg} (got {given}){more}"
    if err["type"] in _RANGE:
        return CompositionError(file, where, problem, _range_fix(err, annotation))
    hint = None if secret or _unwrap(annotation) is str else yaml11_hint(value)
    if value is None and err["type"] not in ("missing",) and not secret:
        hint = "an empty value is null in YAML: write a value, or remove the key to use the default"
    return CompositionError(file, where, problem + (f"; {hint}" if hint else ""), _fix(annotation))


def _walk(fields: dict[str, Any], loc: list[str]) -> tuple[dict[str, Any], Any]:
    """The fields of the model that holds ``loc``'s last key, and that key's FieldInfo."""
    parent, info = fields, None
    for i, part in enumerate(loc):
        info = parent.get(part)
        if info is None:
            return parent, None
        if i < len(loc) - 1:
            model = _model_of(getattr(info, "annotation", None))
            if model is None:
                return parent, info
            parent = dict(model.model_fields)
    return parent, info


def _unwrap(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return annotation


def _model_of(annotation: Any) -> type[BaseModel] | None:
    base = _unwrap(annotation)
    return base if isinstance(base, type) and issubclass(base, BaseModel) else None


_EXAMPLES: dict[Any, str] = {
    int: "a whole number (int) without quotes, e.g. 6",
    float: "a finite number (float) without quotes, e.g. 0.5",
    bool: "true or false (bool)",
    str: "text (str), e.g. 'abc' (quote it if it looks like a number, bool or null)",
}


_RANGE: dict[str, tuple[str, str]] = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}
"""pydantic's range error types -> (operator, the ``ctx`` key holding the bound)."""


def _range_fix(err: Any, annotation: Any) -> str:
    """The fix for a value out of its field's range: the bound, e.g. ``write a whole number
    (int) >= 1, e.g. 1`` for ``gt=0`` on an int (the type was right; the value was not)."""
    op, ctx_key = _RANGE[err["type"]]
    bound = (err.get("ctx") or {}).get(ctx_key)
    base = _unwrap(annotation)
    kind = f"a {_short_type(annotation)}" if annotation is not None else "a value"
    if base is int and isinstance(bound, int) and not isinstance(bound, bool):
        kind = "a whole number (int)"
        if op == ">":
            op, bound = ">=", bound + 1  # gt=0 on an int: the smallest allowed is 1
        elif op == "<":
            op, bound = "<=", bound - 1
        return f"write {kind} {op} {bound}, e.g. {bound}"
    if base is float:
        kind = "a number (float)"
    return f"write {kind} {op} {bound}"


_MAX_LISTED_KEYS = 8
"""A nested block's fix lists up to this many keys with their types and defaults; a longer
block's (``settings.llm``: 23 keys) names its first ones and the count."""


def _fix(annotation: Any) -> str:
    """What a person can write for a field of type ``annotation``."""
    if annotation is None:
        return "fix the value"
    base = _unwrap(annotation)
    if typing.get_origin(base) is typing.Literal:
        return "write one of: " + ", ".join(repr(a) for a in typing.get_args(base))
    if base in _EXAMPLES:
        return f"write {_EXAMPLES[base]}"
    model = _model_of(base)
    if model is not None:
        parts, example = [], []
        for name, info in model.model_fields.items():
            kind = _short_type(info.annotation)
            if info.is_required():
                parts.append(f"{name} ({kind}, required)")
                example.append(f"{name}: <{kind}>")
            else:
                default = info.get_default(call_default_factory=True)
                if isinstance(default, BaseModel):
                    parts.append(f"{name} ({kind})")
                    continue
                parts.append(f"{name} ({kind}, default {default!r})")
                example.append(f"{name}: {_yaml(default)}")
        if len(parts) > _MAX_LISTED_KEYS:  # a long block: its first keys, not a page of text
            shown = ", ".join(list(model.model_fields)[:_MAX_LISTED_KEYS])
            required = any(i.is_required() for i in model.model_fields.values())
            optional = "" if required else ", every one optional"
            rest = len(parts) - _MAX_LISTED_KEYS
            return (
                f"write a mapping of its keys ({len(parts)} keys{optional}: {shown} and {rest} "
                f"more); e.g. {{{', '.join(example[:2])}}}"
            )
        return f"write a mapping with the keys {', '.join(parts)}; e.g. {{{', '.join(example)}}}"
    origin = typing.get_origin(base)
    if origin in (list, tuple, set, frozenset):
        return f"write a list, e.g. [...] of {_short_type(typing.get_args(base)[0])}"
    if origin is dict:
        return "write a mapping, e.g. {key: value}"
    return f"write a value of type {_short_type(annotation)}"


def _short_type(annotation: Any) -> str:
    base = _unwrap(annotation)
    if typing.get_origin(base) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(base))
    return getattr(base, "__name__", None) or str(base).replace("typing.", "")


def _yaml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)

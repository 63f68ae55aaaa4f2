"""Errors a user sees when a composition is wrong. Each names the file, the key and the fix."""

from __future__ import annotations

from typing import Any


class CompositionError(ValueError):
    """One clear problem in a composition file."""

    def __init__(self, file: str, key: str, problem: str, fix: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        self.fix = fix
        super().__init__(f"{file}: {key}: {problem}\n  fix: {fix}")


class PluginNotFoundError(LookupError):
    pass


def from_validation_error(
    file: str,
    key: str,
    exc: Exception,
    fields: dict[str, Any] | None = None,
    secret_fields: frozenset[str] = frozenset(),
) -> CompositionError:
    """The first problem of a pydantic ``ValidationError`` as a ``CompositionError``.

    The offending value is quoted unless it came from a secret (an ``{env: ...}`` reference).
    """
    errors = exc.errors() if hasattr(exc, "errors") else []
    if not errors:
        return CompositionError(file, key, str(exc).splitlines()[0], "fix the value")
    err = errors[0]
    loc = ".".join(str(p) for p in err["loc"])
    field = str(err["loc"][0]) if err["loc"] else ""
    info = (fields or {}).get(field)
    annotation = getattr(info, "annotation", None)
    expected = getattr(annotation, "__name__", None) or (str(annotation) if annotation else None)
    given = "a secret from the environment" if field in secret_fields else repr(err.get("input"))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return CompositionError(
        file,
        f"{key}.{loc}" if loc else key,
        f"{err['msg']} (got {given}){more}",
        f"give a value of type {expected}" if expected else "fix the value",
    )

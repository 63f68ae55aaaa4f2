"""Lifecycle instances from YAML: ``<defs folder>/<name>/defs.yaml``, one ``MLLifecycle`` each.

The files are Dagster component instances (``type:`` and ``attributes:``, as ``dg scaffold defs``
writes them) read with MLX's YAML 1.2 loader (``off``/``no`` stay text, ``0123`` stays a number
as written) and validated against :class:`LifecycleSpec`; a mistake is a ``CompositionError``
that names the file, the key, the value and the fix.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mlx_assets.component.spec import LifecycleSpec, SpecValueError
from mlx_plugins.kernel.errors import (
    CompositionError,
    _fix,
    _model_of,
    _unwrap,
    from_validation_error,
)

DEFS_FOLDER = Path(__file__).resolve().parents[1] / "defs"
"""The project's defs folder (``mlx_assets/defs``; ``[tool.dg.project]`` in pyproject.toml)."""
COMPONENT_TYPES = ("mlx_assets.component.MLLifecycle", "mlx_assets.MLLifecycle")
DEFS_FILE = "defs.yaml"


def instance_files(folder: Path) -> list[Path]:
    """Every ``defs.yaml`` one level below ``folder`` whose ``type`` is ``MLLifecycle``, sorted
    by folder name (other components' files are left to Dagster)."""
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob(f"*/{DEFS_FILE}")):
        head = path.read_text(encoding="utf-8")[:2000]
        # every component of MLX's own packages is read here, so a misspelled type is an error
        # (load_spec names it) rather than an instance silently left out; so is an empty or
        # comment-only file (an instance being written, not a model left out without a word)
        if any(t in head for t in COMPONENT_TYPES) or "type: mlx_assets." in head or _blank(head):
            out.append(path)
    return out


def _blank(text: str) -> bool:
    """Whether YAML ``text`` holds nothing but blank lines, comments and document markers."""
    lines = (line.strip() for line in text.splitlines())
    return all(not line or line.startswith("#") or line in ("---", "...") for line in lines)


def load_spec(path: Path) -> LifecycleSpec:
    """The instance in ``path`` (a ``defs.yaml``).

    Raises:
        CompositionError: unreadable YAML, a wrong ``type``, or attributes that do not fit
            :class:`LifecycleSpec` (names the file, the key path under ``attributes`` and the
            fix).
    """
    import yaml

    from mlx_plugins.kernel import yaml12

    file = str(path)
    try:
        doc = yaml12.load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        where = str(exc).replace('in "<unicode string>"', f'in "{file}"')
        raise CompositionError(file, "", f"cannot be read: {where}", "fix the YAML") from None
    if doc == {}:
        raise CompositionError(
            file,
            "type",
            "the file is empty (or holds only comments): it declares no lifecycle instance",
            f"write type: {COMPONENT_TYPES[0]} and its attributes (`dg scaffold defs "
            "mlx_assets.component.MLLifecycle <name>` writes a working one), or delete the file",
        )
    if not isinstance(doc, dict) or doc.get("type") not in COMPONENT_TYPES:
        raise CompositionError(
            file,
            "type",
            f"is {doc.get('type') if isinstance(doc, dict) else doc!r}",
            f"write type: {COMPONENT_TYPES[0]}",
        )
    attributes = doc.get("attributes")
    if not isinstance(attributes, dict):
        raise CompositionError(
            file, "attributes", "is missing or not a mapping", "see docs/lifecycle_component.md"
        )
    try:
        return LifecycleSpec.model_validate(attributes)
    except ValidationError as exc:
        raise spec_error(file, exc) from None


def spec_error(file: str, exc: ValidationError) -> CompositionError:
    """The first problem of a :class:`LifecycleSpec` validation as a ``CompositionError`` naming
    ``file``, the full key under ``attributes``, the value and the fix."""
    errors = exc.errors()
    # the error from_validation_error reports: a misspelled key first, else the first one
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0] if errors else None)
    cause = (err.get("ctx") or {}).get("error") if err else None
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    loc = [str(p) for p in err["loc"]] if err else []
    if isinstance(cause, SpecValueError):
        key = ".".join(["attributes", *loc, *([cause.key] if cause.key else [])])
        return CompositionError(file, key, cause.problem + more, cause.fix)
    out = from_validation_error(file, "attributes", exc, LifecycleSpec.model_fields)
    if any(p.isdigit() for p in loc) and err is not None and err["type"] != "value_error":
        # inside a list (data.tables[0].partitioned): the fix for the item's own field, not
        # "write a list" of the list it is in
        leaf = _annotation_at(loc)
        if leaf is not None:
            return CompositionError(file, out.key, out.problem, _fix(leaf))
    if err is not None and err["type"] == "value_error" and "\nfix: " not in str(err["msg"]):
        # a validator of a shared model (the window, the drift policy) said what is wrong but
        # not how to fix it: say where, not the model's class name
        where = ".".join(["attributes", *loc])
        return CompositionError(
            file, out.key, out.problem, f"edit {where} as said (docs/lifecycle_component.md)"
        )
    return out


def load_specs(
    folder: Path | None = None, only: list[str] | None = None
) -> list[tuple[LifecycleSpec, str]]:
    """``(spec, file)`` of every instance in ``folder`` (default :data:`DEFS_FOLDER`), or of
    those named in ``only`` (in that order).

    Raises:
        CompositionError: a file is invalid, two instances share a name, or a name in ``only``
            has no instance (naming the folder and the instances there).
    """
    folder = folder or DEFS_FOLDER
    loaded = [(load_spec(p), str(p)) for p in instance_files(folder)]
    by_name: dict[str, tuple[LifecycleSpec, str]] = {}
    for spec, file in loaded:
        if spec.name in by_name:
            raise CompositionError(
                file,
                "attributes.name",
                f"{spec.name!r} is also the name of {by_name[spec.name][1]}",
                "give each lifecycle instance its own name",
            )
        by_name[spec.name] = (spec, file)
    if only is None:
        return list(by_name.values())
    missing = [n for n in only if n not in by_name]
    if missing:
        raise CompositionError(
            str(folder),
            "settings.lifecycles",
            f"names {missing}, which have no {DEFS_FILE} in {folder} (instances there: "
            f"{sorted(by_name) or 'none'})",
            "scaffold one with `dg scaffold defs mlx_assets.component.MLLifecycle <name>` or "
            "correct the name",
        )
    return [by_name[n] for n in only]


def _annotation_at(loc: list[str]) -> Any:
    """The type of the value at ``loc`` (keys and list indices) under :class:`LifecycleSpec`,
    or None where the path leaves the spec's models."""
    fields: dict[str, Any] = dict(LifecycleSpec.model_fields)
    annotation: Any = None
    for part in loc:
        if part.isdigit():
            args = typing.get_args(_unwrap(annotation))
            if not args:
                return None
            annotation = args[0]
        else:
            info = fields.get(part)
            if info is None:
                return None
            annotation = info.annotation
        model = _model_of(annotation)
        fields = dict(model.model_fields) if model is not None else {}
    return annotation


def check_feature_functions(specs: list[tuple[LifecycleSpec, str]]) -> None:
    """Import each instance's ``features.function`` and check that it is a function there.

    For ``mlx config validate`` (the explicit check): it imports the users' modules, which
    loading the code location never does (the features asset imports its function when it
    runs).

    Raises:
        CompositionError: the module cannot be imported, has no such attribute (naming the
            closest function there), or it is not callable; names the file and
            ``attributes.features.function``.
    """
    import difflib
    import importlib
    import inspect

    key = "attributes.features.function"
    for spec, file in specs:
        target = spec.features.function
        if target is None:
            continue
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # a module that fails at import is as broken as a missing one
            raise CompositionError(
                file,
                key,
                f"{target!r}: module {module_name!r} cannot be imported "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                "point it at an importable 'package.module:function' (on the code location's "
                "Python path), or fix the module",
            ) from None
        fn = getattr(module, attr, None)
        if fn is None:
            functions = sorted(
                n
                for n, v in vars(module).items()
                if inspect.isfunction(v)
                and not n.startswith("_")
                and v.__module__ == module.__name__
            )
            close = difflib.get_close_matches(attr, functions, n=1)
            raise CompositionError(
                file,
                key,
                f"{target!r}: module {module_name!r} has no function {attr!r}"
                + (f" (did you mean {close[0]!r}?)" if close else ""),
                f"name one of its functions: {', '.join(functions) or 'none'}",
            )
        if not callable(fn):
            raise CompositionError(
                file,
                key,
                f"{target!r} is a {type(fn).__name__}, not a function",
                "point it at the function that builds the feature frame",
            )

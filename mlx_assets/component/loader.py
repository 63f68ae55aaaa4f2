"""Lifecycle instances from YAML: ``<defs folder>/<name>/defs.yaml``, one ``MLLifecycle`` each.

The files are Dagster component instances (``type:`` and ``attributes:``, as ``dg scaffold defs``
writes them) read with MLX's YAML 1.2 loader (``off``/``no`` stay text, ``0123`` stays a number
as written) and validated against :class:`LifecycleSpec`; a mistake is a ``CompositionError``
that names the file, the key, the value and the fix.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from mlx_assets.component.spec import LifecycleSpec
from mlx_plugins.kernel.errors import CompositionError, from_validation_error

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
        # (load_spec names it) rather than an instance silently left out
        if any(t in head for t in COMPONENT_TYPES) or "type: mlx_assets." in head:
            out.append(path)
    return out


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
        raise from_validation_error(file, "attributes", exc, LifecycleSpec.model_fields) from None


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

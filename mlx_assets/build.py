"""Definitions from a composition and the lifecycle instances: switching a plugin is a change of
the composition only; adding a model is a new ``defs.yaml`` (``mlx_assets/defs/<name>/``)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
from pydantic import ValidationError

from mlx_assets import jobs
from mlx_assets.component.spec import Lifecycle, LifecycleSpec
from mlx_assets.versioning import config_fingerprint
from mlx_plugins.kernel.composition import Composition
from mlx_plugins.kernel.errors import CompositionError, from_validation_error
from mlx_plugins.kernel.kinds import SLOTS


def platform_resources(composition: Composition) -> dict[str, object]:
    """The non-plugin resources, all rooted in the platform's home folder: ``platform`` (the
    composition's ``settings:``), the two IO managers and, when the composition has
    ``llm_provider`` plugins, ``llm_settings`` (``settings.llm``, the provider group's policy:
    :func:`llm_settings_resource`).

    Raises:
        CompositionError: a bad ``settings`` value (``settings.llm``'s included, validated even
            without providers), naming the key and the fix.
    """
    from mlx_assets.monitoring.incident_summary import LLM_SETTINGS_KEY
    from mlx_resources.atomic_pickle_io import AtomicFilesystemIOManager
    from mlx_resources.io_managers.polars_io import PolarsIOManager
    from mlx_resources.platform import Platform

    settings = dict(composition.settings)
    llm = {"llm": settings.pop("llm")} if "llm" in settings else None
    platform = _built(
        composition,
        "settings",
        "mlx_resources/platform.py",
        lambda: Platform(**settings),
        lambda exc: _settings_error(composition, exc, llm),
    )
    home = platform.home_path
    out: dict[str, object] = {
        "platform": platform,
        "io_manager": io_manager_from_slot(composition, home, PolarsIOManager),
        # Dagster's pickling IO manager, writing atomically (a kill leaves the old value).
        "object_io_manager": AtomicFilesystemIOManager(base_dir=str(home / "objects")),
    }
    providers = composition.of_kind("llm_provider")
    if llm is not None or providers:
        group = llm_settings_resource(composition, llm or {})
        if providers:
            out[LLM_SETTINGS_KEY] = group
    return out


_T = TypeVar("_T")


def _built(
    composition: Composition,
    key: str,
    fields_in: str,
    build: Callable[[], _T],
    invalid: Callable[[ValidationError], CompositionError],
) -> _T:
    """``build()``, or a ``CompositionError``: ``invalid(exc)`` for a pydantic
    ``ValidationError``, otherwise the exception's first line under ``key``, pointing to the
    fields in ``fields_in``."""
    try:
        return build()
    except ValidationError as exc:
        raise invalid(exc) from None
    except Exception as exc:
        raise CompositionError(
            composition.source, key, str(exc).splitlines()[0], f"see {fields_in} for the fields"
        ) from None


class _SettingsErrors(Exception):
    """Validation errors of ``settings:`` gathered from ``platform`` and ``llm_settings``, in
    the order of the block's fields when ``llm`` was one of ``Platform``'s (before
    ``arrival_cron``), as :func:`from_validation_error` reads them (``errors()``)."""

    def __init__(self, errors: list[Any]) -> None:
        super().__init__(errors)
        self._errors = errors

    def errors(self) -> list[Any]:
        return self._errors


def _settings_error(
    composition: Composition, exc: ValidationError, llm: dict[str, Any] | None
) -> CompositionError:
    """The error of a ``settings:`` block that ``Platform`` refused, as when ``llm`` was its
    field: the first problem of both parts (in field order), ``(and N more)`` counting both,
    and ``llm`` among the known keys."""
    from mlx_plugins.llm_providers.settings import LLMSettings  # only on this error path
    from mlx_resources.platform import Platform

    errors = list(exc.errors())
    if llm is not None:
        try:
            LLMSettings(**llm)
        except ValidationError as llm_exc:
            errors += llm_exc.errors()
        except Exception:  # reported by llm_settings_resource once the rest is fixed
            pass
    order = [*Platform.model_fields]
    order.insert(order.index("arrival_cron"), "llm")
    errors.sort(
        key=lambda e: order.index(e["loc"][0]) if e["loc"] and e["loc"][0] in order else len(order)
    )
    fields = {**Platform.model_fields, "llm": LLMSettings.model_fields["llm"]}
    return from_validation_error(composition.source, "settings", _SettingsErrors(errors), fields)


def llm_settings_resource(composition: Composition, llm: dict[str, Any]) -> Any:
    """``settings.llm`` (``llm``: ``{"llm": <the block>}`` or ``{}`` for the defaults) as the
    ``llm_settings`` resource (:class:`~mlx_plugins.llm_providers.settings.LLMSettings`).

    Built only when the composition writes ``settings.llm`` or has ``llm_provider`` plugins:
    the block's class and Dagster's inference of its 23 config fields are not paid otherwise.

    Raises:
        CompositionError: a bad value, naming ``settings.llm.<key>`` and the fix, as when the
            block was a field of ``platform``.
    """
    from mlx_plugins.llm_providers.settings import LLMSettings

    return _built(
        composition,
        "settings.llm",
        "mlx_plugins/llm_providers/settings.py",
        lambda: LLMSettings(**llm),
        lambda exc: from_validation_error(
            composition.source, "settings", exc, LLMSettings.model_fields
        ),
    )


IO_MANAGERS = {"polars_files": "PolarsIOManager"}
"""Choices of the ``plugins.io_manager`` slot (``kinds.SLOTS``): name -> class of
``mlx_resources.io_managers.polars_io``."""


def io_manager_from_slot(composition: Composition, home: Path, default: type) -> object:
    """The ``plugins.io_manager`` slot as an IO manager: ``{plugin: polars_files, config:
    {base_path: ..., format: ...}}`` or just ``polars_files``; absent: ``polars_files`` at
    ``<home>/data``. A ``base_path`` URL (``s3://...``, ``file://...``) is used exactly as
    written (never resolved as a local path); a relative local path is relative to the home.

    Raises:
        CompositionError: an unknown plugin name, key or config value, naming the key.
    """
    key = "plugins.io_manager"
    slot = composition.slots.get("io_manager", SLOTS["io_manager"])
    if isinstance(slot, str):
        slot = {"plugin": slot}
    if not isinstance(slot, dict) or set(slot) - {"plugin", "config"}:
        raise CompositionError(
            composition.source,
            key,
            f"must be a plugin name or {{plugin: ..., config: {{...}}}}, not {slot!r}",
            "write io_manager: {plugin: polars_files, config: {base_path: s3://bucket/mlx}}",
        )
    name = slot.get("plugin", SLOTS["io_manager"])
    if name not in IO_MANAGERS:
        raise CompositionError(
            composition.source,
            f"{key}.plugin",
            f"unknown io_manager {name!r}",
            f"use one of: {', '.join(IO_MANAGERS)}",
        )
    cls: Any = default
    config = dict(slot.get("config") or {})
    known = sorted(f for f in getattr(cls, "model_fields", {}) if not f.startswith("_"))
    for field in config:
        if known and field not in known:
            import difflib

            close = difflib.get_close_matches(str(field), known, n=1)
            raise CompositionError(
                composition.source,
                f"{key}.config.{field}",
                f"unknown config key for io_manager {name!r}"
                + (f" (did you mean {close[0]!r}?)" if close else ""),
                f"use one of its keys: {', '.join(known)}",
            )
    base = str(config.get("base_path", "data"))
    if "://" not in base and not Path(base).expanduser().is_absolute():
        base = str(home / base)  # a local folder of the home (the default: <home>/data)
    config["base_path"] = base if "://" in base else str(Path(base).expanduser())
    try:
        return cls(**config)
    except ValidationError as exc:
        raise from_validation_error(
            composition.source, f"{key}.config", exc, cls.model_fields
        ) from None


def plugin_resources(
    composition: Composition, platform: dict[str, object] | None = None
) -> dict[str, Any]:
    """The composition's plugin instances by resource key, those that keep data (the
    ``model_registry``: ``with_home``) placed in the platform's home folder unless their config
    says where. ``platform``: :func:`platform_resources` when already built."""
    home = (platform or platform_resources(composition))["platform"].home_path  # type: ignore[attr-defined]
    if any(e.sandbox is not None for e in composition.entries):
        import mlx_resources.sandbox  # noqa: F401  # installs the runner sandboxed calls need
    out = composition.resources()
    for key, plugin in out.items():
        if callable(place := getattr(plugin, "with_home", None)):
            out[key] = place(home)
    return out


def config_fingerprints(composition: Composition, lc: Lifecycle) -> dict[dg.AssetKey, str]:
    """Per asset of ``lc``, a fingerprint of the composition and instance values its output
    depends on.

    It becomes part of the asset's code version (``<source hash>-<fingerprint>``), so changing
    ``mlx.yaml`` or the instance's ``defs.yaml`` makes exactly the affected assets stale, as a
    code change would: the data source's config and the instance's ``data`` -> the raw tables;
    ``features`` and ``target`` -> the features; the window -> ``training_set``; the
    ``ml_platform`` plugin, its config and the instance's ``ml_platform`` -> ``model``; the gate ->
    ``model_evaluation``; the registry and the instance's name -> ``registered_model``; the
    drift detector and the severity rule (``warn_share``, ``retrain_on_dataset_drift``,
    ``min_rows`` when set) -> ``feature_drift``. Settings that only steer the sensor or schedule
    (cooldown, cron) are left out. A drift-triggered retraining moves the window through run
    config, not here, so it does not make the configured window look stale.
    """

    def plugins(kind: str, name: str | None = None) -> list[list[Any]]:
        return [
            [e.plugin, e.config]
            for e in composition.of_kind(kind)
            if name is None or e.name == name
        ]

    spec = lc.spec
    source = config_fingerprint(
        [plugins("data_source", spec.data.source), spec.data.model_dump(mode="json")]
    )
    drift_rule = lc.drift.model_dump(include={"warn_share", "retrain_on_dataset_drift"})
    if lc.drift.min_rows:  # 0 (off) leaves the versions of homes made before min_rows existed
        drift_rule["min_rows"] = lc.drift.min_rows
    out = {key: source for key in lc.raw_keys.values()}
    out.update(
        {
            lc.features_key: config_fingerprint(
                [spec.features.model_dump(mode="json"), spec.target.model_dump(mode="json")]
            ),
            lc.training_set_key: config_fingerprint(lc.window.model_dump()),
            lc.model_key: config_fingerprint([plugins("ml_platform"), spec.ml_platform]),
            lc.evaluation_key: config_fingerprint(lc.gate.model_dump()),
            lc.registered_key: config_fingerprint([plugins("model_registry"), lc.model_name]),
            lc.drift_key: config_fingerprint(
                [plugins("drift_detector"), drift_rule, spec.features.not_monitored]
            ),
        }
    )
    return out


def with_config_versions(
    asset: dg.AssetsDefinition, fingerprints: dict[dg.AssetKey, str]
) -> dg.AssetsDefinition:
    """``asset`` with ``-<fingerprint>`` appended to the code version of each key listed."""

    def mapped(spec: dg.AssetSpec) -> dg.AssetSpec:
        extra = fingerprints.get(spec.key)
        if extra is None or spec.code_version is None:
            return spec
        return spec.replace_attributes(code_version=f"{spec.code_version}-{extra}")

    return asset.map_asset_specs(mapped)


def lifecycle_specs(composition: Composition, platform: Any) -> list[tuple[LifecycleSpec, str]]:
    """The instances the composition's settings select (``settings.lifecycles``) from its defs
    folder (``settings.defs_folder``, relative to the composition file; default
    ``mlx_assets/defs``)."""
    from mlx_assets.component.loader import DEFS_FILE, instance_files, load_specs

    folder = None
    if platform.defs_folder:
        folder = Path(platform.defs_folder).expanduser()
        if not folder.is_absolute():
            folder = Path(composition.source).resolve().parent / folder
        # a folder that is not there, or has no instance, would load no model without a word
        if not folder.is_dir():
            raise CompositionError(
                composition.source,
                "settings.defs_folder",
                f"{platform.defs_folder!r} is {folder}, which is not a folder",
                "create it with one <name>/defs.yaml per lifecycle instance, or correct the "
                "path (relative to the composition file)",
            )
        if not instance_files(folder):
            raise CompositionError(
                composition.source,
                "settings.defs_folder",
                f"{platform.defs_folder!r} ({folder}) holds no <name>/{DEFS_FILE} lifecycle "
                "instance",
                "scaffold one there with `dg scaffold defs mlx_assets.component.MLLifecycle "
                "<name>`, or point settings.defs_folder at the folder that has them",
            )
    return load_specs(folder, platform.lifecycles)


def resolve_lifecycles(
    composition: Composition,
    platform: Any,
    specs: list[tuple[LifecycleSpec, str]],
    *,
    explicit: bool = True,
) -> list[Lifecycle]:
    """``specs`` resolved against the settings, checked against the composition.

    With ``explicit`` (the instances were named: ``settings.lifecycles`` or the caller) every
    one must read a data source of the composition. Otherwise (every instance of the folder) an
    instance whose data source the composition does not have is left out with a warning, so a
    composition picks its models by the data it names; a name close to one it has is a typo
    and an error.

    Raises:
        CompositionError: an instance reads a data source the composition does not name (see
            above), no instance is left, two instances have no key prefix or the same prefix
            (names the files and the fix).
    """
    import difflib
    import logging

    sources = [e.name for e in composition.of_kind("data_source")]
    serving = bool(composition.of_kind("model_server"))
    out: list[Lifecycle] = []
    left_out: list[str] = []
    prefixes: dict[tuple[str, ...], str] = {}
    for spec, file in specs:
        lc = Lifecycle(spec, platform, file, serving=serving)
        if (
            spec.data.source not in sources
            and not explicit
            and not difflib.get_close_matches(spec.data.source, sources, n=1, cutoff=0.75)
        ):
            left_out.append(f"{spec.name} (data source {spec.data.source!r})")
            continue
        if spec.data.source not in sources:
            raise CompositionError(
                file or composition.source,
                "attributes.data.source",
                f"lifecycle {spec.name!r} reads data source {spec.data.source!r}, which "
                f"{composition.source} does not name (its data sources: {sources})",
                f"add a data_source entry named {spec.data.source} to {composition.source}, "
                "point data.source at one of those, or leave this instance out by listing the "
                "ones to load in settings.lifecycles",
            )
        if lc.prefix in prefixes:
            raise CompositionError(
                file or composition.source,
                "attributes.key_prefix",
                f"{list(lc.prefix)} is also the key prefix of {prefixes[lc.prefix]}",
                "give each lifecycle instance its own key_prefix (default: its name)",
            )
        prefixes[lc.prefix] = file or spec.name
        out.append(lc)
    if left_out:
        logging.getLogger("mlx").warning(
            "lifecycle instances left out, their data source is not in %s: %s",
            composition.source,
            ", ".join(left_out),
        )
    if specs and not out:
        raise CompositionError(
            composition.source,
            "plugins.data_source",
            f"no lifecycle instance reads one of its data sources {sources}; the instances "
            f"read: {', '.join(left_out)}",
            "add the data source an instance reads, or scaffold an instance for yours: dg "
            "scaffold defs mlx_assets.component.MLLifecycle <name>",
        )
    return out


def lifecycle_definitions(
    composition: Composition, lc: Lifecycle, provider_keys: tuple[str, ...]
) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """``(assets, jobs, schedules, sensors)`` of one instance."""
    from mlx_assets.evaluation.evaluation import build_evaluation
    from mlx_assets.features.features import build_features_asset
    from mlx_assets.ingest.raw import build_raw_assets
    from mlx_assets.monitoring.arrival_schedule import build_arrival_schedule
    from mlx_assets.monitoring.drift_sensor import build_drift_sensor
    from mlx_assets.monitoring.feature_drift import build_feature_drift
    from mlx_assets.monitoring.incident_summary import build_incident_summary
    from mlx_assets.registry.registered_model import build_registered_model
    from mlx_assets.training.model import build_model
    from mlx_assets.training.training_set import build_training_set

    fingerprints = config_fingerprints(composition, lc)
    assets = [
        *build_raw_assets(lc),
        build_features_asset(lc),
        build_training_set(lc),
        build_model(lc),
        build_evaluation(lc),
        build_registered_model(lc),
        build_feature_drift(lc),
        build_incident_summary(lc, provider_keys),
    ]
    if lc.serving:  # the registered version behind a router
        from mlx_assets.serving.deployment import build_deployment

        assets.append(build_deployment(lc))
    return (
        [with_config_versions(a, fingerprints) for a in assets],
        jobs.build_jobs(lc),
        [build_arrival_schedule(lc)],
        [build_drift_sensor(lc)],
    )


def instance_resources(composition: Composition, lc: Lifecycle) -> dict[str, Any]:
    """Resources of one instance: its ml_platform with the instance's ``ml_platform`` overrides
    (``<name>__ml_platform``), when it has any."""
    from mlx_assets.training.model import ml_platform_key

    if not lc.spec.ml_platform:
        return {}
    (entry,) = composition.of_kind("ml_platform")
    merged = entry.model_copy(update={"config": {**entry.config, **lc.spec.ml_platform}})
    where = f"{lc.source_file or lc.name}: attributes.ml_platform (over plugins.ml_platform)"
    return {ml_platform_key(lc): composition.instantiate(merged, key=where)}


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (on again after it, if it was on).

    Loading the code location allocates many objects that live as long as the process (asset,
    op and resource definitions, pydantic schemas, imported modules) on top of a heap already
    holding Dagster's and polars' import-time objects; each full collection walks all of them
    and finds almost nothing to free. Measured here: ~70 collections cost about a fifth of
    ``import dagster``'s CPU time (docs/lifecycle_component.md, "Load time"). Whatever cyclic
    garbage the block leaves is collected by the first collection after it.
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def build_definitions(
    composition: Composition,
    lifecycles: list[tuple[LifecycleSpec, str]] | None = None,
) -> dg.Definitions:
    """The code location: the composition's plugins and platform resources, and every lifecycle
    instance's assets, checks, jobs, drift sensor and arrival schedule (built with the garbage
    collector paused, :func:`gc_paused`).

    Args:
        composition: the composition (``load_composition()``).
        lifecycles: ``(spec, file)`` of the instances; default those of the defs folder that
            ``settings.lifecycles`` selects (see :func:`lifecycle_specs`).

    Raises:
        CompositionError: a composition or instance problem, naming the file, key and fix.
    """
    with gc_paused():
        return _build_definitions(composition, lifecycles)


def _build_definitions(
    composition: Composition,
    lifecycles: list[tuple[LifecycleSpec, str]] | None,
) -> dg.Definitions:
    from mlx_assets.monitoring.incident_summary import llm_provider_keys

    platform = platform_resources(composition)
    for entry in composition.entries:
        if entry.name in platform:  # would be replaced by the platform's resource of that key
            raise CompositionError(
                composition.source,
                f"plugins.{entry.kind}",
                f"the {entry.kind} {entry.plugin!r} is named {entry.name!r}, the key of the "
                f"platform's own resource ({', '.join(platform)})",
                "give it another 'name:'",
            )
    resources: dict[str, Any] = {**plugin_resources(composition, platform), **platform}
    specs = (
        lifecycles
        if lifecycles is not None
        else lifecycle_specs(composition, resources["platform"])
    )
    explicit = lifecycles is not None or resources["platform"].lifecycles is not None
    instances = resolve_lifecycles(composition, resources["platform"], specs, explicit=explicit)
    provider_keys = llm_provider_keys(composition)
    assets: list[Any] = []
    all_jobs: list[Any] = []
    schedules: list[Any] = []
    sensors: list[Any] = []
    for lc in instances:
        a, j, sc, se = lifecycle_definitions(composition, lc, provider_keys)
        assets += a
        all_jobs += j
        schedules += sc
        sensors += se
        resources.update(instance_resources(composition, lc))
    defs = dg.Definitions(
        assets=assets,
        jobs=all_jobs,
        schedules=schedules,
        sensors=sensors,
        resources=resources,
        executor=jobs.EXECUTOR,
        metadata={"mlx/lifecycles": dg.MetadataValue.json([lc.name for lc in instances])},
    )
    defs._mlx_lifecycles = instances  # type: ignore[attr-defined]  # read by lifecycles_of
    return defs


def lifecycles_of(defs: dg.Definitions) -> list[Lifecycle]:
    """The lifecycle instances ``defs`` was built with (by :func:`build_definitions`), in order.

    Raises:
        ValueError: ``defs`` was not built by :func:`build_definitions`.
    """
    found = getattr(defs, "_mlx_lifecycles", None)
    if found is None:
        raise ValueError("these Definitions were not built by mlx_assets.build.build_definitions")
    return list(found)

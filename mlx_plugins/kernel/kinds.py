"""Plugin kinds and their cardinality rules.

A kind is a slot in the composition file. Its cardinality says how many plugins of that kind
one platform may use at once. Adding a kind is one entry in ``KINDS``.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class Cardinality(StrEnum):
    EXACTLY_ONE = "exactly_one"
    AT_MOST_ONE = "at_most_one"
    ANY = "any"  # zero or more
    AT_LEAST_ONE = "at_least_one"

    def allows(self, count: int) -> bool:
        return {
            Cardinality.EXACTLY_ONE: count == 1,
            Cardinality.AT_MOST_ONE: count <= 1,
            Cardinality.ANY: count >= 0,
            Cardinality.AT_LEAST_ONE: count >= 1,
        }[self]

    def describe(self) -> str:
        return {
            Cardinality.EXACTLY_ONE: "exactly one plugin",
            Cardinality.AT_MOST_ONE: "at most one plugin",
            Cardinality.ANY: "any number of plugins",
            Cardinality.AT_LEAST_ONE: "at least one plugin",
        }[self]

    @property
    def singular(self) -> bool:
        """Singular kinds are wired under the kind's own resource key (``ml_platform``)."""
        return self in (Cardinality.EXACTLY_ONE, Cardinality.AT_MOST_ONE)


class PluginKind(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    cardinality: Cardinality
    description: str
    base_class: str
    """``module:Class`` of the kind's abstract base, which every plugin of the kind subclasses."""
    default: str | None = None
    """Plugin used, with its default config, when the composition names none of this kind (so
    a kind added later leaves existing composition files valid)."""


KINDS: dict[str, PluginKind] = {
    k.name: k
    for k in (
        PluginKind(
            name="data_source",
            cardinality=Cardinality.AT_LEAST_ONE,
            description="Reads source data as polars frames, one partition at a time.",
            base_class="mlx_plugins.data_sources.base:DataSource",
        ),
        PluginKind(
            name="ml_platform",
            cardinality=Cardinality.EXACTLY_ONE,
            description="Trains and scores models.",
            base_class="mlx_plugins.ml_platforms.base:MLPlatform",
        ),
        PluginKind(
            name="llm_provider",
            cardinality=Cardinality.ANY,
            description="Large language model APIs, called in parallel.",
            base_class="mlx_plugins.llm_providers.base:LLMProvider",
        ),
        PluginKind(
            name="model_server",
            cardinality=Cardinality.AT_MOST_ONE,
            description="Packages and serves registered models.",
            base_class="mlx_plugins.model_servers.base:ModelServer",
        ),
        PluginKind(
            name="drift_detector",
            cardinality=Cardinality.EXACTLY_ONE,
            description="Compares a current partition with a reference window.",
            base_class="mlx_plugins.drift_detectors.base:DriftDetector",
        ),
        PluginKind(
            name="model_registry",
            cardinality=Cardinality.EXACTLY_ONE,
            description="Stores immutable, numbered model versions with lineage and aliases.",
            base_class="mlx_plugins.model_registries.base:ModelRegistry",
            default="local",
        ),
    )
}


SLOTS: dict[str, str] = {"io_manager": "polars_files"}
"""Platform slots: chosen under ``plugins:`` like a kind (``io_manager: {plugin: polars_files,
config: {base_path: s3://bucket/mlx}}``), but filled by the platform's own machinery in
``mlx_resources`` rather than by plugins. Slot name -> the choice when the file names none."""


def get_kind(name: str) -> PluginKind:
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown plugin kind {name!r}; known kinds: {', '.join(KINDS)}") from None

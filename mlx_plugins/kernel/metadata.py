"""What a plugin says about itself."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlx_plugins.kernel.kinds import KINDS

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"
)
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class PluginMetadata(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Registry name, as written in the composition file.")
    kind: str
    version: str = Field(description="Semantic version of the plugin.")
    capabilities: tuple[str, ...] = Field(min_length=1)
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"plugin name {v!r} must be snake_case (a-z, 0-9, _)")
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in KINDS:
            raise ValueError(f"unknown kind {v!r}; known kinds: {', '.join(KINDS)}")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not _SEMVER.match(v):
            raise ValueError(f"version {v!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        return v

    @field_validator("capabilities")
    @classmethod
    def _capabilities(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not c or not isinstance(c, str) for c in v):
            raise ValueError("capabilities must be non-empty strings")
        return v

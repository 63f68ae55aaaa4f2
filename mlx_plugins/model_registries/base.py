"""The ``model_registry`` kind: immutable, numbered model versions with their lineage.

A registry plugin stores a trained model's artifact as the next version of a named model,
with the metrics, config and lineage that produced it, and names versions by alias
(``champion``, ``challenger``). Versions are never changed or overwritten once registered;
registering a model identical to an existing version (:func:`identity`) writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from abc import abstractmethod
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field

from mlx_plugins.kernel.base import MLXPlugin

_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


class ModelLineage(BaseModel):
    """Where a model version came from: the data, code and run that produced it."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    training_data_version: str | None
    partitions: list[str] = Field(description="Feature partitions the model was trained on.")
    partition_data_versions: dict[str, str] = Field(default_factory=dict)
    code_versions: dict[str, str] = Field(default_factory=dict)
    window: dict[str, Any] = Field(default_factory=dict, description="Train/valid/test dates.")
    run_id: str | None = None
    sources: dict[str, Any] = Field(
        default_factory=dict,
        description="Raw asset -> what its last read ran at the data source (e.g. the SQL and "
        "query id of a warehouse read; DataSource.read_lineage).",
    )


def identity(config: dict[str, Any], lineage: ModelLineage) -> str | None:
    """What makes two registrations the same model version: training-set data version, code
    versions and config (a sha256 hex string), or None when the training-set data version is
    unknown (nothing can then be proven identical)."""
    if not lineage.training_data_version:
        return None
    payload = {
        "training_data_version": lineage.training_data_version,
        "code_versions": dict(sorted(lineage.code_versions.items())),
        "config": config,
    }
    blob = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Registration:
    """The arguments of one :meth:`ModelRegistry.register_once` call and their :func:`identity`."""

    model: str
    artifact: Path
    artifact_sha256: str
    metrics: dict[str, float]
    config: dict[str, Any]
    lineage: ModelLineage
    key: str | None


class ModelVersion(BaseModel):
    """One registered, immutable version of a model."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    model: str
    version: int
    created_at: str
    """ISO 8601 UTC timestamp of the registration."""
    artifact_path: str
    """Where the registry stored the artifact: a local path (``local``) or an artifact URI
    (``mlflow``); :meth:`ModelRegistry.download_artifact` fetches it either way."""
    artifact_sha256: str
    metrics: dict[str, float]
    config: dict[str, Any]
    lineage: ModelLineage

    @property
    def tag(self) -> str:
        return f"{self.model}:v{self.version:04d}"


def check_alias(alias: str) -> str:
    """``alias`` when it is a valid alias name (a letter, then letters, digits, ``_`` or ``-``,
    at most 64 characters); raises ValueError naming it otherwise."""
    if not isinstance(alias, str) or not _ALIAS.match(alias) or alias[1:].isdigit():
        raise ValueError(
            f"alias {alias!r} is not valid: use a letter then letters, digits, '_' or '-' "
            "(at most 64), e.g. 'champion'; 'v<N>' is reserved for version numbers"
        )
    return alias


class ModelRegistry(MLXPlugin):
    """Stores model versions. Resource key ``model_registry``; exactly one per platform (the
    composition's ``plugins.model_registry``, ``local`` when it names none).

    Every method is safe to call from several processes and threads at once. Versions are
    numbered 1, 2, 3... per model, in registration order, with no gaps from failed
    registrations, and are immutable.
    """

    def with_home(self, home: Path) -> Self:
        """This registry with its storage placed under the platform's ``home`` folder when its
        config leaves the location unset (the default); ``self`` otherwise. Called once when
        the definitions are built."""
        return self

    def register_once(
        self,
        model: str,
        artifact: str | os.PathLike[str],
        artifact_sha256: str,
        metrics: dict[str, float],
        config: dict[str, Any],
        lineage: ModelLineage,
    ) -> tuple[ModelVersion, bool]:
        """Register ``artifact`` as the next version of ``model``, unless it is already there.

        Parameters
        ----------
        model
            The model's name (``[A-Za-z0-9_.-]+``), e.g. ``"flight_delay"``.
        artifact
            Path of the artifact file (a local file, copied into the registry).
        artifact_sha256
            Hex sha256 (64 characters) of the artifact's bytes, recorded with the version.
        metrics
            Metric name -> float (e.g. ``roc_auc`` in [0, 1], ``log_loss`` in nats).
        config
            The JSON-serialisable config the model was trained with.
        lineage
            Data, code versions and run that produced it.

        Returns
        -------
        tuple[ModelVersion, bool]
            ``(version, created)``. ``created`` is False when a version with the same
            :func:`identity` (training-set data version, code versions, config) already
            existed: nothing was written and that version is returned. Without a training-set
            data version nothing is identical, so a new version is always written.
            Concurrent identical registrations give one version.

        Raises
        ------
        OSError
            The artifact can't be read or stored (nothing is registered then).
        """
        reg = Registration(
            model,
            Path(artifact),
            artifact_sha256,
            metrics,
            config,
            lineage,
            identity(config, lineage),
        )
        with self._registering(reg) as handle:
            if reg.key is not None:
                for existing in self._stored_versions(handle, model):
                    if identity(existing.config, existing.lineage) == reg.key:
                        return existing, False
            return self._add_version(handle, reg), True

    @abstractmethod
    def _registering(self, reg: Registration) -> AbstractContextManager[Any]:
        """Hold registrations of ``reg.model`` (one at a time) while :meth:`register_once` looks
        for an identical version and adds one; yields the handle passed to the two below."""

    @abstractmethod
    def _stored_versions(self, handle: Any, model: str) -> Iterable[ModelVersion]:
        """The versions of ``model``, read under :meth:`_registering`."""

    @abstractmethod
    def _add_version(self, handle: Any, reg: Registration) -> ModelVersion:
        """Store ``reg`` as the next version of its model, under :meth:`_registering`."""

    def register(
        self,
        model: str,
        artifact: str | os.PathLike[str],
        artifact_sha256: str,
        metrics: dict[str, float],
        config: dict[str, Any],
        lineage: ModelLineage,
    ) -> ModelVersion:
        """:meth:`register_once` without the ``created`` flag."""
        return self.register_once(model, artifact, artifact_sha256, metrics, config, lineage)[0]

    @abstractmethod
    def versions(self, model: str) -> list[ModelVersion]:
        """All versions of ``model``, oldest first (version 1 first); ``[]`` for a model never
        registered."""

    def get(self, model: str, version: int) -> ModelVersion:
        """Version number ``version`` (1-based) of ``model``.

        Raises
        ------
        KeyError
            No such version; the message names the model and the versions it has.
        """
        found = {v.version: v for v in self.versions(model)}
        if version not in found:
            raise KeyError(
                f"model {model!r} has no version {version!r}; it has: "
                f"{', '.join(str(n) for n in sorted(found)) or 'none'}"
            )
        return found[version]

    def latest(self, model: str) -> ModelVersion | None:
        """The newest version of ``model``, or None when it has none."""
        versions = self.versions(model)
        return versions[-1] if versions else None

    @abstractmethod
    def set_alias(self, model: str, alias: str, version: int) -> None:
        """Point ``alias`` (e.g. ``"champion"``) of ``model`` at ``version``; an alias names one
        version at a time, so this moves it when it named another.

        Raises
        ------
        KeyError
            ``model`` has no such version.
        ValueError
            ``alias`` is not a valid alias name (:func:`check_alias`).
        """

    @abstractmethod
    def aliases(self, model: str) -> dict[str, int]:
        """Alias -> version number for ``model`` (``{}`` when it has none)."""

    def get_by_alias(self, model: str, alias: str) -> ModelVersion:
        """The version that ``alias`` of ``model`` names.

        Raises
        ------
        KeyError
            The alias is not set; the message names the aliases that are.
        """
        aliases = self.aliases(model)
        if alias not in aliases:
            raise KeyError(
                f"model {model!r} has no alias {alias!r}; its aliases: "
                f"{', '.join(sorted(aliases)) or 'none'} (set one with set_alias)"
            )
        return self.get(model, aliases[alias])

    def download_artifact(self, version: ModelVersion, dest: str | os.PathLike[str]) -> Path:
        """Copy ``version``'s artifact into the folder ``dest`` (created) and return its path;
        the bytes are those registered (sha256 ``version.artifact_sha256``).

        Raises
        ------
        FileNotFoundError
            The stored artifact is gone.
        """
        src = Path(version.artifact_path)
        out = Path(dest)
        out.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(src, out / src.name))

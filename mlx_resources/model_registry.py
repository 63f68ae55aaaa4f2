"""The model registry: immutable, numbered model versions with their lineage.

Each version is a folder ``<root>/<model>/v<NNNN>/`` holding the artifact and ``version.json``,
indexed in SQLite. A version is written to a temporary folder and renamed into place, and its
number is claimed with an exclusive ``mkdir``, so two writers never share or overwrite one.
Registering a model identical to an existing version (same training-set data version, code
versions and config) writes nothing and returns that version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field

from mlx_resources.atomic import atomic_write_text


class ModelLineage(BaseModel):
    model_config = ConfigDict(frozen=True)

    training_data_version: str | None
    partitions: list[str] = Field(description="Feature partitions the model was trained on.")
    partition_data_versions: dict[str, str] = Field(default_factory=dict)
    code_versions: dict[str, str] = Field(default_factory=dict)
    window: dict[str, Any] = Field(default_factory=dict, description="Train/valid/test dates.")
    run_id: str | None = None


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


class ModelVersion(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    version: int
    created_at: str
    artifact_path: str
    artifact_sha256: str
    metrics: dict[str, float]
    config: dict[str, Any]
    lineage: ModelLineage

    @property
    def tag(self) -> str:
        return f"{self.model}:v{self.version:04d}"


class ModelRegistry(dg.ConfigurableResource):
    """Local registry under ``root`` (a folder in the MLX home by default)."""

    root: str

    @property
    def _db(self) -> Path:
        return Path(self.root) / "registry.sqlite"

    def _connect(self) -> sqlite3.Connection:
        Path(self.root).mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._db, timeout=30)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS versions (model TEXT, version INTEGER, created_at TEXT,"
            " body TEXT, PRIMARY KEY (model, version))"
        )
        return conn

    def register(
        self,
        model: str,
        artifact: str | os.PathLike[str],
        artifact_sha256: str,
        metrics: dict[str, float],
        config: dict[str, Any],
        lineage: ModelLineage,
    ) -> ModelVersion:
        """Register a new version, or return the existing identical one (see ``register_once``)."""
        return self.register_once(model, artifact, artifact_sha256, metrics, config, lineage)[0]

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

        A version is identical when its training-set data version, its code versions and its
        config all equal this one's (``identity``); then nothing is written and that version is
        returned with ``False``. Without a training-set data version nothing can be proven
        identical, so a new version is always written. Registrations of one registry are
        serialized (an exclusive SQLite transaction), so two identical concurrent registrations
        give one version.

        Returns:
            ``(version, created)``: ``created`` is False when an identical version was reused.

        Raises:
            OSError: the artifact can't be copied (nothing is registered then).
            sqlite3.OperationalError: the registry stayed locked for 30 s by another writer.
        """
        key = identity(config, lineage)
        folder = Path(self.root) / model
        folder.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as conn:
            conn.isolation_level = None  # explicit transactions below
            conn.execute("BEGIN IMMEDIATE")  # one registration at a time per registry
            try:
                if key is not None:
                    for row in conn.execute(
                        "SELECT body FROM versions WHERE model = ? ORDER BY version", (model,)
                    ):
                        existing = ModelVersion.model_validate(json.loads(row[0]))
                        if identity(existing.config, existing.lineage) == key:
                            conn.execute("COMMIT")
                            return existing, False
                mv = self._write_version(
                    folder, model, artifact, artifact_sha256, metrics, config, lineage
                )
                conn.execute(
                    "INSERT INTO versions VALUES (?, ?, ?, ?)",
                    (model, mv.version, mv.created_at, mv.model_dump_json()),
                )
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        return mv, True

    def _write_version(
        self,
        folder: Path,
        model: str,
        artifact: str | os.PathLike[str],
        artifact_sha256: str,
        metrics: dict[str, float],
        config: dict[str, Any],
        lineage: ModelLineage,
    ) -> ModelVersion:
        version = self._claim(folder)
        final = folder / f"v{version:04d}"
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=f".v{version:04d}-"))
        try:
            src = Path(artifact)
            shutil.copy2(src, staging / src.name)
            mv = ModelVersion(
                model=model,
                version=version,
                created_at=datetime.now(UTC).isoformat(),
                artifact_path=str(final / src.name),
                artifact_sha256=artifact_sha256,
                metrics=metrics,
                config=config,
                lineage=lineage,
            )
            atomic_write_text(staging / "version.json", mv.model_dump_json(indent=2))
            # Renaming onto our empty claim folder replaces it atomically (POSIX), so the
            # number is never free for another writer in between.
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.rmdir(final)  # give the number back if nothing was written there
            raise
        return mv

    @staticmethod
    def _claim(folder: Path) -> int:
        existing = [int(p.name[1:]) for p in folder.glob("v[0-9]*") if p.name[1:].isdigit()]
        version = max(existing, default=0) + 1
        while True:
            try:
                os.mkdir(folder / f"v{version:04d}")
                return version
            except FileExistsError:
                version += 1

    def versions(self, model: str) -> list[ModelVersion]:
        if not self._db.exists():
            return []
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT body FROM versions WHERE model = ? ORDER BY version", (model,)
            ).fetchall()
        return [ModelVersion.model_validate(json.loads(r[0])) for r in rows]

    def latest(self, model: str) -> ModelVersion | None:
        versions = self.versions(model)
        return versions[-1] if versions else None

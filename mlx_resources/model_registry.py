"""The model registry: immutable, numbered model versions with their lineage.

Each version is a folder ``<root>/<model>/v<NNNN>/`` holding the artifact and ``version.json``,
indexed in SQLite. A version is written to a temporary folder and renamed into place, and its
number is claimed with an exclusive ``mkdir``, so two writers never share or overwrite one.
"""

from __future__ import annotations

import contextlib
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


class ModelLineage(BaseModel):
    model_config = ConfigDict(frozen=True)

    training_data_version: str | None
    partitions: list[str] = Field(description="Feature partitions the model was trained on.")
    partition_data_versions: dict[str, str] = Field(default_factory=dict)
    code_versions: dict[str, str] = Field(default_factory=dict)
    window: dict[str, Any] = Field(default_factory=dict, description="Train/valid/test dates.")
    run_id: str | None = None


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
        folder = Path(self.root) / model
        folder.mkdir(parents=True, exist_ok=True)
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
            (staging / "version.json").write_text(mv.model_dump_json(indent=2))
            # Renaming onto our empty claim folder replaces it atomically (POSIX), so the
            # number is never free for another writer in between.
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.rmdir(final)  # give the number back if nothing was written there
            raise
        with closing(self._connect()) as conn, conn:
            conn.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?)",
                (model, version, mv.created_at, mv.model_dump_json()),
            )
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

"""``local``: immutable, numbered model versions in folders, indexed in SQLite.

Each version is a folder ``<root>/<model>/v<NNNN>/`` holding the artifact and ``version.json``,
indexed in ``<root>/registry.sqlite`` (versions and aliases). A version is written to a
temporary folder and renamed into place, and its number is claimed with an exclusive
``mkdir``, so two writers never share or overwrite one. Registering a model identical to an
existing version (same training-set data version, code versions and config) writes nothing and
returns that version.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Self

from pydantic import Field

from mlx_plugins.kernel.atomic import atomic_write_text
from mlx_plugins.kernel.metadata import PluginMetadata
from mlx_plugins.model_registries.base import (
    ModelRegistry,
    ModelVersion,
    Registration,
    check_alias,
)

if TYPE_CHECKING:
    import sqlite3  # imported on first use: not needed to load the code location


class LocalModelRegistry(ModelRegistry):
    """Local registry under ``root`` (``<MLX home>/registry`` when left empty)."""

    metadata: ClassVar[PluginMetadata] = PluginMetadata(
        name="local",
        kind="model_registry",
        version="1.0.0",
        capabilities=("versions", "aliases", "lineage", "register_once"),
        description="Numbered version folders with an SQLite index, under the MLX home.",
    )

    root: str = Field(
        default="",
        description="Folder of the registry; empty: 'registry' in the platform's MLX home.",
    )

    def with_home(self, home: Path) -> Self:
        if self.root:
            return self
        return type(self)(root=str(Path(home) / "registry"))

    @property
    def _root(self) -> Path:
        if not self.root:
            raise ValueError(
                "model_registry 'local' has no root folder: set plugins.model_registry.config."
                "root, or build the definitions from a composition (root = <MLX home>/registry)"
            )
        return Path(self.root)

    @property
    def _db(self) -> Path:
        return self._root / "registry.sqlite"

    def _probe(self) -> str:
        self._root.mkdir(parents=True, exist_ok=True)
        if not os.access(self._root, os.W_OK):
            raise PermissionError(f"registry folder {self._root} is not writable")
        with closing(self._connect()) as conn:
            conn.execute("SELECT COUNT(*) FROM versions").fetchone()
        return f"registry at {self._root}"

    def _connect(self) -> sqlite3.Connection:
        import sqlite3

        self._root.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._db, timeout=30)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS versions (model TEXT, version INTEGER, created_at TEXT,"
            " body TEXT, PRIMARY KEY (model, version))"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS aliases (model TEXT, alias TEXT, version INTEGER,"
            " PRIMARY KEY (model, alias))"
        )
        return conn

    @contextlib.contextmanager
    def _registering(self, reg: Registration) -> Iterator[sqlite3.Connection]:
        """Registrations of one registry are serialized (an exclusive SQLite transaction).

        Raises:
            OSError: the artifact can't be copied (nothing is registered then).
            sqlite3.OperationalError: the registry stayed locked for 30 s by another writer.
        """
        import sqlite3

        (self._root / reg.model).mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as conn:
            conn.isolation_level = None  # explicit transactions below
            conn.execute("BEGIN IMMEDIATE")  # one registration at a time per registry
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

    def _stored_versions(self, handle: sqlite3.Connection, model: str) -> Iterator[ModelVersion]:
        for row in handle.execute(
            "SELECT body FROM versions WHERE model = ? ORDER BY version", (model,)
        ):
            yield ModelVersion.model_validate(json.loads(row[0]))

    def _add_version(self, handle: sqlite3.Connection, reg: Registration) -> ModelVersion:
        mv = self._write_version(reg)
        handle.execute(
            "INSERT INTO versions VALUES (?, ?, ?, ?)",
            (reg.model, mv.version, mv.created_at, mv.model_dump_json()),
        )
        return mv

    def _write_version(self, reg: Registration) -> ModelVersion:
        folder = self._root / reg.model
        version = self._claim(folder)
        final = folder / f"v{version:04d}"
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=f".v{version:04d}-"))
        try:
            src = reg.artifact
            shutil.copy2(src, staging / src.name)
            mv = ModelVersion(
                model=reg.model,
                version=version,
                created_at=datetime.now(UTC).isoformat(),
                artifact_path=str(final / src.name),
                artifact_sha256=reg.artifact_sha256,
                metrics=reg.metrics,
                config=reg.config,
                lineage=reg.lineage,
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

    def set_alias(self, model: str, alias: str, version: int) -> None:
        check_alias(alias)
        self.get(model, version)  # KeyError naming the versions there are
        with closing(self._connect()) as conn, conn:
            conn.execute(
                "INSERT INTO aliases VALUES (?, ?, ?) ON CONFLICT (model, alias)"
                " DO UPDATE SET version = excluded.version",
                (model, alias, version),
            )

    def aliases(self, model: str) -> dict[str, int]:
        if not self._db.exists():
            return {}
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT alias, version FROM aliases WHERE model = ? ORDER BY alias", (model,)
            ).fetchall()
        return {str(a): int(v) for a, v in rows}

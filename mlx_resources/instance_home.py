"""The embedded Dagster home: ``.mlx_home/dagster`` with a link to the repository's dagster.yaml.

Dagster reads ``$DAGSTER_HOME/dagster.yaml``; linking it keeps the instance config in one
obvious place (the repository root) while SQLite files stay out of the source tree.

First use is safe when several processes start at once (``./dev lifecycle & ./dev lifecycle``):
the home folder, the link and the SQLite storages are created by one process under an exclusive
``fcntl.flock`` on ``<home>/.instance.lock``; the others wait and then reuse what it made.
Two SQLite storages created at once gave ``schedules.db`` two alembic heads and a broken
instance. :func:`lifecycle_lock` serializes whole lifecycle runs the same way.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from mlx_resources.platform import HOME_ENV, REPO_ROOT

INSTANCE_LOCK = ".instance.lock"
LIFECYCLE_LOCK = "lifecycle.lock"
READY_MARKER = ".instance-ready"
"""Written (atomically) once the instance's storages exist; later opens skip the lock."""


class HomeLockError(RuntimeError):
    """A lock file in the MLX home cannot be created or locked (path and fix in the message)."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "unknown"
    return text.split()[0] if text else "unknown"


@contextlib.contextmanager
def exclusive_lock(
    path: Path, what: str, log: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    When another process holds it, ``log`` gets "another <what> is running (pid N); waiting"
    once and the call blocks until that process releases it or dies (the kernel drops a dead
    process's lock, so a ``kill -9`` never leaves it stuck). The holder's pid is written into
    the file for that message. Raises :class:`HomeLockError` if the file cannot be opened.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise HomeLockError(
            f"cannot open the lock file {path}: {exc.strerror}; "
            "fix: make the MLX home writable or point MLX_HOME at a writable folder"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if log is not None:
                log(f"another {what} is running (pid {_holder(path)}); waiting")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def dagster_home_path(environ: dict[str, str] | os._Environ[str] | None = None) -> Path:
    """``$DAGSTER_HOME`` if set, else ``<MLX_HOME or .mlx_home>/dagster`` (nothing created)."""
    env = os.environ if environ is None else environ
    if env.get("DAGSTER_HOME"):
        return Path(env["DAGSTER_HOME"])
    return Path(env.get(HOME_ENV) or REPO_ROOT / ".mlx_home") / "dagster"


def _link_config(home: Path) -> None:
    link = home / "dagster.yaml"
    if link.exists() or link.is_symlink():
        return
    tmp = home / f".dagster.yaml.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.symlink_to(REPO_ROOT / "dagster.yaml")
    try:
        os.replace(tmp, link)  # atomic; never a half-made link under the final name
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _create_storages(home: Path) -> None:
    """Open the instance once so that its SQLite storages are created and migrated."""
    import dagster as dg

    old = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.get() as instance:
            instance.get_runs(limit=1)
            instance.schedule_storage  # noqa: B018 (created on first use in some versions)
    finally:
        if old is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = old


def ensure_dagster_home(
    environ: dict[str, str] | None = None,
    log: Callable[[str], None] | None = None,
    create_storages: bool = True,
) -> Path:
    """Create (once, safely under concurrency) and return the Dagster home folder.

    Sets ``DAGSTER_HOME`` in ``environ`` (default ``os.environ``) when it is not set. Under an
    exclusive lock on ``<home>/.instance.lock``: creates the folder, links the repository's
    dagster.yaml into it, and (``create_storages``) opens the instance once so its SQLite
    storages exist before any concurrent user opens them. A ready marker makes later calls
    lock-free. Raises :class:`HomeLockError` when the home is not writable.
    """
    env = os.environ if environ is None else environ
    home = dagster_home_path(env)
    env["DAGSTER_HOME"] = str(home)
    marker = home / READY_MARKER
    if marker.exists() and (home / "dagster.yaml").exists():
        return home
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HomeLockError(
            f"cannot create the Dagster home {home}: {exc.strerror}; "
            f"fix: make it writable or set {HOME_ENV} (or DAGSTER_HOME) to a writable folder"
        ) from None
    with exclusive_lock(home / INSTANCE_LOCK, "first use of this instance", log):
        if marker.exists() and (home / "dagster.yaml").exists():
            return home  # made by the process we waited for
        _link_config(home)
        if create_storages:
            _create_storages(home)
            from mlx_resources.atomic import atomic_write_text  # unique temp + atomic rename

            atomic_write_text(marker, f"{os.getpid()}\n")
    return home


def lifecycle_lock(home: Path, log: Callable[[str], None] | None = None):
    """Exclusive lock for one lifecycle run on the instance at ``home`` (the Dagster home).

    A second ``mlx lifecycle`` logs "another lifecycle is running (pid N); waiting", waits, and
    then plans on what the first one left (usually nothing to do).
    """
    return exclusive_lock(Path(home) / LIFECYCLE_LOCK, "lifecycle", log)

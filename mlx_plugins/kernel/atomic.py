"""Atomic file writes for every file the platform writes (reports, metadata, markers, artifacts).

Each write goes to a temp file with a UNIQUE name in the target's folder
(``.<name>.tmp-<pid>-<random>``: same file system, so the rename is atomic; the pid lets
``mlx_resources.leftovers`` tell a dead writer's temp from a live one), then ``os.replace``
moves it over the target. Readers see the old file or the new one, never a partial one; two
writers of the same target both succeed and the target ends as one complete write (the last
rename wins). On any error the temp file is removed and the target is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TEMP_INFIX = ".tmp-"


def _default_mode() -> int:
    """Permission bits of a newly created file under the process umask (e.g. 0o644)."""
    try:  # Linux: read the umask without changing it (os.umask is process-wide, not thread-safe)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


def temp_path_for(target: str | os.PathLike[str]) -> tuple[int, Path]:
    """Create (exclusively) a unique temp file next to ``target``; returns ``(fd, path)``.

    The folder is created if missing. The name is ``.<target name>.tmp-<pid>-<random>``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}{TEMP_INFIX}{os.getpid()}-"
    )
    return fd, Path(name)


@contextlib.contextmanager
def atomic_open(
    target: str | os.PathLike[str],
    mode: str = "wb",
    *,
    fsync: bool = False,
    encoding: str = "utf-8",
    perms: int | None = None,
) -> Iterator[IO[Any]]:
    """Open a temp file for writing; on a clean exit it atomically replaces ``target``.

    Args:
        target: final path; its folder is created if missing.
        mode: ``"wb"`` (bytes) or ``"w"`` (text, ``encoding``).
        fsync: flush the file and its folder to disk (durability against power loss; the rename
            alone is atomic against crashes).
        perms: permission bits of the result (e.g. ``0o600`` for files holding credentials; the
            temp file is created ``0o600``, so it is never readable by others in between).
            Default: the replaced file's bits, or ``0o666`` under the umask for a new file.

    Raises:
        ValueError: ``mode`` is not ``"w"`` or ``"wb"``.
        OSError: writing or renaming failed (the target is then unchanged, the temp removed).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    target = Path(target)
    fd, temp = temp_path_for(target)
    try:
        with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        if perms is not None:
            os.chmod(temp, perms)
        elif target.exists():
            with contextlib.suppress(OSError):
                os.chmod(temp, target.stat().st_mode & 0o7777)
        else:
            os.chmod(temp, _default_mode())
        os.replace(temp, target)
        if fsync and os.name == "posix":
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def atomic_write_bytes(
    target: str | os.PathLike[str], data: bytes, *, fsync: bool = False, perms: int | None = None
) -> Path:
    """Write ``data`` to ``target`` atomically (unique temp + rename); returns the target path."""
    with atomic_open(target, "wb", fsync=fsync, perms=perms) as fh:
        fh.write(data)
    return Path(target)


def atomic_write_text(
    target: str | os.PathLike[str],
    text: str,
    *,
    encoding: str = "utf-8",
    fsync: bool = False,
    perms: int | None = None,
) -> Path:
    """Write ``text`` to ``target`` atomically (unique temp + rename); returns the target path."""
    with atomic_open(target, "w", encoding=encoding, fsync=fsync, perms=perms) as fh:
        fh.write(text)
    return Path(target)

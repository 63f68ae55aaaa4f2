"""Disk full, permission denied and read-only storage fail at once with the IO manager's own
error (path and fix, no retry); transient errors are retried."""

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from mlx_resources.io_managers import PolarsIOManagerError, _polars_files
from mlx_resources.io_managers import polars_io as pio
from tests.io_managers.helpers import frame, materializations, resources, temp_files

FATAL = [errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS]
TRANSIENT = [errno.EAGAIN, errno.EINTR, errno.ECONNRESET, errno.ETIMEDOUT]


def _raise_like(style: str, code: int) -> BaseException:
    """The shapes these errors take: Python's OSError, polars' (errno only in the text)."""
    text = f"{os.strerror(code)} (os error {code})"
    if style == "oserror":
        return OSError(code, os.strerror(code))
    if style == "polars-io":
        return OSError(text)
    return pl.exceptions.ComputeError(f"parquet: underlying IO error: {text}")


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pio.time, "sleep", lambda s: None)


def _assets(retries: int = 2) -> list[dg.AssetsDefinition]:
    @dg.asset(retry_policy=dg.RetryPolicy(max_retries=retries))
    def up() -> pl.DataFrame:
        return frame(100)

    return [up]


def _inject(monkeypatch: pytest.MonkeyPatch, errors: list[BaseException]) -> list[int]:
    """Make the low-level write fail with ``errors`` in turn, then succeed; counts calls."""
    calls: list[int] = []
    real = _polars_files.write_frame

    def write(df, target, fmt, compression):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) <= len(errors):
            Path(str(target)).write_bytes(b"partial")  # a half-written temp file
            raise errors[len(calls) - 1]
        return real(df, target, fmt, compression)

    monkeypatch.setattr(_polars_files, "write_frame", write)
    return calls


@pytest.mark.parametrize("style", ["oserror", "polars-io", "polars-compute"])
@pytest.mark.parametrize("code", FATAL, ids=[errno.errorcode[c] for c in FATAL])
def test_fatal_write_errors_fail_at_once_with_path_and_fix(
    tmp_path: Path,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    style: str,
) -> None:
    assets = _assets()
    res = resources(tmp_path)
    assert dg.materialize(assets, instance=instance, resources=res).success
    before = (tmp_path / "up.arrow").read_bytes()
    calls = _inject(monkeypatch, [_raise_like(style, code)] * 10)

    result = dg.materialize(assets, instance=instance, resources=res, raise_on_error=False)
    assert not result.success
    assert len(calls) == 1, "retrying can't fix this error: one attempt, no step retry"
    [failure] = [e for e in result.all_events if e.is_step_failure]
    error = failure.step_failure_data.error
    assert error is not None
    assert "StorageWriteError" in error.cls_name or "StorageWriteError" in error.to_string()
    msg = error.to_string()
    assert str(tmp_path / "up.arrow") in msg and "Fix:" in msg and "base_path" in msg
    # nothing published: the previous file, one materialization, no temp files
    assert (tmp_path / "up.arrow").read_bytes() == before
    assert len(materializations(instance, "up")) == 1
    assert temp_files(tmp_path) == []


def test_fatal_error_raised_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _inject(monkeypatch, [OSError(errno.ENOSPC, "No space left on device")])
    with pytest.raises(pio.StorageWriteError) as err:
        dg.materialize(_assets(), resources=resources(tmp_path))
    assert err.value.allow_retries is False
    assert err.value.path == str(tmp_path / "up.arrow")
    assert "full" in str(err.value)


@pytest.mark.parametrize("code", TRANSIENT, ids=[errno.errorcode[c] for c in TRANSIENT])
def test_transient_errors_are_retried(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    calls = _inject(monkeypatch, [_raise_like("oserror", code), _raise_like("polars-io", code)])
    assert dg.materialize(_assets(), instance=instance, resources=resources(tmp_path)).success
    assert len(calls) == 3
    assert pl.read_ipc(tmp_path / "up.arrow").equals(frame(100))
    assert temp_files(tmp_path) == []


def test_transient_error_that_persists_is_retryable(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _inject(monkeypatch, [ConnectionResetError(errno.ECONNRESET, "reset")] * 100)
    result = dg.materialize(
        _assets(retries=1), instance=instance, resources=resources(tmp_path), raise_on_error=False
    )
    assert not result.success
    # 4 attempts inside the IO manager, then the step's retry policy runs it once more
    assert len(calls) == 8
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "TransientStorageError" in failure.step_failure_data.error.to_string()
    assert pio.TransientStorageError.retryable is True
    assert temp_files(tmp_path) == []


def test_failed_rename_is_classified_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def commit(self):  # type: ignore[no-untyped-def]
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(_polars_files.StagedWrite, "commit", commit)
    with pytest.raises(pio.StorageWriteError, match="read-only"):
        dg.materialize(_assets(), resources=resources(tmp_path))
    assert temp_files(tmp_path) == []


def test_other_errors_are_not_disguised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _inject(monkeypatch, [ValueError("a bug in a writer")])
    with pytest.raises(Exception, match="a bug in a writer") as err:
        dg.materialize(_assets(retries=0), resources=resources(tmp_path))
    assert not isinstance(err.value, PolarsIOManagerError)


# ------------------------------------------------------------------ a real small file system


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8); not available here")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a 1 MiB tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_on_a_real_tmpfs(tiny_tmpfs: Path, instance: dg.DagsterInstance) -> None:
    data = {"df": frame(100)}

    @dg.asset(retry_policy=dg.RetryPolicy(max_retries=2))
    def up() -> pl.DataFrame:
        return data["df"]

    res = resources(tiny_tmpfs)
    assert dg.materialize([up], instance=instance, resources=res).success
    before = (tiny_tmpfs / "up.arrow").read_bytes()
    data["df"] = pl.DataFrame({"x": np.random.default_rng(0).random(1_000_000)})  # 8 MB
    with pytest.raises(pio.StorageWriteError) as err:
        dg.materialize([up], instance=instance, resources=res)
    assert "full" in str(err.value) and str(tiny_tmpfs / "up.arrow") in str(err.value)
    assert (tiny_tmpfs / "up.arrow").read_bytes() == before
    assert temp_files(tiny_tmpfs) == []
    assert len(materializations(instance, "up")) == 1


def test_read_only_remount_on_a_real_tmpfs(tiny_tmpfs: Path) -> None:
    done = subprocess.run(
        ["mount", "-o", "remount,ro", str(tiny_tmpfs)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"remounting read-only is not permitted here: {done.stderr.strip()}")
    with pytest.raises(pio.StorageWriteError, match="read-only"):
        dg.materialize(_assets(), resources=resources(tiny_tmpfs))

"""Every platform write is a unique temp file + atomic rename: concurrent writers of one target
(threads and processes) never fail, never leave a temp file, and the target is always one
complete write."""

import multiprocessing as mp
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mlx_resources.atomic import atomic_open, atomic_write_bytes, atomic_write_text

ROUNDS = 100


def _payload(writer: int, i: int) -> str:
    # large enough that a non-atomic write is observable half-done; self-checking via the footer
    body = f"writer {writer} round {i} " * 2000
    return f"{body}\nEND {len(body)}\n"


def _complete(text: str) -> bool:
    body, _, footer = text.rpartition("\nEND ")
    return footer == f"{len(body)}\n"


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".tmp" in p.name]


def test_threads_writing_one_file_end_with_one_complete_write(tmp_path: Path) -> None:
    target = tmp_path / "reports" / "2013-01-01.html"
    stop = threading.Event()
    torn: list[str] = []

    def read() -> None:
        while not stop.is_set():
            if target.exists():
                text = target.read_text()
                if not _complete(text):
                    torn.append(text[:40])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [
                pool.submit(
                    lambda w=w: [atomic_write_text(target, _payload(w, i)) for i in range(ROUNDS)]
                )
                for w in range(4)
            ]
            for f in futures:
                f.result()  # re-raises any writer's exception
    finally:
        stop.set()
        reader.join()
    assert torn == []
    assert _complete(target.read_text())
    assert target.read_text() in {_payload(w, ROUNDS - 1) for w in range(4)}
    assert _temps(target.parent) == []


def _process_writer(target: str, writer: int) -> None:
    for i in range(ROUNDS):
        atomic_write_text(target, _payload(writer, i))


def test_processes_writing_one_file_end_with_one_complete_write(tmp_path: Path) -> None:
    target = tmp_path / "2013-01-01.html"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_process_writer, args=(str(target), w)) for w in range(2)]
    for p in procs:
        p.start()
    torn = 0
    while any(p.is_alive() for p in procs):
        if target.exists() and not _complete(target.read_text()):
            torn += 1
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert torn == 0
    assert target.read_text() in {_payload(w, ROUNDS - 1) for w in range(2)}
    assert _temps(tmp_path) == []


def test_drift_report_writers_race_without_errors(tmp_path: Path) -> None:
    """The drift report's HTML (issue 9 item 8: a fixed ``<day>.html.tmp`` made one fail)."""
    from mlx_plugins.drift_detectors.base import ColumnDrift, DriftReport
    from mlx_plugins.drift_detectors.report import write_html

    def report(share: float) -> DriftReport:
        col = ColumnDrift(
            column="x",
            kind="numeric",
            test="ks",
            statistic=share,
            p_value=0.5,
            threshold=0.05,
            drifted=False,
        )
        return DriftReport(
            columns=(col,),
            reference_rows=10,
            current_rows=10,
            drift_share=share,
            share_threshold=0.5,
            dataset_drift=False,
        )

    target = tmp_path / "drift" / "2013-01-01.html"
    reports = [report(i / 10) for i in range(4)]
    stop = threading.Event()
    torn: list[int] = []

    def read() -> None:
        while not stop.is_set():
            try:
                text = target.read_text()
            except FileNotFoundError:
                continue
            if not text.rstrip().endswith("</html>"):
                torn.append(len(text))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda r: [write_html(r, target) for _ in range(50)], reports))
    finally:
        stop.set()
        reader.join()
    assert torn == [], "a reader saw a half-written report"
    assert target.read_text().rstrip().endswith("</html>")
    assert _temps(target.parent) == []


def test_io_manager_writers_of_one_partition_end_with_one_readable_file(tmp_path: Path) -> None:
    from mlx_resources.io_managers import PolarsIOManager

    daily = dg.DailyPartitionsDefinition(start_date="2013-01-01")
    frames = [pl.DataFrame({"w": [w] * 50_000, "v": list(range(50_000))}) for w in range(3)]

    def write(w: int) -> None:
        io = PolarsIOManager(base_path=str(tmp_path))
        for _ in range(20):
            ctx = dg.build_output_context(
                asset_key=dg.AssetKey("features"),
                partition_key="2013-01-01",
                asset_partitions_def=daily,
            )
            io.handle_output(ctx, frames[w])

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(write, range(3)))
    stored = pl.read_ipc(tmp_path / "features" / "2013-01-01.arrow")
    assert any(stored.equals(f) for f in frames)
    assert _temps(tmp_path / "features") == []


def test_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as fh:
        fh.write("new, half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert _temps(tmp_path) == []


def test_permissions(tmp_path: Path) -> None:
    secret = atomic_write_bytes(tmp_path / "spec.json", b"{}", perms=0o600)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    old = os.umask(0o022)
    try:
        plain = atomic_write_text(tmp_path / "r.html", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(plain.stat().st_mode) == 0o644  # like open(..., "w"), not mkstemp's 0600
    os.chmod(plain, 0o640)
    atomic_write_text(plain, "y")  # replacing keeps the file's bits
    assert stat.S_IMODE(plain.stat().st_mode) == 0o640
    with pytest.raises(ValueError, match="mode"), atomic_open(tmp_path / "x", "a"):
        pass

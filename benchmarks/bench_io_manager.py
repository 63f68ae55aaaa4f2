"""Benchmark PolarsIOManager against Dagster's pickle IO manager (``FilesystemIOManager``).

A 2-asset graph runs in a real Dagster run (in-process executor): ``frame`` builds an N-row,
10-column numeric frame (default 10M rows, 800 MB), ``summary`` reads it and sums every column.
Both outputs go through the IO manager under test. Every variant runs in a fresh subprocess of
this script so peak-RSS numbers don't leak between variants; the parent prints the table.

    python benchmarks/bench_io_manager.py                  # all variants, 10M rows, 2 repeats
    python benchmarks/bench_io_manager.py --rows 1000000 --repeat 1 --variants pickle ipc

Columns: ``wall`` = the run (execute_job) wall time, best of --repeat; ``io`` = wall minus the
same graph on Dagster's in-memory IO manager (the IO cost alone); ``write``/``read`` = step
durations of ``frame``/``summary`` (compute included); ``peak`` = peak RSS minus RSS before the
run; ``file`` = bytes on disk for ``frame``. ``--api materialize`` uses ``dagster.materialize``
instead, which additionally keeps every output object alive until the run ends.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from mlx_resources.io_managers import PolarsIOManager, content_hash

VARIANTS: dict[str, dict[str, str] | None] = {
    "memory": None,  # baseline: Dagster's InMemoryIOManager, no IO at all
    "pickle": None,  # Dagster's default FilesystemIOManager
    "ipc": {"format": "ipc", "compression": "uncompressed"},
    "ipc-lz4": {"format": "ipc", "compression": "lz4"},
    "ipc-zstd": {"format": "ipc", "compression": "zstd"},
    "parquet-zstd": {"format": "parquet", "compression": "zstd"},
    "parquet-lz4": {"format": "parquet", "compression": "lz4"},
    "parquet": {"format": "parquet", "compression": "uncompressed"},
}
ENV_VARIANT, ENV_ROWS, ENV_DIR = "MLX_BENCH_VARIANT", "MLX_BENCH_ROWS", "MLX_BENCH_DIR"


# --------------------------------------------------------------------------- the graph


def make_frame(rows: int) -> Any:
    """10 numeric columns, 8 bytes each: ids/timestamps (compressible), small-range ints,
    and random floats (incompressible) - a mix typical of feature tables."""
    rng = np.random.default_rng(42)
    return pl.DataFrame(
        {
            "id": np.arange(rows, dtype=np.int64),
            "ts": 1_700_000_000 + np.sort(rng.integers(0, 86_400 * 30, rows)),
            "store": rng.integers(0, 500, rows),
            "item": rng.integers(0, 20_000, rows),
            "qty": rng.integers(0, 10, rows),
            "price": rng.random(rows) * 100,
            "f0": rng.standard_normal(rows),
            "f1": rng.standard_normal(rows),
            "f2": rng.random(rows),
            "f3": rng.random(rows),
        }
    )


def build_assets() -> tuple[list[Any], dict[str, Any]]:
    """The graph and its IO manager for the variant named in the environment."""
    variant = os.environ[ENV_VARIANT]
    rows = int(os.environ[ENV_ROWS])
    base = os.environ[ENV_DIR]

    @dg.asset
    def frame() -> pl.DataFrame:
        return make_frame(rows)

    @dg.asset
    def summary(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.select(pl.all().sum())

    if variant == "memory":
        io_manager: Any = dg.InMemoryIOManager()
    elif variant == "pickle":
        io_manager = dg.FilesystemIOManager(base_dir=base)
    else:
        io_manager = PolarsIOManager(base_path=base, **VARIANTS[variant])  # type: ignore[arg-type]
    return [frame, summary], {"io_manager": io_manager}


def build_job() -> Any:
    """Module-level job factory so that ``dg.reconstructable`` can rebuild it."""
    assets, resources = build_assets()
    defs = dg.Definitions(
        assets=assets,
        resources=resources,
        jobs=[dg.define_asset_job("bench_io", executor_def=dg.in_process_executor)],
    )
    return defs.get_job_def("bench_io")


# --------------------------------------------------------------------------- child


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _step_seconds(instance: Any, run_id: str) -> dict[str, float]:
    starts: dict[str, float] = {}
    out: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        ev = entry.dagster_event
        if ev is None or ev.step_key is None:
            continue
        if ev.event_type == dg.DagsterEventType.STEP_START:
            starts[ev.step_key] = entry.timestamp
        elif ev.event_type == dg.DagsterEventType.STEP_SUCCESS:
            out[ev.step_key] = entry.timestamp - starts[ev.step_key]
    return out


def child(variant: str, rows: int, workdir: str, api: str) -> dict[str, Any]:
    os.environ.update({ENV_VARIANT: variant, ENV_ROWS: str(rows), ENV_DIR: workdir})
    with dg.DagsterInstance.ephemeral() as instance:
        assets, resources = build_assets()
        rss0 = _rss_bytes()
        t0 = time.perf_counter()
        if api == "materialize":
            result: Any = dg.materialize(assets, instance=instance, resources=resources)
        else:
            result = dg.execute_job(dg.reconstructable(build_job), instance=instance)
        run_id, ok = result.run_id, result.success
        wall = time.perf_counter() - t0
        steps = _step_seconds(instance, run_id)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    size = sum(p.stat().st_size for p in Path(workdir).rglob("*frame*") if p.is_file())
    return {
        "variant": variant,
        "ok": ok,
        "wall_s": wall,
        "write_s": steps.get("frame", float("nan")),
        "read_s": steps.get("summary", float("nan")),
        "peak_mb": (peak - rss0) / 1e6,
        "file_mb": size / 1e6,
    }


def hash_child(rows: int, workdir: str) -> dict[str, Any]:
    """Time the two content-hash candidates on the benchmark frame."""
    import hashlib

    df = make_frame(rows)
    t = time.perf_counter()
    content_hash(df)
    rows_s = time.perf_counter() - t
    path = Path(workdir) / "h.arrow"
    df.write_ipc(path)
    t = time.perf_counter()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    file_s = time.perf_counter() - t
    return {
        "hash_rows_sha256_s": rows_s,
        "file_sha256_s": file_s,
        "file_mb": path.stat().st_size / 1e6,
    }


# --------------------------------------------------------------------------- parent


def run_child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--api", choices=["execute_job", "materialize"], default="execute_job")
    parser.add_argument("--workdir", default=str(Path(__file__).parent / ".work"))
    parser.add_argument("--no-hash", action="store_true", help="skip the content-hash timing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        if args.child == "hash":
            print(json.dumps(hash_child(args.rows, args.workdir)))
        else:
            print(json.dumps(child(args.child, args.rows, args.workdir, args.api)))
        return

    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    print(
        f"\nrows={args.rows:,} cols=10 (~{args.rows * 80 / 1e6:.0f} MB in memory), api={args.api}, "
        f"best of {args.repeat}, polars IO manager variants vs dagster FilesystemIOManager (pickle)"
    )
    results: dict[str, dict[str, Any]] = {}
    for variant in args.variants:
        best: dict[str, Any] | None = None
        for _ in range(args.repeat):
            workdir = tempfile.mkdtemp(prefix=f"{variant}-", dir=args.workdir)
            try:
                r = run_child(
                    [
                        "--child",
                        variant,
                        "--rows",
                        str(args.rows),
                        "--workdir",
                        workdir,
                        "--api",
                        args.api,
                    ]
                )
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            assert r["ok"], r
            if best is None or r["wall_s"] < best["wall_s"]:
                best = {
                    **r,
                    "peak_mb": max(r["peak_mb"], best["peak_mb"]) if best else r["peak_mb"],
                }
            else:
                best["peak_mb"] = max(best["peak_mb"], r["peak_mb"])
        assert best is not None
        results[variant] = best
        print(f"  done {variant}: {best['wall_s']:.2f}s", file=sys.stderr)

    base = results.get("memory", {}).get("wall_s", 0.0)
    ref = results.get("pickle")
    header = (
        f"{'variant':<14}{'wall s':>8}{'io s':>8}{'write s':>9}{'read s':>8}{'peak MB':>9}"
        f"{'file MB':>9}{'speedup':>9}{'io spdup':>9}{'peak %':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        io_s = r["wall_s"] - base if base else float("nan")
        if ref and name != "memory":
            ref_io = ref["wall_s"] - base if base else float("nan")
            speed = f"{ref['wall_s'] / r['wall_s']:.2f}x"
            io_speed = f"{ref_io / io_s:.2f}x" if base and io_s > 0 else "-"
            peak_pct = f"{100 * r['peak_mb'] / ref['peak_mb']:.0f}%"
        else:
            speed = io_speed = peak_pct = "-"
        print(
            f"{name:<14}{r['wall_s']:>8.2f}{io_s:>8.2f}{r['write_s']:>9.2f}{r['read_s']:>8.2f}"
            f"{r['peak_mb']:>9.0f}{r['file_mb']:>9.0f}{speed:>9}{io_speed:>9}{peak_pct:>8}"
        )
    if not args.no_hash:
        workdir = tempfile.mkdtemp(prefix="hash-", dir=args.workdir)
        try:
            h = run_child(["--child", "hash", "--rows", str(args.rows), "--workdir", workdir])
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(
            f"content hash of the frame: hash_rows+sha256 {h['hash_rows_sha256_s']:.2f}s, "
            f"sha256 of the {h['file_mb']:.0f} MB Arrow file {h['file_sha256_s']:.2f}s"
        )


if __name__ == "__main__":
    from _common import load, machine  # this script's folder is on sys.path

    print(f"machine: {machine()}; load average before: {load()}", flush=True)
    main()
    print(f"machine: {machine()}; load average after: {load()}", flush=True)

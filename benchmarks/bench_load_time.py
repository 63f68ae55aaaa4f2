"""Code-location load time: importing the definitions module (and resolving its asset graph) in a
fresh process, as a ratio to ``python -c "import dagster"`` measured in the same run.

    ./dev bench load_time [--repeats 9] [--breakdown] [--before OTHER_CHECKOUT]

Goal (issues #10, #15): under 1.2x with every plugin installed and the two lifecycle instances
of ``mlx_assets/defs`` (flight_delay, seattle_weather).

How it measures, so that a shared, loaded machine still gives a usable ratio:

- the baseline and the code location run alternately (baseline, ours, baseline, ours, ...), so a
  load spike hits both; the ratio is of the medians;
- each is timed from the process's start to the moment it has loaded (a code server is ready
  then), not to its exit: the interpreter's tear-down is left out of both;
- wall time and CPU time (the child's ``process_time()``) are both reported: CPU time is what
  loading costs, and moves far less with other processes' load than wall time does;
- before timing, the project's modules are byte-compiled (``__pycache__``, as Python does on a
  first import; site-packages were compiled by pip): with ``PYTHONDONTWRITEBYTECODE=1`` in the
  environment (this machine's shells, the Dockerfile) they would otherwise be compiled from
  source in every process, which ``import dagster`` never pays;
- ``--before`` times another checkout's code location alternately with this one's (run from that
  folder, so its modules shadow this editable install's), for a before/after under one load;
- ``--breakdown`` times each stage's CPU in-process (median over fresh processes): import dagster,
  the MLX modules, the composition, the definitions, the asset graph (with the garbage collector
  paused after ``import dagster``, as the definitions module loads); it fails if polars was
  imported (the definitions load without it: ``mlx_resources/io_managers/frames.py``).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load, machine, median, row

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("mlx_assets", "mlx_resources", "mlx_plugins")
BASELINE = "import dagster"
OURS = "import mlx_assets.definitions as d; d.defs.resolve_asset_graph()"

STAGES = r"""
import atexit, gc, json, sys, time
t = [time.process_time()]
import dagster
t.append(time.process_time())
gc.disable()  # as mlx_assets/definitions.py does after import dagster
import mlx_assets.build, mlx_plugins.kernel.composition as c
t.append(time.process_time())
comp = c.load_composition()
t.append(time.process_time())
defs = mlx_assets.build.build_definitions(comp)
t.append(time.process_time())
defs.resolve_asset_graph()
t.append(time.process_time())
assert "polars" not in sys.modules, "loading the definitions imported polars"
atexit.register(print, json.dumps([b - a for a, b in zip(t, t[1:])]))  # after timed()'s line
"""
STAGE_NAMES = (
    "import dagster",
    "import MLX modules (build, composition)",
    "load_composition() (plugins imported)",
    "build_definitions() (assets, resources)",
    "resolve_asset_graph()",
)


def timed(code: str, cwd: Path = REPO) -> tuple[float, float, str]:
    """(wall s, CPU s, stdout) of loading ``code`` in a fresh interpreter, up to the moment it
    is loaded (what a code server waits for), not its exit: interpreter start-up counts,
    tear-down (which frees the whole heap) does not. CPU is the child's own ``process_time()``
    at that moment, printed as its first line."""
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", f"{code}\nimport time; print(time.process_time(), flush=True)"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    first = child.stdout.readline()
    wall = time.perf_counter() - start
    rest = child.stdout.read()
    if child.wait() != 0 or not first:
        raise RuntimeError(f"{code!r} failed (exit {child.returncode})")
    return wall, float(first), rest


def pair_ratio(ours: list[float], baseline: list[float]) -> float:
    """Median of ``ours[i] / baseline[i]`` over the alternating pairs: each pair ran back to
    back, so a slow drift of the machine's speed cancels within it, unlike in the ratio of the
    two medians (which may come from different moments of the run)."""
    return median([o / b for o, b in zip(ours, baseline, strict=True)])


def compile_project(root: Path = REPO) -> None:
    """Byte-compile the project's packages into ``__pycache__`` (git-ignored)."""
    for pkg in PACKAGES:
        compileall.compile_dir(str(root / pkg), quiet=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--breakdown", action="store_true", help="time each stage in-process")
    ap.add_argument(
        "--before",
        type=Path,
        help="another checkout of the project (e.g. `git worktree add /tmp/before <commit>`): "
        "its code location is timed alternately with this one's, as 'before'",
    )
    args = ap.parse_args()
    compile_project()
    codes = {"import dagster (baseline)": (BASELINE, REPO)}
    if args.before:
        compile_project(args.before)
        codes[f"before ({args.before})"] = (OURS, args.before)
    codes["import mlx_assets.definitions"] = (OURS, REPO)
    for code, cwd in codes.values():  # warm the OS file cache for each
        timed(code, cwd)
    walls: dict[str, list[float]] = {k: [] for k in codes}
    cpus: dict[str, list[float]] = {k: [] for k in codes}
    for _ in range(args.repeats):
        for name, (code, cwd) in codes.items():
            wall, cpu, _out = timed(code, cwd)
            walls[name].append(wall)
            cpus[name].append(cpu)
    base_wall = median(walls["import dagster (baseline)"])
    base_cpu = median(cpus["import dagster (baseline)"])
    widths = (34, 11, 11, 10, 9)
    print(row("what", "wall med s", "wall ratio", "CPU med s", "CPU ratio", widths=widths))
    for name in codes:
        w, c = median(walls[name]), median(cpus[name])
        print(
            row(
                name,
                f"{w:.3f}",
                f"{w / base_wall:.2f}x",
                f"{c:.3f}",
                f"{c / base_cpu:.2f}x",
                widths=widths,
            )
        )
    ours = "import mlx_assets.definitions"
    print(
        f"\nratio {median(walls[ours]) / base_wall:.2f}x wall, "
        f"{median(cpus[ours]) / base_cpu:.2f}x CPU (goal < 1.20x; median of {args.repeats} "
        "fresh processes each, run alternately)"
    )
    base = "import dagster (baseline)"
    for name in codes:
        if name != base:
            print(
                f"pair ratio {name}: {pair_ratio(walls[name], walls[base]):.2f}x wall, "
                f"{pair_ratio(cpus[name], cpus[base]):.2f}x CPU (median of the {args.repeats} "
                "per-pair ratios ours_i / baseline_i: robust to slow drifts of the machine's speed)"
            )
    if args.breakdown:
        runs = [json.loads(timed(STAGES)[2]) for _ in range(args.repeats)]
        dagster_s = median([r[0] for r in runs])
        print(f"\nbreakdown (CPU in-process, median of {args.repeats}; share of import dagster)")
        for i, name in enumerate(STAGE_NAMES):
            s = median([r[i] for r in runs])
            print(row(name, f"{s * 1000:.0f} ms", f"{s / dagster_s:.2f}", widths=(40, 10, 6)))


if __name__ == "__main__":
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # children keep the compiled modules fresh
    print(f"machine: {machine()}; load average before: {load()}", flush=True)
    main()
    print(f"machine: {machine()}; load average after: {load()}", flush=True)

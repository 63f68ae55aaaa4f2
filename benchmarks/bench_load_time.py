"""Code-location load time: importing the definitions module in a fresh process, as a ratio to
``python -c "import dagster"``. Goal: under 1.3x with every plugin installed.

    ./dev bench load_time [--repeats 7]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load, machine, median, row, time_fresh_process


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    # Warm the OS file cache for both, so neither pays a cold disk.
    time_fresh_process("import mlx_assets.definitions", 1)
    base = time_fresh_process("import dagster", args.repeats)
    ours = time_fresh_process(
        "import mlx_assets.definitions as d; d.defs.resolve_asset_graph()", args.repeats
    )
    print(row("what", "median s", "min s", "ratio"))
    print(row("import dagster (baseline)", f"{median(base):.3f}", f"{min(base):.3f}", "1.00x"))
    ratio = median(ours) / median(base)
    print(
        row(
            "import mlx_assets.definitions",
            f"{median(ours):.3f}",
            f"{min(ours):.3f}",
            f"{ratio:.2f}x",
        )
    )
    print(f"\nratio {ratio:.2f}x (goal < 1.30x)")


if __name__ == "__main__":
    print(f"machine: {machine()}; load average before: {load()}", flush=True)
    main()
    print(f"machine: {machine()}; load average after: {load()}", flush=True)

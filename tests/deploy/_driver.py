"""``mlx lifecycle`` limited to some days, for the deployment tests (a year takes minutes here).

``python -m tests.deploy._driver lifecycle [FIRST LAST]`` does what the CLI's ``lifecycle``
command does (instance home, the lifecycle lock, recovery of killed runs, the staged runs, the
summary), on the daily partitions FIRST..LAST (default: all, as the CLI). Exit 0 on success,
1 on a failed run.
"""

from __future__ import annotations

import datetime as dt
import sys


def days_between(first: str, last: str) -> list[str]:
    start, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    return [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def lifecycle(argv: list[str]) -> int:
    import dagster as dg

    from mlx_assets.console import Console, summary_lines
    from mlx_assets.definitions import defs
    from mlx_assets.lifecycle import LifecycleRunFailed, run_lifecycle
    from mlx_resources.instance_home import ensure_dagster_home, lifecycle_lock
    from mlx_resources.run_liveness import recover

    days = days_between(*argv) if argv else None
    console = Console()
    home = ensure_dagster_home(log=console.line)
    with lifecycle_lock(home, console.line), dg.DagsterInstance.get() as instance:
        recover(instance, defs, console.line)
        try:
            run_lifecycle(instance, defs, console=console, partitions=days)
        except LifecycleRunFailed as exc:
            print(f"[mlx] {exc}", flush=True)
            return 1
        for line in summary_lines(instance, defs):
            console.line(f"  {line}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["lifecycle"]:
        sys.exit(lifecycle(sys.argv[2:]))
    raise SystemExit(
        f"usage: python -m tests.deploy._driver lifecycle [FIRST LAST]; got {sys.argv}"
    )

"""A no-op `mlx lifecycle` (everything up to date): planning time and event-log queries.

For each scale, the lifecycle first runs once on a fresh home (or reuses one from ``--work``);
then, in this process, the planner runs on the up-to-date instance. Printed per scale: the plan's
median time, its SQL query count (a SQLAlchemy listener on every engine), and its ratio to two
baselines measured in the same process run: ``import dagster`` in a fresh interpreter, and one
instance query (``get_asset_records`` for one asset). Also the whole no-op command's wall time.
Goal (issue 8): a no-op plan under 3 s at 1x and 10x, with a query count that grows with assets,
not with partitions x assets. ``--resolver`` also times Dagster's per-partition
``CachingStaleStatusResolver`` over the same partitions (the previous planner's method, slow).

    ./dev bench lifecycle_noop [--scales 1 10] [--work DIR] [--resolver]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _env(work: Path) -> dict[str, str]:
    return {
        "MLX_HOME": str(work / "home"),
        "MLX_COMPOSITION": str(work / "mlx.yaml"),
        "DAGSTER_HOME": str(work / "dagster"),
    }


def prepare(scale: float, epochs: int, work: Path) -> float:
    """Run the lifecycle once on ``work`` (unless it already ran there); return its seconds."""
    if (work / "prepared").exists():
        return 0.0
    work.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((ROOT / "mlx.yaml").read_text())
    raw["plugins"]["data_source"][0]["config"]["scale"] = scale
    raw["plugins"]["ml_platform"]["config"]["epochs"] = epochs
    raw.pop("profiles", None)
    raw.setdefault("settings", {})["quality_gate"] = {
        "min_roc_auc": 0.0,
        "max_log_loss_ratio": 100.0,
    }
    (work / "mlx.yaml").write_text(yaml.safe_dump(raw))
    (work / "dagster").mkdir(exist_ok=True)
    (work / "dagster" / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = {**os.environ, **_env(work)}
    env.pop("MLX_PROFILE", None)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mlx_assets.cli", "lifecycle"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (work / "prepared").write_text("")
    return time.perf_counter() - start


def import_dagster_s(repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import dagster"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def noop_cli_s(work: Path) -> float:
    env = {**os.environ, **_env(work)}
    env.pop("MLX_PROFILE", None)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mlx_assets.cli", "lifecycle"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    assert "everything is up to date" in done.stdout, done.stdout
    return elapsed


def measure(work: Path, repeats: int, resolver: bool) -> dict[str, float]:
    os.environ.update(_env(work))
    os.environ.pop("MLX_PROFILE", None)
    import dagster as dg
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from mlx_assets.build import build_definitions
    from mlx_assets.lifecycle import plan
    from mlx_plugins.kernel.composition import load_composition

    defs = build_definitions(load_composition())
    queries = [0]

    def count(*_a, **_k) -> None:
        queries[0] += 1

    out: dict[str, float] = {}
    with dg.DagsterInstance.from_config(str(work / "dagster")) as instance:
        one = []
        for _ in range(5):
            start = time.perf_counter()
            instance.get_asset_records([dg.AssetKey("planes")])
            one.append(time.perf_counter() - start)
        out["one_query_s"] = statistics.median(one)
        times = []
        event.listen(Engine, "before_cursor_execute", count)
        for _ in range(repeats):
            queries[0] = 0
            start = time.perf_counter()
            todo = plan(instance, defs)
            times.append(time.perf_counter() - start)
            if not todo.empty:  # asset code was edited since the lifecycle ran (shared tree)
                return {"not_empty": 1.0}
        event.remove(Engine, "before_cursor_execute", count)
        out["plan_s"], out["queries"] = statistics.median(times), queries[0]
        out["partitions"] = sum(
            len(instance.get_materialized_partitions(dg.AssetKey(k)))
            for k in ("raw_flights", "raw_weather", "flight_features", "feature_drift")
        )
        if resolver:
            out["resolver_s"], out["resolver_queries"] = _resolver(instance, defs, count, queries)
    return out


def _resolver(instance, defs, count, queries) -> tuple[float, int]:
    """The previous planner's method: Dagster's stale resolver, one partition at a time."""
    import dagster as dg
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._time import get_current_datetime
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(
        instance=instance, asset_graph=graph, loading_context=view
    )
    queries[0] = 0
    event.listen(Engine, "before_cursor_execute", count)
    start = time.perf_counter()
    for key in ("raw_flights", "raw_weather", "flight_features", "feature_drift"):
        for day in instance.get_materialized_partitions(dg.AssetKey(key)):
            resolver.get_status(dg.AssetKey(key), day)
    elapsed = time.perf_counter() - start
    event.remove(Engine, "before_cursor_execute", count)
    return elapsed, queries[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the preparing run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="keep/reuse prepared homes here")
    parser.add_argument("--resolver", action="store_true", help="also time Dagster's resolver")
    parser.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:  # child: measure on a fresh import of the code location
        print(json.dumps(measure(args.measure, args.repeats, args.resolver)))
        return
    base = args.work or Path(tempfile.mkdtemp(prefix="mlx-noop-"))
    rows = []
    for scale in args.scales:
        work = base / f"scale{scale:g}"
        prepared = prepare(scale, args.epochs, work)
        for _ in range(3):
            subprocess.run(  # bring it up to date with the code as it is now
                [sys.executable, "-m", "mlx_assets.cli", "lifecycle"],
                env={**os.environ, **_env(work)},
                check=True,
                stdout=subprocess.DEVNULL,
            )
            command = [sys.executable, __file__, "--measure", str(work)]
            command += ["--repeats", str(args.repeats)] + (["--resolver"] if args.resolver else [])
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            m = json.loads(done.stdout.strip().splitlines()[-1])
            if "not_empty" not in m:
                break
        else:
            raise SystemExit("asset code kept changing; no no-op to measure")
        m["import_dagster_s"] = import_dagster_s(args.repeats)
        m["cli_s"] = noop_cli_s(work)
        m["prepare_s"] = prepared
        rows.append((scale, m))
    print(
        f"{'scale':>5} {'partitions':>10} {'plan':>7} {'queries':>7} {'vs import dagster':>17} "
        f"{'vs 1 query':>10} {'no-op CLI':>9}" + ("  resolver (queries)" if args.resolver else "")
    )
    for scale, m in rows:
        line = (
            f"{scale:>5g} {m['partitions']:>10.0f} {m['plan_s']:>6.2f}s {m['queries']:>7.0f} "
            f"{m['plan_s'] / m['import_dagster_s']:>16.2f}x "
            f"{m['plan_s'] / m['one_query_s']:>9.0f}x "
            f"{m['cli_s']:>8.1f}s"
        )
        if args.resolver:
            line += f"  {m['resolver_s']:.1f}s ({m['resolver_queries']:.0f})"
        print(line)
    print(
        f"(import dagster: {rows[0][1]['import_dagster_s']:.2f}s; one instance query: "
        f"{rows[0][1]['one_query_s'] * 1000:.1f} ms; homes in {base})"
    )


if __name__ == "__main__":
    from _common import load, machine  # this script's folder is on sys.path

    print(f"machine: {machine()}; load average before: {load()}", flush=True)
    main()
    print(f"machine: {machine()}; load average after: {load()}", flush=True)

"""``mlx``: plugins, composition files and the lifecycle from the command line.

mlx plugins list                  installed plugins by kind (no plugin module is imported)
mlx config validate [FILE]        validate a composition file (exit 1 with a clear error)
mlx health [FILE]                 open each used plugin and run its health check
mlx lifecycle [FILE] [-v] [-m M] [--all]
                                  materialize what is missing, stale or bad, in order, for
                                  each lifecycle instance run by default (-m/--model NAME: only
                                  those; --all: every one; -v/--verbose: Dagster's event lines)
mlx serving stop [-m M]           stop the model servers and routers that
                                  ./dev lifecycle --serve left running (logs: <home>/bentoml/logs/)
mlx home                          print (and create) the local DAGSTER_HOME
mlx audit [--plugin P] [--run R] [--since 2h|ISO] [--outcome ok|error] [--json]
                                  plugin calls recorded in the audit log
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _plugins_list(_: argparse.Namespace) -> int:
    from mlx_plugins.kernel.kinds import KINDS
    from mlx_plugins.kernel.registry import default_registry

    reg = default_registry()
    for kind in KINDS.values():
        print(f"{kind.name} ({kind.cardinality.describe()}): {kind.description}")
        names = [s for s in reg if s.kind == kind.name]
        for s in names:
            print(f"  {s.name:<16} {s.target}  [{s.origin}]")
        if not names:
            print("  (none installed)")
    return 0


def _load(args: argparse.Namespace):
    from mlx_plugins.kernel.composition import load_composition

    return load_composition(args.file, profile=args.profile)


def _config_validate(args: argparse.Namespace) -> int:
    from mlx_plugins.kernel.errors import CompositionError

    try:
        comp = _load(args)
        from mlx_assets.build import build_definitions, lifecycles_of
        from mlx_assets.component.loader import check_feature_functions

        defs = build_definitions(comp)
        # the explicit check imports the feature functions (loading the code location does not)
        check_feature_functions([(lc.spec, lc.source_file) for lc in lifecycles_of(defs)])
    except CompositionError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    print(f"valid: {comp.source}" + (f" (profile {comp.profile})" if comp.profile else ""))
    for e in comp.entries:
        secrets = f"  secrets from env: {', '.join(e.env_vars)}" if e.env_vars else ""
        print(f"  {e.kind:<15} {e.name:<14} -> {e.plugin}{secrets}")
    for lc in lifecycles_of(defs):
        prefix = "/".join(lc.prefix) + "/" if lc.prefix else "(no prefix)"
        print(
            f"  lifecycle       {lc.name:<14} -> {lc.task} on data source {lc.spec.data.source!r}"
            f", assets {prefix} ({lc.source_file})"
        )
    return 0


def _health(args: argparse.Namespace) -> int:
    from mlx_assets.build import platform_resources, plugin_resources

    comp = _load(args)
    ok = True
    platform = platform_resources(comp)
    for key, plugin in plugin_resources(comp, platform).items():
        with plugin.session():
            status = plugin.check_health()
        ok &= status.healthy
        mark = "ok " if status.healthy else "FAIL"
        print(f"{mark} {key:<14} {status.detail} ({status.latency_ms:.0f} ms)")
    # where the assets' frames are stored (plugins.io_manager): a wrong bucket or credential
    # shows here, not in the middle of the first materialization
    for key in ("io_manager",):
        status = platform[key].check_health()  # type: ignore[attr-defined]
        ok &= status.healthy
        mark = "ok " if status.healthy else "FAIL"
        print(f"{mark} {key:<14} {status.detail} ({status.latency_ms:.0f} ms)")
    return 0 if ok else 1


def _home(_: argparse.Namespace) -> int:
    from mlx_resources.instance_home import ensure_dagster_home

    print(ensure_dagster_home())
    return 0


def _lifecycle(args: argparse.Namespace) -> int:
    import os
    import time

    from mlx_assets.console import Console
    from mlx_resources.instance_home import ensure_dagster_home

    started = time.perf_counter()
    console = Console(verbose=args.verbose)
    log = console.line
    # A bad composition file fails here, before anything is created or imported.
    _load(args)
    home = ensure_dagster_home(log=log)  # safe under concurrent first use (issue 9.7)
    # the runs this command launches read the composition and profile from the environment;
    # an in-process caller (tests, notebooks) gets its environment back afterwards
    chosen = {"MLX_COMPOSITION": os.path.abspath(args.file) if args.file else None}
    chosen["MLX_PROFILE"] = args.profile or None
    before = {k: os.environ.get(k) for k, v in chosen.items() if v is not None}
    os.environ.update({k: v for k, v in chosen.items() if v is not None})
    try:
        return _run_lifecycles(args, console, home, started)
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_lifecycles(args: argparse.Namespace, console: Any, home: Any, started: float) -> int:
    """``mlx lifecycle``'s work once the composition and profile are in the environment."""
    import importlib
    import time

    import dagster as dg

    from mlx_assets.build import lifecycles_of
    from mlx_assets.console import summary_lines
    from mlx_resources.instance_home import lifecycle_lock

    log = console.line

    # the definitions of THIS composition and profile: a process that imported them before
    # with other settings (main() called twice, as tests and notebooks do) builds them again
    if "mlx_assets.definitions" in sys.modules:
        importlib.reload(sys.modules["mlx_assets.definitions"])
    from mlx_assets.definitions import defs
    from mlx_assets.lifecycle import run_lifecycle
    from mlx_resources.run_liveness import recover

    instances = lifecycles_of(defs)
    if args.model:
        unknown = [m for m in args.model if m not in {lc.name for lc in instances}]
        if unknown:
            log(f"no lifecycle instance named {unknown}; there are: {[i.name for i in instances]}")
            return 2
        instances = [lc for lc in instances if lc.name in args.model]
    elif not args.all:
        skipped = [lc.name for lc in instances if not lc.spec.default_run]
        instances = [lc for lc in instances if lc.spec.default_run]
        if skipped:
            log(f"not run by default: {', '.join(skipped)} (mlx lifecycle -m NAME or --all)")
    with lifecycle_lock(home, log), dg.DagsterInstance.get() as instance:
        recover(instance, defs, log)  # fail runs of killed processes, clean their leftovers
        for lc in instances:
            if len(instances) > 1:
                log(f"lifecycle {lc.name} ({lc.source_file})")
            run_lifecycle(instance, defs, console=console, lc=lc)
        log(f"finished in {time.perf_counter() - started:.1f}s")
        for lc in instances:
            if len(instances) > 1:
                log(f"{lc.name}:")
            for line in summary_lines(instance, defs, lc):
                log(f"  {line}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from mlx_resources.telemetry.audit import audit_command

    return audit_command(
        plugin=args.plugin,
        run=args.run,
        since=args.since,
        outcome=args.outcome,
        as_json=args.json,
        limit=args.limit,
    )


def _serving_stop(args: argparse.Namespace) -> int:
    from mlx_assets.serving.deployment import stop_serving
    from mlx_resources.platform import Platform

    home = Platform(**_load(args).settings).home_path
    try:
        lines = stop_serving(home, args.model)
    except ValueError as exc:
        print(f"mlx serving stop: {exc}", file=sys.stderr)
        return 1
    for line in lines or [f"nothing is served from {home}"]:
        print(line)
    return 0


def _drift_demo(_: argparse.Namespace) -> int:
    from mlx_assets.monitoring.seasonal_demo import main as demo

    demo()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mlx", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    plugins = sub.add_parser("plugins", help="installed plugins")
    plugins.add_argument("action", choices=["list"])
    plugins.set_defaults(fn=_plugins_list)
    config = sub.add_parser("config", help="composition files")
    config.add_argument("action", choices=["validate"])
    for p in (
        config,
        sub.add_parser("health", help="plugin health checks"),
        sub.add_parser("lifecycle", help="materialize what is missing or stale"),
    ):
        p.add_argument("file", nargs="?", default=None, help="composition file (default mlx.yaml)")
        p.add_argument("--profile", default=None, help="profile in the file (or MLX_PROFILE)")
    serving = sub.add_parser("serving", help="what ./dev lifecycle --serve left running")
    serving.add_argument("action", choices=["stop"])
    serving.add_argument("file", nargs="?", default=None, help="composition file (mlx.yaml)")
    serving.add_argument("--profile", default=None, help="profile in the file (or MLX_PROFILE)")
    serving.add_argument(
        "-m", "--model", action="append", help="only this model (repeatable); default: every one"
    )
    serving.set_defaults(fn=_serving_stop)
    sub.choices["config"].set_defaults(fn=_config_validate)
    sub.choices["health"].set_defaults(fn=_health)
    sub.choices["lifecycle"].set_defaults(fn=_lifecycle)
    sub.add_parser("home", help="create and print the local DAGSTER_HOME").set_defaults(fn=_home)
    sub.add_parser("drift-demo", help="monthly drift against a winter-trained model").set_defaults(
        fn=_drift_demo
    )
    audit = sub.add_parser("audit", help="plugin calls recorded in the audit log")
    audit.add_argument("--plugin", help="plugin name, e.g. nycflights13")
    audit.add_argument("--run", help="Dagster run id")
    audit.add_argument("--since", help="ISO date/time (UTC) or age: 30m, 2h, 7d")
    audit.add_argument("--outcome", choices=["ok", "error"])
    audit.add_argument("--limit", type=int, default=None, help="at most this many rows")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.set_defaults(fn=_audit)
    sub.choices["lifecycle"].add_argument(
        "-v", "--verbose", action="store_true", help="also print Dagster's event lines"
    )
    sub.choices["lifecycle"].add_argument(
        "-m",
        "--model",
        action="append",
        help="run only this lifecycle instance (by name; repeatable); default: every instance "
        "whose defs.yaml does not say default_run: false",
    )
    sub.choices["lifecycle"].add_argument(
        "--all", action="store_true", help="run every lifecycle instance, default_run or not"
    )
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        print(f"mlx {args.command}: interrupted", file=sys.stderr)
        return 130
    except _clear_errors() as exc:
        # These errors already say what is wrong and how to fix it: no traceback around them.
        print(f"mlx {args.command}: {exc}", file=sys.stderr)
        return 1


def _clear_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is the whole story (file/key/fix, or run and how to see it)."""
    from mlx_plugins.kernel.errors import CompositionError

    kinds: list[type[BaseException]] = [CompositionError]
    for module, name in (
        ("mlx_assets.lifecycle", "LifecycleRunFailed"),
        ("mlx_resources.instance_home", "HomeLockError"),
    ):
        kinds.append(getattr(__import__(module, fromlist=[name]), name))
    return tuple(kinds)


if __name__ == "__main__":
    raise SystemExit(main())
